// The work behind the transports, without HTTP: the network (loaded once, shared, run by a
// bounded number of requests at once) and "measure an image and keep it". The HTTP routes call
// these; a DICOM C-STORE node calls the same with the bytes and pixel spacing of a received
// object, and maps the ApiError codes (errors.h) to its own statuses.
//
//   Engine engine(/*slots=*/2);
//   std::thread([&] { engine.load("models/fetalhc_unet.pt", /*torch_threads=*/1); }).detach();
//   auto store = Store::open("fetalhc.db");
//   MeasureOptions o; o.pixel_size_mm = 0.13;
//   Result<StoredMeasurement> r = measure_and_store(engine, **store, png_bytes, "scan.png", o);
//   if (r) use(r->measurement, r->image_sha256); else report(r.error().code, r.error().message);
//
// Errors (ApiError codes): invalid_pixel_size, invalid_ga, image_unreadable, model_loading,
// model_unavailable, no_head_found, storage_failed, store_full, overloaded.
// Thread safety: every Engine member and measure_and_store may be called from many threads at
// once; at most `slots` of them run the network at the same time, the others wait their turn
// (first come, first served). Overload: measure_and_store waits for a network slot at most
// `max_queue_ms`; a request whose estimated wait (estimated_wait_ms: the queue ahead of it and a
// running average of the time a request holds a slot, with its spread) is longer is refused at
// once (overloaded, 503 with Retry-After), and one admitted that still waits past the limit is
// refused then, never served late. DICOM uploads and POST /v1/segment are admitted the same way
// (their slot taken before the decode); the DICOM node's workers take a slot from the same queue
// without a limit (the node bounds its own backlog: DicomNodeOptions::max_pending).
#pragma once

#include "errors.h"

#include "fetalhc/dicom.h"
#include "fetalhc/measure.h"
#include "fetalhc/store.h"
#include "fetalhc/video.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc::server {

// The wait a request arriving now should not exceed for a slot, in ms: 0 when one of the `slots`
// slots is free; else the request is served at the k-th release (k = waiting + 1), and with every
// slot busy k releases take about k service times over `slots` slots. Service times vary (the
// machine is shared): k of them sum to k * service_ms with a spread growing like sqrt(k), so the
// estimate adds two spreads, 2 * sqrt(k) * deviation_ms (deviation_ms: the mean absolute deviation
// of the service time; as TCP bounds a round trip by its mean plus deviations). Erring long sheds a
// little earlier; erring short admits requests that are then shed after waiting the whole limit.
double estimated_wait_ms(int in_use, int waiting, int slots, double service_ms, double deviation_ms = 0);

// What Slots::acquire_within decided for one request.
struct Admission {
    bool admitted = false;          // a slot is held (release it)
    double waited_ms = 0;           // time spent in the queue
    double estimated_wait_ms = 0;   // the estimate at arrival
    int retry_after_s = 0;          // refused: seconds until the queue ahead should have drained (>= 1)
};

// The slots' state for /metrics.
struct SlotsSnapshot {
    int total = 0, in_use = 0, waiting = 0;
    unsigned long long shed = 0;   // requests refused (at once or after waiting max_wait_ms)
    double service_ms = 0;         // running estimate of the time a request holds a slot (0: none yet)
    double deviation_ms = 0;       // running mean absolute deviation of that time
    double max_wait_ms = 0;        // 0 = no limit
};

// How many requests may run the network at once. Waiting requests are served first come, first
// served (a FIFO queue; a released slot is handed to the oldest waiter), so that under load no
// request waits much longer than the others. acquire() waits as long as it takes; acquire_within()
// waits at most max_wait_ms (see the file comment) and feeds the service-time estimate through
// release(held_ms).
class Slots {
public:
    // max_wait_ms: the bound of acquire_within; 0 = none (it waits as long as it takes).
    explicit Slots(int n, double max_wait_ms = 0);
    void acquire();
    // Refused at once when no slot is free and estimated_wait_ms(...) > max_wait_ms, or after
    // waiting max_wait_ms without getting a slot; both count as shed.
    Admission acquire_within();
    void release();
    // Also records `held_ms` in the service-time estimate (exponentially weighted moving averages of
    // the time and of its absolute deviation).
    void release(double held_ms);
    void record_service_ms(double held_ms);
    int in_use() const;
    int waiting() const;
    int total() const { return total_; }
    double service_ms() const;
    double deviation_ms() const;
    unsigned long long shed() const;
    void set_max_wait_ms(double ms);
    SlotsSnapshot snapshot() const;

private:
    struct Waiter;
    int retry_after_locked() const;
    void hand_over_locked();
    void record_locked(double held_ms);
    mutable std::mutex mu_;
    std::deque<Waiter*> queue_;   // waiting requests, oldest first (they live on their own stacks)
    int in_use_ = 0;              // invariant: queue_ is empty unless in_use_ == total_
    const int total_;
    double max_wait_ms_;
    double service_ms_ = 0, deviation_ms_ = 0;
    bool have_estimate_ = false;
    unsigned long long shed_ = 0;
};

// Holds a slot for its lifetime. SlotGuard(s) waits as long as it takes; SlotGuard(s, admission)
// waits through acquire_within and holds a slot only when admission.admitted (then its held time
// feeds the service-time estimate).
class SlotGuard {
public:
    explicit SlotGuard(Slots& s) : slots_(s), held_(true) { slots_.acquire(); }
    SlotGuard(Slots& s, Admission& admission);
    ~SlotGuard();
    SlotGuard(const SlotGuard&) = delete;
    SlotGuard& operator=(const SlotGuard&) = delete;

private:
    Slots& slots_;
    bool held_ = false, timed_ = false;
    std::chrono::steady_clock::time_point since_;
};

// The overloaded error (503 with Retry-After: admission.retry_after_s) of a refused admission.
ApiError overloaded_error(const Admission& a, const Slots& slots);

// The model and its loading state (Loading until load() ends, then Ready or Failed), and the
// slots that bound how many callers run the network at once.
class Engine {
public:
    enum class State { Loading, Ready, Failed };

    // max_queue_ms: how long measure_and_store may wait for a network slot (0 = as long as it takes).
    explicit Engine(int slots, double max_queue_ms = kDefaultMaxQueueMs);
    static constexpr double kDefaultMaxQueueMs = 5000;
    // Loads the model (blocking: call it on a background thread). torch_threads: LibTorch threads
    // per request; 0 = cores / slots (at least 1). mirror_average: SegmenterOptions::mirror_average.
    void load(const std::string& model_path, int torch_threads, bool mirror_average = false);

    State state() const;
    std::string load_error() const;     // why loading failed ("" otherwise)
    bool ready() const { return state() == State::Ready; }
    // Blocks until loading ends (or the timeout passes); true when ready.
    bool wait_ready(double timeout_s) const;
    // The loaded model, or model_loading / model_unavailable.
    Result<std::shared_ptr<const Measurer>> measurer() const;
    Slots& slots() { return slots_; }
    // Decode slots: every decode of request bytes (image, mask, DICOM) runs holding one, so at most
    // this many decodes (each capped at kMaxImagePixels from the header) allocate at once. Same count
    // as the network slots.
    Slots& decode_slots() { return decode_slots_; }

private:
    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    State state_ = State::Loading;
    std::string error_;
    std::shared_ptr<const Measurer> measurer_;
    Slots slots_;
    Slots decode_slots_;
};

// Decodes image bytes (PNG, JPEG, BMP, TIFF; any depth) to 8-bit gray; image_unreadable on failure.
// `name` is used in the message.
// Runs on one of `decode_slots` (Engine::decode_slots()); the pixel budget (kMaxImagePixels) is
// checked from the header by the library before any pixel is allocated.
Result<cv::Mat> decode_image(Slots& decode_slots, const std::string& bytes, const std::string& name);

struct StoredMeasurement {
    Measurement measurement;   // timings include the decode; the queue wait is apart
    std::string image_sha256;  // the image is kept in the store under this id
    double queue_ms = 0;       // time spent waiting for a network slot
};

// Checks the pixel size and GA in `options`, takes a network slot (waiting at most the engine's
// max_queue_ms, else overloaded), decodes the image and measures it on that slot (so a refused
// request costs no decode), and keeps the image bytes in the store (the exam itself is saved
// later, once a clinician accepts the ellipse: Store::add_exam). `name` labels the image in
// messages and in Measurement::source.
Result<StoredMeasurement> measure_and_store(Engine& engine, Store& store, const std::string& image_bytes,
                                            const std::string& name, const MeasureOptions& options);

// ---- DICOM --------------------------------------------------------------------------------------
// Measuring a DICOM object (Part 10 bytes) with the calibration it carries, as the CLI does:
// one frame as an image (measure_dicom_frame: tissue region masked, region chosen by the head),
// several frames through the video path (measure_frames, every frame masked to the region of
// calibration_for_frames) with per-frame results and the median summary. A pixel size given
// overrides the file's calibration; when they disagree by more than 1% a warning says so.
// Errors: invalid_pixel_size, invalid_ga, image_unreadable (not DICOM, truncated, a transfer
// syntax DCMTK cannot decode: the message names it), invalid_calibration (no usable calibration and
// none given), model_loading, model_unavailable, no_head_found (or, for a multi-frame file, no
// frame measured at all).
// (Written here on top of the public dicom.h / video.h API; a library home, e.g. measure.h, would
// let the CLI share it.)
struct DicomMeasureRequest {
    std::optional<double> pixel_size_mm;   // override of the file's calibration
    std::optional<double> ga_weeks;
    // HTTP uploads: take the network slot first, within --max-queue-ms (else 503 overloaded, nothing
    // decoded), and hold it through the decode, as measure_and_store does. The DICOM node's queued
    // jobs leave it false and wait for a slot.
    bool shed_when_busy = false;
    // Frames of a cine measured at most (0: all): more are thinned to this many, evenly spaced from
    // the first to the last, and a warning says so. The server sets kServerMaxCineFrames.
    int max_frames = 0;
};
// The cine frames the server (HTTP and the DICOM node) measures per file: a 2000-frame cine took
// 33 s of a network slot; 400 frames take about a fifth of that.
constexpr int kServerMaxCineFrames = 400;
// The frames of a cine that are measured: every one, or `max_frames` evenly spaced from the first
// to the last when it has more (0: no limit).
std::vector<int> frames_to_measure(int frames, int max_frames);

struct DicomMeasured {
    DicomHeader header;
    DicomCalibration calibration;          // what was used; source "pixel_size_mm" for an override
    std::vector<std::string> warnings;     // e.g. the given pixel size disagreeing with the file
    Measurement measurement;               // the image's, or the summary's estimate (multi-frame)
    std::optional<VideoSummary> summary;   // multi-frame files only
    std::vector<VideoFrame> frames;        // multi-frame files only, in frame order
    double queue_ms = 0;
};

Result<DicomMeasured> measure_dicom(Engine& engine, const std::string& bytes, const std::string& name,
                                    const DicomMeasureRequest& request);

// measure_dicom, then the object kept in the store (image_sha256) when it was measured.
struct StoredDicomMeasurement {
    DicomMeasured result;
    std::string image_sha256;
};
Result<StoredDicomMeasurement> measure_dicom_and_store(Engine& engine, Store& store, const std::string& bytes,
                                                       const std::string& name, const DicomMeasureRequest& request);

// The DICOM SR (report.h) of a result: the image's measurement, or the summary's (no outline) for
// a multi-frame file. storage_failed-free: errors are internal (DCMTK refusing the document).
Result<std::vector<unsigned char>> dicom_result_sr(const DicomMeasured& r);

}  // namespace fetalhc::server
