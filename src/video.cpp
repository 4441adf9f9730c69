// HC over video frames: decode, measure (tracking between whole-image passes), summarise.
#include "fetalhc/video.h"

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
#include <cstdio>
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

// The frames handed out and not yet collected, in frame order, and the tracking state they feed:
// the last frame's ellipse, whether it can be tracked from, and the good measurements so far.
struct FrameTracker {
    VideoSummary& s;
    const std::function<void(const VideoFrame&)>& on_frame;
    std::vector<Measurement> ok;
    std::vector<int> ok_index;
    Ellipse prior;
    bool have_prior = false;
    int since_detect = 0;  // frames handed out since the last whole-image pass
    std::deque<std::pair<std::shared_ptr<FrameJob>, std::future<void>>> in_flight;

    FrameTracker(VideoSummary& summary, const std::function<void(const VideoFrame&)>& callback)
        : s(summary), on_frame(callback) {}

    // Decides whether the job tracks from the last ellipse or runs the whole-image pass.
    void plan(FrameJob& job, int redetect_every) {
        job.track = have_prior && since_detect < redetect_every;
        job.prior = prior;
        since_detect = job.track ? since_detect + 1 : 1;
    }

    // Takes the oldest frame in flight (frame order), waits for it and updates the tracking state.
    void collect() {
        auto [job, done] = std::move(in_flight.front());
        in_flight.pop_front();
        if (done.valid()) done.get();
        VideoFrame& f = job->f;
        if (job->track && !f.tracked) since_detect = std::min(since_detect, 1 + int(in_flight.size()));
        ++s.frames;
        if (f.result) {
            ++s.measured;
            have_prior = f.result->quality == "ok";
            prior = f.result->ellipse_px;
            if (f.result->quality == "ok") ok.push_back(*f.result), ok_index.push_back(f.index);
        } else {
            have_prior = false;
        }
        if (on_frame) on_frame(f);
    }
};

// Takes up to opt.max_frames frames from `next` and measures them on `workers` threads (inline
// when 1), collecting every frame into the tracker in frame order.
void run_frames(const Measurer& measurer, const std::string& path, const VideoOptions& opt, const FrameSource& next,
                int workers, FrameTracker& tracker) {
    std::optional<WorkerPool> pool;
    if (workers > 1) pool.emplace(workers);
    for (int i = 0; opt.max_frames <= 0 || i < opt.max_frames; ++i) {
        auto job = std::make_shared<FrameJob>();
        double time_s = 0;
        if (!next(job->frame, time_s)) break;
        while (int(tracker.in_flight.size()) >= workers) tracker.collect();
        job->f.index = i;
        job->f.time_s = time_s;
        tracker.plan(*job, opt.redetect_every);
        if (pool) {
            tracker.in_flight.emplace_back(
                job, pool->submit([&measurer, &opt, &path, job] { measure_frame(measurer, opt.measure, path, *job); }));
        } else {
            measure_frame(measurer, opt.measure, path, *job);
            tracker.in_flight.emplace_back(job, std::future<void>());
        }
    }
    while (!tracker.in_flight.empty()) tracker.collect();
}

// The video's estimate from its good frames: median HC, BPD and OFD, the HC IQR, and the frame
// whose HC is closest to the median.
void summarise_good_frames(const std::vector<Measurement>& ok, const std::vector<int>& ok_index, VideoSummary& s) {
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
    FrameTracker tracker(s, on_frame);
    run_frames(measurer, label, opt, next, workers, tracker);
    if (s.frames == 0) return make_error("video '" + label + "' has no readable frames; check that the file is complete");
    s.ok = int(tracker.ok.size());
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.frames_per_second = s.seconds > 0 ? s.frames / s.seconds : 0;
    if (!tracker.ok.empty()) summarise_good_frames(tracker.ok, tracker.ok_index, s);
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

}  // namespace fetalhc
