// `fetalhc bench`: median ms per image and frames/s of the whole pipeline on the machine at hand.
#include "cli.h"

#include "fetalhc/fetalhc.h"
#include "synthetic_scan.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;

namespace fetalhc_cli {
namespace {

constexpr int kWarmupRuns = 3;

struct BenchArgs {
    std::string image;          // PNG/JPEG on disk; empty = a synthetic 800x540 scan (fixed seed)
    std::string model;
    std::string ensemble;       // k-fold run folder: time the ensemble instead of --model
    double pixel_size = 0.15;   // mm per pixel (scales the numbers; an HC under 100 mm also gets the second look)
    int threads = 2;
    bool mirror = false;        // --mirror: time the second pass with its mirrored copy
    bool int8 = false;          // --int8: both networks in 8 bits
    bool single_look = false;   // --single-look: no targeted second opinion
    std::string head_check;     // --head-check: "" (beside the model), "none" or a file
    int runs = 30;              // timed end-to-end runs (after the warm-up runs)
    int video_frames = 60;      // frames of the synthetic cine loop (0 = skip the video part)
    int workers = 0;            // video: frames measured at once (0 = one per core)
    bool json = false;
};

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

// Milliseconds of each timed run, per stage.
struct StageTimes {
    std::vector<double> decode, network, post, fit, total;
    int failed = 0;
};

struct VideoTiming {
    double frames_per_s = 0;
    int ok = 0;
};

// Whole path, file on disk -> HC, as `fetalhc measure` runs it.
StageTimes time_whole_path(const fetalhc::Measurer& measurer, const std::string& image,
                           const fetalhc::MeasureOptions& opt, int runs) {
    StageTimes t;
    for (int i = 0; i < runs + kWarmupRuns; ++i) {
        auto r = measurer.measure_file(image, opt);
        if (!r) {
            ++t.failed;
            continue;
        }
        if (i < kWarmupRuns) continue;
        t.decode.push_back(r->timings.decode_ms);
        t.network.push_back(r->timings.network_ms);
        t.post.push_back(r->timings.postprocess_ms);
        t.fit.push_back(r->timings.fit_ms);
        t.total.push_back(r->timings.total_ms);
    }
    return t;
}

// Cine loop: the same scan drifting a few pixels per frame, written as Motion-JPEG AVI and
// measured through measure_video (decoding, tracking and the summary included).
fetalhc::Expected<VideoTiming> time_video(const fetalhc::Measurer& measurer, const cv::Mat& frame0,
                                          const fetalhc::MeasureOptions& opt, const BenchArgs& a, const fs::path& dir) {
    const fs::path avi = dir / "cine.avi";
    cv::VideoWriter w(avi.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 25, frame0.size(), false);
    if (!w.isOpened()) return fetalhc::make_error(fetalhc::ErrorKind::Io, "cannot write the cine loop '" + avi.string() + "'");
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
    if (!s) return s.error_value();
    return VideoTiming{s->frames_per_second, s->ok};
}

void print_json(const BenchArgs& a, const fetalhc::ModelInfo& info, const cv::Mat& frame0, const StageTimes& t,
                const VideoTiming& video) {
    std::error_code ec;
    const double model_mb = double(fs::file_size(info.path, ec)) / 1e6;
    const Stats sd = stats(t.decode), sn = stats(t.network), sp = stats(t.post), sf = stats(t.fit), st = stats(t.total);
    nlohmann::json j{{"model", info.path},
                     {"model_mb", ec ? 0.0 : model_mb},
                     {"parameters", info.parameters},
                     {"two_pass", info.refine_config.input_width > 0},
                     {"threads", a.threads},
                     {"mirror_average", a.mirror},
                     {"int8", a.int8},
                     {"image", a.image.empty() ? "synthetic 800x540" : a.image},
                     {"image_width", frame0.cols},
                     {"image_height", frame0.rows},
                     {"runs", t.total.size()},
                     {"failed_runs", t.failed},
                     {"median_ms", {{"decode", sd.median}, {"network", sn.median}, {"boundary", sp.median},
                                    {"fit", sf.median}, {"total", st.median}}},
                     {"p90_ms", {{"decode", sd.p90}, {"network", sn.p90}, {"boundary", sp.p90}, {"fit", sf.p90},
                                 {"total", st.p90}}},
                     {"images_per_s", 1000.0 / st.median},
                     {"video_frames", a.video_frames},
                     {"video_workers", a.workers},
                     {"video_frames_ok", video.ok},
                     {"video_frames_per_s", video.frames_per_s}};
    std::printf("%s\n", j.dump(2).c_str());
}

void print_table(const BenchArgs& a, const fetalhc::ModelInfo& info, const cv::Mat& frame0, const StageTimes& t,
                 const VideoTiming& video) {
    std::error_code ec;
    const double model_mb = double(fs::file_size(info.path, ec)) / 1e6;
    const Stats sd = stats(t.decode), sn = stats(t.network), sp = stats(t.post), sf = stats(t.fit), st = stats(t.total);
    std::printf("model      %s (%s, %lld parameters, %.1f MB)\n", info.path.c_str(),
                info.refine_config.input_width > 0 ? "two passes" : "one pass", info.parameters, model_mb);
    std::printf("image      %s, %dx%d, %zu timed runs, %d threads\n", a.image.empty() ? "synthetic scan" : a.image.c_str(),
                frame0.cols, frame0.rows, t.total.size(), a.threads);
    std::printf("%-22s %10s %10s\n", "stage", "median ms", "p90 ms");
    std::printf("%-22s %10.1f %10.1f\n", "decode (PNG on disk)", sd.median, sd.p90);
    std::printf("%-22s %10.1f %10.1f\n", "network", sn.median, sn.p90);
    std::printf("%-22s %10.1f %10.1f\n", "boundary", sp.median, sp.p90);
    std::printf("%-22s %10.1f %10.1f\n", "ellipse fit", sf.median, sf.p90);
    std::printf("%-22s %10.1f %10.1f\n", "total (file -> HC)", st.median, st.p90);
    std::printf("images/s   %.1f (1000 / median total)\n", 1000.0 / st.median);
    if (a.video_frames > 0)
        std::printf("video      %.1f frames/s over a %d-frame cine loop (%d frames ok; tracking, whole-image pass every %d; %s)\n",
                    video.frames_per_s, a.video_frames, video.ok, fetalhc::VideoOptions{}.redetect_every,
                    a.workers == 0 ? "one worker per core" : (std::to_string(a.workers) + " workers").c_str());
}

int run_bench(BenchArgs a) {
    if (a.runs < 1 || a.video_frames < 0) {
        error("--runs must be >= 1 and --video-frames >= 0");
        return kExitUsage;
    }
    if (!bound_thread_count(a.threads, "--threads") || !bound_thread_count(a.workers, "--workers")) return kExitUsage;
    auto seg = load_segmenter(a.model, a.ensemble, {a.threads, a.mirror, a.int8});
    if (!seg) return kExitUsage;
    std::optional<fetalhc::HeadCheck> check;
    if (!load_head_check(a.head_check, a.model, check)) return kExitUsage;
    const fetalhc::Measurer measurer(*seg, std::move(check));
    fetalhc::MeasureOptions opt;
    opt.pixel_size_mm = a.pixel_size;
    opt.targeted_second_opinion = !a.single_look;

    TempDir tmp;
    std::string image = a.image;
    cv::Mat frame0;
    if (image.empty()) {
        frame0 = fetalhc_bench::synthetic_scan(800, 540);
        image = (tmp.path / "synthetic_800x540.png").string();
        if (!cv::imwrite(image, frame0)) return error("cannot write '" + image + "'"), kExitSomeFailed;
    } else {
        auto img = fetalhc::load_grayscale(image);
        if (!img) return error(cli_message(img.error_value())), kExitUsage;  // the image to bench is an option
        frame0 = *img;
    }
    const StageTimes times = time_whole_path(measurer, image, opt, a.runs);
    if (times.total.empty()) {
        error("no run measured '" + image + "' (no head found); bench an image with a head in view");
        return kExitSomeFailed;
    }
    VideoTiming video;
    if (a.video_frames > 0) {
        auto v = time_video(measurer, frame0, opt, a, tmp.path);
        if (!v) return fail(v.error_value());
        video = *v;
    }
    if (a.json) {
        print_json(a, seg->info(), frame0, times, video);
        return kExitOk;
    }
    print_table(a, seg->info(), frame0, times, video);
    return times.failed ? kExitSomeFailed : kExitOk;
}

}  // namespace

void add_bench_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<BenchArgs>();
    auto* cmd = app.add_subcommand("bench", "median ms per image (file on disk -> HC) per stage, images/s and video frames/s here");
    cmd->add_option("image", a->image, "image to time (PNG, JPEG, ...); default: a synthetic 800x540 scan");
    cmd->add_option("--threads", a->threads, "CPU threads for the network (0 = all cores; at most the core count)")
        ->capture_default_str();
    add_mirror_flag(cmd, a->mirror);
    add_int8_flag(cmd, a->int8);
    add_single_look_flag(cmd, a->single_look);
    add_head_check_option(cmd, a->head_check);
    cmd->add_option("--runs", a->runs, "timed end-to-end runs, after 3 warm-up runs")->capture_default_str();
    cmd->add_option("--video-frames", a->video_frames, "frames of the synthetic cine loop (0 = skip)")->capture_default_str();
    cmd->add_option("--workers", a->workers, "video: frames measured at once (0 = one per core; at most the core count)")
        ->capture_default_str();
    add_ensemble_option(cmd, a->ensemble)->excludes(add_model_option(cmd, a->model));
    cmd->add_flag("--json", a->json, "print JSON");
    commands.push_back({cmd, [a] { return run_bench(*a); }});
}

}  // namespace fetalhc_cli
