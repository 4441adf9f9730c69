// Sub-pixel head boundary from the network's probability map.
#include "fetalhc/segmenter.h"

#include <opencv2/imgproc.hpp>

#include <cmath>

namespace fetalhc {
namespace {

// Convex hull of the ultrasound sector in network coordinates: pixels brighter than the black
// surround, small gaps closed, largest region kept. Empty when the image has no dark surround.
std::vector<cv::Point> sector_hull(const cv::Mat& gray8, const Letterbox& lb) {
    if (gray8.empty()) return {};
    cv::Mat small = lb.apply(gray8, cv::INTER_AREA);
    cv::Mat on = small > 3;
    cv::morphologyEx(on, on, cv::MORPH_CLOSE, cv::getStructuringElement(cv::MORPH_ELLIPSE, {7, 7}));
    cv::Mat labels, stats, centroids;
    int n = cv::connectedComponentsWithStats(on, labels, stats, centroids, 8, CV_32S);
    int best = 0, best_area = 0;
    for (int i = 1; i < n; ++i)
        if (stats.at<int>(i, cv::CC_STAT_AREA) > best_area) best = i, best_area = stats.at<int>(i, cv::CC_STAT_AREA);
    if (best == 0) return {};
    std::vector<cv::Point> pts;
    cv::findNonZero(labels == best, pts);
    std::vector<cv::Point> hull;
    cv::convexHull(pts, hull);
    // A hull that fills the whole letterbox area has no sector edge worth testing.
    if (cv::contourArea(hull) > 0.97 * lb.resized.area()) return {};
    return hull;
}

}  // namespace

Boundary extract_boundary(const Segmentation& seg, const cv::Mat& gray8) {
    Boundary out;
    const cv::Mat& P = seg.net_probability;
    if (P.empty()) return out;
    const Letterbox& lb = seg.letterbox;
    const cv::Rect roi(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height);

    cv::Mat inside = cv::Mat::zeros(P.size(), CV_8U);
    inside(roi).setTo(255, P(roi) >= 0.5f);
    cv::Mat labels, stats, centroids;
    int n = cv::connectedComponentsWithStats(inside, labels, stats, centroids, 8, CV_32S);
    int best = 0, best_area = 0;
    for (int i = 1; i < n; ++i)
        if (stats.at<int>(i, cv::CC_STAT_AREA) > best_area) best = i, best_area = stats.at<int>(i, cv::CC_STAT_AREA);
    // A plausible head covers more than a few dozen network pixels.
    if (best == 0 || best_area < 30) return out;

    out.found = true;
    out.area_px = best_area / (lb.scale_x * lb.scale_y);

    // Certainty: mean |2p-1| over the component's bounding box grown by 10%.
    cv::Rect bb(stats.at<int>(best, cv::CC_STAT_LEFT), stats.at<int>(best, cv::CC_STAT_TOP),
                stats.at<int>(best, cv::CC_STAT_WIDTH), stats.at<int>(best, cv::CC_STAT_HEIGHT));
    bb = cv::Rect(bb.x - bb.width / 10, bb.y - bb.height / 10, bb.width * 12 / 10, bb.height * 12 / 10) & roi;
    cv::Mat conf = cv::abs(P(bb) * 2.0 - 1.0);
    out.mean_confidence = cv::mean(conf)[0];

    const std::vector<cv::Point> hull = sector_hull(gray8, lb);
    auto is_cut = [&](cv::Point2d q) {
        // Within a pixel of the letterbox edge: the head runs out of the image there.
        if (q.x < roi.x + 1.0 || q.y < roi.y + 1.0 || q.x > roi.x + roi.width - 2.0 || q.y > roi.y + roi.height - 2.0)
            return true;
        return !hull.empty() && cv::pointPolygonTest(hull, cv::Point2f(float(q.x), float(q.y)), true) < 1.5;
    };
    auto add = [&](double x, double y) {
        cv::Point2d q(x, y);
        (is_cut(q) ? out.cut_points : out.points).push_back(lb.to_image(q));
    };

    // 0.5 crossings on every pixel edge between a component pixel and a background pixel.
    for (int y = roi.y; y < roi.y + roi.height; ++y) {
        const int* L = labels.ptr<int>(y);
        const float* p = P.ptr<float>(y);
        for (int x = roi.x; x < roi.x + roi.width; ++x) {
            const bool in = L[x] == best;
            if (x + 1 < roi.x + roi.width) {
                const bool in_r = L[x + 1] == best;
                if (in != in_r && (in ? p[x + 1] : p[x]) < 0.5f) {
                    const double t = (0.5 - p[x]) / (double(p[x + 1]) - p[x]);
                    add(x + std::clamp(t, 0.0, 1.0), y);
                }
            }
            if (y + 1 < roi.y + roi.height) {
                const float pd = P.ptr<float>(y + 1)[x];
                const bool in_d = labels.ptr<int>(y + 1)[x] == best;
                if (in != in_d && (in ? pd : p[x]) < 0.5f) {
                    const double t = (0.5 - p[x]) / (double(pd) - p[x]);
                    add(x, y + std::clamp(t, 0.0, 1.0));
                }
            }
            // A component pixel on the letterbox edge: the head is cut by the image border.
            if (in && (x == roi.x || y == roi.y || x == roi.x + roi.width - 1 || y == roi.y + roi.height - 1))
                out.cut_points.push_back(lb.to_image({double(x), double(y)}));
        }
    }
    return out;
}

}  // namespace fetalhc
