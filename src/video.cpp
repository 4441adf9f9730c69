// HC over video frames: decode, measure (tracking between whole-image passes), summarise.
#include "fetalhc/video.h"

#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"

#include <opencv2/videoio.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

namespace fetalhc {

bool has_video_extension(const std::string& path) {
    std::string ext = std::filesystem::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (const char* v : {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm"})
        if (ext == v) return true;
    return false;
}

namespace {

double quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const double pos = q * (v.size() - 1);
    const size_t i = size_t(pos);
    return i + 1 < v.size() ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[i];
}

}  // namespace

Expected<VideoSummary> measure_video(const Measurer& measurer, const std::string& path, const VideoOptions& opt,
                                     const std::function<void(const VideoFrame&)>& on_frame) {
    if (auto e = check_pixel_size(opt.measure.pixel_size_mm, "'" + path + "'"); !e.empty()) return make_error(e);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
        return make_error("video '" + path + "' does not exist or is not a file; check the path");
    const auto t0 = std::chrono::steady_clock::now();
    cv::VideoCapture cap;
    try {
        cap.open(path, cv::CAP_ANY);
    } catch (const cv::Exception&) {
    }
    if (!cap.isOpened())
        return make_error("cannot read video '" + path + "': not a video OpenCV can decode (try MP4 or AVI)");
    const double fps = cap.get(cv::CAP_PROP_FPS);

    VideoSummary s;
    s.source = path;
    std::vector<Measurement> ok;
    std::vector<int> ok_index;
    Ellipse prior;
    bool have_prior = false;
    int since_detect = 0;
    cv::Mat frame;
    for (int i = 0; opt.max_frames <= 0 || i < opt.max_frames; ++i) {
        bool got = false;
        try {
            got = cap.read(frame);
        } catch (const cv::Exception&) {
            got = false;
        }
        if (!got || frame.empty()) break;
        VideoFrame f;
        f.index = i;
        const double pos_ms = cap.get(cv::CAP_PROP_POS_MSEC);
        f.time_s = pos_ms > 0 ? pos_ms / 1000 : fps > 0 ? i / fps : 0;
        const std::string label = path + "#" + std::to_string(i);
        auto gray = to_gray8(frame, label);
        if (!gray) {
            f.result = make_error(gray.error());
        } else {
            f.tracked = have_prior && since_detect < opt.redetect_every;
            f.result = f.tracked ? measurer.measure_near(*gray, opt.measure, prior, label) : measurer.measure(*gray, opt.measure, label);
            if (f.tracked && (!f.result || f.result->quality != "ok")) {
                // Lost the head: fall back to the whole-image pass on this frame.
                f.tracked = false;
                f.result = measurer.measure(*gray, opt.measure, label);
            }
            since_detect = f.tracked ? since_detect + 1 : 1;
        }
        ++s.frames;
        if (f.result) {
            ++s.measured;
            have_prior = f.result->quality == "ok";
            prior = f.result->ellipse_px;
            if (f.result->quality == "ok") ok.push_back(*f.result), ok_index.push_back(i);
        } else {
            have_prior = false;
        }
        if (on_frame) on_frame(f);
    }
    if (s.frames == 0) return make_error("video '" + path + "' has no readable frames; check that the file is complete");
    s.ok = int(ok.size());
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.frames_per_second = s.seconds > 0 ? s.frames / s.seconds : 0;
    if (!ok.empty()) {
        std::vector<double> hc, bpd, ofd;
        for (const auto& m : ok) hc.push_back(m.hc_mm), bpd.push_back(m.bpd_mm), ofd.push_back(m.ofd_mm);
        s.has_estimate = true;
        s.hc_median_mm = quantile(hc, 0.5);
        s.bpd_median_mm = quantile(bpd, 0.5);
        s.ofd_median_mm = quantile(ofd, 0.5);
        s.hc_iqr_mm = quantile(hc, 0.75) - quantile(hc, 0.25);
        size_t best = 0;
        for (size_t k = 1; k < ok.size(); ++k)
            if (std::abs(ok[k].hc_mm - s.hc_median_mm) < std::abs(ok[best].hc_mm - s.hc_median_mm)) best = k;
        s.estimate = ok[best];
        s.estimate_frame = ok_index[best];
    }
    return s;
}

}  // namespace fetalhc
