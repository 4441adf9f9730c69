#include "fetalhc/measure.h"

#include "fetalhc/image_io.h"

#include "review.h"

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <chrono>
#include <cmath>

namespace fetalhc {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// The numbers of an ellipse, without reasons or quality.
Measurement numbers_from_ellipse(const Ellipse& px, double pixel_size_mm, std::optional<double> ga_weeks) {
    Measurement m;
    m.pixel_size_mm = pixel_size_mm;
    m.ellipse_px = px.normalized();
    m.ellipse_mm = m.ellipse_px.scaled(pixel_size_mm);
    m.hc_mm = ramanujan_perimeter(m.ellipse_mm);
    m.ofd_mm = 2 * m.ellipse_mm.a;
    m.bpd_mm = 2 * m.ellipse_mm.b;
    m.cephalic_index = m.ellipse_mm.a > 0 ? 100 * m.ellipse_mm.b / m.ellipse_mm.a : 0;
    m.ga_hadlock = hadlock_ga(m.hc_mm);
    m.ga_intergrowth = intergrowth_ga(m.hc_mm);
    m.ga_weeks_given = ga_weeks;
    if (ga_weeks) m.centile = intergrowth_hc_centile(m.hc_mm, *ga_weeks);
    return m;
}

bool is_anisotropic(const MeasureOptions& o) {
    return o.pixel_size_y_mm &&
           std::abs(*o.pixel_size_y_mm - o.pixel_size_mm) > 0.005 * std::max(*o.pixel_size_y_mm, o.pixel_size_mm);
}

// The boundary with y stretched by (y spacing / x spacing), fitted: lengths in x pixels.
EllipseFit physical_fit(const std::vector<cv::Point2d>& points, const MeasureOptions& o) {
    const double ry = *o.pixel_size_y_mm / o.pixel_size_mm;
    std::vector<cv::Point2d> phys;
    phys.reserve(points.size());
    for (const auto& p : points) phys.emplace_back(p.x, p.y * ry);
    return fit_ellipse(phys, o.fit);
}

}  // namespace

Measurement measurement_from_ellipse(const Ellipse& px, double pixel_size_mm, std::optional<double> ga_weeks) {
    Measurement m = numbers_from_ellipse(px, pixel_size_mm, ga_weeks);
    review_ellipse(m, MeasureOptions{});  // the thresholds of `fetalhc measure`
    return m;
}

Expected<Measurement> measure_from_segmentation(const Segmentation& seg, const cv::Mat& gray8,
                                                const MeasureOptions& opt, const std::string& source) {
    if (auto e = check_pixel_size(opt.pixel_size_mm, "'" + source + "'"); !e.empty())
        return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    if (opt.pixel_size_y_mm)
        if (auto e = check_pixel_size(*opt.pixel_size_y_mm, "'" + source + "' (y)"); !e.empty())
            return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    auto t0 = Clock::now();
    Boundary bnd = extract_boundary(seg, gray8);
    const double post_ms = ms_since(t0);
    if (!bnd.found)
        return make_error(ErrorKind::NoHeadFound, "no fetal head found in '" + source + "' (detection score " +
                                                      fixed_text(seg.presence, 2) +
                                                      "); check that the image is a head in the standard HC plane");
    auto t1 = Clock::now();
    EllipseFit fit = fit_ellipse(bnd.points, opt.fit);
    if (!fit.ok)
        return make_error(ErrorKind::NoEllipseFit,
                          "cannot fit an ellipse to the head in '" + source + "': " + fit.message +
                              (bnd.cut_points.size() > bnd.points.size() ? " (most of the head is outside the image)" : ""));

    Ellipse e = fit.ellipse;
    e.a *= seg.axis_scale;
    e.b *= seg.axis_scale;
    Measurement m;
    if (!is_anisotropic(opt)) {
        m = numbers_from_ellipse(e, opt.pixel_size_mm, opt.ga_weeks);
    } else {
        // Physical space in units of the x spacing (the fit's thresholds stay about a pixel): an
        // ellipse in mm is not the pixel ellipse scaled, so it is fitted again there.
        auto phys = physical_fit(bnd.points, opt);
        if (!phys.ok)
            return make_error(ErrorKind::NoEllipseFit,
                              "cannot fit an ellipse to the head in '" + source + "' in physical space: " + phys.message);
        fit.rms_px = phys.rms_px, fit.inliers = phys.inliers, fit.points = phys.points;
        Ellipse ep = phys.ellipse;
        ep.a *= seg.axis_scale;
        ep.b *= seg.axis_scale;
        m = numbers_from_ellipse(ep, opt.pixel_size_mm, opt.ga_weeks);
        m.ellipse_px = e.normalized();
        m.pixel_size_y_mm = opt.pixel_size_y_mm;
    }
    const double fit_ms = ms_since(t1);
    m.source = source;
    m.image_size = gray8.size();
    m.presence = seg.presence;
    m.certainty = bnd.mean_confidence;
    m.fit_rms_px = fit.rms_px;
    m.boundary_points = int(bnd.points.size());
    m.inliers = fit.inliers;
    m.cut_points = int(bnd.cut_points.size());
    m.signals = review_signals(seg, gray8, m.ellipse_px);
    m.timings.network_ms = seg.network_ms;
    m.timings.postprocess_ms = post_ms;
    m.timings.fit_ms = fit_ms;

    review_measurement(m, opt);
    return m;
}

namespace {

// Segmentation (whole image or tracked) followed by everything after the network, timed, with
// exceptions turned into errors naming the source.
template <class SegmentFn>
Expected<Measurement> segment_and_measure(const cv::Mat& gray8, const MeasureOptions& opt, const std::string& source,
                                          SegmentFn segment) {
    if (auto e = check_pixel_size(opt.pixel_size_mm, "'" + source + "'"); !e.empty())
        return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    try {
        auto t0 = Clock::now();
        Segmentation seg = segment();
        auto r = measure_from_segmentation(seg, gray8, opt, source);
        if (r) r->timings.total_ms = ms_since(t0);
        return r;
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Internal, "measuring '" + source + "' failed: " + e.what());
    }
}

// The model's interval around a measurement, once its quality is decided.
Expected<Measurement> with_interval(Expected<Measurement> r, const std::optional<HcIntervalModel>& model) {
    if (r && model) r->interval = hc_interval(*model, r->hc_mm, r->quality != "ok");
    return r;
}

// The head check's score of a measured outline in its signals, timed with the post-processing.
void score_outline(Measurement& m, const cv::Mat& gray8, const HeadCheck& check) {
    const auto t0 = Clock::now();
    const HeadCheckResult c = check.score(gray8, m.ellipse_px);
    m.signals.head_check = c.score;
    m.signals.head_check_other = kHeadCheckPlanes[size_t(c.likely_other)];
    const double ms = ms_since(t0);
    m.timings.postprocess_ms += ms;
    m.timings.total_ms += ms;
}

// MeasureOptions::head_check: the check's score of the measured outline (unless the targeted
// second opinion scored it already) and its verdict (a refusal or a review reason, review.cpp).
Expected<Measurement> with_head_check(Expected<Measurement> r, const cv::Mat& gray8, const MeasureOptions& opt,
                                      const HeadCheck* check) {
    if (!r || !check || !opt.head_check) return r;
    if (r->signals.head_check < 0) score_outline(*r, gray8, *check);
    if (auto refused = review_head_check(*r, check->refuse_below(), check->review_below())) return *refused;
    return r;
}

// MeasureOptions::second_opinion: the head measured again on the mirrored image, its second pass
// cropped around the mirror of the first result (a different crop of the same head).
void add_second_opinion(Measurement& m, const cv::Mat& gray8, const MeasureOptions& opt, const Segmenter& seg) {
    cv::Mat mirrored;
    cv::flip(gray8, mirrored, 1);
    Ellipse prior = m.ellipse_px;
    prior.cx = (gray8.cols - 1) - prior.cx;
    prior.angle = CV_PI - prior.angle;
    prior = prior.normalized();
    MeasureOptions once = opt;
    once.second_opinion = false;
    auto again = segment_and_measure(mirrored, once, m.source, [&] { return seg.segment_near(mirrored, prior); });
    m.signals.second_opinion_rel = again && m.hc_mm > 0 ? (again->hc_mm - m.hc_mm) / m.hc_mm : 1.0;
}

// MeasureOptions::targeted_second_opinion (see there), between the measurement of the first look
// `r` (from `seg`) and the head check's verdict. Returns the measurement to keep, scored; its
// timings are the first look's plus the time spent here (the new forwards as network time, the rest
// as post-processing).
Expected<Measurement> targeted_second_opinion(Expected<Measurement> r, Segmentation seg, const cv::Mat& gray8,
                                              const MeasureOptions& opt, const std::string& source,
                                              const Segmenter& segmenter, const HeadCheck& check) {
    const auto t0 = Clock::now();
    const Timings first_look = r ? r->timings : Timings{};
    const double first_rival_share = seg.rival_share;
    double network_ms = 0;
    int passes = 0;
    auto score = [&](Measurement& m) { score_outline(m, gray8, check); };
    if (r) score(*r);
    // Other head-like regions of the first pass: each measured on its own crop and scored.
    double best_rival = -1;
    std::string chosen_over;
    const std::vector<Ellipse> rivals = seg.rivals;  // seg is replaced when a rival is kept
    for (const Ellipse& rival : rivals) {
        Segmentation rs = segmenter.segment_near(gray8, rival);
        ++passes, network_ms += rs.network_ms;
        auto rr = measure_from_segmentation(rs, gray8, opt, source);
        if (!rr) continue;
        score(*rr);
        best_rival = std::max(best_rival, rr->signals.head_check);
        const double current = r ? r->signals.head_check : -1;
        if (rr->signals.head_check >= current + opt.rival_score_margin) {
            chosen_over = r ? "other outline, " + fixed_text(r->hc_mm, 0) + " mm, scored " + fixed_text(current, 2)
                            : "other outline gave no ellipse";
            rr->presence = std::max(rr->presence, seg.presence);  // the whole image's detection, not only the crop's
            r = std::move(rr);
            seg = std::move(rs);
        }
    }
    // A small head, a doubtful score or a changed choice: the crop again, mirrored, the two maps averaged.
    if (r && (r->hc_mm < opt.second_look_below_hc_mm || r->signals.head_check < opt.second_look_below_score ||
              !chosen_over.empty())) {
        const Segmentation ms = segmenter.mirror_look(seg);
        if (ms.mirror_averaged && !seg.mirror_averaged) {
            ++passes, network_ms += ms.network_ms - seg.network_ms;
            if (auto mr = measure_from_segmentation(ms, gray8, opt, source)) {
                // The check's crop is cut around the outline: scored again only when the outline moved,
                // and the lower of the two scores kept (a second look never talks the check round:
                // an outline that moves between the looks is itself a doubt).
                const Ellipse &e0 = r->ellipse_px, &e1 = mr->ellipse_px;
                const bool moved = std::hypot(e1.cx - e0.cx, e1.cy - e0.cy) >= 1 || std::abs(e1.a - e0.a) >= 0.01 * e0.a ||
                                   std::abs(e1.b - e0.b) >= 0.01 * e0.b ||
                                   std::abs(std::remainder(e1.angle - e0.angle, CV_PI)) >= 0.02;
                if (moved) score(*mr);
                if (!moved || r->signals.head_check < mr->signals.head_check) {
                    mr->signals.head_check = r->signals.head_check;
                    mr->signals.head_check_other = r->signals.head_check_other;
                }
                mr->presence = r->presence;
                r = std::move(mr);
            }
        }
    }
    if (!r) return r;
    const double spent_ms = ms_since(t0);
    r->timings = first_look;
    r->timings.network_ms += network_ms;
    r->timings.postprocess_ms += spent_ms - network_ms;
    r->timings.total_ms += spent_ms;
    r->signals.extra_passes = passes;
    r->signals.rival_share = first_rival_share;  // the whole image's first pass, whichever crop was kept
    r->signals.rival_head_check = best_rival;
    r->signals.chose_rival = !chosen_over.empty();
    if (r->signals.chose_rival) {
        r->reasons.push_back("two head-like structures in view: measured the one that looks more like a head (head check " +
                             fixed_text(r->signals.head_check, 2) + "; the " + chosen_over +
                             "): check that the ellipse lies on the skull");
        decide_quality(*r);
    }
    return r;
}

}  // namespace

Expected<Measurement> Measurer::measure(const cv::Mat& gray8, const MeasureOptions& opt, const std::string& source) const {
    Segmentation first;
    auto r = segment_and_measure(gray8, opt, source, [&] { return first = seg_.segment(gray8); });
    const bool targeted = head_check() && opt.head_check && opt.targeted_second_opinion;
    if (targeted && (r || r.error_kind() != ErrorKind::InvalidArgument)) {
        try {
            r = targeted_second_opinion(std::move(r), std::move(first), gray8, opt, source, seg_, *head_check());
        } catch (const std::exception& e) {
            return make_error(ErrorKind::Internal, "measuring '" + source + "' (second look) failed: " + e.what());
        }
    }
    r = with_head_check(std::move(r), gray8, opt, head_check());
    if (r && opt.second_opinion) add_second_opinion(*r, gray8, opt, seg_);
    return with_interval(std::move(r), interval_);
}

Expected<Measurement> Measurer::measure_near(const cv::Mat& gray8, const MeasureOptions& opt, const Ellipse& prior,
                                             const std::string& source) const {
    // No head check here: tracking follows a head found (and checked) on a key frame.
    return with_interval(segment_and_measure(gray8, opt, source, [&] { return seg_.segment_near(gray8, prior); }),
                         interval_);
}

std::optional<HcInterval> Measurer::interval_for(double hc_mm, bool review) const {
    if (!interval_) return std::nullopt;
    return hc_interval(*interval_, hc_mm, review);
}

Expected<Measurement> Measurer::measure_file(const std::string& path, const MeasureOptions& opt) const {
    if (auto e = check_pixel_size(opt.pixel_size_mm, "'" + path + "'"); !e.empty())
        return make_error(ErrorKind::InvalidArgument, e, "pixel_size");
    auto t0 = Clock::now();
    auto img = load_grayscale(path);
    if (!img) return img.error_value();
    const double decode_ms = ms_since(t0);
    auto r = measure(*img, opt, path);
    if (r) {
        r->timings.decode_ms = decode_ms;
        r->timings.total_ms += decode_ms;
    }
    return r;
}

namespace {

nlohmann::json ellipse_json(const Ellipse& e) {
    return {{"center_x", e.cx}, {"center_y", e.cy}, {"semi_axis_a", e.a}, {"semi_axis_b", e.b}, {"angle_rad", e.angle}};
}

nlohmann::json ga_json(const GaEstimate& g) {
    nlohmann::json j{{"in_range", g.in_range}};
    j["weeks"] = g.in_range ? nlohmann::json(g.weeks) : nlohmann::json(nullptr);
    j["text"] = g.in_range ? format_weeks(g.weeks) : "";
    if (!g.note.empty()) j["note"] = g.note;
    return j;
}

// -1 (does not apply) as null.
nlohmann::json signals_json(const ReviewSignals& s) {
    auto share = [](double v) { return v < 0 ? nlohmann::json(nullptr) : nlohmann::json(v); };
    return {{"refine_presence", share(s.refine_presence)}, {"rival_share", s.rival_share}, {"second_look", s.second_look},
            {"skull_evidence", share(s.skull_evidence)}, {"ring_contrast", share(s.ring_contrast)},
            {"seg_agreement", share(s.seg_agreement)}, {"head_fraction", s.head_fraction},
            {"member_disagreement", s.member_disagreement},
            {"second_opinion_rel", std::isfinite(s.second_opinion_rel) ? nlohmann::json(s.second_opinion_rel) : nlohmann::json(nullptr)},
            {"head_check", share(s.head_check)},
            {"head_check_other", s.head_check_other.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.head_check_other)},
            {"extra_passes", s.extra_passes}, {"rival_head_check", share(s.rival_head_check)}, {"chose_rival", s.chose_rival}};
}

}  // namespace

nlohmann::json to_json(const Measurement& m) {
    nlohmann::json j{{"source", m.source},
                     {"image_width", m.image_size.width},
                     {"image_height", m.image_size.height},
                     {"pixel_size_mm", m.pixel_size_mm},
                     {"hc_mm", m.hc_mm},
                     {"bpd_mm", m.bpd_mm},
                     {"ofd_mm", m.ofd_mm},
                     {"cephalic_index", m.cephalic_index},
                     {"ellipse_px", ellipse_json(m.ellipse_px)},
                     {"ellipse_mm", ellipse_json(m.ellipse_mm)},
                     {"ga_hadlock", ga_json(m.ga_hadlock)},
                     {"ga_intergrowth", ga_json(m.ga_intergrowth)},
                     {"quality", m.quality},
                     {"reasons", m.reasons},
                     {"detection_score", m.presence},
                     {"segmentation_certainty", m.certainty},
                     {"fit_rms_px", m.fit_rms_px},
                     {"boundary_points", m.boundary_points},
                     {"inliers", m.inliers},
                     {"cut_points", m.cut_points},
                     {"signals", signals_json(m.signals)},
                     {"timings_ms",
                      {{"decode", m.timings.decode_ms}, {"network", m.timings.network_ms},
                       {"postprocess", m.timings.postprocess_ms}, {"fit", m.timings.fit_ms}, {"total", m.timings.total_ms}}}};
    if (m.pixel_size_y_mm) j["pixel_size_y_mm"] = *m.pixel_size_y_mm;
    if (m.interval) {
        const HcInterval& iv = *m.interval;
        j["hc_low_mm"] = iv.low_mm;
        j["hc_high_mm"] = iv.high_mm;
        j["interval_coverage"] = iv.coverage;
        auto weeks = [](const std::optional<double>& w) { return w ? nlohmann::json(*w) : nlohmann::json(nullptr); };
        j["ga_hadlock"]["low_weeks"] = weeks(iv.ga_hadlock_low_weeks);
        j["ga_hadlock"]["high_weeks"] = weeks(iv.ga_hadlock_high_weeks);
    }
    if (m.ga_weeks_given) j["ga_weeks_given"] = *m.ga_weeks_given;
    if (m.centile) {
        const Centile& c = *m.centile;
        nlohmann::json cj{{"in_range", c.in_range}};
        if (c.in_range) {
            cj.update({{"median_mm", c.median_mm}, {"sd_mm", c.sd_mm}, {"z", c.z}, {"centile", c.centile},
                       {"below_3rd", c.below_3rd}, {"above_97th", c.above_97th}});
        }
        if (!c.note.empty()) cj["note"] = c.note;
        j["centile"] = cj;
    }
    return j;
}

}  // namespace fetalhc
