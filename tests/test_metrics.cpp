// Tests for fetalhc/metrics.h: overlap measures, Hausdorff distance and mask AP/AR.
//
// Tolerance classes:
//   - exact: Dice and IoU of axis-aligned rectangles are ratios of small integers, and AP/recall
//     of hand-built rankings are ratios of counts; compared with 1e-12 (rounding of one division).
//   - rasterisation: Hausdorff distances between digitised circles carry the pixel grid's error
//     (see ConcentricCirclesAreTheirRadiusDifferenceApart); compared within 1 px.
#include "fetalhc/metrics.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <vector>

namespace {

constexpr double kExact = 1e-12;

cv::Mat rect_mask(cv::Size size, cv::Rect r) {
    cv::Mat m = cv::Mat::zeros(size, CV_8U);
    m(r).setTo(255);
    return m;
}

cv::Mat disc_mask(cv::Size size, cv::Point centre, int radius) {
    cv::Mat m = cv::Mat::zeros(size, CV_8U);
    cv::circle(m, centre, radius, cv::Scalar(255), cv::FILLED);
    return m;
}

fetalhc::Detection det(double score, double iou, bool detected = true) {
    fetalhc::Detection d;
    d.score = score;
    d.iou = iou;
    d.detected = detected;
    return d;
}

// ---- Dice / IoU -----------------------------------------------------------------------------------

TEST(Overlap, IdenticalMasksScoreOne) {
    const cv::Mat m = disc_mask({120, 90}, {60, 45}, 30);
    EXPECT_NEAR(fetalhc::dice(m, m), 1.0, kExact);
    EXPECT_NEAR(fetalhc::iou(m, m), 1.0, kExact);
}

TEST(Overlap, DisjointMasksScoreZero) {
    const cv::Mat a = rect_mask({100, 50}, {0, 0, 40, 50});
    const cv::Mat b = rect_mask({100, 50}, {60, 0, 40, 50});
    EXPECT_EQ(fetalhc::dice(a, b), 0.0);
    EXPECT_EQ(fetalhc::iou(a, b), 0.0);
}

TEST(Overlap, KnownRectangleOverlapGivesExactFractions) {
    // A: 20x10 = 200 px, B: 10x10 = 100 px, shifted so that 5x10 = 50 px are shared.
    // Dice = 2*50 / (200+100) = 1/3, IoU = 50 / (200+100-50) = 1/5.
    const cv::Mat a = rect_mask({64, 32}, {0, 0, 20, 10});
    const cv::Mat b = rect_mask({64, 32}, {15, 0, 10, 10});
    EXPECT_NEAR(fetalhc::dice(a, b), 1.0 / 3.0, kExact);
    EXPECT_NEAR(fetalhc::iou(a, b), 1.0 / 5.0, kExact);
    // Both are symmetric.
    EXPECT_NEAR(fetalhc::dice(b, a), 1.0 / 3.0, kExact);
    EXPECT_NEAR(fetalhc::iou(b, a), 1.0 / 5.0, kExact);
}

TEST(Overlap, AnyNonZeroValueCountsAsInside) {
    // Masks are "nonzero = inside": a mask of 1s and one of 255s over the same pixels agree fully.
    cv::Mat a = rect_mask({40, 40}, {5, 5, 20, 10});
    cv::Mat b = a / 255;  // values 0 and 1
    ASSERT_EQ(cv::countNonZero(b), 200);
    EXPECT_NEAR(fetalhc::dice(a, b), 1.0, kExact);
    EXPECT_NEAR(fetalhc::iou(a, b), 1.0, kExact);
}

TEST(Overlap, DiceAndIouAgreeWithTheirIdentity) {
    // For any pair, Dice = 2 IoU / (1 + IoU): a cross-check of the two implementations.
    const cv::Mat a = disc_mask({200, 150}, {90, 70}, 50);
    const cv::Mat b = disc_mask({200, 150}, {110, 80}, 45);
    const double j = fetalhc::iou(a, b);
    EXPECT_GT(j, 0.3);
    EXPECT_LT(j, 0.9);
    EXPECT_NEAR(fetalhc::dice(a, b), 2 * j / (1 + j), 1e-9);
}

// ---- Hausdorff --------------------------------------------------------------------------------------

TEST(Hausdorff, IdenticalMasksAreZeroApart) {
    const cv::Mat m = disc_mask({160, 160}, {80, 80}, 50);
    EXPECT_EQ(fetalhc::hausdorff_px(m, m), 0.0);
}

TEST(Hausdorff, ConcentricCirclesAreTheirRadiusDifferenceApart) {
    // Ideal circles of radius 50 and 53 are 3 px apart everywhere. The outer contour of a digitised
    // disc lies on pixel centres up to about half a pixel inside or outside the ideal circle, and the
    // two rasterisations err independently, so the measured distance may be off by up to ~1 px.
    const cv::Mat a = disc_mask({200, 200}, {100, 100}, 50);
    const cv::Mat b = disc_mask({200, 200}, {100, 100}, 53);
    const double h = fetalhc::hausdorff_px(a, b);
    EXPECT_NEAR(h, 3.0, 1.0);
    EXPECT_NEAR(fetalhc::hausdorff_px(b, a), h, kExact) << "the distance is symmetric";
}

TEST(Hausdorff, ShiftedSquaresAreTheShiftApart) {
    // Two 40x40 squares, one moved 7 px right: the farthest outline point of either is 7 px from
    // the other's outline (the left edge of one to the left edge of the other), exactly on the grid.
    const cv::Mat a = rect_mask({120, 80}, {20, 20, 40, 40});
    const cv::Mat b = rect_mask({120, 80}, {27, 20, 40, 40});
    EXPECT_NEAR(fetalhc::hausdorff_px(a, b), 7.0, 1e-3);
}

// ---- average precision and recall ---------------------------------------------------------------------

TEST(AveragePrecision, AllDetectionsAboveThresholdGiveOne) {
    std::vector<fetalhc::Detection> d;
    for (int i = 0; i < 10; ++i) d.push_back(det(0.5 + 0.04 * i, 0.9));
    EXPECT_NEAR(fetalhc::average_precision(d, 0.5), 1.0, kExact);
    EXPECT_NEAR(fetalhc::recall(d, 0.5), 1.0, kExact);
    // IoU 0.9 fails the 0.95 threshold: nothing is a true positive there.
    EXPECT_NEAR(fetalhc::average_precision(d, 0.95), 0.0, kExact);
    EXPECT_NEAR(fetalhc::recall(d, 0.95), 0.0, kExact);
}

TEST(AveragePrecision, HalfMissesRankedLastGiveOneHalf) {
    // Ranked TP, TP, FP, FP over 4 images: precision 1, 1, 2/3, 1/2 at recall 1/4, 1/2, 1/2, 1/2.
    // The area under the interpolated curve is 1/2 * 1 = 1/2; the false positives add no recall.
    const std::vector<fetalhc::Detection> d{det(0.9, 0.9), det(0.8, 0.85), det(0.2, 0.1), det(0.1, 0.3)};
    EXPECT_NEAR(fetalhc::average_precision(d, 0.5), 0.5, kExact);
    EXPECT_NEAR(fetalhc::recall(d, 0.5), 0.5, kExact);
}

TEST(AveragePrecision, UndetectedImagesCountAsMissedPositives) {
    // Two found heads and two images where nothing was detected: recall stops at 1/2.
    const std::vector<fetalhc::Detection> d{det(0.9, 0.9), det(0.8, 0.9), det(0, 0, false), det(0, 0, false)};
    EXPECT_NEAR(fetalhc::average_precision(d, 0.5), 0.5, kExact);
    EXPECT_NEAR(fetalhc::recall(d, 0.5), 0.5, kExact);
}

TEST(AveragePrecision, FalsePositiveRankedFirstIsHandComputed) {
    // Ranked FP, TP, TP over 3 images: precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3.
    // Made monotone from the right the precision is 2/3 at every point, so
    // AP = (1/3 - 0) * 2/3 + (2/3 - 1/3) * 2/3 = 4/9.
    const std::vector<fetalhc::Detection> d{det(0.7, 0.8), det(0.95, 0.2), det(0.6, 0.75)};
    EXPECT_NEAR(fetalhc::average_precision(d, 0.5), 4.0 / 9.0, kExact);
    EXPECT_NEAR(fetalhc::recall(d, 0.5), 2.0 / 3.0, kExact);
}

TEST(AveragePrecision, RankingNotInputOrderDecides) {
    // The same detections in another order give the same AP.
    std::vector<fetalhc::Detection> d{det(0.6, 0.75), det(0.7, 0.8), det(0.95, 0.2)};
    const double ap = fetalhc::average_precision(d, 0.5);
    std::swap(d[0], d[2]);
    EXPECT_NEAR(fetalhc::average_precision(d, 0.5), ap, kExact);
    EXPECT_NEAR(ap, 4.0 / 9.0, kExact);
}

TEST(AveragePrecision, IouEqualToTheThresholdIsATruePositive) {
    // The header's rule is IoU >= t; 0.5 and 0.75 are exact in binary, so no rounding blurs the edge.
    const std::vector<fetalhc::Detection> d{det(0.9, 0.5), det(0.8, 0.75)};
    EXPECT_NEAR(fetalhc::average_precision(d, 0.5), 1.0, kExact);
    EXPECT_NEAR(fetalhc::recall(d, 0.75), 0.5, kExact);
}

TEST(AveragePrecision, EmptyInputIsZero) {
    EXPECT_EQ(fetalhc::average_precision({}, 0.5), 0.0);
    EXPECT_EQ(fetalhc::recall({}, 0.5), 0.0);
}

}  // namespace

TEST(Quantile, InterpolatesBetweenOrderStatistics) {
    EXPECT_DOUBLE_EQ(fetalhc::quantile({3, 1, 2}, 0.5), 2);
    EXPECT_DOUBLE_EQ(fetalhc::quantile({4, 1, 3, 2}, 0.5), 2.5);  // even count: mean of the middle two
    EXPECT_DOUBLE_EQ(fetalhc::quantile({4, 1, 3, 2}, 0.25), 1.75);
    EXPECT_DOUBLE_EQ(fetalhc::quantile({4, 1, 3, 2}, 0), 1);
    EXPECT_DOUBLE_EQ(fetalhc::quantile({4, 1, 3, 2}, 1), 4);
    EXPECT_DOUBLE_EQ(fetalhc::quantile({7}, 0.9), 7);
}
