// The calibrated HC interval (fetalhc/uncertainty.h): the conformal order statistics, coverage on
// fresh draws from the calibration distribution, review widening, metadata round trip, bad input.
#include "fetalhc/uncertainty.h"

#include "fetalhc/growth.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <random>
#include <sstream>

using namespace fetalhc;

namespace {

// Residuals drawn as relative errors ~ N(bias, sd) around measured HCs spread over 60..340 mm.
std::vector<IntervalSample> draw(int n, double bias, double sd, bool review, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> hc(60, 340);
    std::normal_distribution<double> rel(bias, sd);
    std::vector<IntervalSample> out;
    for (int i = 0; i < n; ++i) {
        IntervalSample s;
        s.measured_hc_mm = hc(rng);
        s.reference_hc_mm = s.measured_hc_mm * (1 + rel(rng));
        s.review = review;
        out.push_back(s);
    }
    return out;
}

}  // namespace

TEST(HcInterval, OrderStatisticsOfASmallBin) {
    // 20 ok residuals -10%..+9% in 1% steps; coverage 0.9: ranks floor(21 * 0.05) = 1 and
    // ceil(21 * 0.95) = 20 -> the extremes.
    std::vector<IntervalSample> s;
    for (int i = 0; i < 20; ++i) s.push_back({100, 100 * (1 + (i - 10) / 100.0), false});
    auto m = calibrate_hc_interval(s, 0.9, {}, "test");
    ASSERT_TRUE(m) << m.error();
    EXPECT_NEAR(m->lo_rel[0], -0.10, 1e-12);
    EXPECT_NEAR(m->hi_rel[0], 0.09, 1e-12);
    const HcInterval iv = hc_interval(*m, 200, false);
    EXPECT_NEAR(iv.low_mm, 180, 1e-9);
    EXPECT_NEAR(iv.high_mm, 218, 1e-9);
}

// Statistical: 2000 calibration draws, 20000 fresh ones; the conformal guarantee gives at least
// 90% in expectation and about 90% here (the tolerance is several binomial SDs of 20000 draws).
TEST(HcInterval, HoldsNinetyPercentOfFreshDraws) {
    auto m = calibrate_hc_interval(draw(2000, 0.005, 0.02, false, 1), 0.9, {150, 250}, "synthetic");
    ASSERT_TRUE(m) << m.error();
    int inside = 0;
    const auto fresh = draw(20000, 0.005, 0.02, false, 2);
    for (const auto& s : fresh) {
        const HcInterval iv = hc_interval(*m, s.measured_hc_mm, false);
        inside += s.reference_hc_mm >= iv.low_mm && s.reference_hc_mm <= iv.high_mm;
    }
    EXPECT_NEAR(double(inside) / fresh.size(), 0.90, 0.012);
    const IntervalCoverage c = interval_coverage(*m, fresh);  // the same count, by the library
    EXPECT_EQ(c.images, int(fresh.size()));
    EXPECT_EQ(c.covered, inside);
    EXPECT_EQ(c.review_images, 0);
}

TEST(HcInterval, ReviewMeasurementsGetTheirWiderSpread) {
    auto s = draw(600, 0, 0.02, false, 3);
    const auto r = draw(300, 0, 0.08, true, 4);
    s.insert(s.end(), r.begin(), r.end());
    auto m = calibrate_hc_interval(s, 0.9, {200}, "synthetic");
    ASSERT_TRUE(m) << m.error();
    for (size_t b = 0; b < 2; ++b) {
        EXPECT_GT(m->review_hi_rel[b] - m->review_lo_rel[b], 2.5 * (m->hi_rel[b] - m->lo_rel[b]));
    }
    // Few review residuals in a bin: the ok interval widened by the pooled ratio, never narrower.
    auto few = draw(600, 0, 0.02, false, 5);
    auto rr = draw(25, 0, 0.08, true, 6);
    for (auto& x : rr) x.measured_hc_mm = 100, x.reference_hc_mm = 100 * (x.reference_hc_mm / x.measured_hc_mm);
    few.insert(few.end(), rr.begin(), rr.end());
    auto m2 = calibrate_hc_interval(few, 0.9, {200}, "synthetic");
    ASSERT_TRUE(m2) << m2.error();
    EXPECT_EQ(m2->n_review[1], 0);
    EXPECT_GT(m2->review_hi_rel[1] - m2->review_lo_rel[1], 1.5 * (m2->hi_rel[1] - m2->lo_rel[1]));
}

TEST(HcInterval, GaRangeFollowsHadlockAndStopsAtItsLimits) {
    HcIntervalModel m;
    m.lo_rel = m.review_lo_rel = {-0.05};
    m.hi_rel = m.review_hi_rel = {0.05};
    const HcInterval iv = hc_interval(m, 200, false);
    ASSERT_TRUE(iv.ga_hadlock_low_weeks && iv.ga_hadlock_high_weeks);
    EXPECT_NEAR(*iv.ga_hadlock_low_weeks, hadlock_ga(190).weeks, 1e-9);
    EXPECT_NEAR(*iv.ga_hadlock_high_weeks, hadlock_ga(210).weeks, 1e-9);
    const HcInterval small = hc_interval(m, 66, false);  // 62.7 mm is below Hadlock's 68 mm
    EXPECT_FALSE(small.ga_hadlock_low_weeks);
    EXPECT_TRUE(small.ga_hadlock_high_weeks);
}

TEST(HcInterval, MetadataRoundTripAndRefusals) {
    auto m = calibrate_hc_interval(draw(500, 0, 0.02, false, 7), 0.9, {200}, "synthetic");
    ASSERT_TRUE(m);
    const std::string meta = nlohmann::json{{"axis_scale", 0.99}, {"hc_interval", to_json(*m)}}.dump();
    auto back = interval_model_from_metadata(meta);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->lo_rel, m->lo_rel);
    EXPECT_EQ(back->edges_mm, m->edges_mm);
    EXPECT_FALSE(interval_model_from_metadata(R"({"axis_scale": 0.99})"));
    auto j = to_json(*m);
    j["hi_rel"] = {0.01};  // one value for two bins
    EXPECT_FALSE(interval_model_from_json(j));
    j = to_json(*m);
    j["lo_rel"] = {0.5, 0.5};  // lo above hi
    EXPECT_FALSE(interval_model_from_json(j));
    EXPECT_FALSE(calibrate_hc_interval(draw(10, 0, 0.02, false, 8), 0.9, {}, "x"));  // too few per bin
    EXPECT_FALSE(calibrate_hc_interval(draw(100, 0, 0.02, false, 8), 1.5, {}, "x"));
}

TEST(HcInterval, ReadsTheEvaluatePerImageCsv) {
    std::istringstream csv(
        "filename,ref_hc_mm,hc_mm,diff_mm,quality,reasons_or_error,fold\n"
        "a.png,100.00,101.00,1.00,ok,,3\n"
        "b.png,200.00,,,,\"no fetal head found, check\",1\n"
        "c.png,150.00,140.00,-10.00,review,\"poor fit, RMS 3\",0\n");
    auto s = read_interval_samples(csv, "oof.csv");
    ASSERT_TRUE(s) << s.error();
    ASSERT_EQ(s->size(), 2u);
    EXPECT_FALSE((*s)[0].review);
    EXPECT_TRUE((*s)[1].review);
    EXPECT_EQ((*s)[0].fold, 3);
    EXPECT_EQ((*s)[1].fold, 0);
    EXPECT_DOUBLE_EQ((*s)[1].measured_hc_mm, 140);
    std::istringstream bad_fold("filename,ref_hc_mm,hc_mm,quality,fold\na.png,100,101,ok,three\n");
    auto f = read_interval_samples(bad_fold, "folds.csv");
    ASSERT_FALSE(f);
    EXPECT_NE(f.error().find("fold"), std::string::npos) << f.error();
    EXPECT_NE(f.error().find("line 2"), std::string::npos) << f.error();
    std::istringstream wrong("file,hc\nx,1\n");
    auto e = read_interval_samples(wrong, "other.csv");
    ASSERT_FALSE(e);
    EXPECT_NE(e.error().find("other.csv"), std::string::npos);
}
