#include "bench.h"

#include "fetalhc/fetalhc.h"
#include "synthetic_scan.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;

namespace fetalhc_cli {
namespace {

struct Stats {
    double median = 0, p90 = 0;
};

Stats stats(std::vector<double> v) {
    if (v.empty()) return {};
    std::sort(v.begin(), v.end());
    return {v[v.size() / 2], v[std::min(v.size() - 1, size_t(0.9 * double(v.size())))]};
}

// A scratch folder removed on every path out.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("fetalhc-bench-" + std::to_string(::getpid()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

}  // namespace

int run_bench(const BenchArgs& a) {
    if (a.runs < 1 || a.threads < 0 || a.video_frames < 0 || a.workers < 0) {
        std::fprintf(stderr, "error: --runs must be >= 1, --threads >= 0, --video-frames >= 0, --workers >= 0\n");
        return 2;
    }
    auto seg = fetalhc::Segmenter::load(a.model, {a.threads});
    if (!seg) return std::fprintf(stderr, "error: %s\n", seg.error().c_str()), 2;
    fetalhc::Measurer measurer(*seg);
    fetalhc::MeasureOptions opt;
    opt.pixel_size_mm = a.pixel_size;

    TempDir tmp;
    std::string image = a.image;
    cv::Mat frame0;
    if (image.empty()) {
        frame0 = fetalhc_bench::synthetic_scan(800, 540);
        image = (tmp.path / "synthetic_800x540.png").string();
        if (!cv::imwrite(image, frame0)) return std::fprintf(stderr, "error: cannot write '%s'\n", image.c_str()), 1;
    } else {
        auto img = fetalhc::load_grayscale(image);
        if (!img) return std::fprintf(stderr, "error: %s\n", img.error().c_str()), 2;
        frame0 = *img;
    }

    // Whole path, file on disk -> HC, as `fetalhc measure` runs it.
    std::vector<double> decode, network, post, fit, total;
    int failed = 0;
    for (int i = 0; i < a.runs + 3; ++i) {
        auto r = measurer.measure_file(image, opt);
        if (!r) {
            ++failed;
            continue;
        }
        if (i < 3) continue;
        decode.push_back(r->timings.decode_ms);
        network.push_back(r->timings.network_ms);
        post.push_back(r->timings.postprocess_ms);
        fit.push_back(r->timings.fit_ms);
        total.push_back(r->timings.total_ms);
    }
    if (total.empty()) {
        std::fprintf(stderr, "error: no run measured '%s' (no head found); bench an image with a head in view\n",
                     image.c_str());
        return 1;
    }

    // Cine loop: the same scan drifting a few pixels per frame, written as Motion-JPEG AVI and
    // measured through measure_video (decoding, tracking and the summary included).
    double video_fps = 0;
    int video_ok = 0;
    if (a.video_frames > 0) {
        const fs::path avi = tmp.path / "cine.avi";
        cv::VideoWriter w(avi.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 25, frame0.size(), false);
        if (!w.isOpened()) return std::fprintf(stderr, "error: cannot write the cine loop '%s'\n", avi.string().c_str()), 1;
        for (int f = 0; f < a.video_frames; ++f) {
            const double dx = 6.0 * std::sin(f * 0.2), dy = 4.0 * std::cos(f * 0.15);
            cv::Mat shifted;
            cv::warpAffine(frame0, shifted, cv::Matx23d(1, 0, dx, 0, 1, dy), frame0.size(), cv::INTER_LINEAR,
                           cv::BORDER_REPLICATE);
            w.write(shifted);
        }
        w.release();
        fetalhc::VideoOptions vo;
        vo.measure = opt;
        vo.workers = a.workers;
        auto s = fetalhc::measure_video(measurer, avi.string(), vo);
        if (!s) return std::fprintf(stderr, "error: %s\n", s.error().c_str()), 1;
        video_fps = s->frames_per_second;
        video_ok = s->ok;
    }

    const auto& info = seg->info();
    std::error_code ec;
    const double model_mb = double(fs::file_size(info.path, ec)) / 1e6;
    const Stats sd = stats(decode), sn = stats(network), sp = stats(post), sf = stats(fit), st = stats(total);
    const double per_s = 1000.0 / st.median;
    if (a.json) {
        nlohmann::json j{{"model", info.path},
                         {"model_mb", ec ? 0.0 : model_mb},
                         {"parameters", info.parameters},
                         {"two_pass", info.refine_config.input_width > 0},
                         {"threads", a.threads},
                         {"image", a.image.empty() ? "synthetic 800x540" : a.image},
                         {"image_width", frame0.cols},
                         {"image_height", frame0.rows},
                         {"runs", total.size()},
                         {"failed_runs", failed},
                         {"median_ms", {{"decode", sd.median}, {"network", sn.median}, {"boundary", sp.median},
                                        {"fit", sf.median}, {"total", st.median}}},
                         {"p90_ms", {{"decode", sd.p90}, {"network", sn.p90}, {"boundary", sp.p90},
                                     {"fit", sf.p90}, {"total", st.p90}}},
                         {"images_per_s", per_s},
                         {"video_frames", a.video_frames},
                         {"video_workers", a.workers},
                         {"video_frames_ok", video_ok},
                         {"video_frames_per_s", video_fps}};
        std::printf("%s\n", j.dump(2).c_str());
        return 0;
    }
    std::printf("model      %s (%s, %lld parameters, %.1f MB)\n", info.path.c_str(),
                info.refine_config.input_width > 0 ? "two passes" : "one pass", info.parameters, model_mb);
    std::printf("image      %s, %dx%d, %zu timed runs, %d threads\n",
                a.image.empty() ? "synthetic scan" : a.image.c_str(), frame0.cols, frame0.rows, total.size(), a.threads);
    std::printf("%-22s %10s %10s\n", "stage", "median ms", "p90 ms");
    std::printf("%-22s %10.1f %10.1f\n", "decode (PNG on disk)", sd.median, sd.p90);
    std::printf("%-22s %10.1f %10.1f\n", "network", sn.median, sn.p90);
    std::printf("%-22s %10.1f %10.1f\n", "boundary", sp.median, sp.p90);
    std::printf("%-22s %10.1f %10.1f\n", "ellipse fit", sf.median, sf.p90);
    std::printf("%-22s %10.1f %10.1f\n", "total (file -> HC)", st.median, st.p90);
    std::printf("images/s   %.1f (1000 / median total)\n", per_s);
    if (a.video_frames > 0)
        std::printf("video      %.1f frames/s over a %d-frame cine loop (%d frames ok; tracking, whole-image pass every %d; %s)\n",
                    video_fps, a.video_frames, video_ok, fetalhc::VideoOptions{}.redetect_every,
                    a.workers == 0 ? "one worker per core" : (std::to_string(a.workers) + " workers").c_str());
    return failed ? 1 : 0;
}

}  // namespace fetalhc_cli
