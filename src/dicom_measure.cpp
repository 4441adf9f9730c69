// Measuring DICOM files (dicom.h): one frame inside its calibrated region, a cine through the video
// path, and a whole file with its own calibration (measure_dicom). Kept apart from dicom.cpp
// because it needs the Measurer (LibTorch).
#include "fetalhc/dicom.h"

#include "dicom_detail.h"
#include "video_detail.h"

#include "fetalhc/measure.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace fetalhc {
namespace {

// How far (px) the fitted ellipse reaches past the region's box; <= 0 when inside.
double overhang_px(const Ellipse& e, const cv::Rect& b) {
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    const double hw = std::sqrt(e.a * e.a * c * c + e.b * e.b * s * s);
    const double hh = std::sqrt(e.a * e.a * s * s + e.b * e.b * c * c);
    const double left = b.x - 0.5, right = b.x + b.width - 0.5, top = b.y - 0.5, bottom = b.y + b.height - 0.5;
    return std::max({left - (e.cx - hw), (e.cx + hw) - right, top - (e.cy - hh), (e.cy + hh) - bottom});
}

// Why the head fitted in `source` does not belong to the region `cal` (it reaches more than a
// pixel outside its box, where the calibration does not hold), or empty.
std::string head_outside(const DicomCalibration& cal, const Ellipse& e, const std::string& source) {
    if (!cal.region) return "";
    const double over = overhang_px(e, cal.box);
    if (over <= 1.0) return "";
    return "the head in '" + source + "' reaches " + detail::dicom_fmt(over, 1) + " px outside " + cal.source + " " +
           detail::dicom_box_text(cal.box) +
           ", where its calibration does not hold; use a frame with the whole head inside the region, or give a pixel size";
}

void apply_calibration(MeasureOptions& o, const DicomCalibration& c) {
    o.pixel_size_mm = c.mm_per_px_x;
    o.pixel_size_y_mm.reset();
    if (c.anisotropic()) o.pixel_size_y_mm = c.mm_per_px_y;
}

}  // namespace

Expected<DicomMeasurement> measure_dicom_frame(const Measurer& measurer, const DicomHeader& h, const cv::Mat& gray8,
                                               const DicomMeasureOptions& opt, const std::string& source) {
    DicomMeasurement out;
    MeasureOptions mo = opt.measure;
    auto pre = calibration_for_frames(h, opt.pixel_size_mm, out.notes);
    std::vector<cv::Rect> keep;
    if (pre) {
        apply_calibration(mo, *pre);
        keep = pre->keep;
    } else {
        // Several regions with different calibrations: find the head in all of them first.
        std::vector<const UltrasoundRegion*> tissue;
        for (const auto& r : h.regions)
            if (detail::dicom_is_2d_tissue(r)) tissue.push_back(&r);
        if (tissue.size() < 2) return pre.error_value();
        auto first = detail::dicom_region_calibration(h, *tissue[0]);
        for (const auto* r : tissue) keep.push_back(r->box & cv::Rect(0, 0, h.columns, h.rows));
        if (first) apply_calibration(mo, *first);
        else mo.pixel_size_mm = 1, mo.pixel_size_y_mm.reset();  // provisional: only the pixels matter here
    }
    auto r = measurer.measure(mask_outside(gray8, keep), mo, source);
    if (!r) return r.error_value();
    if (opt.pixel_size_mm) {
        out.calibration = *pre;
        out.m = *r;
        return out;
    }
    auto cal = choose_calibration(h, cv::Point2d(r->ellipse_px.cx, r->ellipse_px.cy));
    if (!cal) return cal.error_value();
    if (!pre) {
        // Dual view: measure again with only the head's region and its calibration.
        apply_calibration(mo, *cal);
        r = measurer.measure(mask_outside(gray8, cal->keep), mo, source);
        if (!r) return r.error_value();
    }
    if (auto e = head_outside(*cal, r->ellipse_px, source); !e.empty())
        return make_error(ErrorKind::InvalidCalibration, e, "pixel_size");
    out.calibration = *cal;
    out.m = *r;
    return out;
}

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

// `e` with `kind` when the stage below gave it none (Internal): the stage tells what failed.
Error with_kind(Error e, ErrorKind kind) {
    if (e.kind == ErrorKind::Internal) e.kind = kind;
    return e;
}

// Unless the calibration was given, a frame whose head reaches out of its region (chosen by the
// head's centre) becomes that frame's error, as for one frame (measure_dicom_frame).
void check_frame_region(const DicomHeader& h, const DicomCalibration& c, VideoFrame& f) {
    if (!f.result || c.given) return;
    auto cal = choose_calibration(h, cv::Point2d(f.result->ellipse_px.cx, f.result->ellipse_px.cy));
    std::string e = cal ? head_outside(*cal, f.result->ellipse_px, f.result->source) : cal.error();
    if (!e.empty()) f.result = make_error(ErrorKind::InvalidCalibration, e, "pixel_size");
}

// A multi-frame file through the video path (detail::measure_checked_frames): one calibration for
// every frame (calibration_for_frames), each frame decoded when the measurement asks for it (one
// decoded frame held at a time), masked to the region and checked by check_frame_region.
Expected<DicomResult> measure_cine(const Measurer& measurer, DicomFrameReader& reader, const DicomRequest& req,
                                   DicomResult out, const DicomCalibration& c, cv::Mat first, const DicomEvents& events) {
    const DicomHeader& h = out.header;
    const std::vector<int> pick = frames_to_measure(h.frames, req.max_frames);
    if (int(pick.size()) < h.frames) {
        out.notes.push_back("the cine has " + std::to_string(h.frames) + " frames; " + std::to_string(pick.size()) +
                            " evenly spaced frames were measured (at most " + std::to_string(req.max_frames) +
                            " frames of a file are measured here)");
        if (events.on_note) events.on_note(out.notes.back());
    }
    out.calibration = c;
    VideoOptions vo;
    vo.measure = req.measure;
    apply_calibration(vo.measure, c);
    vo.workers = req.workers;
    vo.redetect_every = req.redetect_every;
    size_t k = 0;
    std::optional<Error> decode_error;
    const FrameSource next = [&](SourceFrame& f) {
        if (k >= pick.size() || decode_error) return false;
        auto img = k == 0 ? Expected<cv::Mat>(std::move(first)) : reader.frame(pick[k]);  // pick[0] is frame 0
        if (!img) {
            decode_error = with_kind(img.error_value(), ErrorKind::ImageUnreadable);
            return false;
        }
        f.image = c.keep.empty() ? std::move(*img) : mask_outside(*img, c.keep);
        f.number = pick[k];
        f.time_s = h.frame_time_ms / 1000 * double(pick[k]);
        ++k;
        return true;
    };
    auto s = detail::measure_checked_frames(
        measurer, h.path, next, vo, [&](VideoFrame& f) { check_frame_region(h, c, f); },
        [&](const VideoFrame& f) {
            out.frames.push_back(f);
            if (events.on_frame) events.on_frame(f);
        });
    if (decode_error) return *decode_error;
    if (!s) return s.error_value();
    out.measurement = s->estimate;
    out.summary = std::move(*s);
    return out;
}

}  // namespace

std::optional<Error> dicom_calibration_problem(const DicomHeader& h, std::optional<double> pixel_size_mm) {
    std::vector<std::string> notes;
    auto c = calibration_for_frames(h, pixel_size_mm, notes);
    if (c) return std::nullopt;
    int tissue = 0;
    for (const auto& r : h.regions) tissue += r.is_tissue_2d_cm() ? 1 : 0;
    if (h.frames == 1 && tissue > 1) return std::nullopt;  // a dual view: measure_dicom_frame picks the region by the head
    Error e = with_kind(c.error_value(), ErrorKind::InvalidCalibration);
    if (h.frames > 1) e.message += "; a multi-frame file needs one calibration for every frame";
    if (e.field.empty()) e.field = "pixel_size";
    return e;
}

Expected<DicomResult> measure_dicom(const Measurer& measurer, DicomFrameReader& reader, const DicomRequest& req,
                                    const DicomEvents& events) {
    DicomResult out;
    out.header = reader.header();
    const DicomHeader& h = out.header;
    if (req.pixel_size_mm)
        if (auto e = check_pixel_size(*req.pixel_size_mm, "'" + h.path + "'"); !e.empty())
            return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    // Told first, whether or not the measurement succeeds: a given pixel size that disagrees.
    auto cal = calibration_for_frames(h, req.pixel_size_mm, out.notes);
    for (const auto& n : out.notes)
        if (events.on_note) events.on_note(n);
    // Frame 0 before the calibration: a file that cannot be decoded says so (naming its transfer
    // syntax) whatever its calibration; a cine measures this frame as its first.
    const auto t0 = std::chrono::steady_clock::now();
    auto frame = reader.frame(0);
    if (!frame) return with_kind(frame.error_value(), ErrorKind::ImageUnreadable);
    const double decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (auto e = dicom_calibration_problem(h, req.pixel_size_mm)) return *e;
    if (h.frames > 1) return measure_cine(measurer, reader, req, std::move(out), *cal, std::move(*frame), events);
    DicomMeasureOptions o;
    o.measure = req.measure;
    o.pixel_size_mm = req.pixel_size_mm;
    auto m = measure_dicom_frame(measurer, h, *frame, o, h.path);  // its notes are those told above
    if (!m) return with_kind(m.error_value(), ErrorKind::NoHeadFound);
    out.measurement = std::move(m->m);
    out.measurement.timings.decode_ms = decode_ms;
    out.measurement.timings.total_ms += decode_ms;
    out.calibration = std::move(m->calibration);
    out.image = std::move(*frame);
    return out;
}

std::optional<Error> cine_without_estimate(const DicomResult& r, const std::string& name) {
    if (!r.summary) return std::nullopt;
    NotAHeadFrames refused;
    for (const VideoFrame& f : r.frames) refused.add(f);
    return summary_without_estimate(*r.summary, refused, name);
}

nlohmann::json to_json(const DicomCalibration& c, const std::string& given_source) {
    nlohmann::json j{{"source", c.given ? given_source : c.source}, {"mm_per_px_x", c.mm_per_px_x}, {"mm_per_px_y", c.mm_per_px_y}};
    if (c.region) j["region"] = *c.region;
    return j;
}

nlohmann::json to_json(const DicomResult& r, const std::string& given_source) {
    nlohmann::json j = to_json(r.measurement);
    j["calibration"] = to_json(r.calibration, given_source);
    j["warnings"] = r.notes;
    j["dicom"] = {{"sop_instance_uid", r.header.sop_instance_uid}, {"sop_class_uid", r.header.sop_class_uid},
                  {"study_instance_uid", r.header.study_instance_uid}, {"transfer_syntax", r.header.transfer_syntax_name},
                  {"frames", r.header.frames}};
    if (r.summary) {
        nlohmann::json frames = nlohmann::json::array();
        for (const VideoFrame& f : r.frames) frames.push_back(to_json(f));
        j["frames"] = std::move(frames);
        j["summary"] = to_json(*r.summary);
    }
    return j;
}

}  // namespace fetalhc
