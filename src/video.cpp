// HC over video frames: decode, measure (tracking between whole-image passes), summarise.
#include "fetalhc/video.h"

#include "review.h"
#include "video_detail.h"

#include "fetalhc/growth.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "fetalhc/metrics.h"

#include <nlohmann/json.hpp>
#include <opencv2/videoio.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace fetalhc {

bool has_video_extension(const std::string& path) {
    std::string ext = std::filesystem::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (const char* v : {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm"})
        if (ext == v) return true;
    return false;
}

namespace {

// One decoded frame and the decision taken when it was handed out: track from `prior` or not.
struct FrameJob {
    VideoFrame f;
    cv::Mat frame;
    int position = 0;  // 0-based position in the sequence (f.index may be the source's own number)
    bool track = false;
    Ellipse prior;
};

void measure_frame(const Measurer& measurer, const MeasureOptions& mo, const std::string& path, FrameJob& job) {
    const std::string label = path + "#" + std::to_string(job.f.index);
    auto gray = to_gray8(job.frame, label);
    job.frame.release();
    if (!gray) {
        job.f.result = gray.error_value();
        return;
    }
    job.f.tracked = job.track;
    job.f.result = job.track ? measurer.measure_near(*gray, mo, job.prior, label) : measurer.measure(*gray, mo, label);
    if (job.track && (!job.f.result || job.f.result->quality != "ok")) {
        // Lost the head: fall back to the whole-image pass on this frame.
        job.f.tracked = false;
        job.f.result = measurer.measure(*gray, mo, label);
    }
}

// A fixed set of threads running the tasks handed to them, first come first served.
class WorkerPool {
public:
    explicit WorkerPool(int n) {
        for (int i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
    }
    ~WorkerPool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }
    std::future<void> submit(std::function<void()> fn) {
        std::packaged_task<void()> task(std::move(fn));
        auto done = task.get_future();
        {
            std::lock_guard<std::mutex> lock(mu_);
            queue_.push_back(std::move(task));
        }
        cv_.notify_one();
        return done;
    }

private:
    void loop() {
        for (;;) {
            std::packaged_task<void()> task;
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
                if (queue_.empty()) return;
                task = std::move(queue_.front());
                queue_.pop_front();
            }
            task();
        }
    }
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::packaged_task<void()>> queue_;
    bool stop_ = false;
    std::vector<std::thread> threads_;
};

// Opens the video for decoding; an error message naming the file, or empty on success.
std::string open_capture(const std::string& path, cv::VideoCapture& cap) {
    try {
        cap.open(path, cv::CAP_ANY);
    } catch (const cv::Exception&) {
    }
    if (!cap.isOpened()) return "cannot read video '" + path + "': not a video OpenCV can decode (try MP4 or AVI)";
    return {};
}

// Decodes the next frame; false at the end of the video or on a decoding error.
bool read_frame(cv::VideoCapture& cap, cv::Mat& frame) {
    bool got = false;
    try {
        got = cap.read(frame);
    } catch (const cv::Exception&) {
        got = false;
    }
    return got && !frame.empty();
}

// Which frames are key frames (whole-image pass) and which are tracked, decided from the frame's
// position and its key frame's result only, so that the plan is the same for any worker count: a
// frame within `redetect_every` frames of the last key frame is tracked from that key frame's
// ellipse when it was judged ok; any other frame is a key frame.
class KeyFramePlan {
public:
    explicit KeyFramePlan(int redetect_every) : every_(std::max(1, redetect_every)) {}

    // Decides for `job` (waiting for its key frame's result when it may be tracked).
    void plan(FrameJob& job) {
        job.track = false;
        if (!key_ || job.position - key_->position >= every_) return;
        if (key_done_.valid()) key_done_.wait();
        const auto& r = key_->f.result;
        if (r && r->quality == "ok") {
            job.track = true;
            job.prior = r->ellipse_px;
        }
    }
    // `job` was handed out; `done` is ready once it is measured.
    void handed_out(const std::shared_ptr<FrameJob>& job, const std::shared_future<void>& done) {
        if (job->track) return;
        key_ = job;
        key_done_ = done;
    }

private:
    int every_;
    std::shared_ptr<FrameJob> key_;  // the last key frame handed out
    std::shared_future<void> key_done_;
};

// The frames handed out and not yet collected, in frame order, and what the summary needs of the
// collected ones: the counters and the ok measurements.
struct FrameCollector {
    VideoSummary& s;
    const detail::FrameCheck& check;
    const std::function<void(const VideoFrame&)>& on_frame;
    std::vector<Measurement> ok;
    std::vector<int> ok_index;
    std::deque<std::pair<std::shared_ptr<FrameJob>, std::shared_future<void>>> in_flight;

    // Takes the oldest frame in flight (frame order), waits for it, checks and counts it.
    void collect() {
        auto [job, done] = std::move(in_flight.front());
        in_flight.pop_front();
        if (done.valid()) done.get();
        VideoFrame f = job->f;  // a copy: the check must not change what the plan reads
        if (check) check(f);
        ++s.frames;
        if (f.result) {
            ++s.measured;
            if (f.result->quality == "ok") ok.push_back(*f.result), ok_index.push_back(f.index);
        }
        if (on_frame) on_frame(f);
    }
};

// Takes up to opt.max_frames frames from `next` and measures them on `workers` threads (inline
// when 1), collecting every frame in frame order.
void run_frames(const Measurer& measurer, const std::string& path, const VideoOptions& opt, const FrameSource& next,
                int workers, FrameCollector& collector) {
    std::optional<WorkerPool> pool;
    if (workers > 1) pool.emplace(workers);
    KeyFramePlan plan(opt.redetect_every);
    for (int i = 0; opt.max_frames <= 0 || i < opt.max_frames; ++i) {
        auto job = std::make_shared<FrameJob>();
        SourceFrame in;
        in.number = i;
        if (!next(in)) break;
        while (int(collector.in_flight.size()) >= workers) collector.collect();
        job->frame = std::move(in.image);
        job->f.index = in.number;
        job->f.time_s = in.time_s;
        job->position = i;
        plan.plan(*job);
        std::shared_future<void> done;
        if (pool) {
            done = pool->submit([&measurer, &opt, &path, job] { measure_frame(measurer, opt.measure, path, *job); }).share();
        } else {
            measure_frame(measurer, opt.measure, path, *job);
        }
        plan.handed_out(job, done);
        collector.in_flight.emplace_back(job, done);
    }
    while (!collector.in_flight.empty()) collector.collect();
}

// The video's estimate from its ok frames (VideoSummary::estimate): the medians, the figures that
// follow from the median HC, the ellipse of the ok frame closest to it, the quality of the whole.
void summarise_ok_frames(const Measurer& measurer, const std::vector<Measurement>& ok, const std::vector<int>& ok_index,
                         const VideoOptions& opt, VideoSummary& s) {
    s.estimate = Measurement{};
    s.estimate.source = s.source + "#summary";
    if (ok.empty()) {
        review_summary(s.estimate, s, opt);
        return;
    }
    std::vector<double> hc, bpd, ofd;
    for (const auto& m : ok) hc.push_back(m.hc_mm), bpd.push_back(m.bpd_mm), ofd.push_back(m.ofd_mm);
    const double median_hc = quantile(hc, 0.5);
    s.has_estimate = true;
    s.hc_iqr_mm = quantile(hc, 0.75) - quantile(hc, 0.25);
    size_t best = 0;
    for (size_t k = 1; k < ok.size(); ++k)
        if (std::abs(ok[k].hc_mm - median_hc) < std::abs(ok[best].hc_mm - median_hc)) best = k;
    s.estimate_frame = ok_index[best];
    Measurement& m = s.estimate;
    m = ok[best];
    m.source = s.source + "#summary";
    m.hc_mm = median_hc;
    m.bpd_mm = quantile(bpd, 0.5);
    m.ofd_mm = quantile(ofd, 0.5);
    m.cephalic_index = m.ofd_mm > 0 ? 100 * m.bpd_mm / m.ofd_mm : 0;
    m.ga_hadlock = hadlock_ga(m.hc_mm);
    m.ga_intergrowth = intergrowth_ga(m.hc_mm);
    m.ga_weeks_given = opt.measure.ga_weeks;
    m.centile.reset();
    if (m.ga_weeks_given) m.centile = intergrowth_hc_centile(m.hc_mm, *m.ga_weeks_given);
    review_summary(m, s, opt);
    m.interval = measurer.interval_for(m.hc_mm, m.quality != "ok");
}

}  // namespace

namespace detail {

Expected<VideoSummary> measure_checked_frames(const Measurer& measurer, const std::string& label, const FrameSource& next,
                                              const VideoOptions& opt, const FrameCheck& check,
                                              const std::function<void(const VideoFrame&)>& on_frame) {
    if (auto e = check_pixel_size(opt.measure.pixel_size_mm, "'" + label + "'"); !e.empty())
        return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    const auto t0 = std::chrono::steady_clock::now();
    const int workers = opt.workers > 0 ? opt.workers : int(std::max(1u, std::thread::hardware_concurrency()));
    VideoSummary s;
    s.source = label;
    FrameCollector collector{s, check, on_frame, {}, {}, {}};
    run_frames(measurer, label, opt, next, workers, collector);
    if (s.frames == 0)
        return make_error(ErrorKind::ImageUnreadable, "video '" + label + "' has no readable frames; check that the file is complete");
    s.ok = int(collector.ok.size());
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.frames_per_second = s.seconds > 0 ? s.frames / s.seconds : 0;
    summarise_ok_frames(measurer, collector.ok, collector.ok_index, opt, s);
    return s;
}

}  // namespace detail

Expected<VideoSummary> measure_frames(const Measurer& measurer, const std::string& label, const FrameSource& next,
                                      const VideoOptions& opt, const std::function<void(const VideoFrame&)>& on_frame) {
    return detail::measure_checked_frames(measurer, label, next, opt, {}, on_frame);
}

Expected<VideoSummary> measure_video(const Measurer& measurer, const std::string& path, const VideoOptions& opt,
                                     const std::function<void(const VideoFrame&)>& on_frame) {
    if (auto e = check_pixel_size(opt.measure.pixel_size_mm, "'" + path + "'"); !e.empty())
        return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    // Before OpenCV opens it: a named pipe would block the open, a device would be read forever.
    if (auto e = regular_file_problem(path, "a video file"); !e.empty()) return make_error(ErrorKind::ImageUnreadable, e);
    const auto t0 = std::chrono::steady_clock::now();
    cv::VideoCapture cap;
    if (auto e = open_capture(path, cap); !e.empty()) return make_error(ErrorKind::ImageUnreadable, e);
    const double fps = cap.get(cv::CAP_PROP_FPS);
    int i = 0;
    const FrameSource next = [&](SourceFrame& frame) {
        if (!read_frame(cap, frame.image)) return false;
        const double pos_ms = cap.get(cv::CAP_PROP_POS_MSEC);
        frame.time_s = pos_ms > 0 ? pos_ms / 1000 : fps > 0 ? i / fps : 0;
        ++i;
        return true;
    };
    auto s = measure_frames(measurer, path, next, opt, on_frame);
    if (s) {  // the opening of the file counts in the wall time, as before
        s->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        s->frames_per_second = s->seconds > 0 ? s->frames / s->seconds : 0;
    }
    return s;
}

nlohmann::json to_json(const VideoFrame& f) {
    nlohmann::json j = f.result ? to_json(*f.result) : nlohmann::json{{"error", f.result.error()}};
    j["frame"] = f.index;
    j["time_s"] = f.time_s;
    j["tracked"] = f.tracked;
    return j;
}

void NotAHeadFrames::add(const VideoFrame& f) {
    if (f.result || f.result.error_value().kind != ErrorKind::NotAHeadPlane) return;
    if (++count == 1) first = f.result.error_value();
}

std::optional<Error> summary_without_estimate(const VideoSummary& s, const NotAHeadFrames& refused, const std::string& name) {
    if (s.has_estimate) return std::nullopt;
    if (refused.first && 2 * refused.count > s.frames)
        return make_error(ErrorKind::NotAHeadPlane, "'" + name + "': " + std::to_string(refused.count) + " of " +
                                                        std::to_string(s.frames) +
                                                        " frames are not a fetal head in the HC plane; " + refused.first->message);
    const auto& reasons = s.estimate.reasons;
    return make_error(ErrorKind::NoHeadFound, "'" + name + "': " + (reasons.empty() ? std::string("no frame judged ok") : reasons.front()));
}

nlohmann::json to_json(const VideoSummary& s) {
    nlohmann::json j{{"frames", s.frames},   {"measured", s.measured}, {"ok_frames", s.ok},
                     {"has_estimate", s.has_estimate}, {"seconds", s.seconds}, {"frames_per_second", s.frames_per_second}};
    if (s.has_estimate)
        j.update({{"hc_median_mm", s.estimate.hc_mm}, {"bpd_median_mm", s.estimate.bpd_mm}, {"ofd_median_mm", s.estimate.ofd_mm},
                  {"hc_iqr_mm", s.hc_iqr_mm}, {"estimate_frame", s.estimate_frame}, {"estimate", to_json(s.estimate)}});
    return j;
}

}  // namespace fetalhc
