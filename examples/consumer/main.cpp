// Uses the installed fetalhc library: the numbers of a head ellipse, and the model file when given.
//   fetalhc_consumer [MODEL.pt [IMAGE PIXEL_SIZE_MM]]
#include <fetalhc/measure.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
    // A head 60 x 50 mm across at 0.1 mm per pixel.
    fetalhc::Ellipse e;
    e.cx = 400;
    e.cy = 270;
    e.a = 300;
    e.b = 250;
    const fetalhc::Measurement m = fetalhc::measurement_from_ellipse(e, 0.1, std::nullopt);
    std::printf("ellipse HC %.1f mm, BPD %.1f mm, OFD %.1f mm\n", m.hc_mm, m.bpd_mm, m.ofd_mm);
    if (argc < 2) return 0;
    auto seg = fetalhc::Segmenter::load(argv[1]);
    if (!seg) {
        std::fprintf(stderr, "error: %s\n", seg.error().c_str());
        return 1;
    }
    std::printf("model %s: %lld parameters\n", argv[1], seg->info().parameters);
    if (argc < 4) return 0;
    fetalhc::Measurer measurer(*seg);
    fetalhc::MeasureOptions o;
    o.pixel_size_mm = std::atof(argv[3]);
    auto r = measurer.measure_file(argv[2], o);
    std::printf("%s\n", r ? fetalhc::to_json(*r).dump().c_str() : ("error: " + r.error()).c_str());
    return r ? 0 : 1;
}
