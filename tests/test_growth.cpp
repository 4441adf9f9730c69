// Gestational age and HC centiles (growth.h).
//
// Tolerance classes:
//   - hand-computed values of a closed formula: 1e-9 weeks (double rounding only);
//   - published check values, printed to 0.1 mm (median) or 0.01 mm (SD): half a printed unit plus
//     the rounding of the published coefficients, i.e. 0.05 mm and 0.01 mm;
//   - round trips through the normal CDF and its inverse: 1e-6 centile points (the inverse is
//     refined to about double precision; 1e-6 leaves room for erfc's own error).
#include "fetalhc/growth.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace {

constexpr double kExact = 1e-9;

// ---- Hadlock 1984 ---------------------------------------------------------------------------

TEST(HadlockGa, MatchesFormulaComputedByHand) {
    // HC 200 mm = 20 cm: 8.96 + 0.540*20 + 0.0003*20^3 = 8.96 + 10.8 + 2.4 = 22.16 weeks.
    auto g = fetalhc::hadlock_ga(200.0);
    ASSERT_TRUE(g.in_range) << g.note;
    EXPECT_NEAR(g.weeks, 22.16, kExact);
    EXPECT_TRUE(g.note.empty());
    // HC 150 mm = 15 cm: 8.96 + 8.1 + 0.0003*3375 = 8.96 + 8.1 + 1.0125 = 18.0725 weeks.
    EXPECT_NEAR(fetalhc::hadlock_ga(150.0).weeks, 18.0725, kExact);
}

TEST(HadlockGa, UsesCentimetresNotMillimetres) {
    // With HC wrongly taken in mm the cubic term alone would be 0.0003*200^3 = 2400 weeks.
    EXPECT_LT(fetalhc::hadlock_ga(200.0).weeks, 30.0);
}

TEST(HadlockGa, RangeIs68To360MillimetresInclusive) {
    // 6.8 cm: 8.96 + 3.672 + 0.0003*314.432 = 12.7263296 weeks.
    auto lo = fetalhc::hadlock_ga(68.0);
    ASSERT_TRUE(lo.in_range) << lo.note;
    EXPECT_NEAR(lo.weeks, 12.7263296, kExact);
    // 36 cm: 8.96 + 19.44 + 0.0003*46656 = 42.3968 weeks.
    auto hi = fetalhc::hadlock_ga(360.0);
    ASSERT_TRUE(hi.in_range) << hi.note;
    EXPECT_NEAR(hi.weeks, 42.3968, kExact);

    for (double hc : {67.9, 360.1}) {
        auto g = fetalhc::hadlock_ga(hc);
        EXPECT_FALSE(g.in_range) << hc;
        EXPECT_TRUE(std::isnan(g.weeks)) << hc;
        EXPECT_FALSE(g.note.empty()) << hc;
    }
    EXPECT_NE(fetalhc::hadlock_ga(40.0).note.find("below"), std::string::npos);
    EXPECT_NE(fetalhc::hadlock_ga(400.0).note.find("above"), std::string::npos);
}

TEST(HadlockGa, RejectsNonPositiveAndNonFiniteHc) {
    for (double hc : {0.0, -10.0, std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity()}) {
        auto g = fetalhc::hadlock_ga(hc);
        EXPECT_FALSE(g.in_range) << hc;
        EXPECT_TRUE(std::isnan(g.weeks)) << hc;
        EXPECT_FALSE(g.note.empty()) << hc;
    }
}

// ---- INTERGROWTH-21st dating ----------------------------------------------------------------

TEST(IntergrowthGa, MatchesFormulaComputedByHand) {
    // HC 150 mm: ln 150 = 5.0106353; 0.05970*5.0106353^2 = 1.4988560; 6.409e-9*150^3 = 0.0216304;
    // exp(1.4988560 + 0.0216304 + 3.3258) = exp(4.8462864) = 127.266893 days = 18.180985 weeks.
    auto g = fetalhc::intergrowth_ga(150.0);
    ASSERT_TRUE(g.in_range) << g.note;
    EXPECT_NEAR(g.weeks, 18.180985, 1e-5);  // hand arithmetic carried to 8 digits
}

TEST(IntergrowthGa, RangeIs14To25Plus6WeeksOfGa) {
    // The range is in GA: 14+0 weeks is reached at HC ~97.68 mm, 26+0 at HC ~239.05 mm.
    auto lo = fetalhc::intergrowth_ga(97.8);
    ASSERT_TRUE(lo.in_range) << lo.note;
    EXPECT_GE(lo.weeks, 14.0);
    auto hi = fetalhc::intergrowth_ga(239.0);
    ASSERT_TRUE(hi.in_range) << hi.note;
    EXPECT_LT(hi.weeks, 26.0);

    for (double hc : {97.5, 90.0, 239.1, 300.0}) {
        auto g = fetalhc::intergrowth_ga(hc);
        EXPECT_FALSE(g.in_range) << hc;
        EXPECT_TRUE(std::isnan(g.weeks)) << hc;
        EXPECT_FALSE(g.note.empty()) << hc;
    }
}

TEST(IntergrowthGa, RejectsNonPositiveAndNonFiniteHc) {
    for (double hc : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN()}) {
        auto g = fetalhc::intergrowth_ga(hc);
        EXPECT_FALSE(g.in_range) << hc;
        EXPECT_TRUE(std::isnan(g.weeks)) << hc;
        EXPECT_FALSE(g.note.empty()) << hc;
    }
}

// ---- INTERGROWTH-21st HC-for-GA standard ----------------------------------------------------

TEST(IntergrowthHcStandard, MedianAndSdMatchPublishedValues) {
    // Published to 0.1 mm (median) and 0.01 mm (SD); see the tolerance note at the top.
    EXPECT_NEAR(fetalhc::intergrowth_hc_median(20.0), 172.5, 0.05);
    EXPECT_NEAR(fetalhc::intergrowth_hc_sd(20.0), 7.44, 0.01);
    EXPECT_NEAR(fetalhc::intergrowth_hc_median(40.0), 333.9, 0.05);
    EXPECT_NEAR(fetalhc::intergrowth_hc_sd(40.0), 12.92, 0.01);
}

TEST(IntergrowthHcStandard, MedianAndSdGrowWithGa) {
    double prev_m = 0, prev_s = 0;
    for (double ga = 14.0; ga <= 40.0; ga += 0.5) {
        const double m = fetalhc::intergrowth_hc_median(ga), s = fetalhc::intergrowth_hc_sd(ga);
        EXPECT_GT(m, prev_m) << ga;
        EXPECT_GT(s, prev_s) << ga;
        prev_m = m, prev_s = s;
    }
}

TEST(IntergrowthHcCentile, MedianIsFiftiethCentile) {
    const double ga = 20.0, med = fetalhc::intergrowth_hc_median(ga);
    auto c = fetalhc::intergrowth_hc_centile(med, ga);
    ASSERT_TRUE(c.in_range) << c.note;
    EXPECT_NEAR(c.z, 0.0, kExact);
    EXPECT_NEAR(c.centile, 50.0, kExact);
    EXPECT_DOUBLE_EQ(c.median_mm, med);
    EXPECT_DOUBLE_EQ(c.sd_mm, fetalhc::intergrowth_hc_sd(ga));
    EXPECT_FALSE(c.below_3rd);
    EXPECT_FALSE(c.above_97th);
    EXPECT_TRUE(c.note.empty());
}

TEST(IntergrowthHcCentile, ZOf188IsAboutThe97thCentile) {
    // Phi(1.88) = 0.969946, so 1.88 SD above the median sits just under the 97th centile
    // (0.01 centile points: tables of Phi are printed to 4 digits) and is not flagged;
    // Phi(1.89) = 0.970621 is just above it and is flagged. Mirrored for the 3rd centile.
    const double ga = 30.0, med = fetalhc::intergrowth_hc_median(ga), sd = fetalhc::intergrowth_hc_sd(ga);
    auto c = fetalhc::intergrowth_hc_centile(med + 1.88 * sd, ga);
    ASSERT_TRUE(c.in_range) << c.note;
    EXPECT_NEAR(c.z, 1.88, 1e-9);
    EXPECT_NEAR(c.centile, 96.9946, 0.01);
    EXPECT_FALSE(c.above_97th);
    EXPECT_TRUE(fetalhc::intergrowth_hc_centile(med + 1.89 * sd, ga).above_97th);

    auto low = fetalhc::intergrowth_hc_centile(med - 1.88 * sd, ga);
    EXPECT_NEAR(low.centile, 3.0054, 0.01);
    EXPECT_FALSE(low.below_3rd);
    EXPECT_TRUE(fetalhc::intergrowth_hc_centile(med - 1.89 * sd, ga).below_3rd);
}

TEST(IntergrowthHcCentile, OutsideGa14To40GivesNoCentile) {
    EXPECT_TRUE(fetalhc::intergrowth_hc_centile(98.0, 14.0).in_range);
    EXPECT_TRUE(fetalhc::intergrowth_hc_centile(334.0, 40.0).in_range);
    for (double ga : {13.9, 40.1, 0.0, -5.0, std::numeric_limits<double>::quiet_NaN()}) {
        auto c = fetalhc::intergrowth_hc_centile(200.0, ga);
        EXPECT_FALSE(c.in_range) << ga;
        EXPECT_TRUE(std::isnan(c.centile)) << ga;
        EXPECT_TRUE(std::isnan(c.z)) << ga;
        EXPECT_FALSE(c.below_3rd) << ga;
        EXPECT_FALSE(c.above_97th) << ga;
        EXPECT_FALSE(c.note.empty()) << ga;
    }
}

TEST(IntergrowthHcCentile, RejectsNonPositiveHc) {
    for (double hc : {0.0, -3.0, std::numeric_limits<double>::infinity()}) {
        auto c = fetalhc::intergrowth_hc_centile(hc, 20.0);
        EXPECT_FALSE(c.in_range) << hc;
        EXPECT_TRUE(std::isnan(c.centile)) << hc;
        EXPECT_FALSE(c.note.empty()) << hc;
    }
}

TEST(IntergrowthHcAtCentile, FiftiethIsMedian) {
    for (double ga : {14.0, 20.0, 27.5, 40.0})
        EXPECT_NEAR(fetalhc::intergrowth_hc_at_centile(ga, 50.0), fetalhc::intergrowth_hc_median(ga), 1e-9) << ga;
}

TEST(IntergrowthHcAtCentile, KnownQuantiles) {
    // z for the 97.5th centile is 1.959963985 (standard normal tables to 10 digits).
    const double ga = 24.0, med = fetalhc::intergrowth_hc_median(ga), sd = fetalhc::intergrowth_hc_sd(ga);
    EXPECT_NEAR((fetalhc::intergrowth_hc_at_centile(ga, 97.5) - med) / sd, 1.959963985, 1e-8);
    EXPECT_NEAR((fetalhc::intergrowth_hc_at_centile(ga, 2.5) - med) / sd, -1.959963985, 1e-8);
}

TEST(IntergrowthHcAtCentile, IsInverseOfCentile) {
    // Covers Acklam's central region and both tails (boundary at 2.425%).
    for (double ga : {14.0, 22.3, 40.0}) {
        for (double c : {1.0, 2.0, 2.425, 3.0, 10.0, 25.0, 50.0, 75.0, 90.0, 97.0, 97.575, 98.0, 99.0}) {
            const double hc = fetalhc::intergrowth_hc_at_centile(ga, c);
            auto back = fetalhc::intergrowth_hc_centile(hc, ga);
            ASSERT_TRUE(back.in_range) << back.note;
            EXPECT_NEAR(back.centile, c, 1e-6) << "ga " << ga << " centile " << c;
        }
    }
}

TEST(IntergrowthHcAtCentile, OutOfRangeInputsGiveNaN) {
    EXPECT_TRUE(std::isnan(fetalhc::intergrowth_hc_at_centile(13.0, 50.0)));
    EXPECT_TRUE(std::isnan(fetalhc::intergrowth_hc_at_centile(41.0, 50.0)));
    EXPECT_TRUE(std::isnan(fetalhc::intergrowth_hc_at_centile(20.0, 0.0)));
    EXPECT_TRUE(std::isnan(fetalhc::intergrowth_hc_at_centile(20.0, 100.0)));
}

// ---- format_weeks ---------------------------------------------------------------------------

TEST(FormatWeeks, RoundsToNearestDay) {
    EXPECT_EQ(fetalhc::format_weeks(10.5), "10w4d");  // 73.5 days rounds to 74 = 10w4d
    EXPECT_EQ(fetalhc::format_weeks(20.0), "20w0d");
    EXPECT_EQ(fetalhc::format_weeks(20.0 + 3.0 / 7.0), "20w3d");
    EXPECT_EQ(fetalhc::format_weeks(19.99), "20w0d");  // 139.93 days rounds to 140
    EXPECT_EQ(fetalhc::format_weeks(25.0 + 6.4 / 7.0), "25w6d");
    EXPECT_EQ(fetalhc::format_weeks(0.0), "0w0d");
}

TEST(FormatWeeks, NotANumberIsNA) {
    EXPECT_EQ(fetalhc::format_weeks(std::numeric_limits<double>::quiet_NaN()), "n/a");
    EXPECT_EQ(fetalhc::format_weeks(std::numeric_limits<double>::infinity()), "n/a");
}

TEST(FormatWeeks, OutOfRangeEstimateFormatsAsNA) {
    EXPECT_EQ(fetalhc::format_weeks(fetalhc::hadlock_ga(40.0).weeks), "n/a");
}

}  // namespace

// The dating formula is U-shaped in ln HC (minimum near 1 mm): a tiny HC must not come back into the
// 14+0..25+6 weeks range from the falling branch.
TEST(IntergrowthGa, TinyHcIsBelowTheRangeNotInIt) {
    for (double hc : {0.01, 0.001, 1e-5, 0.5, 1.0}) {
        const fetalhc::GaEstimate g = fetalhc::intergrowth_ga(hc);
        EXPECT_FALSE(g.in_range) << hc << " mm gave " << g.weeks << " weeks";
        EXPECT_NE(g.note.find("below"), std::string::npos) << g.note;
        EXPECT_EQ(g.note.find("past"), std::string::npos) << g.note;
    }
    // The rising branch is untouched: the lower limit is still found at about 97 mm.
    EXPECT_FALSE(fetalhc::intergrowth_ga(96.0).in_range);
    EXPECT_TRUE(fetalhc::intergrowth_ga(100.0).in_range);
}
