#include "service.h"

#include "request_fields.h"

#include "fetalhc/report.h"

#include <chrono>
#include <cmath>
#include <optional>

namespace fetalhc::server {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

// ---- measure and store ------------------------------------------------------------------------

Result<StoredMeasurement> measure_and_store(Engine& engine, Store& store, const std::string& image_bytes,
                                            const std::string& name, const MeasureOptions& options) {
    if (auto p = pixel_size_problem(options.pixel_size_mm, "pixel_size_mm")) return *p;
    if (options.ga_weeks)
        if (auto p = ga_problem(*options.ga_weeks, "ga_weeks")) return *p;
    StoredMeasurement out;
    Expected<Measurement> m = make_error(ErrorKind::Internal, "not measured");
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
    if (!m) return api_error(m.error_value());  // no_head_found, no_ellipse_fit, ...
    out.measurement = std::move(*m);
    out.measurement.timings.decode_ms = decode_ms;
    out.measurement.timings.total_ms += decode_ms;
    auto sha = store.put_image(image_bytes);
    if (!sha) return api_error(sha.error_value());  // store_full (507) or storage_failed (500)
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
    if (!sha) return api_error(sha.error_value());
    return StoredDicomMeasurement{std::move(*r), *sha};
}

Result<std::vector<unsigned char>> dicom_result_sr(const DicomMeasured& r) {
    SrOptions o;
    if (r.summary) o.include_outline = false;
    auto sr = write_biometry_sr(r.measurement, &r.header, o);
    if (!sr) return api_error(sr.error_value());
    return *sr;
}

}  // namespace fetalhc::server
