#include "service.h"

#include "request_fields.h"

#include "fetalhc/image_io.h"
#include "fetalhc/report.h"

#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <thread>

namespace fetalhc::server {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

// ---- Slots ------------------------------------------------------------------------------------

double estimated_wait_ms(int in_use, int waiting, int slots, double service_ms, double deviation_ms) {
    slots = std::max(1, slots);
    if (in_use < slots && waiting == 0) return 0;
    const double k = double(std::max(0, waiting) + 1);
    return (k * std::max(0.0, service_ms) + 2 * std::sqrt(k) * std::max(0.0, deviation_ms)) / double(slots);
}

// One request in the queue; lives on the waiting thread's stack, reached through queue_.
struct Slots::Waiter {
    std::condition_variable cv;
    bool granted = false;
};

Slots::Slots(int n, double max_wait_ms) : total_(std::max(1, n)), max_wait_ms_(std::max(0.0, max_wait_ms)) {}

void Slots::acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    if (in_use_ < total_ && queue_.empty()) {
        ++in_use_;
        return;
    }
    Waiter w;
    queue_.push_back(&w);
    w.cv.wait(lock, [&] { return w.granted; });
}

Admission Slots::acquire_within() {
    const auto t0 = Clock::now();
    Admission a;
    std::unique_lock<std::mutex> lock(mu_);
    if (in_use_ < total_ && queue_.empty()) {
        ++in_use_;
        a.admitted = true;
        return a;
    }
    a.estimated_wait_ms = estimated_wait_ms(in_use_, int(queue_.size()), total_, service_ms_, deviation_ms_);
    if (max_wait_ms_ > 0 && a.estimated_wait_ms > max_wait_ms_) {
        ++shed_;
        a.retry_after_s = retry_after_locked();
        return a;
    }
    Waiter w;
    queue_.push_back(&w);
    if (max_wait_ms_ > 0) {
        const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(max_wait_ms_));
        w.cv.wait_until(lock, deadline, [&] { return w.granted; });
    } else {
        w.cv.wait(lock, [&] { return w.granted; });
    }
    a.waited_ms = ms_since(t0);
    if (w.granted) {
        a.admitted = true;
        return a;
    }
    // Waited the whole limit: leave the queue (the slot goes to the next one when it comes).
    queue_.erase(std::find(queue_.begin(), queue_.end(), &w));
    ++shed_;
    a.retry_after_s = retry_after_locked();
    return a;
}

// The slot of the caller goes to the oldest waiter, or back to the pool. Notified under the lock:
// the waiter's condition variable lives on its stack, which it may leave as soon as it sees `granted`.
void Slots::hand_over_locked() {
    if (queue_.empty()) {
        in_use_ = std::max(0, in_use_ - 1);
        return;
    }
    Waiter* next = queue_.front();
    queue_.pop_front();
    next->granted = true;
    next->cv.notify_one();
}

void Slots::release() {
    std::lock_guard<std::mutex> lock(mu_);
    hand_over_locked();
}

void Slots::release(double held_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    hand_over_locked();
    record_locked(held_ms);
}

void Slots::record_service_ms(double held_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    record_locked(held_ms);
}

void Slots::record_locked(double held_ms) {
    if (!(held_ms >= 0) || !std::isfinite(held_ms)) return;
    // Weights of the newest sample (those of TCP's round-trip estimate): the mean follows a change
    // within ~16 requests, the deviation a little faster.
    constexpr double kMeanWeight = 0.125, kDeviationWeight = 0.25;
    if (!have_estimate_) {
        service_ms_ = held_ms;
        deviation_ms_ = held_ms / 2;
        have_estimate_ = true;
        return;
    }
    deviation_ms_ = (1 - kDeviationWeight) * deviation_ms_ + kDeviationWeight * std::abs(held_ms - service_ms_);
    service_ms_ = (1 - kMeanWeight) * service_ms_ + kMeanWeight * held_ms;
}

// Seconds until the requests now in service and waiting should have gone through (at least 1).
int Slots::retry_after_locked() const {
    const double drain_ms = double(in_use_ + int(queue_.size())) * service_ms_ / double(total_);
    return std::max(1, int(std::ceil(drain_ms / 1000)));
}

int Slots::in_use() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_use_;
}

int Slots::waiting() const {
    std::lock_guard<std::mutex> lock(mu_);
    return int(queue_.size());
}

double Slots::service_ms() const {
    std::lock_guard<std::mutex> lock(mu_);
    return service_ms_;
}

double Slots::deviation_ms() const {
    std::lock_guard<std::mutex> lock(mu_);
    return deviation_ms_;
}

unsigned long long Slots::shed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return shed_;
}

void Slots::set_max_wait_ms(double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    max_wait_ms_ = std::max(0.0, ms);
}

SlotsSnapshot Slots::snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {total_, in_use_, int(queue_.size()), shed_, service_ms_, deviation_ms_, max_wait_ms_};
}

SlotGuard::SlotGuard(Slots& s, Admission& admission) : slots_(s) {
    admission = slots_.acquire_within();
    held_ = timed_ = admission.admitted;
    since_ = Clock::now();
}

SlotGuard::~SlotGuard() {
    if (!held_) return;
    if (timed_) slots_.release(ms_since(since_));
    else slots_.release();
}

ApiError overloaded_error(const Admission& a, const Slots& slots) {
    const SlotsSnapshot s = slots.snapshot();
    char why[160];
    if (a.waited_ms > 0)
        std::snprintf(why, sizeof why, "waited %.0f ms for one of the %d network slots without getting one", a.waited_ms, s.total);
    else
        std::snprintf(why, sizeof why, "the %d network slots are busy and the queue ahead would take about %.0f ms", s.total,
                      a.estimated_wait_ms);
    return ApiError{ErrorCode::Overloaded,
                    std::string("the server is overloaded: ") + why + ", over its limit of " + std::to_string(int(s.max_wait_ms)) +
                        " ms (serve --max-queue-ms); the request was not run, retry in " + std::to_string(std::max(1, a.retry_after_s)) +
                        " s",
                    std::max(1, a.retry_after_s)};
}

// ---- Engine -----------------------------------------------------------------------------------

Engine::Engine(int slots, double max_queue_ms) : slots_(slots, max_queue_ms), decode_slots_(slots) {}

void Engine::load(const std::string& model_path, int torch_threads, bool mirror_average) {
    const auto t0 = Clock::now();
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    const int threads = torch_threads > 0 ? torch_threads : std::max(1, hw / slots_.total());
    auto seg = Segmenter::load(model_path, {threads, mirror_average});
    std::shared_ptr<const Measurer> measurer;
    if (seg) {
        measurer = std::make_shared<const Measurer>(*seg);
        // One measurement of a synthetic scan before saying ready: the first inference sets up the
        // kernels (seconds on a cold machine), and a replica that says ready must not spend its
        // first requests' queue time on that (they would be shed).
        MeasureOptions warm;
        warm.pixel_size_mm = 0.15;
        cv::Mat ring(540, 800, CV_8UC1, cv::Scalar(40));  // a skull-like ring: both passes run
        cv::ellipse(ring, {400, 270}, {170, 130}, 20, 0, 360, cv::Scalar(220), 10);
        (void)measurer->measure(ring, warm);
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (seg) {
            measurer_ = std::move(measurer);
            state_ = State::Ready;
        } else {
            error_ = seg.error();
            state_ = State::Failed;
        }
    }
    cv_.notify_all();
    if (seg)
        spdlog::info("model loaded in {:.1f} s ({} requests at once, {} LibTorch threads each{})", ms_since(t0) / 1000,
                     slots_.total(), threads, mirror_average ? ", mirror averaging on" : "");
    else
        spdlog::error("{}", seg.error());
}

Engine::State Engine::state() const {
    std::lock_guard<std::mutex> lock(mu_);
    return state_;
}

std::string Engine::load_error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
}

bool Engine::wait_ready(double timeout_s) const {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return state_ != State::Loading; });
    return state_ == State::Ready;
}

Result<std::shared_ptr<const Measurer>> Engine::measurer() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::Loading)
        return ApiError{ErrorCode::ModelLoading, "the model is still loading; retry in a few seconds (GET /health says when ready)"};
    if (state_ == State::Failed) return ApiError{ErrorCode::ModelUnavailable, "the model could not be loaded: " + error_};
    return measurer_;
}

// ---- measure and store ------------------------------------------------------------------------

namespace {
// A put_image failure: the quota (507 store_full, message shown) or a storage failure (500).
ApiError store_error(const std::string& message) {
    if (message.rfind(kStoreFullError, 0) == 0) return ApiError{ErrorCode::StoreFull, message};
    return ApiError{ErrorCode::StorageFailed, message};
}
}  // namespace

Result<cv::Mat> decode_image(Slots& decode_slots, const std::string& bytes, const std::string& name) {
    SlotGuard slot(decode_slots);
    auto img = decode_grayscale(std::vector<unsigned char>(bytes.begin(), bytes.end()), name);
    if (!img) return ApiError{ErrorCode::ImageUnreadable, img.error()};
    return *img;
}

Result<StoredMeasurement> measure_and_store(Engine& engine, Store& store, const std::string& image_bytes,
                                            const std::string& name, const MeasureOptions& options) {
    if (auto p = pixel_size_problem(options.pixel_size_mm, "pixel_size_mm")) return *p;
    if (options.ga_weeks)
        if (auto p = ga_problem(*options.ga_weeks, "ga_weeks")) return *p;
    StoredMeasurement out;
    Expected<Measurement> m = make_error("");
    double decode_ms = 0;
    {
        // The slot first: a request refused for overload costs no decode, and the decode runs on
        // the slot's core like the network does.
        Admission admission;
        SlotGuard slot(engine.slots(), admission);
        if (!admission.admitted) return overloaded_error(admission, engine.slots());
        out.queue_ms = admission.waited_ms;
        const auto t0 = Clock::now();
        auto gray = decode_image(engine.decode_slots(), image_bytes, name);
        if (!gray) return gray.error();
        decode_ms = ms_since(t0);
        auto model = engine.measurer();
        if (!model) return model.error();
        m = (*model)->measure(*gray, options, name);
    }
    if (!m) return ApiError{ErrorCode::NoHeadFound, m.error()};
    out.measurement = std::move(*m);
    out.measurement.timings.decode_ms = decode_ms;
    out.measurement.timings.total_ms += decode_ms;
    auto sha = store.put_image(image_bytes);
    if (!sha) return store_error(sha.error());
    out.image_sha256 = *sha;
    return out;
}

// ---- DICOM ------------------------------------------------------------------------------------

std::vector<int> frames_to_measure(int frames, int max_frames) {
    std::vector<int> pick;
    if (max_frames <= 0 || frames <= max_frames) {
        for (int k = 0; k < frames; ++k) pick.push_back(k);
        return pick;
    }
    for (int k = 0; k < max_frames; ++k)
        pick.push_back(max_frames == 1 ? 0 : int(std::lround(double(k) * (frames - 1) / (max_frames - 1))));
    return pick;
}

namespace {

void rename_override(DicomCalibration& c) {
    if (c.source == "--pixel-size") c.source = "pixel_size_mm";
}

void rename_override(std::vector<std::string>& notes) {
    for (auto& n : notes)
        for (size_t at; (at = n.find("--pixel-size")) != std::string::npos;) n.replace(at, 12, "pixel_size_mm");
}

// The file's own calibration cannot be used and none was given: say so with its own code (the
// ambiguous dual-view case is left to measure_dicom_frame, which picks the region by the head).
std::optional<ApiError> calibration_problem(const DicomHeader& h) {
    int tissue = 0;
    for (const auto& r : h.regions) tissue += r.is_tissue_2d_cm() ? 1 : 0;
    if (tissue > 1) return std::nullopt;
    std::vector<std::string> notes;
    auto c = calibration_for_frames(h, std::nullopt, notes);
    if (c) return std::nullopt;
    std::vector<std::string> message{c.error()};
    rename_override(message);
    return ApiError{ErrorCode::InvalidCalibration, message.front()};
}

// The network slot for a DICOM measurement, unless the caller already holds one (an HTTP upload
// admitted before its decode).
void take_network_slot(std::optional<SlotGuard>& slot, Engine& engine, bool held, double& queue_ms) {
    if (held) return;
    const auto tq = Clock::now();
    slot.emplace(engine.slots());
    queue_ms = ms_since(tq);
}

// A cine, decoded frame by frame as the measurement asks for the next one (one decoded frame held
// at a time, however long the cine). `first`: frame 0, already decoded (every pick starts there).
Result<DicomMeasured> measure_dicom_frames_on(const Measurer& measurer, Engine& engine, DicomMeasured out,
                                              DicomFrameReader& reader, cv::Mat first, const std::string& name,
                                              const DicomMeasureRequest& request, bool slot_held) {
    const std::vector<int> pick = frames_to_measure(out.header.frames, request.max_frames);
    if (int(pick.size()) < out.header.frames)
        out.warnings.push_back("the cine has " + std::to_string(out.header.frames) + " frames; " + std::to_string(pick.size()) +
                               " evenly spaced frames were measured (this server measures at most " +
                               std::to_string(request.max_frames) + " frames of a file)");
    auto cal = calibration_for_frames(out.header, request.pixel_size_mm, out.warnings);
    rename_override(out.warnings);
    if (!cal) return ApiError{ErrorCode::InvalidCalibration, "'" + name + "': " + cal.error()};
    out.calibration = *cal;
    rename_override(out.calibration);
    VideoOptions vo;
    vo.measure.pixel_size_mm = cal->mm_per_px_x;
    if (cal->anisotropic()) vo.measure.pixel_size_y_mm = cal->mm_per_px_y;
    vo.measure.ga_weeks = request.ga_weeks;
    vo.workers = 1;  // one network slot per request, as for a still image
    size_t k = 0;
    const double frame_time_s = out.header.frame_time_ms / 1000;
    std::string decode_error;
    const FrameSource next = [&](cv::Mat& frame, double& time_s) {
        if (k >= pick.size() || !decode_error.empty()) return false;
        if (k == 0) {
            frame = std::move(first);  // measure_dicom_cine masks it to the region
        } else if (auto f = reader.frame(pick[k])) {
            frame = std::move(*f);
        } else {
            decode_error = f.error();
            return false;
        }
        time_s = frame_time_s * double(pick[k]);
        ++k;
        return true;
    };
    Expected<VideoSummary> s = make_error("");
    {
        std::optional<SlotGuard> slot;
        take_network_slot(slot, engine, slot_held, out.queue_ms);
        // The CLI's path too: each frame masked to its region, a head leaving the region is that
        // frame's error (with the file's own calibration).
        s = measure_dicom_cine(measurer, out.header, *cal, name, next, vo, [&](const VideoFrame& f) {
            out.frames.push_back(f);
            out.frames.back().index = pick[size_t(f.index)];  // the frame's number in the file
        });
    }
    if (!decode_error.empty()) return ApiError{ErrorCode::ImageUnreadable, decode_error};
    if (!s) return ApiError{ErrorCode::NoHeadFound, s.error()};
    if (s->estimate_frame >= 0 && s->estimate_frame < int(pick.size())) s->estimate_frame = pick[size_t(s->estimate_frame)];
    if (!s->has_estimate)
        return ApiError{ErrorCode::NoHeadFound, "no frame of '" + name + "' gave an ok measurement (" + std::to_string(s->measured) +
                                                    " of " + std::to_string(s->frames) + " frames measured)"};
    out.measurement = s->estimate;  // the summary's figures are the medians over the ok frames
    out.measurement.hc_mm = s->hc_median_mm;
    out.measurement.bpd_mm = s->bpd_median_mm;
    out.measurement.ofd_mm = s->ofd_median_mm;
    out.summary = std::move(*s);
    return out;
}

}  // namespace

Result<DicomMeasured> measure_dicom(Engine& engine, const std::string& bytes, const std::string& name,
                                    const DicomMeasureRequest& request) {
    if (request.pixel_size_mm)
        if (auto p = pixel_size_problem(*request.pixel_size_mm, "pixel_size_mm")) return *p;
    if (request.ga_weeks)
        if (auto p = ga_problem(*request.ga_weeks, "ga_weeks")) return *p;
    std::optional<SlotGuard> admitted;
    double admission_wait_ms = 0;
    if (request.shed_when_busy) {
        Admission admission;
        admitted.emplace(engine.slots(), admission);
        if (!admission.admitted) return overloaded_error(admission, engine.slots());
        admission_wait_ms = admission.waited_ms;
    }
    const bool slot_held = admitted.has_value();
    const auto t0 = Clock::now();
    std::optional<SlotGuard> decode_slot(std::in_place, engine.decode_slots());
    auto reader = DicomFrameReader::open(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), name);
    if (!reader) return ApiError{ErrorCode::ImageUnreadable, reader.error()};
    const DicomHeader& h = (*reader)->header();
    if (!request.pixel_size_mm)
        if (auto p = calibration_problem(h)) return *p;
    // A still image is decoded here; a cine frame by frame while it is measured.
    auto first = (*reader)->frame(0);
    decode_slot.reset();
    if (!first) return ApiError{ErrorCode::ImageUnreadable, first.error()};
    const double decode_ms = ms_since(t0);
    auto model = engine.measurer();
    if (!model) return model.error();

    DicomMeasured out;
    out.header = h;
    out.queue_ms = admission_wait_ms;
    if (h.frames > 1) return measure_dicom_frames_on(**model, engine, std::move(out), **reader, std::move(*first), name, request, slot_held);
    DicomMeasureOptions o;
    o.measure.ga_weeks = request.ga_weeks;
    o.pixel_size_mm = request.pixel_size_mm;
    Expected<DicomMeasurement> m = make_error("");
    {
        std::optional<SlotGuard> slot;
        take_network_slot(slot, engine, slot_held, out.queue_ms);
        m = measure_dicom_frame(**model, out.header, *first, o, name);
    }
    if (!m) return ApiError{ErrorCode::NoHeadFound, m.error()};
    out.measurement = std::move(m->m);
    out.measurement.timings.decode_ms = decode_ms;
    out.measurement.timings.total_ms += decode_ms;
    out.calibration = std::move(m->calibration);
    rename_override(out.calibration);
    out.warnings = std::move(m->notes);
    rename_override(out.warnings);
    return out;
}

Result<StoredDicomMeasurement> measure_dicom_and_store(Engine& engine, Store& store, const std::string& bytes,
                                                       const std::string& name, const DicomMeasureRequest& request) {
    auto r = measure_dicom(engine, bytes, name, request);
    if (!r) return r.error();
    auto sha = store.put_image(bytes);
    if (!sha) return store_error(sha.error());
    return StoredDicomMeasurement{std::move(*r), *sha};
}

Result<std::vector<unsigned char>> dicom_result_sr(const DicomMeasured& r) {
    SrOptions o;
    if (r.summary) o.include_outline = false;
    auto sr = write_biometry_sr(r.measurement, &r.header, o);
    if (!sr) return ApiError{ErrorCode::Internal, sr.error()};
    return *sr;
}

}  // namespace fetalhc::server
