// The measure-and-store services (the work behind the transports, without HTTP): "measure an
// image and keep it" and its DICOM counterpart, on the Engine's network slots (engine.h,
// queue.h). The HTTP routes call these; the DICOM C-STORE node calls the same with the bytes and
// pixel spacing of a received object, and maps the ApiError codes (errors.h) to its own statuses.
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
// Thread safety: every function here may be called from many threads at once; at most `slots` of
// them run the network at the same time, the others wait their turn (first come, first served).
// Overload: measure_and_store waits for a network slot at most `max_queue_ms`; a request whose
// estimated wait (estimated_wait_ms: the queue ahead of it and a running average of the time a
// request holds a slot, with its spread) is longer is refused at once (overloaded, 503 with
// Retry-After), and one admitted that still waits past the limit is refused then, never served
// late. DICOM uploads and POST /v1/segment are admitted the same way (their slot taken before the
// decode); the DICOM node's workers take a slot from the same queue without a limit (the node
// bounds its own backlog: DicomNodeOptions::max_pending).
#pragma once

#include "engine.h"
#include "errors.h"

#include "fetalhc/dicom.h"
#include "fetalhc/measure.h"
#include "fetalhc/store.h"
#include "fetalhc/video.h"

#include <optional>
#include <string>
#include <vector>

namespace fetalhc::server {

struct StoredMeasurement {
    Measurement measurement;   // timings include the decode; the queue wait is apart
    std::string image_sha256;  // the image is kept in the store under this id
    double queue_ms = 0;       // time spent waiting for a network slot
    cv::Mat image;             // the decoded image (8-bit gray), for a key image
};

// Checks the pixel size and GA in `options`, takes a network slot (waiting at most the engine's
// max_queue_ms, else overloaded), decodes the image and measures it on that slot (so a refused
// request costs no decode), and keeps the image bytes in the store (the exam itself is saved
// later, once a clinician accepts the ellipse: Store::add_exam). `name` labels the image in
// messages and in Measurement::source.
Result<StoredMeasurement> measure_and_store(Engine& engine, Store& store, const std::string& image_bytes,
                                            const std::string& name, const MeasureOptions& options);

// ---- DICOM --------------------------------------------------------------------------------------
// Measuring a DICOM object (Part 10 bytes) with the calibration it carries: a network slot is
// taken (HTTP uploads within --max-queue-ms, else overloaded and nothing decoded; the DICOM node's
// queued jobs wait for one), the file is opened on a decode slot, then the library's measure_dicom
// (dicom.h), the function the CLI calls too, measures it on that network slot: one frame as an
// image, a cine frame by frame (one worker: one slot per request) with per-frame results and the
// summary, the same figures as the CLI's. A pixel size given overrides the file's calibration;
// when they disagree by more than 1% a warning says so.
// Errors: invalid_pixel_size, invalid_ga, overloaded, model_loading, model_unavailable,
// image_unreadable (not DICOM, truncated, a transfer syntax DCMTK cannot decode: the message names
// it), the library's (api_error: invalid_calibration when there is no usable calibration and none
// was given, no_head_found, ...), and no_head_found for a multi-frame file without an ok frame.
struct DicomMeasureRequest {
    std::optional<double> pixel_size_mm;   // override of the file's calibration
    std::optional<double> ga_weeks;
    // HTTP uploads: take the network slot first, within --max-queue-ms (else 503 overloaded, nothing
    // decoded), and hold it through the decode, as measure_and_store does. The DICOM node's queued
    // jobs leave it false and wait for a slot.
    bool shed_when_busy = false;
    // Frames of a cine measured at most (0: all): more are thinned to this many, evenly spaced from
    // the first to the last (fetalhc::frames_to_measure), and a warning says so. The server sets
    // kServerMaxCineFrames.
    int max_frames = 0;
};
// The cine frames the server (HTTP and the DICOM node) measures per file: a 2000-frame cine took
// 33 s of a network slot; 400 frames take about a fifth of that.
constexpr int kServerMaxCineFrames = 400;
// How HTTP names a pixel size given (the calibration's source in JSON: to_json(result, ...)).
inline constexpr const char* kGivenPixelSizeField = "pixel_size_mm";

// The library's result (header, calibration, notes for the user, the measurement or a cine's
// summary, its frames) and the time spent waiting for a network slot.
struct DicomMeasured : DicomResult {
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
// Its key image (report.h): the measured image, or for a multi-frame file the frame the summary's
// ellipse comes from (decoded again from `bytes`, the received object, on a decode slot).
Result<std::vector<unsigned char>> dicom_result_key_image(Engine& engine, const DicomMeasured& r, const std::string& bytes,
                                                          const std::string& name);

}  // namespace fetalhc::server
