// Overlay drawing (overlay.h): image format, ellipse colour, robustness to bad measurements.
#include "fetalhc/overlay.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace {

// A measurement filled by hand; the ellipse sits in the lower right, away from the text panel.
fetalhc::Measurement make_measurement(const std::string& quality) {
    fetalhc::Measurement m;
    m.source = "synthetic";
    m.image_size = {480, 400};
    m.pixel_size_mm = 0.2;
    m.ellipse_px = {300.3, 250.6, 120.0, 90.0, 0.4};
    m.ellipse_mm = m.ellipse_px.scaled(m.pixel_size_mm);
    m.hc_mm = fetalhc::ramanujan_perimeter(m.ellipse_mm);
    m.bpd_mm = 2 * m.ellipse_mm.b;
    m.ofd_mm = 2 * m.ellipse_mm.a;
    m.cephalic_index = 100 * m.ellipse_mm.b / m.ellipse_mm.a;
    m.ga_hadlock = fetalhc::hadlock_ga(m.hc_mm);
    m.ga_intergrowth = fetalhc::intergrowth_ga(m.hc_mm);
    m.ga_weeks_given = 20.0;
    m.centile = fetalhc::intergrowth_hc_centile(m.hc_mm, 20.0);
    m.quality = quality;
    if (quality != "ok") m.reasons = {"fit residual 3.1 px above 2.5 px", "head cut by the image border"};
    return m;
}

cv::Mat gray_image(cv::Size size) { return cv::Mat(size, CV_8U, cv::Scalar(90)); }

// The brightest-green / most-orange pixel within 2 px of a point (anti-aliasing spreads the line).
cv::Vec3b most_saturated_near(const cv::Mat& bgr, cv::Point2d p) {
    cv::Vec3b best(0, 0, 0);
    int best_score = -1;
    for (int dy = -2; dy <= 2; ++dy)
        for (int dx = -2; dx <= 2; ++dx) {
            const cv::Point q(int(std::lround(p.x)) + dx, int(std::lround(p.y)) + dy);
            if (!cv::Rect(0, 0, bgr.cols, bgr.rows).contains(q)) continue;
            const cv::Vec3b v = bgr.at<cv::Vec3b>(q);
            const int score = std::max({v[0], v[1], v[2]}) - std::min({v[0], v[1], v[2]});
            if (score > best_score) best_score = score, best = v;
        }
    return best;
}

TEST(Overlay, ReturnsBgrImageOfTheSameSize) {
    const cv::Mat gray = gray_image({480, 400});
    const cv::Mat out = fetalhc::draw_overlay(gray, make_measurement("ok"));
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(out.type(), CV_8UC3);
    EXPECT_EQ(out.size(), gray.size());
}

TEST(Overlay, DoesNotModifyTheInput) {
    const cv::Mat gray = gray_image({480, 400});
    const cv::Mat before = gray.clone();
    fetalhc::draw_overlay(gray, make_measurement("ok"));
    EXPECT_EQ(cv::norm(gray, before, cv::NORM_INF), 0.0);
}

TEST(Overlay, EllipseIsGreenWhenQualityOk) {
    const auto m = make_measurement("ok");
    const cv::Mat out = fetalhc::draw_overlay(gray_image({480, 400}), m);
    // Points away from the axes (t = pi/4, 3pi/4, ...), where only the ellipse is drawn.
    for (double t : {0.785, 2.356, 3.927, 5.498}) {
        const cv::Vec3b v = most_saturated_near(out, fetalhc::ellipse_point(m.ellipse_px, t));
        EXPECT_GT(v[1], 150) << "t " << t << " pixel " << v;
        EXPECT_GT(v[1], v[0] + 80) << "t " << t << " pixel " << v;
        EXPECT_GT(v[1], v[2] + 80) << "t " << t << " pixel " << v;
    }
}

TEST(Overlay, EllipseIsOrangeWhenUnderReview) {
    const auto m = make_measurement("review");
    const cv::Mat out = fetalhc::draw_overlay(gray_image({480, 400}), m);
    const cv::Vec3b v = most_saturated_near(out, fetalhc::ellipse_point(m.ellipse_px, 0.785));
    EXPECT_GT(v[2], 200) << v;          // red channel high
    EXPECT_GT(v[2], v[0] + 100) << v;   // little blue
}

TEST(Overlay, DrawsATextPanelTopLeft) {
    // The panel darkens a box in the top-left corner and writes white text in it.
    const cv::Mat out = fetalhc::draw_overlay(gray_image({480, 400}), make_measurement("review"));
    const cv::Mat corner = out(cv::Rect(0, 0, 120, 60));
    double lo = 0, hi = 0;
    cv::minMaxLoc(corner.reshape(1), &lo, &hi);
    EXPECT_LT(lo, 60);   // darker than the 90 background
    EXPECT_GT(hi, 200);  // text
}

TEST(Overlay, InvalidEllipseDrawsOnlyThePanel) {
    auto m = make_measurement("review");
    m.ellipse_px = {};
    m.hc_mm = 0;
    const cv::Mat out = fetalhc::draw_overlay(gray_image({320, 240}), m);
    ASSERT_EQ(out.type(), CV_8UC3);
    EXPECT_EQ(out.size(), cv::Size(320, 240));
    // Nothing coloured anywhere: the panel is grey/white only.
    cv::Mat ch[3];
    cv::split(out, ch);
    EXPECT_EQ(cv::norm(ch[0], ch[1], cv::NORM_INF), 0.0);
    EXPECT_EQ(cv::norm(ch[1], ch[2], cv::NORM_INF), 0.0);
}

TEST(Overlay, SurvivesNonFiniteAndHugeEllipses) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (fetalhc::Ellipse e : {fetalhc::Ellipse{nan, 10, 5, 4, 0}, fetalhc::Ellipse{10, 10, 1e12, 1e11, 0.3},
                               fetalhc::Ellipse{10, 10, -5, 4, 0}}) {
        auto m = make_measurement("review");
        m.ellipse_px = e;
        const cv::Mat out = fetalhc::draw_overlay(gray_image({200, 150}), m);
        EXPECT_EQ(out.size(), cv::Size(200, 150));
    }
}

TEST(Overlay, SmallImagesStillGetAPanel) {
    // Long quality reasons are wrapped; a tiny image must not crash the text layout.
    auto m = make_measurement("review");
    m.ellipse_px = {30, 30, 20, 15, 0};
    const cv::Mat out = fetalhc::draw_overlay(gray_image({64, 48}), m);
    EXPECT_EQ(out.size(), cv::Size(64, 48));
}

TEST(Overlay, EmptyImageGivesEmptyResult) {
    EXPECT_TRUE(fetalhc::draw_overlay(cv::Mat(), make_measurement("ok")).empty());
}

}  // namespace
