// Review signals (src/review.cpp) on synthetic images whose answer is known by construction: a
// bright skull ring drawn with cv::ellipse, a probability map that is the filled head.
#include "net_frame.h"
#include "review.h"

#include "fetalhc/measure.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

using namespace fetalhc;

namespace {

const cv::Size kImage(400, 300);
const Ellipse kHead{200, 150, 110, 80, 0.3};

cv::RotatedRect rect(const Ellipse& e) {
    return {{float(e.cx), float(e.cy)}, {float(2 * e.a), float(2 * e.b)}, float(e.angle * 180 / CV_PI)};
}

// Dark background (30), darker brain (20), bright skull ring (200, 5 px), optionally only the arc
// between two angles (degrees, in the ellipse's own frame).
cv::Mat scan(double arc_from = 0, double arc_to = 360) {
    cv::Mat img(kImage, CV_8U, cv::Scalar(30));
    cv::ellipse(img, rect(kHead), cv::Scalar(20), cv::FILLED);
    cv::ellipse(img, {int(kHead.cx), int(kHead.cy)}, {int(kHead.a), int(kHead.b)}, kHead.angle * 180 / CV_PI, arc_from,
                arc_to, cv::Scalar(200), 5);
    return img;
}

// A segmentation whose probability map is the filled ellipse `e` in image pixels (frame = image).
Segmentation filled(const Ellipse& e) {
    cv::Mat mask(kImage, CV_8U, cv::Scalar(0)), prob;
    cv::ellipse(mask, rect(e), cv::Scalar(255), cv::FILLED);
    mask.convertTo(prob, CV_32F, 1.0 / 255);
    return segmentation_at_image(prob);
}

}  // namespace

// Tolerances: 128 samples along the ellipse, so shares move in steps of 1/128; the drawn ring and
// the filled mask are rasterised, so a few samples near the ends of an arc can go either way.
TEST(ReviewSignals, WholeSkullRingHasFullEvidence) {
    auto s = review_signals(filled(kHead), scan(), kHead);
    EXPECT_GT(s.skull_evidence, 0.97);
    EXPECT_GT(s.ring_contrast, 5.0);  // ridge 200 over brain 20
    EXPECT_GT(s.seg_agreement, 0.97);
    EXPECT_NEAR(s.head_fraction, 2 * 110.0 / 400, 1e-9);
}

TEST(ReviewSignals, HalfMissingSkullHasHalfTheEvidence) {
    auto s = review_signals(filled(kHead), scan(0, 180), kHead);
    EXPECT_NEAR(s.skull_evidence, 0.5, 0.06);
}

TEST(ReviewSignals, EllipseOffTheSegmentationDisagrees) {
    Ellipse shifted = kHead;
    shifted.cx += 40;  // the fit says one place, the probability map another
    auto s = review_signals(filled(kHead), scan(), shifted);
    EXPECT_LT(s.seg_agreement, 0.75);
    EXPECT_LT(s.skull_evidence, 0.8);
}

TEST(ReviewSignals, FlatImageHasNoSkullEvidence) {
    cv::Mat flat(kImage, CV_8U, cv::Scalar(15));  // below the 25 grey-level floor everywhere
    auto s = review_signals(filled(kHead), flat, kHead);
    EXPECT_EQ(s.skull_evidence, 0.0);
}

TEST(ReviewSignals, EllipseOutsideTheImageGivesNoShares) {
    Ellipse away{-500, -500, 50, 40, 0};
    auto s = review_signals(filled(kHead), scan(), away);
    EXPECT_EQ(s.skull_evidence, -1);
    EXPECT_EQ(s.seg_agreement, -1);
}

TEST(ReviewSignals, PassSignalsAreCopiedFromTheSegmentation) {
    Segmentation seg = filled(kHead);
    seg.refine_presence = 0.25f;
    seg.rival_share = 0.4;
    seg.second_look = true;
    auto s = review_signals(seg, scan(), kHead);
    EXPECT_FLOAT_EQ(s.refine_presence, 0.25f);
    EXPECT_DOUBLE_EQ(s.rival_share, 0.4);
    EXPECT_TRUE(s.second_look);
}

TEST(RivalShare, SecondRegionOverFirstByArea) {
    cv::Mat p(100, 200, CV_32F, cv::Scalar(0));
    p(cv::Rect(10, 10, 20, 20)).setTo(0.9f);   // 400 px
    p(cv::Rect(100, 10, 10, 20)).setTo(0.8f);  // 200 px
    p(cv::Rect(150, 60, 5, 4)).setTo(0.7f);    // 20 px, third: ignored
    EXPECT_DOUBLE_EQ(rival_share(p), 0.5);
    p(cv::Rect(100, 10, 10, 20)).setTo(0.4f);  // below 0.5: not a region
    EXPECT_DOUBLE_EQ(rival_share(p), 20.0 / 400);
    EXPECT_DOUBLE_EQ(rival_share(cv::Mat(10, 10, CV_32F, cv::Scalar(0))), 0.0);
}

// The other regions of the first pass come back as their moment ellipses in input pixels: a filled
// ellipse drawn in a letterbox frame at half scale (offset 0, 10) is found where it lies in the image.
TEST(RivalEllipses, OtherRegionsAsTheirMomentEllipsesInInputPixels) {
    const Letterbox lb = Letterbox::fit({400, 200}, {200, 120});  // scale 0.5, 10 rows of padding above
    ASSERT_DOUBLE_EQ(lb.scale_x, 0.5);
    ASSERT_EQ(lb.offset_y, 10);
    cv::Mat p(120, 200, CV_32F, cv::Scalar(0));
    // Largest: a disc; rival: an ellipse of semi-axes 20 x 8 net px turned by 30 degrees about (140, 60).
    cv::ellipse(p, cv::Point(50, 60), cv::Size(30, 30), 0, 0, 360, cv::Scalar(0.9), cv::FILLED);
    cv::ellipse(p, cv::Point(140, 60), cv::Size(20, 8), 30, 0, 360, cv::Scalar(0.8), cv::FILLED);
    cv::ellipse(p, cv::Point(190, 110), cv::Size(2, 2), 0, 0, 360, cv::Scalar(0.8), cv::FILLED);  // under 16 px: not kept
    const auto rivals = rival_ellipses(p, lb);
    ASSERT_EQ(rivals.size(), 1u);
    const Ellipse& e = rivals[0];
    const cv::Point2d c = lb.to_image({140, 60});
    EXPECT_NEAR(e.cx, c.x, 0.5);
    EXPECT_NEAR(e.cy, c.y, 0.5);
    EXPECT_NEAR(e.a, 40, 2.0);  // net px / scale
    EXPECT_NEAR(e.b, 16, 2.0);
    EXPECT_NEAR(e.angle, 30 * CV_PI / 180, 0.05);
    EXPECT_TRUE(rival_ellipses(cv::Mat(10, 10, CV_32F, cv::Scalar(0)), lb).empty());
    // A region under kRivalMinShare of the largest's area is not a rival.
    cv::Mat q(120, 200, CV_32F, cv::Scalar(0));
    cv::ellipse(q, cv::Point(50, 60), cv::Size(40, 40), 0, 0, 360, cv::Scalar(0.9), cv::FILLED);  // ~5000 px
    cv::ellipse(q, cv::Point(150, 60), cv::Size(6, 6), 0, 0, 360, cv::Scalar(0.9), cv::FILLED);    // ~110 px, 2%
    EXPECT_TRUE(rival_ellipses(q, lb).empty());
}

// The review rules (review_measurement) read the measurement alone: each threshold of
// MeasureOptions, crossed on its own, gives its reason, in the documented order.
TEST(ReviewRules, ReasonsComeFromTheMeasurementInTheirOrder) {
    Measurement m = measurement_from_ellipse(kHead, 0.3, std::nullopt);  // HC 179 mm, cephalic index 73
    m.presence = 0.9f;
    m.certainty = 0.9;
    m.fit_rms_px = 1;
    m.boundary_points = 100, m.inliers = 95, m.cut_points = 0;
    m.reasons.clear();
    review_measurement(m, MeasureOptions{});
    EXPECT_TRUE(m.reasons.empty()) << m.reasons.front();
    EXPECT_EQ(m.quality, "ok");
    m.reasons.clear();
    m.presence = 0.2f;      // detection
    m.inliers = 50;         // half the points rejected
    m.cut_points = 50;      // a third of the boundary cut
    review_measurement(m, MeasureOptions{});
    ASSERT_EQ(m.reasons.size(), 3u);
    EXPECT_EQ(m.reasons[0].rfind("low detection confidence (0.20)", 0), 0u) << m.reasons[0];
    EXPECT_EQ(m.reasons[1].rfind("boundary is not elliptical (50%", 0), 0u) << m.reasons[1];
    EXPECT_EQ(m.reasons[2].rfind("head cut by the image border or sector edge (33%", 0), 0u) << m.reasons[2];
    EXPECT_EQ(m.quality, "review");
}

// A review decided earlier (a client's, when it saves an exam) is kept: its flag and its reasons,
// each reason once; an earlier "ok" leaves the measurement's own quality.
TEST(ReviewRules, EarlierReviewIsKept) {
    Measurement ok = measurement_from_ellipse(kHead, 0.3, std::nullopt);
    ASSERT_EQ(ok.quality, "ok");
    Measurement m = ok;
    keep_earlier_review(m, false, {});
    EXPECT_EQ(m.quality, "ok");
    keep_earlier_review(m, true, {"low detection confidence", "low detection confidence"});
    EXPECT_EQ(m.quality, "review");
    EXPECT_EQ(m.reasons, std::vector<std::string>{"low detection confidence"});
    Measurement tiny = measurement_from_ellipse({50, 50, 10, 8, 0}, 0.3, std::nullopt);  // HC under 40 mm
    ASSERT_EQ(tiny.quality, "review");
    keep_earlier_review(tiny, false, {"checked by hand"});
    EXPECT_EQ(tiny.quality, "review") << "an earlier ok never overrides the numbers";
    ASSERT_EQ(tiny.reasons.size(), 2u);
    EXPECT_EQ(tiny.reasons[1], "checked by hand");
}

// The head check's verdict (issue 24): refused below the first threshold (naming the image and
// what it looks like), a review reason below the second, nothing above or without a score.
TEST(ReviewRules, HeadCheckRefusesFlagsOrPasses) {
    Measurement m;
    m.source = "femur.png";
    m.quality = "ok";
    m.signals.head_check = 0.01;
    m.signals.head_check_other = "femur";
    auto refused = review_head_check(m, 0.02, 0.3);
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->kind, ErrorKind::NotAHeadPlane);
    EXPECT_NE(refused->message.find("'femur.png' is not a fetal head in the HC plane"), std::string::npos) << refused->message;
    EXPECT_NE(refused->message.find("a femur"), std::string::npos) << refused->message;
    EXPECT_TRUE(m.reasons.empty());

    m.signals.head_check = 0.1;
    EXPECT_FALSE(review_head_check(m, 0.02, 0.3));
    ASSERT_EQ(m.reasons.size(), 1u);
    EXPECT_EQ(m.reasons[0].rfind("the outline may be the trunk or another structure, not the head", 0), 0u) << m.reasons[0];
    EXPECT_EQ(m.quality, "review");

    for (double s : {0.3, 0.95, -1.0}) {
        Measurement p;
        p.quality = "ok";
        p.signals.head_check = s;
        EXPECT_FALSE(review_head_check(p, 0.02, 0.3)) << s;
        EXPECT_TRUE(p.reasons.empty()) << s;
        EXPECT_EQ(p.quality, "ok") << s;
    }
}
