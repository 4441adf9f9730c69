// Measuring DICOM frames (dicom.h): one frame inside its calibrated region, and a cine through the
// video path. Kept apart from dicom.cpp because it needs the Measurer (LibTorch).
#include "fetalhc/dicom.h"

#include "dicom_detail.h"
#include "fetalhc/metrics.h"

#include <algorithm>
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
           ", where its calibration does not hold; use a frame with the whole head inside the region, or give --pixel-size MM";
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
        if (tissue.size() < 2) return make_error(pre.error());
        auto first = detail::dicom_region_calibration(h, *tissue[0]);
        for (const auto* r : tissue) keep.push_back(r->box & cv::Rect(0, 0, h.columns, h.rows));
        if (first) apply_calibration(mo, *first);
        else mo.pixel_size_mm = 1, mo.pixel_size_y_mm.reset();  // provisional: only the pixels matter here
    }
    auto r = measurer.measure(mask_outside(gray8, keep), mo, source);
    if (!r) return make_error(r.error());
    if (opt.pixel_size_mm) {
        out.calibration = *pre;
        out.m = *r;
        return out;
    }
    auto cal = choose_calibration(h, cv::Point2d(r->ellipse_px.cx, r->ellipse_px.cy));
    if (!cal) return make_error(cal.error());
    if (!pre) {
        // Dual view: measure again with only the head's region and its calibration.
        apply_calibration(mo, *cal);
        r = measurer.measure(mask_outside(gray8, cal->keep), mo, source);
        if (!r) return make_error(r.error());
    }
    if (auto e = head_outside(*cal, r->ellipse_px, source); !e.empty()) return make_error(e);
    out.calibration = *cal;
    out.m = *r;
    return out;
}

Expected<VideoSummary> measure_dicom_cine(const Measurer& measurer, const DicomHeader& h, const DicomCalibration& c,
                                          const std::string& label, const FrameSource& next, const VideoOptions& opt,
                                          const std::function<void(const VideoFrame&)>& on_frame) {
    const bool check_region = c.source != "--pixel-size";
    const FrameSource masked = [&](cv::Mat& frame, double& time_s) {
        if (!next(frame, time_s)) return false;
        if (!c.keep.empty()) frame = mask_outside(frame, c.keep);
        return true;
    };
    std::vector<Measurement> ok;
    std::vector<int> ok_index;
    int refused = 0;
    auto s = measure_frames(measurer, label, masked, opt, [&](const VideoFrame& f) {
        VideoFrame out = f;
        if (out.result && check_region) {
            // The same rule as for one frame: the head's region (by its centre) must hold all of it.
            auto cal = choose_calibration(h, cv::Point2d(out.result->ellipse_px.cx, out.result->ellipse_px.cy));
            std::string e = cal ? head_outside(*cal, out.result->ellipse_px, out.result->source) : cal.error();
            if (!e.empty()) {
                out.result = make_error(e);
                ++refused;
            }
        }
        if (out.result && out.result->quality == "ok") ok.push_back(*out.result), ok_index.push_back(out.index);
        if (on_frame) on_frame(out);
    });
    if (!s || refused == 0) return s;
    // Frames refused above were in the summary measure_frames made: make it again without them
    // (the median over the ok frames, as video.h says).
    s->measured -= refused;
    s->ok = int(ok.size());
    s->has_estimate = !ok.empty();
    s->hc_median_mm = s->bpd_median_mm = s->ofd_median_mm = s->hc_iqr_mm = 0;
    s->estimate = Measurement{};
    s->estimate_frame = -1;
    if (ok.empty()) return s;
    std::vector<double> hc, bpd, ofd;
    for (const auto& m : ok) hc.push_back(m.hc_mm), bpd.push_back(m.bpd_mm), ofd.push_back(m.ofd_mm);
    s->hc_median_mm = quantile(hc, 0.5);
    s->bpd_median_mm = quantile(bpd, 0.5);
    s->ofd_median_mm = quantile(ofd, 0.5);
    s->hc_iqr_mm = quantile(hc, 0.75) - quantile(hc, 0.25);
    size_t best = 0;
    for (size_t k = 1; k < ok.size(); ++k)
        if (std::abs(ok[k].hc_mm - s->hc_median_mm) < std::abs(ok[best].hc_mm - s->hc_median_mm)) best = k;
    s->estimate = ok[best];
    s->estimate_frame = ok_index[best];
    return s;
}

}  // namespace fetalhc
