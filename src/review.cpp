// The review of a measurement: its signals (what the passes saw besides the chosen head, and how
// much of the fitted ellipse has skull and segmentation evidence under it), the rules that turn
// them and the fit into reasons, and the quality flag that follows from the reasons.
#include "review.h"

#include "net_frame.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

namespace fetalhc {
namespace {

constexpr int kSamples = 128;  // points along the ellipse

double median_of(std::vector<double> v) {
    if (v.empty()) return 0;
    auto mid = v.begin() + long(v.size() / 2);
    std::nth_element(v.begin(), mid, v.end());
    return *mid;
}

// Bilinear value of a CV_8U or CV_32F image at (x, y); -1 outside the image.
double sample(const cv::Mat& img, double x, double y) {
    if (!(x >= 0 && y >= 0 && x <= img.cols - 1 && y <= img.rows - 1)) return -1;
    const int x0 = std::min(int(x), std::max(0, img.cols - 2)), y0 = std::min(int(y), std::max(0, img.rows - 2));
    const int x1 = std::min(x0 + 1, img.cols - 1), y1 = std::min(y0 + 1, img.rows - 1);
    const double fx = x - x0, fy = y - y0;
    auto at = [&](int r, int c) { return img.depth() == CV_8U ? double(img.at<uchar>(r, c)) : double(img.at<float>(r, c)); };
    return (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
}

struct EllipseFrame {
    cv::Point2d c, u, v;  // centre, unit major and minor axis directions
    double a, b;
    cv::Point2d at(double t, double scale) const { return c + scale * (a * std::cos(t) * u + b * std::sin(t) * v); }
    cv::Point2d normal(double t) const {
        cv::Point2d n = (std::cos(t) / a) * u + (std::sin(t) / b) * v;
        return n / std::max(1e-12, std::hypot(n.x, n.y));
    }
};

// Skull evidence and ring contrast: along each normal within +-w px of the ellipse, the brightest
// value; the skull is a bright ridge, so a share of points whose ridge reaches half of the ring's
// 90th percentile (and a floor of 25 grey levels), and the median ridge over the median of the
// head's inside (sampled at half the radii).
void skull_signals(const cv::Mat& gray8, const EllipseFrame& f, ReviewSignals& s) {
    const double w = std::max(3.0, 0.08 * f.b);
    std::vector<double> ridge, inside;
    for (int k = 0; k < kSamples; ++k) {
        const double t = 2 * CV_PI * k / kSamples;
        const cv::Point2d p = f.at(t, 1.0), n = f.normal(t);
        if (sample(gray8, p.x, p.y) < 0) continue;  // outside the image: the cut share covers it
        double best = 0;
        for (double o = -w; o <= w; o += 1.0) best = std::max(best, sample(gray8, p.x + o * n.x, p.y + o * n.y));
        ridge.push_back(best);
        const cv::Point2d q = f.at(t, 0.5);
        if (double v = sample(gray8, q.x, q.y); v >= 0) inside.push_back(v);
    }
    if (ridge.size() < kSamples / 8) return;
    std::vector<double> sorted = ridge;
    std::sort(sorted.begin(), sorted.end());
    const double level = std::max(25.0, 0.5 * sorted[size_t(0.9 * double(sorted.size() - 1))]);
    s.skull_evidence = double(std::count_if(ridge.begin(), ridge.end(), [&](double r) { return r >= level; })) / double(ridge.size());
    s.ring_contrast = median_of(ridge) / std::max(1.0, median_of(inside));
}

// Segmentation agreement: the probability map (in its own frame) just inside (0.9 of the radii)
// and just outside (1.1) each ellipse point.
void segmentation_signal(const Segmentation& seg, const EllipseFrame& f, ReviewSignals& s) {
    const cv::Mat& P = net_frame(seg).probability;
    if (P.empty()) return;
    const cv::Matx23d A = to_net(seg);
    auto prob = [&](cv::Point2d p) {
        return sample(P, A(0, 0) * p.x + A(0, 1) * p.y + A(0, 2), A(1, 0) * p.x + A(1, 1) * p.y + A(1, 2));
    };
    int seen = 0, agree = 0;
    for (int k = 0; k < kSamples; ++k) {
        const double t = 2 * CV_PI * k / kSamples;
        const double in = prob(f.at(t, 0.9)), out = prob(f.at(t, 1.1));
        if (in < 0 || out < 0) continue;
        ++seen;
        agree += in > 0.5 && out < 0.5;
    }
    if (seen >= kSamples / 8) s.seg_agreement = double(agree) / seen;
}

}  // namespace

double rival_share(const cv::Mat& probability) {
    if (probability.empty()) return 0;
    cv::Mat labels, stats, centroids;
    const int n = cv::connectedComponentsWithStats(probability > 0.5f, labels, stats, centroids, 8, CV_32S);
    int first = 0, second = 0;
    for (int i = 1; i < n; ++i) {
        const int area = stats.at<int>(i, cv::CC_STAT_AREA);
        if (area > first) second = first, first = area;
        else if (area > second) second = area;
    }
    return first > 0 ? double(second) / first : 0.0;
}

std::vector<Ellipse> rival_ellipses(const cv::Mat& probability, const Letterbox& lb) {
    std::vector<Ellipse> out;
    if (probability.empty()) return out;
    cv::Mat labels, stats, centroids;
    const int n = cv::connectedComponentsWithStats(probability > 0.5f, labels, stats, centroids, 8, CV_32S);
    std::vector<std::pair<int, int>> by_area;  // (area, label)
    for (int i = 1; i < n; ++i) by_area.emplace_back(stats.at<int>(i, cv::CC_STAT_AREA), i);
    std::sort(by_area.rbegin(), by_area.rend());
    for (size_t k = 1; k < by_area.size() && int(out.size()) < kMaxRivals; ++k) {
        const auto [area, label] = by_area[k];
        if (area < 16 || area < kRivalMinShare * by_area[0].first) break;
        const cv::Rect box(stats.at<int>(label, cv::CC_STAT_LEFT), stats.at<int>(label, cv::CC_STAT_TOP),
                           stats.at<int>(label, cv::CC_STAT_WIDTH), stats.at<int>(label, cv::CC_STAT_HEIGHT));
        const cv::Moments mo = cv::moments(labels(box) == label, true);
        if (mo.m00 <= 0) continue;
        // Covariance in the network frame, then in input pixels (each axis divided by its scale).
        const double sx = lb.scale_x, sy = lb.scale_y;
        const double cxx = mo.mu20 / mo.m00 / (sx * sx), cyy = mo.mu02 / mo.m00 / (sy * sy),
                     cxy = mo.mu11 / mo.m00 / (sx * sy);
        const double mid = 0.5 * (cxx + cyy), half = std::sqrt(0.25 * (cxx - cyy) * (cxx - cyy) + cxy * cxy);
        const cv::Point2d c = lb.to_image({box.x + mo.m10 / mo.m00, box.y + mo.m01 / mo.m00});
        Ellipse e{c.x, c.y, 2 * std::sqrt(mid + half), 2 * std::sqrt(std::max(mid - half, 0.0)),
                  0.5 * std::atan2(2 * cxy, cxx - cyy)};
        if (e.normalized().valid()) out.push_back(e.normalized());
    }
    return out;
}

namespace {

// The rules on the numbers alone (a measurement or an ellipse given by hand).
void add_hc_reason(Measurement& m) {
    if (m.hc_mm < 40 || m.hc_mm > 400)
        m.reasons.push_back("HC " + fixed_text(m.hc_mm) + " mm is outside the plausible 40..400 mm");
}

void add_cephalic_index_reason(Measurement& m, double min_ci, double max_ci) {
    if (m.cephalic_index < min_ci || m.cephalic_index > max_ci)
        m.reasons.push_back("cephalic index " + fixed_text(m.cephalic_index) + " outside " + fixed_text(min_ci, 0) + ".." +
                            fixed_text(max_ci, 0) + ": an unusual head shape, or not the head; check the plane and the ellipse");
}

// The rules on how the head was found and fitted: detection score, certainty, fit RMS, inlier
// share, cut share and the outline with no skull under it.
void add_image_reasons(Measurement& m, const MeasureOptions& opt) {
    if (m.presence < opt.min_presence)
        m.reasons.push_back("low detection confidence (" + fixed_text(m.presence, 2) +
                            "): the image may not show a head in the HC plane");
    if (m.certainty < opt.min_certainty)
        m.reasons.push_back("uncertain segmentation (certainty " + fixed_text(m.certainty, 2) +
                            "): check the ellipse against the skull");
    if (m.fit_rms_px > opt.max_fit_rms_px)
        m.reasons.push_back("poor ellipse fit (RMS " + fixed_text(m.fit_rms_px, 2) +
                            " px): the outline found is not a clean ellipse; check it");
    const double inlier_share = double(m.inliers) / std::max(1, m.boundary_points);
    if (inlier_share < 0.8)
        m.reasons.push_back("boundary is not elliptical (" + fixed_text(100 * (1 - inlier_share), 0) +
                            "% of points rejected): the head may be taken with the fluid or a structure beside it");
    const double cut_share = double(m.cut_points) / std::max(1, m.cut_points + m.boundary_points);
    if (cut_share > opt.max_cut_fraction)
        m.reasons.push_back("head cut by the image border or sector edge (" + fixed_text(100 * cut_share, 0) +
                            "% of the boundary): the hidden part of the ellipse is a guess");
    if (m.signals.skull_evidence >= 0) {
        // The share of the outline with no skull under it: where the ellipse edge is placed by
        // guess (a far side that fades out or lies in shadow; models/MODEL_CARD.md).
        const double unseen = 1 - m.signals.skull_evidence;
        if (unseen > opt.max_unseen_outline_share)
            m.reasons.push_back("skull not seen under " + fixed_text(100 * unseen, 0) + "% of the outline (" +
                                fixed_text(unseen * m.hc_mm, 0) + " of " + fixed_text(m.hc_mm, 0) +
                                " mm): check the ellipse where the skull is faint or in shadow");
    }
}

}  // namespace

namespace {

// How a refusal names the check's most likely class other than a head (kHeadCheckPlanes).
std::string plane_words(const std::string& plane) {
    static const std::pair<const char*, const char*> kWords[] = {
        {"abdomen", "an abdomen"},         {"femur", "a femur"},
        {"thorax", "a thorax or heart view"}, {"cervix", "the cervix"},
        {"other", "another plane"},        {"off_target", "a structure other than the head"}};
    for (const auto& [name, words] : kWords)
        if (plane == name) return words;
    return "another plane";
}

}  // namespace

std::optional<Error> review_head_check(Measurement& m, double refuse_below, double review_below) {
    const double s = m.signals.head_check;
    if (s < 0) return std::nullopt;
    if (s < refuse_below)
        return make_error(ErrorKind::NotAHeadPlane,
                          "'" + m.source + "' is not a fetal head in the HC plane: the outline found looks most like " +
                              plane_words(m.signals.head_check_other) + " (head check " + fixed_text(s, 3) + ", refused below " +
                              fixed_text(refuse_below, 3) + "); measure an image of the head in the trans-thalamic plane");
    if (s < review_below) {
        m.reasons.push_back("the outline may be the trunk or another structure, not the head (head check " + fixed_text(s, 2) +
                            "): check that the ellipse lies on the skull");
        decide_quality(m);
    }
    return std::nullopt;
}

void decide_quality(Measurement& m) { m.quality = m.reasons.empty() ? "ok" : "review"; }

void review_summary(Measurement& m, const VideoSummary& s, const VideoOptions& opt) {
    m.reasons.clear();
    if (s.ok == 0) {
        m.reasons.push_back("no frame judged ok (" + std::to_string(s.measured) + " of " + std::to_string(s.frames) +
                            " frames measured): no estimate; check the frames");
        decide_quality(m);
        return;
    }
    const int needed = std::min(std::max(1, opt.min_ok_frames), s.frames);
    if (s.ok < needed)
        m.reasons.push_back("only " + std::to_string(s.ok) + " of " + std::to_string(s.frames) +
                            " frames judged ok: too few for a reliable median; check the frames");
    const double median_hc = m.hc_mm;
    if (median_hc > 0 && s.hc_iqr_mm > opt.max_hc_iqr_share * median_hc)
        m.reasons.push_back("the ok frames disagree: their HC spreads over " + fixed_text(s.hc_iqr_mm) +
                            " mm (interquartile range), " + fixed_text(100 * s.hc_iqr_mm / median_hc) +
                            "% of the median " + fixed_text(median_hc) + " mm (limit " +
                            fixed_text(100 * opt.max_hc_iqr_share, 0) +
                            "%); check that the frames show the same head in the same plane");
    decide_quality(m);
}

void review_measurement(Measurement& m, const MeasureOptions& opt) {
    add_hc_reason(m);
    add_image_reasons(m, opt);
    add_cephalic_index_reason(m, opt.min_cephalic_index, opt.max_cephalic_index);
    decide_quality(m);
}

void review_ellipse(Measurement& m, const MeasureOptions& opt) {
    add_hc_reason(m);
    add_cephalic_index_reason(m, opt.min_cephalic_index, opt.max_cephalic_index);
    decide_quality(m);
}

void keep_earlier_review(Measurement& m, bool flagged, const std::vector<std::string>& reasons) {
    if (flagged) m.quality = "review";
    for (const std::string& r : reasons)
        if (std::find(m.reasons.begin(), m.reasons.end(), r) == m.reasons.end()) m.reasons.push_back(r);
}

ReviewSignals review_signals(const Segmentation& seg, const cv::Mat& gray8, const Ellipse& ellipse_px) {
    ReviewSignals s;
    s.refine_presence = seg.refine_presence;
    s.rival_share = seg.rival_share;
    s.second_look = seg.second_look;
    s.member_disagreement = seg.member_disagreement;
    const Ellipse e = ellipse_px.normalized();
    if (!e.valid() || gray8.empty()) return s;
    s.head_fraction = 2 * e.a / std::max(gray8.cols, gray8.rows);
    const EllipseFrame f{{e.cx, e.cy}, {std::cos(e.angle), std::sin(e.angle)}, {-std::sin(e.angle), std::cos(e.angle)}, e.a, e.b};
    skull_signals(gray8, f, s);
    segmentation_signal(seg, f, s);
    return s;
}

}  // namespace fetalhc
