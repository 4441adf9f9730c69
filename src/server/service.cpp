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
        out.image = std::move(*gray);
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

namespace {

// The network slot for a DICOM measurement: for HTTP (shed_when_busy) within the engine's
// max_queue_ms, else overloaded; for the DICOM node as long as it takes.
std::optional<ApiError> take_network_slot(std::optional<SlotGuard>& slot, Engine& engine, bool shed_when_busy,
                                          double& queue_ms) {
    if (!shed_when_busy) {
        const auto tq = Clock::now();
        slot.emplace(engine.slots());
        queue_ms = ms_since(tq);
        return std::nullopt;
    }
    Admission admission;
    slot.emplace(engine.slots(), admission);
    if (!admission.admitted) return overloaded_error(admission, engine.slots());
    queue_ms = admission.waited_ms;
    return std::nullopt;
}

}  // namespace

Result<DicomMeasured> measure_dicom(Engine& engine, const std::string& bytes, const std::string& name,
                                    const DicomMeasureRequest& request) {
    if (request.pixel_size_mm)
        if (auto p = pixel_size_problem(*request.pixel_size_mm, "pixel_size_mm")) return *p;
    if (request.ga_weeks)
        if (auto p = ga_problem(*request.ga_weeks, "ga_weeks")) return *p;
    DicomMeasured out;
    // The slot first: a request refused for overload costs no decode, and the decode (the file's
    // frames, one at a time while they are measured) runs on the slot's core like the network does.
    std::optional<SlotGuard> slot;
    if (auto e = take_network_slot(slot, engine, request.shed_when_busy, out.queue_ms)) return *e;
    Expected<std::unique_ptr<DicomFrameReader>> reader = make_error(ErrorKind::Internal, "not read");
    {
        SlotGuard decode(engine.decode_slots());  // reading the file holds a copy of its bytes
        reader = DicomFrameReader::open(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), name);
    }
    if (!reader) return api_error(reader.error_value());
    // Before the model is needed: a file without a usable calibration is refused while it loads too.
    if (auto e = dicom_calibration_problem((*reader)->header(), request.pixel_size_mm)) return api_error(*e);
    auto model = engine.measurer();
    if (!model) return model.error();
    DicomRequest library_request;
    library_request.measure.ga_weeks = request.ga_weeks;
    library_request.pixel_size_mm = request.pixel_size_mm;
    library_request.max_frames = request.max_frames;
    library_request.workers = 1;  // one network slot per request, as for a still image
    auto r = fetalhc::measure_dicom(**model, **reader, library_request);
    slot.reset();
    if (!r) return api_error(r.error_value());
    if (auto none = cine_without_estimate(*r, name)) return api_error(*none);
    static_cast<DicomResult&>(out) = std::move(*r);
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

Result<std::vector<unsigned char>> dicom_result_key_image(Engine& engine, const DicomMeasured& r, const std::string& bytes,
                                                          const std::string& name) {
    Expected<KeyImageFrame> frame = KeyImageFrame{r.image, std::nullopt};
    if (r.summary) {  // a cine: its estimate frame decoded again, on a decode slot
        SlotGuard decode(engine.decode_slots());
        auto reader = DicomFrameReader::open(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), name);
        frame = reader ? key_image_frame(r, **reader) : Expected<KeyImageFrame>(reader.error_value());
    }
    if (!frame) return api_error(frame.error_value());
    KeyImageOptions o;
    o.referenced_frame = frame->referenced_frame;
    auto key = write_key_image(r.measurement, frame->image, &r.header, o);
    if (!key) return api_error(key.error_value());
    return *key;
}

}  // namespace fetalhc::server
