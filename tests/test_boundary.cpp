// Boundary extraction from a probability map: synthetic maps whose 0.5 iso-contour is a known ellipse.
#include "fetalhc/ellipse.h"
#include "fetalhc/segmenter.h"
#include "net_frame.h"  // internal (src/): the map in the network frame

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>

using namespace fetalhc;

namespace {

// Probability map at the network resolution whose 0.5 level set is `e` (image pixels):
// p = sigmoid(-signed distance / width), with the distance measured in image pixels.
Segmentation synthetic(const Ellipse& e, cv::Size image, cv::Size net, double width_px = 3.0) {
    Segmentation s;
    s.letterbox = Letterbox::fit(image, net);
    cv::Mat prob = cv::Mat::zeros(net, CV_32F);
    const auto& lb = s.letterbox;
    for (int y = lb.offset_y; y < lb.offset_y + lb.resized.height; ++y)
        for (int x = lb.offset_x; x < lb.offset_x + lb.resized.width; ++x) {
            cv::Point2d p = lb.to_image({double(x), double(y)});
            const double c = std::cos(e.angle), sn = std::sin(e.angle);
            const double u = c * (p.x - e.cx) + sn * (p.y - e.cy), v = -sn * (p.x - e.cx) + c * (p.y - e.cy);
            const bool outside = (u / e.a) * (u / e.a) + (v / e.b) * (v / e.b) > 1;
            const double d = distance_to_ellipse(e, p) * (outside ? 1 : -1);
            prob.at<float>(y, x) = float(1 / (1 + std::exp(d / width_px)));
        }
    set_net_frame(s, prob);
    s.presence = 0.99f;
    return s;
}

double angle_diff(double a, double b) {
    double d = std::fmod(std::abs(a - b), CV_PI);
    return std::min(d, CV_PI - d);
}

}  // namespace

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
    set_net_frame(s, cv::Mat::zeros(192, 288, CV_32F));
    EXPECT_FALSE(extract_boundary(s, cv::Mat()).found);
}

TEST(ExtractBoundary, LargestComponentWins) {
    const Ellipse truth{400, 270, 150, 120, 1.0};
    Segmentation s = synthetic(truth, {800, 540}, {288, 192});
    cv::Mat prob = net_frame(s).probability.clone();
    cv::circle(prob, {30, 30}, 5, cv::Scalar(1.0), cv::FILLED);  // a small blob elsewhere
    set_net_frame(s, prob);
    Boundary b = extract_boundary(s, cv::Mat());
    ASSERT_TRUE(b.found);
    for (const auto& p : b.points) EXPECT_GT(p.x, 200.0);
}

// ---- binary masks (mask_boundary, mask_outline) --------------------------------------------------

// A mask read as a 0/1 map puts every boundary point on a pixel edge between a head pixel and a
// background pixel: exactly half-way between two pixel centres. A rasterized ellipse has its
// pixel-centre boundary within a pixel of the true curve, and a fit over ~1000 such points
// averages that staircase out: 0.3 px on the centre and 0.5 px on the axes (about 0.3% of HC here).
TEST(MaskBoundary, RasterizedEllipseIsRecoveredWithinAFractionOfAPixel) {
    const Ellipse truth{300.5, 210.25, 150, 110, 2.2};
    const Boundary b = mask_boundary(rasterize(truth, {640, 480}));
    ASSERT_TRUE(b.found);
    EXPECT_TRUE(b.cut_points.empty());
    EXPECT_GT(b.points.size(), 500u);
    // The area of the region in pixels: pi a b up to the staircase along the outline.
    EXPECT_NEAR(b.area_px / (CV_PI * truth.a * truth.b), 1.0, 0.01);
    EXPECT_NEAR(b.mean_confidence, 1.0, 1e-9);  // a binary map is certain everywhere
    const EllipseFit fit = fit_ellipse(b.points);
    ASSERT_TRUE(fit.ok) << fit.message;
    EXPECT_NEAR(fit.ellipse.cx, truth.cx, 0.3);
    EXPECT_NEAR(fit.ellipse.cy, truth.cy, 0.3);
    EXPECT_NEAR(fit.ellipse.a, truth.a, 0.5);
    EXPECT_NEAR(fit.ellipse.b, truth.b, 0.5);
    EXPECT_LT(angle_diff(fit.ellipse.angle, truth.angle), 0.01);
}

// Exact identity: a white rectangle of pixels x 10..59, y 20..49 has its edges at x = 9.5 and
// 59.5, y = 19.5 and 49.5.
TEST(MaskBoundary, PointsLieOnThePixelEdgesOfTheRegion) {
    cv::Mat mask = cv::Mat::zeros(100, 120, CV_8U);
    mask(cv::Rect(10, 20, 50, 30)).setTo(255);
    const Boundary b = mask_boundary(mask);
    ASSERT_TRUE(b.found);
    EXPECT_EQ(b.area_px, 50.0 * 30.0);
    ASSERT_FALSE(b.points.empty());
    for (const auto& p : b.points) {
        const bool on_vertical = (p.x == 9.5 || p.x == 59.5) && p.y >= 20 && p.y <= 49;
        const bool on_horizontal = (p.y == 19.5 || p.y == 49.5) && p.x >= 10 && p.x <= 59;
        EXPECT_TRUE(on_vertical || on_horizontal) << p;
    }
}

// The head is where the value is >= 128 (half grey): 127 is background.
TEST(MaskBoundary, HeadIsHalfGreyAndAbove) {
    cv::Mat mask = cv::Mat::zeros(100, 100, CV_8U);
    mask(cv::Rect(20, 20, 40, 40)).setTo(127);
    EXPECT_FALSE(mask_boundary(mask).found);
    mask(cv::Rect(20, 20, 40, 40)).setTo(128);
    EXPECT_TRUE(mask_boundary(mask).found);
}

TEST(MaskBoundary, EmptyOrTinyMaskFindsNoHead) {
    EXPECT_FALSE(mask_boundary(cv::Mat()).found);
    EXPECT_FALSE(mask_boundary(cv::Mat::zeros(100, 100, CV_8U)).found);
    cv::Mat speck = cv::Mat::zeros(100, 100, CV_8U);
    speck(cv::Rect(40, 40, 5, 5)).setTo(255);  // 25 px: below the 30 px a plausible head covers
    EXPECT_FALSE(mask_boundary(speck).found);
}

TEST(MaskBoundary, LargestRegionWinsAndTheImageBorderIsCut) {
    const Ellipse truth{560, 240, 150, 110, 0.3};  // runs out of the right edge (x = 639)
    cv::Mat mask = rasterize(truth, {640, 480});
    cv::circle(mask, {60, 60}, 12, cv::Scalar(255), cv::FILLED);  // a smaller region elsewhere
    const Boundary b = mask_boundary(mask);
    ASSERT_TRUE(b.found);
    EXPECT_GT(b.cut_points.size(), 20u);
    for (const auto& p : b.points) {
        EXPECT_GT(p.x, 300.0) << "a point of the small region";
        EXPECT_LT(p.x, 638.5) << "a point on the image border is not skull";
    }
}

// The outline is cv::findContours' polygon of the largest region (corners only).
TEST(MaskOutline, IsThePolygonOfTheLargestRegion) {
    cv::Mat mask = cv::Mat::zeros(100, 120, CV_8U);
    mask(cv::Rect(5, 5, 8, 8)).setTo(255);      // small region, found first (top rows)
    mask(cv::Rect(30, 20, 50, 30)).setTo(1);    // any non-zero value is head
    std::vector<cv::Point> outline = mask_outline(mask);
    ASSERT_EQ(outline.size(), 4u);
    std::sort(outline.begin(), outline.end(), [](cv::Point a, cv::Point b) { return a.x != b.x ? a.x < b.x : a.y < b.y; });
    EXPECT_EQ(outline[0], cv::Point(30, 20));
    EXPECT_EQ(outline[1], cv::Point(30, 49));
    EXPECT_EQ(outline[2], cv::Point(79, 20));
    EXPECT_EQ(outline[3], cv::Point(79, 49));
}

TEST(MaskOutline, FollowsARasterizedEllipse) {
    const Ellipse e{320, 240, 200, 120, 0.7};
    const std::vector<cv::Point> outline = mask_outline(rasterize(e, {640, 480}));
    ASSERT_GT(outline.size(), 20u);
    // Outer pixel centres: within a pixel of the curve (inside it).
    for (const auto& p : outline) EXPECT_LE(distance_to_ellipse(e, cv::Point2d(p)), 1.0) << p;
}

TEST(MaskOutline, EmptyMaskHasNoOutline) {
    EXPECT_TRUE(mask_outline(cv::Mat()).empty());
    EXPECT_TRUE(mask_outline(cv::Mat::zeros(50, 50, CV_8U)).empty());
}
