// libFuzzer target: the DICOM reader (dicom.h) on bytes: the header, the calibration chosen from
// it, and every frame decoded to 8-bit gray.
#include "fetalhc/dicom.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::vector<unsigned char> bytes(data, data + size);
    auto h = fetalhc::read_dicom_header(bytes, "fuzz.dcm");
    if (!h) return 0;
    (void)fetalhc::describe_calibration(*h);
    (void)fetalhc::choose_calibration(*h, cv::Point2d(h->columns / 2.0, h->rows / 2.0));
    auto frames = fetalhc::decode_dicom_frames(bytes, "fuzz.dcm");
    if (!frames) return 0;
    if (frames->size() != size_t(h->frames)) {
        std::fprintf(stderr, "%zu frames decoded, the header says %d\n", frames->size(), h->frames);
        std::abort();
    }
    for (const auto& f : *frames)
        if (f.type() != CV_8UC1 || f.rows != h->rows || f.cols != h->columns) {
            std::fprintf(stderr, "a frame of type %d, %d x %d in a %d x %d file\n", f.type(), f.cols, f.rows, h->columns,
                         h->rows);
            std::abort();
        }
    return 0;
}
