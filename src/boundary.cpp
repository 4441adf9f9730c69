// Sub-pixel head boundary from the network's probability map.
#include "fetalhc/segmentation.h"

#include "geometry.h"
#include "net_frame.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>

namespace fetalhc {
namespace {

// Convex hull of the ultrasound sector in the network frame: pixels brighter than the black
// surround, small gaps closed, largest region kept. Empty when the image has no dark surround
// or the sector covers the whole valid area (then it has no edge worth testing).
std::vector<cv::Point> sector_hull(const cv::Mat& gray_net, double valid_area) {
    if (gray_net.empty()) return {};
    cv::Mat on = gray_net > 3;
    cv::morphologyEx(on, on, cv::MORPH_CLOSE, cv::getStructuringElement(cv::MORPH_ELLIPSE, {7, 7}));
    cv::Mat labels, stats, centroids;
    int n = cv::connectedComponentsWithStats(on, labels, stats, centroids, 8, CV_32S);
    int best = 0, best_area = 0;
    for (int i = 1; i < n; ++i)
        if (stats.at<int>(i, cv::CC_STAT_AREA) > best_area) best = i, best_area = stats.at<int>(i, cv::CC_STAT_AREA);
    if (best == 0) return {};
    // The hull of a region is the hull of its outer contour (far fewer points than its pixels).
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(labels == best, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
    std::vector<cv::Point> pts;
    for (const auto& c : contours) pts.insert(pts.end(), c.begin(), c.end());
    if (pts.size() < 3) return {};
    std::vector<cv::Point> hull;
    cv::convexHull(pts, hull);
    if (cv::contourArea(hull) > 0.97 * valid_area) return {};
    return hull;
}

// The network frame's valid area and what is derived from it.
struct FrameArea {
    // CV_8U, 255 on network pixels that show the image (not letterbox padding or the outside of a crop).
    cv::Mat valid;
    // The input image in the network frame; empty when no image was given.
    cv::Mat gray_net;
    // CV_32F, distance (net pixels) to the nearest pixel that is not valid; the frame's edge counts as such.
    cv::Mat dist;
};

FrameArea frame_area(const Segmentation& seg, const cv::Mat& gray8, const cv::Matx23d& A) {
    const NetFrame& net = net_frame(seg);
    const cv::Mat& P = net.probability;
    const Letterbox& lb = seg.letterbox;
    FrameArea f;
    f.valid = cv::Mat::zeros(P.size(), CV_8U);
    if (!seg.refined) {
        f.valid(cv::Rect(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height)).setTo(255);
        if (!gray8.empty()) f.gray_net = net.input.empty() ? lb.apply(gray8, cv::INTER_AREA) : net.input;
    } else {
        const cv::Mat ones(lb.image_size, CV_8U, cv::Scalar(255));
        cv::warpAffine(ones, f.valid, A, P.size(), cv::INTER_NEAREST, cv::BORDER_CONSTANT, 0);
        if (!gray8.empty()) f.gray_net = net.input.empty() ? warp_to_frame(gray8, A, P.size()) : net.input;
    }
    cv::Mat padded;
    cv::copyMakeBorder(f.valid, padded, 1, 1, 1, 1, cv::BORDER_CONSTANT, 0);
    cv::distanceTransform(padded, f.dist, cv::DIST_L2, 3);
    f.dist = f.dist(cv::Rect(1, 1, P.cols, P.rows));
    return f;
}

// The largest 8-connected region of P >= 0.5 inside the valid area (label 0 when there is none).
struct HeadComponent {
    cv::Mat labels;  // CV_32S component labels
    int label = 0;
    int area = 0;    // network pixels
    cv::Rect box;
};

HeadComponent largest_component(const cv::Mat& P, const cv::Mat& valid) {
    cv::Mat inside = cv::Mat::zeros(P.size(), CV_8U);
    inside.setTo(255, (P >= 0.5f) & valid);
    HeadComponent h;
    cv::Mat stats, centroids;
    int n = cv::connectedComponentsWithStats(inside, h.labels, stats, centroids, 8, CV_32S);
    for (int i = 1; i < n; ++i)
        if (stats.at<int>(i, cv::CC_STAT_AREA) > h.area) h.label = i, h.area = stats.at<int>(i, cv::CC_STAT_AREA);
    h.box = cv::Rect(stats.at<int>(h.label, cv::CC_STAT_LEFT), stats.at<int>(h.label, cv::CC_STAT_TOP),
                     stats.at<int>(h.label, cv::CC_STAT_WIDTH), stats.at<int>(h.label, cv::CC_STAT_HEIGHT));
    return h;
}

// Certainty: mean |2p-1| over the component's bounding box grown by 10% (valid pixels only).
double mean_certainty(const cv::Mat& P, const cv::Mat& valid, cv::Rect bb) {
    bb = cv::Rect(bb.x - bb.width / 10, bb.y - bb.height / 10, bb.width * 12 / 10, bb.height * 12 / 10) &
         cv::boundingRect(valid);
    cv::Mat conf = cv::abs(P(bb) * 2.0 - 1.0);
    return cv::mean(conf, valid(bb))[0];
}

// Takes boundary points in the network frame and files them, mapped to the image, as visible
// points or as cut points (where the head runs out of the image or the ultrasound sector).
struct PointSink {
    const cv::Matx23d& Ai;  // network frame -> image
    const cv::Mat& dist;    // FrameArea::dist
    const std::vector<cv::Point>& hull;  // sector_hull, may be empty
    Boundary& out;

    cv::Point2d to_image(cv::Point2d q) const {
        return cv::Point2d(Ai(0, 0) * q.x + Ai(0, 1) * q.y + Ai(0, 2), Ai(1, 0) * q.x + Ai(1, 1) * q.y + Ai(1, 2));
    }
    bool is_cut(cv::Point2d q) const {
        // Within about a pixel of the image's edge in the frame: the head runs out of the image there.
        const int xi = std::clamp(int(std::lround(q.x)), 0, dist.cols - 1);
        const int yi = std::clamp(int(std::lround(q.y)), 0, dist.rows - 1);
        if (dist.at<float>(yi, xi) < 2.0f) return true;
        return !hull.empty() && cv::pointPolygonTest(hull, cv::Point2f(float(q.x), float(q.y)), true) < 1.5;
    }
    void add(double x, double y) {
        cv::Point2d q(x, y);
        (is_cut(q) ? out.cut_points : out.points).push_back(to_image(q));
    }
    void add_cut(int x, int y) { out.cut_points.push_back(to_image({double(x), double(y)})); }
};

// 0.5 crossings on every pixel edge between a component pixel and a valid background pixel, and
// the component pixels on the edge of the valid area, in raster order.
void trace_crossings(const cv::Mat& P, const FrameArea& area, const HeadComponent& head, PointSink& sink) {
    const cv::Mat& valid = area.valid;
    const cv::Mat& labels = head.labels;
    const int best = head.label;
    for (int y = 0; y < P.rows; ++y) {
        const int* L = labels.ptr<int>(y);
        const float* p = P.ptr<float>(y);
        const uchar* V = valid.ptr<uchar>(y);
        for (int x = 0; x < P.cols; ++x) {
            if (!V[x]) continue;
            const bool in = L[x] == best;
            if (x + 1 < P.cols && V[x + 1]) {
                const bool in_r = L[x + 1] == best;
                if (in != in_r && (in ? p[x + 1] : p[x]) < 0.5f) {
                    const double t = (0.5 - p[x]) / (double(p[x + 1]) - p[x]);
                    sink.add(x + std::clamp(t, 0.0, 1.0), y);
                }
            }
            if (y + 1 < P.rows && valid.ptr<uchar>(y + 1)[x]) {
                const float pd = P.ptr<float>(y + 1)[x];
                const bool in_d = labels.ptr<int>(y + 1)[x] == best;
                if (in != in_d && (in ? pd : p[x]) < 0.5f) {
                    const double t = (0.5 - p[x]) / (double(pd) - p[x]);
                    sink.add(x, y + std::clamp(t, 0.0, 1.0));
                }
            }
            // A component pixel on the edge of the valid area: the head is cut by the image border.
            if (in && area.dist.at<float>(y, x) < 1.5f) sink.add_cut(x, y);
        }
    }
}

}  // namespace

Boundary extract_boundary(const Segmentation& seg, const cv::Mat& gray8) {
    Boundary out;
    const cv::Mat& P = net_frame(seg).probability;
    if (P.empty()) return out;
    const cv::Matx23d A = to_net(seg);
    cv::Matx23d Ai;
    cv::invertAffineTransform(A, Ai);
    const double det = std::abs(A(0, 0) * A(1, 1) - A(0, 1) * A(1, 0));  // net pixels per image pixel

    const FrameArea area = frame_area(seg, gray8, A);
    const HeadComponent head = largest_component(P, area.valid);
    // A plausible head covers more than a few dozen network pixels.
    if (head.label == 0 || head.area < 30) return out;

    out.found = true;
    out.area_px = head.area / det;
    out.mean_confidence = mean_certainty(P, area.valid, head.box);

    const std::vector<cv::Point> hull = sector_hull(area.gray_net, cv::countNonZero(area.valid));
    PointSink sink{Ai, area.dist, hull, out};
    trace_crossings(P, area, head, sink);
    return out;
}

Boundary mask_boundary(const cv::Mat& mask8) {
    if (mask8.empty()) return {};
    const cv::Mat head = mask8 >= 128;
    cv::Mat probability;
    head.convertTo(probability, CV_32F, 1.0 / 255);
    return extract_boundary(segmentation_at_image(probability), cv::Mat());
}

std::vector<cv::Point> mask_outline(const cv::Mat& mask) {
    if (mask.empty()) return {};
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(mask != 0, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
    if (contours.empty()) return {};
    size_t best = 0;
    double best_area = cv::contourArea(contours[0]);
    for (size_t i = 1; i < contours.size(); ++i)
        if (const double a = cv::contourArea(contours[i]); a > best_area) best = i, best_area = a;
    return contours[best];
}

}  // namespace fetalhc
