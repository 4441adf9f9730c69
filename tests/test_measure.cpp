// The quality flag has one owner: every path that adds a review reason ends in "review", and a
// measurement with no reason is "ok". Segmentations are built by hand (a binary mask as the
// probability map in an identity letterbox), so no model is needed.
#include "fetalhc/ellipse.h"
#include "fetalhc/measure.h"
#include "fetalhc/segmenter.h"
#include "net_frame.h"  // internal (src/): a segmentation of a mask

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <functional>
#include <string>

using namespace fetalhc;

namespace {

const cv::Size kImage(400, 300);
const Ellipse kHead{200, 150, 120, 95, 0.3};  // cephalic index 79

// The mask as the probability map, in an identity letterbox, as the HTTP stages build it.
Segmentation from_mask(const cv::Mat& mask8, float presence = 0.98f) {
    cv::Mat prob;
    mask8.convertTo(prob, CV_32F, 1.0 / 255);
    Segmentation s = segmentation_at_image(prob);
    s.presence = presence;
    return s;
}

MeasureOptions options(double pixel_size_mm = 0.15) {
    MeasureOptions o;
    o.pixel_size_mm = pixel_size_mm;
    return o;
}

bool has_reason(const Measurement& m, const std::string& text) {
    for (const auto& r : m.reasons)
        if (r.find(text) != std::string::npos) return true;
    return false;
}

// The image of kHead: dark, with the skull drawn as a bright ring from 0 to end_deg degrees of the
// ellipse (360: all round).
cv::Mat skull_ring(double end_deg) {
    cv::Mat g(kImage, CV_8U, cv::Scalar(30));
    cv::ellipse(g, cv::Point(int(kHead.cx), int(kHead.cy)), cv::Size(int(kHead.a), int(kHead.b)), kHead.angle * 180 / CV_PI,
                0, end_deg, cv::Scalar(220), 5);
    return g;
}

// The invariant under test: review exactly when there is a reason.
void expect_quality_follows_reasons(const Measurement& m, const std::string& what) {
    EXPECT_EQ(m.quality, m.reasons.empty() ? "ok" : "review") << what;
}

}  // namespace

TEST(MeasureQuality, EllipseWithCephalicIndexOutOfRangeIsReview) {
    const Measurement m = measurement_from_ellipse({200, 150, 100, 50, 0}, 0.2, std::nullopt);  // index 50
    EXPECT_NEAR(m.cephalic_index, 50, 1e-9);
    ASSERT_FALSE(m.reasons.empty());
    EXPECT_TRUE(has_reason(m, "cephalic index")) << m.reasons.front();
    EXPECT_EQ(m.quality, "review");
    const Measurement round = measurement_from_ellipse({200, 150, 100, 100, 0}, 0.2, std::nullopt);  // index 100
    EXPECT_TRUE(has_reason(round, "cephalic index"));
    EXPECT_EQ(round.quality, "review");
}

TEST(MeasureQuality, EllipseWithImplausibleHcIsReview) {
    const Measurement tiny = measurement_from_ellipse({50, 50, 10, 8, 0}, 0.1, std::nullopt);  // HC about 5.7 mm
    EXPECT_TRUE(has_reason(tiny, "plausible"));
    EXPECT_EQ(tiny.quality, "review");
    const Measurement plain = measurement_from_ellipse(kHead, 0.15, 22.0);
    EXPECT_TRUE(plain.reasons.empty()) << plain.reasons.front();
    EXPECT_EQ(plain.quality, "ok");
}

TEST(MeasureQuality, CleanSegmentationIsOk) {
    auto m = measure_from_segmentation(from_mask(rasterize(kHead, kImage)), cv::Mat(), options(), "clean");
    ASSERT_TRUE(m) << m.error();
    EXPECT_TRUE(m->reasons.empty()) << m->reasons.front();
    EXPECT_EQ(m->quality, "ok");
}

// The unseen-outline reason: a skull ring drawn all round passes; the same head with the ring over
// a third of it (about 2/3 of the outline unseen) is flagged once that share passes the threshold,
// and the reason gives the share and the length.
TEST(MeasureQuality, SkullUnseenOverMuchOfTheOutlineIsReview) {
    const Segmentation seg = from_mask(rasterize(kHead, kImage));
    MeasureOptions o = options();
    o.max_unseen_outline_share = 0.5;
    auto whole = measure_from_segmentation(seg, skull_ring(360), o, "whole ring");
    ASSERT_TRUE(whole) << whole.error();
    EXPECT_GT(whole->signals.skull_evidence, 0.9);
    EXPECT_FALSE(has_reason(*whole, "skull not seen"));
    auto third = measure_from_segmentation(seg, skull_ring(120), o, "a third");
    ASSERT_TRUE(third) << third.error();
    EXPECT_NEAR(third->signals.skull_evidence, 1.0 / 3, 0.08);
    ASSERT_TRUE(has_reason(*third, "skull not seen")) << (third->reasons.empty() ? "" : third->reasons.front());
    EXPECT_EQ(third->quality, "review");
    const double unseen = 1 - third->signals.skull_evidence;
    EXPECT_TRUE(has_reason(*third, "under " + std::to_string(int(std::lround(100 * unseen))) + "% of the outline (" +
                                       std::to_string(int(std::lround(unseen * third->hc_mm))) + " of "));
    o.max_unseen_outline_share = 0.8;  // above the unseen share
    auto lenient = measure_from_segmentation(seg, skull_ring(120), o, "a third, lenient");
    ASSERT_TRUE(lenient) << lenient.error();
    EXPECT_FALSE(has_reason(*lenient, "skull not seen"));
    // The default limit: a ring over a sixth of the head (about 5/6 unseen) is flagged, whatever
    // the pixel size (the rule is a share, not a length); the whole ring is not.
    for (double pixel_mm : {0.05, 0.15, 0.6}) {
        auto sixth = measure_from_segmentation(seg, skull_ring(60), options(pixel_mm), "a sixth, default");
        ASSERT_TRUE(sixth) << sixth.error();
        EXPECT_GT(1 - sixth->signals.skull_evidence, MeasureOptions{}.max_unseen_outline_share);
        EXPECT_TRUE(has_reason(*sixth, "skull not seen")) << pixel_mm;
        auto ring = measure_from_segmentation(seg, skull_ring(360), options(pixel_mm), "whole ring, default");
        ASSERT_TRUE(ring) << ring.error();
        EXPECT_FALSE(has_reason(*ring, "skull not seen")) << pixel_mm;
    }
}

// Each check of measure_from_segmentation, triggered on its own: the reason is there, the
// measurement is "review".
TEST(MeasureQuality, EveryReasonEndsInReview) {
    const cv::Mat head = rasterize(kHead, kImage);
    cv::Mat lobed = head.clone();  // a rectangle sticking out of the head: not an ellipse
    cv::rectangle(lobed, cv::Rect(250, 40, 130, 80), cv::Scalar(255), cv::FILLED);
    struct Case {
        std::string reason;
        Segmentation seg;
        std::function<void(MeasureOptions&)> tweak;
    };
    const std::vector<Case> cases = {
        {"low detection confidence", from_mask(head, 0.2f), [](MeasureOptions&) {}},
        {"uncertain segmentation", from_mask(head), [](MeasureOptions& o) { o.min_certainty = 1.01; }},
        {"poor ellipse fit", from_mask(head), [](MeasureOptions& o) { o.max_fit_rms_px = -1; }},
        {"not elliptical", from_mask(lobed), [](MeasureOptions&) {}},
        {"head cut", from_mask(head), [](MeasureOptions& o) { o.max_cut_fraction = -1; }},
        {"cephalic index", from_mask(head), [](MeasureOptions& o) { o.min_cephalic_index = 85; }},
        {"plausible", from_mask(head), [](MeasureOptions& o) { o.pixel_size_mm = 2.0; }},
        {"skull not seen", from_mask(head), [](MeasureOptions& o) { o.max_unseen_outline_share = 0.5; }},
    };
    // The image: the skull drawn as a bright ring over a third of the head only (skull evidence
    // about 1/3, so about 2/3 of the outline unseen).
    const cv::Mat gray = skull_ring(120);
    for (const Case& c : cases) {
        MeasureOptions o = options();
        c.tweak(o);
        auto m = measure_from_segmentation(c.seg, gray, o, c.reason);
        ASSERT_TRUE(m) << c.reason << ": " << m.error();
        EXPECT_TRUE(has_reason(*m, c.reason)) << c.reason;
        EXPECT_EQ(m->quality, "review") << c.reason;
        expect_quality_follows_reasons(*m, c.reason);
    }
}
