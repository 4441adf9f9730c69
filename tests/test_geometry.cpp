// Image geometry of the network passes (src/geometry.h, internal, no LibTorch): the letterbox, the
// head-centred crop frame, the separable pixel-area reduction and the crop warp built on it.
//
// Tolerance classes:
//   - exact: coordinate round trips (1e-9 px), results that must be the same pixels (0 grey levels);
//   - float rounding: the separable reduction sums in float where OpenCV uses fixed point, so a
//     pixel whose exact value ends in .5 may round the other way: at most 1 grey level, on at
//     most 1% of the pixels.
#include "geometry.h"
#include "net_frame.h"

#include "fetalhc/ellipse.h"
#include "fetalhc/segmenter.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <cmath>

using namespace fetalhc;

namespace {

// Smooth speckle with the full 0..255 range, so that every reduced pixel averages different values.
cv::Mat speckle(cv::Size size, int seed) {
    cv::RNG rng(seed);
    cv::Mat m(size, CV_8U);
    rng.fill(m, cv::RNG::UNIFORM, 0, 256);
    cv::GaussianBlur(m, m, {0, 0}, 1.0);
    cv::normalize(m, m, 0, 255, cv::NORM_MINMAX);
    return m;
}

double max_grey_diff(const cv::Mat& a, const cv::Mat& b) { return cv::norm(a, b, cv::NORM_INF); }

cv::Point2d apply(const cv::Matx23d& A, cv::Point2d p) {
    return {A(0, 0) * p.x + A(0, 1) * p.y + A(0, 2), A(1, 0) * p.x + A(1, 1) * p.y + A(1, 2)};
}

}  // namespace

TEST(GeometryLetterbox, RoundTripsPixelCoordinates) {
    const Letterbox lb = Letterbox::fit({800, 540}, {288, 192});
    EXPECT_LE(lb.resized.width, 288);
    EXPECT_LE(lb.resized.height, 192);
    for (const cv::Point2d p : {cv::Point2d(0, 0), cv::Point2d(799, 539), cv::Point2d(321.7, 45.2)}) {
        const cv::Point2d q = lb.to_image(lb.to_net(p));
        EXPECT_NEAR(q.x, p.x, 1e-9);
        EXPECT_NEAR(q.y, p.y, 1e-9);
        const cv::Point2d n = apply(lb.affine(), p);  // the affine form is the same mapping
        EXPECT_NEAR(n.x, lb.to_net(p).x, 1e-9);
        EXPECT_NEAR(n.y, lb.to_net(p).y, 1e-9);
    }
}

// Inference's letterbox reduces with resize_area (the trainer uses the same function), and pads
// with zeros around it.
TEST(GeometryLetterbox, AreaInterpolationIsResizeAreaInsideZeroPadding) {
    const cv::Mat img = speckle({800, 540}, 3);
    const Letterbox lb = Letterbox::fit(img.size(), {192, 192});
    const cv::Mat canvas = lb.apply(img, cv::INTER_AREA);
    ASSERT_EQ(canvas.size(), cv::Size(192, 192));
    const cv::Rect inside(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height);
    EXPECT_EQ(max_grey_diff(canvas(inside), resize_area(img, lb.resized)), 0);
    EXPECT_EQ(cv::countNonZero(canvas), cv::countNonZero(canvas(inside)));
}

TEST(GeometryResizeArea, MatchesOpenCvPixelAreaAveraging) {
    const cv::Mat img = speckle({800, 540}, 7);
    for (const cv::Size size : {cv::Size(720, 486), cv::Size(360, 243), cv::Size(192, 130), cv::Size(61, 17)}) {
        cv::Mat ref;
        cv::resize(img, ref, size, 0, 0, cv::INTER_AREA);
        const cv::Mat mine = resize_area(img, size);
        ASSERT_EQ(mine.size(), size);
        EXPECT_LE(max_grey_diff(mine, ref), 1) << size;
        EXPECT_LT(cv::countNonZero(mine != ref), int(size.area() / 100) + 1) << size;
    }
    // Enlargements, whole-number factors and float images are OpenCV's own result.
    for (const cv::Size size : {cv::Size(900, 600), cv::Size(400, 270)}) {
        cv::Mat ref;
        cv::resize(img, ref, size, 0, 0, cv::INTER_AREA);
        EXPECT_EQ(max_grey_diff(resize_area(img, size), ref), 0) << size;
    }
    cv::Mat f, ref;
    img.convertTo(f, CV_32F, 1.0 / 255);
    cv::resize(f, ref, {250, 171}, 0, 0, cv::INTER_AREA);
    EXPECT_EQ(max_grey_diff(resize_area(f, {250, 171}), ref), 0);
}

TEST(GeometryResizeArea, PartIsTheSameRectangleOfTheWholeResult) {
    const cv::Mat img = speckle({800, 540}, 8);
    const cv::Size size(371, 250);
    const cv::Mat whole = resize_area(img, size);
    for (const cv::Rect part : {cv::Rect(0, 0, 371, 250), cv::Rect(13, 27, 100, 61), cv::Rect(300, 200, 71, 50),
                                cv::Rect(5, 249, 1, 1)}) {
        const cv::Mat p = resize_area(img, size, part);
        ASSERT_EQ(p.size(), part.size());
        EXPECT_EQ(max_grey_diff(p, whole(part)), 0) << part;
    }
}

// The crop puts the ellipse's centre at the crop's centre, its major axis along +x, and the ellipse
// grown by the margin touching the crop along the tighter axis.
TEST(GeometryCropFrame, CentresTheHeadAlongXAndFitsTheMargin) {
    const cv::Size net(256, 192);
    for (const Ellipse& e : {Ellipse{400, 270, 150, 110, 0.3}, Ellipse{120, 80, 60, 58, 2.5}, Ellipse{500, 300, 200, 90, 1.2}}) {
        const double margin = 1.2;
        const cv::Matx23d A = crop_frame(e, net, margin);
        const cv::Point2d c = apply(A, {e.cx, e.cy});
        EXPECT_NEAR(c.x, (net.width - 1) / 2.0, 1e-9);
        EXPECT_NEAR(c.y, (net.height - 1) / 2.0, 1e-9);
        const cv::Point2d tip = apply(A, {e.cx + e.a * std::cos(e.angle), e.cy + e.a * std::sin(e.angle)});
        const double s = frame_zoom(A);
        EXPECT_NEAR(tip.x - c.x, s * e.a, 1e-9);  // the major axis runs along +x
        EXPECT_NEAR(tip.y - c.y, 0, 1e-9);
        const double fill_x = 2 * s * e.a * margin / net.width, fill_y = 2 * s * e.b * margin / net.height;
        EXPECT_NEAR(std::max(fill_x, fill_y), 1.0, 1e-12);
    }
}

// The crop of the refinement pass reduces only the part of the image it shows: the result is the
// plain way's (reduce the whole image with cv::resize, then cv::warpAffine), up to the rounding
// above, whether the frame lies inside the image, across its border or outside it.
TEST(GeometryWarpToFrame, ReducingOnlyTheShownPartGivesTheWholeImageResult) {
    const cv::Mat img = speckle({800, 540}, 9);
    const cv::Size net(256, 192);
    for (const Ellipse& e : {Ellipse{450, 300, 190, 140, 0.2}, Ellipse{400, 270, 330, 250, 0.3}, Ellipse{650, 120, 300, 200, 2.0},
                             Ellipse{-900, 2000, 300, 200, 1.0}}) {
        const cv::Matx23d A = crop_frame(e, net, 1.2);
        const double zoom = frame_zoom(A);
        ASSERT_LT(zoom, 1 / 1.5);  // the reducing path
        const cv::Size small(int(std::lround(800 * 1.5 * zoom)), int(std::lround(540 * 1.5 * zoom)));
        cv::Mat reduced, ref;
        cv::resize(img, reduced, small, 0, 0, cv::INTER_AREA);
        // small -> frame: A after undoing the reduction p_small = k (p + 0.5) - 0.5, per axis.
        const double kx = double(small.width) / 800, ky = double(small.height) / 540;
        cv::Matx23d M;
        for (int r = 0; r < 2; ++r) {
            M(r, 0) = A(r, 0) / kx;
            M(r, 1) = A(r, 1) / ky;
            M(r, 2) = A(r, 2) + A(r, 0) * (0.5 / kx - 0.5) + A(r, 1) * (0.5 / ky - 0.5);
        }
        cv::warpAffine(reduced, ref, M, net, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
        const cv::Mat mine = warp_to_frame(img, A, net);
        EXPECT_LE(max_grey_diff(mine, ref), 1) << e.cx;
        EXPECT_LT(cv::countNonZero(mine != ref), net.area() / 100) << e.cx;
        EXPECT_EQ(cv::countNonZero(mine), cv::countNonZero(ref)) << e.cx;  // the same pixels left outside
    }
}

// A crop that zooms in (no reduction) is a plain bilinear warp.
TEST(GeometryWarpToFrame, ZoomingInIsAPlainWarp) {
    const cv::Mat img = speckle({300, 200}, 10);
    const cv::Matx23d A = crop_frame(Ellipse{150, 100, 40, 30, 0.4}, {128, 96}, 1.2);
    ASSERT_GT(frame_zoom(A), 1 / 1.5);
    cv::Mat ref;
    cv::warpAffine(img, ref, A, {128, 96}, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
    EXPECT_EQ(max_grey_diff(warp_to_frame(img, A, {128, 96}), ref), 0);
}

// probability_full maps the network's map back to the input image, from the letterbox or the crop.
TEST(GeometrySegmentation, ProbabilityFullIsInTheInputFrame) {
    const cv::Size image(400, 300);
    const Ellipse head{210, 140, 90, 70, 0.5};
    cv::Mat mask = rasterize(head, image), maskf;
    mask.convertTo(maskf, CV_32F, 1.0 / 255);
    Segmentation s;
    s.letterbox = Letterbox::fit(image, {128, 96});
    set_net_frame(s, s.letterbox.apply(maskf, cv::INTER_LINEAR));
    const cv::Mat full = s.probability_full();
    ASSERT_EQ(full.size(), image);
    EXPECT_GT(full.at<float>(140, 210), 0.9f);
    EXPECT_LT(full.at<float>(10, 10), 0.1f);
    s.refined = true;
    const cv::Matx23d crop_to_net = crop_frame(head, {128, 96}, 1.3);
    set_net_frame(s, warp_to_frame(maskf, crop_to_net, {128, 96}), crop_to_net);
    const cv::Mat from_crop = s.probability_full();
    ASSERT_EQ(from_crop.size(), image);
    EXPECT_GT(from_crop.at<float>(140, 210), 0.9f);
    EXPECT_LT(from_crop.at<float>(10, 10), 0.1f);
}
