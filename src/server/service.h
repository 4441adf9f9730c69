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
// model_unavailable, no_head_found, storage_failed.
// Thread safety: every Engine member and measure_and_store may be called from many threads at
// once; at most `slots` of them run the network at the same time, the others wait their turn
// (first come, first served).
#pragma once

#include "errors.h"

#include "fetalhc/dicom.h"
#include "fetalhc/measure.h"
#include "fetalhc/store.h"
#include "fetalhc/video.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc::server {

// How many requests may run the network at once. Waiting requests are admitted first come, first
// served (tickets), so that under load no request waits much longer than the others.
class Slots {
public:
    explicit Slots(int n);
    void acquire();
    void release();
    int in_use() const;
    int total() const { return int(total_); }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    unsigned long long next_ = 0, released_ = 0;
    const unsigned long long total_;
};

// Holds a slot for its lifetime.
class SlotGuard {
public:
    explicit SlotGuard(Slots& s) : slots_(s) { slots_.acquire(); }
    ~SlotGuard() { slots_.release(); }
    SlotGuard(const SlotGuard&) = delete;
    SlotGuard& operator=(const SlotGuard&) = delete;

private:
    Slots& slots_;
};

// The model and its loading state (Loading until load() ends, then Ready or Failed), and the
// slots that bound how many callers run the network at once.
class Engine {
public:
    enum class State { Loading, Ready, Failed };

    explicit Engine(int slots);
    // Loads the model (blocking: call it on a background thread). torch_threads: LibTorch threads
    // per request; 0 = cores / slots (at least 1).
    void load(const std::string& model_path, int torch_threads);

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

// Checks the pixel size and GA in `options`, decodes the image, measures it on a network slot,
// and keeps the image bytes in the store (the exam itself is saved later, once a clinician
// accepts the ellipse: Store::add_exam). `name` labels the image in messages and in
// Measurement::source.
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
};

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
