// Boundary extraction from a probability map: synthetic maps whose 0.5 iso-contour is a known ellipse.
#include "fetalhc/ellipse.h"
#include "fetalhc/segmenter.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <cmath>

using namespace fetalhc;

namespace {

// Probability map at the network resolution whose 0.5 level set is `e` (image pixels):
// p = sigmoid(-signed distance / width), with the distance measured in image pixels.
Segmentation synthetic(const Ellipse& e, cv::Size image, cv::Size net, double width_px = 3.0) {
    Segmentation s;
    s.letterbox = Letterbox::fit(image, net);
    s.net_probability = cv::Mat::zeros(net, CV_32F);
    const auto& lb = s.letterbox;
    for (int y = lb.offset_y; y < lb.offset_y + lb.resized.height; ++y)
        for (int x = lb.offset_x; x < lb.offset_x + lb.resized.width; ++x) {
            cv::Point2d p = lb.to_image({double(x), double(y)});
            const double c = std::cos(e.angle), sn = std::sin(e.angle);
            const double u = c * (p.x - e.cx) + sn * (p.y - e.cy), v = -sn * (p.x - e.cx) + c * (p.y - e.cy);
            const bool outside = (u / e.a) * (u / e.a) + (v / e.b) * (v / e.b) > 1;
            const double d = distance_to_ellipse(e, p) * (outside ? 1 : -1);
            s.net_probability.at<float>(y, x) = float(1 / (1 + std::exp(d / width_px)));
        }
    s.presence = 0.99f;
    return s;
}

double angle_diff(double a, double b) {
    double d = std::fmod(std::abs(a - b), CV_PI);
    return std::min(d, CV_PI - d);
}

}  // namespace

TEST(Letterbox, RoundTripsPixelCoordinates) {
    Letterbox lb = Letterbox::fit({800, 540}, {288, 192});
    EXPECT_LE(lb.resized.width, 288);
    EXPECT_LE(lb.resized.height, 192);
    for (cv::Point2d p : {cv::Point2d(0, 0), cv::Point2d(799, 539), cv::Point2d(123.4, 456.7)}) {
        cv::Point2d q = lb.to_image(lb.to_net(p));
        EXPECT_NEAR(q.x, p.x, 1e-9);
        EXPECT_NEAR(q.y, p.y, 1e-9);
    }
}

// Tolerance: the map is sampled every ~2.8 image pixels; linear interpolation of a smooth sigmoid
// across one sample places the crossing within a small fraction of a pixel, and the fit averages
// hundreds of crossings. 0.5 px on centre and axes is well above that error and far below the
// ~1 px that would move HC by ~2 mm.
TEST(ExtractBoundary, SubPixelContourRecoversEllipse) {
    const Ellipse truth{401.3, 262.8, 210.4, 165.2, 0.6};
    Segmentation s = synthetic(truth, {800, 540}, {288, 192});
    Boundary b = extract_boundary(s, cv::Mat());
    ASSERT_TRUE(b.found);
    EXPECT_TRUE(b.cut_points.empty());
    EllipseFit fit = fit_ellipse(b.points);
    ASSERT_TRUE(fit.ok) << fit.message;
    EXPECT_NEAR(fit.ellipse.cx, truth.cx, 0.5);
    EXPECT_NEAR(fit.ellipse.cy, truth.cy, 0.5);
    EXPECT_NEAR(fit.ellipse.a, truth.a, 0.5);
    EXPECT_NEAR(fit.ellipse.b, truth.b, 0.5);
    EXPECT_LT(angle_diff(fit.ellipse.angle, truth.angle), 0.01);
    EXPECT_NEAR(ramanujan_perimeter(fit.ellipse) / ramanujan_perimeter(truth), 1.0, 0.002);
}

TEST(ExtractBoundary, HeadCutByImageBorderIsFittedOnTheVisibleArc) {
    const Ellipse truth{640, 270, 260, 200, 0.2};  // right part beyond x = 799
    Segmentation s = synthetic(truth, {800, 540}, {288, 192});
    Boundary b = extract_boundary(s, cv::Mat());
    ASSERT_TRUE(b.found);
    EXPECT_GT(b.cut_points.size(), 20u);
    for (const auto& p : b.points) EXPECT_LT(p.x, 797.0);
    EllipseFit fit = fit_ellipse(b.points);
    ASSERT_TRUE(fit.ok) << fit.message;
    // An arc is less constraining than a full ellipse: 1.5 px still keeps HC within ~1%.
    EXPECT_NEAR(fit.ellipse.cx, truth.cx, 1.5);
    EXPECT_NEAR(fit.ellipse.a, truth.a, 1.5);
    EXPECT_NEAR(fit.ellipse.b, truth.b, 1.5);
}

TEST(ExtractBoundary, PointsOnTheSectorEdgeAreMarkedCut) {
    // Ultrasound sector: bright inside a triangle-like fan, black outside. The head pokes out of
    // the fan's left edge, where the network's boundary is not skull.
    cv::Mat gray = cv::Mat::zeros(540, 800, CV_8U);
    std::vector<cv::Point> fan{{400, 0}, {799, 539}, {0, 539}};
    cv::fillConvexPoly(gray, fan, cv::Scalar(90));
    const Ellipse truth{300, 330, 160, 120, 0.0};
    Segmentation s = synthetic(truth, gray.size(), {288, 192});
    Boundary b = extract_boundary(s, gray);
    ASSERT_TRUE(b.found);
    EXPECT_GT(b.cut_points.size(), 10u);
    // No kept point lies outside the fan (left of the line from (400,0) to (0,539)).
    for (const auto& p : b.points) {
        const double side = (0 - 400) * (p.y - 0) - (539 - 0) * (p.x - 400);  // > 0: left of the edge
        EXPECT_LT(side, 0.0) << p;
    }
    EllipseFit fit = fit_ellipse(b.points);
    ASSERT_TRUE(fit.ok);
    EXPECT_NEAR(fit.ellipse.a, truth.a, 2.0);
}

TEST(ExtractBoundary, EmptyMapFindsNoHead) {
    Segmentation s;
    s.letterbox = Letterbox::fit({800, 540}, {288, 192});
    s.net_probability = cv::Mat::zeros(192, 288, CV_32F);
    EXPECT_FALSE(extract_boundary(s, cv::Mat()).found);
}

TEST(ExtractBoundary, LargestComponentWins) {
    const Ellipse truth{400, 270, 150, 120, 1.0};
    Segmentation s = synthetic(truth, {800, 540}, {288, 192});
    cv::circle(s.net_probability, {30, 30}, 5, cv::Scalar(1.0), cv::FILLED);  // a small blob elsewhere
    Boundary b = extract_boundary(s, cv::Mat());
    ASSERT_TRUE(b.found);
    for (const auto& p : b.points) EXPECT_GT(p.x, 200.0);
}
