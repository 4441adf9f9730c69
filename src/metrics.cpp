#include "fetalhc/metrics.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <numeric>

namespace fetalhc {

double dice(const cv::Mat& a, const cv::Mat& b) {
    const double na = cv::countNonZero(a), nb = cv::countNonZero(b);
    if (na + nb == 0) return 1.0;
    cv::Mat both;
    cv::bitwise_and(a != 0, b != 0, both);
    return 2.0 * cv::countNonZero(both) / (na + nb);
}

double iou(const cv::Mat& a, const cv::Mat& b) {
    cv::Mat both, any;
    cv::bitwise_and(a != 0, b != 0, both);
    cv::bitwise_or(a != 0, b != 0, any);
    const double u = cv::countNonZero(any);
    return u == 0 ? 1.0 : cv::countNonZero(both) / u;
}

namespace {

cv::Mat outline(const cv::Mat& m) {
    cv::Mat edge = cv::Mat::zeros(m.size(), CV_8U);
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(m != 0, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
    cv::drawContours(edge, contours, -1, cv::Scalar(255), 1);
    return edge;
}

// Largest distance from any outline pixel of `from` to the outline of `to`.
double directed(const cv::Mat& from_edge, const cv::Mat& to_edge) {
    cv::Mat dist;
    cv::distanceTransform(to_edge == 0, dist, cv::DIST_L2, cv::DIST_MASK_PRECISE);
    double mx = 0;
    cv::minMaxLoc(dist, nullptr, &mx, nullptr, nullptr, from_edge);
    return mx;
}

}  // namespace

double hausdorff_px(const cv::Mat& a, const cv::Mat& b) {
    cv::Mat ea = outline(a), eb = outline(b);
    if (cv::countNonZero(ea) == 0 || cv::countNonZero(eb) == 0) return std::numeric_limits<double>::infinity();
    return std::max(directed(ea, eb), directed(eb, ea));
}

double average_precision(const std::vector<Detection>& dets, double t) {
    if (dets.empty()) return 0;
    std::vector<const Detection*> ranked;
    for (const auto& d : dets)
        if (d.detected) ranked.push_back(&d);
    std::stable_sort(ranked.begin(), ranked.end(), [](auto* x, auto* y) { return x->score > y->score; });
    const double positives = double(dets.size());  // one reference object per image
    std::vector<double> prec, rec;
    int tp = 0, fp = 0;
    for (auto* d : ranked) {
        (d->iou >= t ? tp : fp)++;
        prec.push_back(double(tp) / (tp + fp));
        rec.push_back(tp / positives);
    }
    // All-point interpolation: precision made monotone from the right, integrated over recall.
    for (int i = int(prec.size()) - 2; i >= 0; --i) prec[i] = std::max(prec[i], prec[i + 1]);
    double ap = 0, last_r = 0;
    for (size_t i = 0; i < prec.size(); ++i) {
        ap += (rec[i] - last_r) * prec[i];
        last_r = rec[i];
    }
    return ap;
}

double recall(const std::vector<Detection>& dets, double t) {
    if (dets.empty()) return 0;
    const auto hits = std::count_if(dets.begin(), dets.end(), [t](const Detection& d) { return d.detected && d.iou >= t; });
    return double(hits) / dets.size();
}

double quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const double pos = q * (v.size() - 1);
    const size_t i = size_t(pos);
    return i + 1 < v.size() ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[i];
}

}  // namespace fetalhc
