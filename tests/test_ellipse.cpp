// Ellipses, perimeters and the robust fit (ellipse.h).
//
// Tolerance classes:
//   - exact identities (a circle's perimeter, distances along an axis): 1e-9 relative / absolute;
//   - closed forms vs numerical integration (Ramanujan II): the approximation's own error, which
//     grows like h^5 (h = ((a-b)/(a+b))^2), see RamanujanMatchesIntegratedPerimeter;
//   - plain brute-force references (distance by dense sampling): the reference's resolution;
//   - fits to synthetic noisy points (sigma 0.5 px): a few times the statistical error of the fit;
//   - cross-checks against OpenCV (cv::fitEllipse): float precision of its inputs and outputs.
// Every random input comes from a fixed-seed std::mt19937, so failures are reproducible.
#include "fetalhc/ellipse.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace {

using fetalhc::Ellipse;

constexpr double kPi = CV_PI;

// A head-like ellipse (b/a ~ 0.73), off-centre, rotated, with fractional centre coordinates.
const Ellipse kHead{256.4, 241.7, 110.0, 80.0, 0.6};

double angle_diff_mod_pi(double x, double y) {
    double d = std::fmod(std::abs(x - y), kPi);
    return std::min(d, kPi - d);
}

// n points spread evenly along the arc length of e (dense parametric sampling, then resampling).
std::vector<cv::Point2d> points_on(const Ellipse& e, int n) {
    const int dense = 20000;
    std::vector<cv::Point2d> p(dense + 1);
    std::vector<double> s(dense + 1, 0.0);
    for (int i = 0; i <= dense; ++i) {
        p[i] = fetalhc::ellipse_point(e, 2 * kPi * i / dense);
        if (i) s[i] = s[i - 1] + cv::norm(p[i] - p[i - 1]);
    }
    std::vector<cv::Point2d> out;
    int j = 0;
    for (int k = 0; k < n; ++k) {
        const double target = s[dense] * k / n;
        while (s[j + 1] < target) ++j;
        const double f = (target - s[j]) / (s[j + 1] - s[j]);
        out.push_back(p[j] + f * (p[j + 1] - p[j]));
    }
    return out;
}

std::vector<cv::Point2d> add_noise(std::vector<cv::Point2d> pts, double sigma, std::mt19937& rng) {
    std::normal_distribution<double> g(0.0, sigma);
    for (auto& q : pts) q += cv::Point2d(g(rng), g(rng));
    return pts;
}

// Half-widths of the axis-aligned bounding box of e.
cv::Point2d half_extent(const Ellipse& e) {
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    return {std::sqrt(e.a * e.a * c * c + e.b * e.b * s * s), std::sqrt(e.a * e.a * s * s + e.b * e.b * c * c)};
}

void expect_close(const Ellipse& got, const Ellipse& want, double px, double rad) {
    EXPECT_NEAR(got.cx, want.cx, px);
    EXPECT_NEAR(got.cy, want.cy, px);
    EXPECT_NEAR(got.a, want.a, px);
    EXPECT_NEAR(got.b, want.b, px);
    EXPECT_LT(angle_diff_mod_pi(got.angle, want.angle), rad) << "angle " << got.angle << " vs " << want.angle;
}

// ---- Ellipse value type ---------------------------------------------------------------------

TEST(Ellipse, NormalizedSwapsAxesAndTurnsAngleByHalfPi) {
    const Ellipse e = Ellipse{10, 20, 50, 80, 0.2}.normalized();
    EXPECT_DOUBLE_EQ(e.a, 80);
    EXPECT_DOUBLE_EQ(e.b, 50);
    EXPECT_NEAR(e.angle, 0.2 + kPi / 2, 1e-12);
    EXPECT_DOUBLE_EQ(e.cx, 10);
    EXPECT_DOUBLE_EQ(e.cy, 20);
    // Swapping past pi wraps: 2.0 + pi/2 = 3.5708 -> 0.4292.
    EXPECT_NEAR((Ellipse{0, 0, 30, 40, 2.0}.normalized().angle), 2.0 + kPi / 2 - kPi, 1e-12);
}

TEST(Ellipse, NormalizedWrapsAngleIntoZeroToPi) {
    struct Case { double in, out; };
    for (Case c : {Case{-0.3, kPi - 0.3}, Case{3.5, 3.5 - kPi}, Case{2 * kPi + 0.1, 0.1}, Case{kPi, 0.0},
                   Case{-2 * kPi - 0.25, kPi - 0.25}, Case{1.0, 1.0}, Case{0.0, 0.0}}) {
        const double got = Ellipse{0, 0, 5, 3, c.in}.normalized().angle;
        EXPECT_GE(got, 0.0) << c.in;
        EXPECT_LT(got, kPi) << c.in;
        EXPECT_NEAR(got, c.out, 1e-12) << c.in;
    }
}

TEST(Ellipse, NormalizedKeepsTheSameCurve) {
    // A point of the original curve is still on the normalized one.
    const Ellipse raw{40, 30, 12, 20, -1.1};
    const Ellipse n = raw.normalized();
    for (double t = 0; t < 2 * kPi; t += 0.7)
        EXPECT_NEAR(fetalhc::distance_to_ellipse(n, fetalhc::ellipse_point(raw, t)), 0.0, 1e-9) << t;
}

TEST(Ellipse, ScaledMultipliesLengthsNotAngle) {
    const Ellipse s = kHead.scaled(0.125);
    EXPECT_DOUBLE_EQ(s.cx, kHead.cx * 0.125);
    EXPECT_DOUBLE_EQ(s.cy, kHead.cy * 0.125);
    EXPECT_DOUBLE_EQ(s.a, kHead.a * 0.125);
    EXPECT_DOUBLE_EQ(s.b, kHead.b * 0.125);
    EXPECT_DOUBLE_EQ(s.angle, kHead.angle);
}

TEST(Ellipse, ValidRequiresFiniteAndAGreaterOrEqualBPositive) {
    EXPECT_TRUE(kHead.valid());
    EXPECT_TRUE((Ellipse{0, 0, 5, 5, 0}.valid()));
    EXPECT_FALSE((Ellipse{0, 0, 5, 6, 0}.valid()));
    EXPECT_FALSE((Ellipse{0, 0, 5, 0, 0}.valid()));
    EXPECT_FALSE((Ellipse{0, 0, 0, 0, 0}.valid()));
    EXPECT_FALSE(Ellipse{}.valid());
    EXPECT_FALSE((Ellipse{std::nan(""), 0, 5, 4, 0}.valid()));
    EXPECT_FALSE((Ellipse{0, 0, INFINITY, 4, 0}.valid()));
}

TEST(Ellipse, PointAtZeroLiesOnMajorAxisTowardsAngle) {
    // Convention: angle from +x towards +y (y down) to the major axis.
    const Ellipse e{100, 50, 40, 10, kPi / 2};
    const cv::Point2d p0 = fetalhc::ellipse_point(e, 0), p1 = fetalhc::ellipse_point(e, kPi / 2);
    EXPECT_NEAR(p0.x, 100, 1e-9);
    EXPECT_NEAR(p0.y, 90, 1e-9);  // major axis points down the image
    EXPECT_NEAR(p1.x, 90, 1e-9);
    EXPECT_NEAR(p1.y, 50, 1e-9);
}

// ---- Perimeter ------------------------------------------------------------------------------

TEST(Perimeter, CircleIsTwoPiR) {
    for (double r : {0.5, 1.0, 37.25, 1000.0}) {
        EXPECT_NEAR(fetalhc::ramanujan_perimeter(r, r), 2 * kPi * r, 1e-9 * 2 * kPi * r) << r;
        EXPECT_NEAR(fetalhc::integrated_perimeter(r, r), 2 * kPi * r, 1e-9 * 2 * kPi * r) << r;
        EXPECT_NEAR(fetalhc::ramanujan_perimeter(Ellipse{3, 4, r, r, 1.0}), 2 * kPi * r, 1e-9 * 2 * kPi * r) << r;
    }
}

TEST(Perimeter, RamanujanMatchesIntegratedPerimeter) {
    // Ramanujan II agrees with the series pi (a+b) sum C(1/2, n)^2 h^n up to h^4; the first
    // difference is of order 3 h^5 / 2^17. Measured against an AGM evaluation, its relative error
    // is 1.5e-9 at b/a = 0.5 and 1.5e-7 at b/a = 0.3 (h = 0.29), so 1e-6 holds with margin down to
    // b/a = 0.3; at b/a = 0.2 it is 1.7e-6. Fetal heads have b/a of about 0.65..0.95.
    // The integral of the smooth arc-length integrand converges far below these errors.
    for (double ratio : {1.0, 0.95, 0.85, 0.75, 0.65, 0.5, 0.4, 0.3}) {
        const double a = 120.0, b = a * ratio;
        const double r = fetalhc::ramanujan_perimeter(a, b), ref = fetalhc::integrated_perimeter(a, b);
        EXPECT_NEAR(r / ref - 1, 0.0, 1e-6) << "b/a " << ratio;
        EXPECT_LE(r, ref * (1 + 1e-12)) << "Ramanujan II never overestimates; b/a " << ratio;
    }
}

TEST(Perimeter, DoesNotDependOnAxisOrder) {
    EXPECT_DOUBLE_EQ(fetalhc::ramanujan_perimeter(80, 110), fetalhc::ramanujan_perimeter(110, 80));
}

// ---- Distance to the curve ------------------------------------------------------------------

TEST(DistanceToEllipse, PointsOnTheCurveAreAtZero) {
    for (double t = 0; t < 2 * kPi; t += 0.05)
        EXPECT_NEAR(fetalhc::distance_to_ellipse(kHead, fetalhc::ellipse_point(kHead, t)), 0.0, 1e-6) << t;
}

TEST(DistanceToEllipse, AlongTheAxesIsExact) {
    const cv::Point2d c(kHead.cx, kHead.cy);
    const cv::Point2d u(std::cos(kHead.angle), std::sin(kHead.angle)), v(-u.y, u.x);
    EXPECT_NEAR(fetalhc::distance_to_ellipse(kHead, c), kHead.b, 1e-9);  // nearest are the minor vertices
    EXPECT_NEAR(fetalhc::distance_to_ellipse(kHead, c + (kHead.a + 7) * u), 7.0, 1e-9);
    EXPECT_NEAR(fetalhc::distance_to_ellipse(kHead, c - (kHead.b + 3) * v), 3.0, 1e-9);
    EXPECT_NEAR(fetalhc::distance_to_ellipse(kHead, c + (kHead.b - 2) * v), 2.0, 1e-9);
}

// Plain reference: global minimum over a dense sampling of the curve, then golden-section search
// around it. Accurate to ~1e-9 px.
double brute_force_distance(const Ellipse& e, cv::Point2d p) {
    const int n = 20000;
    auto d2 = [&](double t) {
        const cv::Point2d q = fetalhc::ellipse_point(e, t) - p;
        return q.dot(q);
    };
    int best = 0;
    for (int i = 1; i < n; ++i)
        if (d2(2 * kPi * i / n) < d2(2 * kPi * best / n)) best = i;
    double lo = 2 * kPi * (best - 1) / n, hi = 2 * kPi * (best + 1) / n;
    const double g = (std::sqrt(5.0) - 1) / 2;
    for (int it = 0; it < 100; ++it) {
        const double m1 = hi - g * (hi - lo), m2 = lo + g * (hi - lo);
        if (d2(m1) < d2(m2)) hi = m2;
        else lo = m1;
    }
    return std::sqrt(d2(0.5 * (lo + hi)));
}

TEST(DistanceToEllipse, MatchesBruteForceReference) {
    std::mt19937 rng(7);
    const cv::Point2d h = half_extent(kHead);
    std::uniform_real_distribution<double> ux(kHead.cx - 1.5 * h.x, kHead.cx + 1.5 * h.x);
    std::uniform_real_distribution<double> uy(kHead.cy - 1.5 * h.y, kHead.cy + 1.5 * h.y);
    const Ellipse thin{50, 60, 90, 20, 2.5};  // inside points of a thin ellipse have several local minima
    for (int i = 0; i < 120; ++i) {
        const cv::Point2d p(ux(rng), uy(rng));
        EXPECT_NEAR(fetalhc::distance_to_ellipse(kHead, p), brute_force_distance(kHead, p), 1e-6) << p;
        const cv::Point2d q(thin.cx + (p.x - kHead.cx), thin.cy + (p.y - kHead.cy) * 0.3);
        EXPECT_NEAR(fetalhc::distance_to_ellipse(thin, q), brute_force_distance(thin, q), 1e-6) << q;
    }
}

// ---- Rasterization --------------------------------------------------------------------------

TEST(Rasterize, AreaIsPiAB) {
    // Only boundary pixels are uncertain; for a=110, b=80 they are ~600 of ~27600 (2%), and a
    // pixel-centre rule makes their errors cancel on average, so 1% is a generous bound.
    const cv::Mat m = fetalhc::rasterize(kHead, {512, 512});
    ASSERT_EQ(m.type(), CV_8U);
    ASSERT_EQ(m.size(), cv::Size(512, 512));
    const double area = kPi * kHead.a * kHead.b;
    EXPECT_NEAR(cv::countNonZero(m), area, 0.01 * area);
}

TEST(Rasterize, AreaIsPiABForSmallEllipses) {
    // Heads in network-resolution masks can be this small. Boundary pixels are now ~10% of the area,
    // so a rule that adds every pixel the curve touches is biased by several percent, while the
    // pixel-centre rule stays unbiased; averaging over sub-pixel centre offsets leaves lattice noise
    // of ~0.3%, so the mean must be within 1%.
    double sum = 0;
    const int n = 10;
    for (int i = 0; i < n; ++i) {
        const Ellipse e{40.0 + 0.1 * i, 38.0 + 0.07 * i, 27.5, 20.0, 0.6 + 0.1 * i};
        sum += cv::countNonZero(fetalhc::rasterize(e, {80, 80})) / (kPi * e.a * e.b);
    }
    EXPECT_NEAR(sum / n, 1.0, 0.01);
}

TEST(Rasterize, AgreesWithPixelCentreTest) {
    // Reference: a pixel is inside when its centre is. Disagreement is confined to pixels the curve
    // passes close to: fewer than 1% of the area, and none farther than 1 px from the curve.
    const cv::Mat m = fetalhc::rasterize(kHead, {512, 512});
    const double c = std::cos(kHead.angle), s = std::sin(kHead.angle);
    int differ = 0, far = 0;
    for (int y = 0; y < m.rows; ++y)
        for (int x = 0; x < m.cols; ++x) {
            const double dx = x - kHead.cx, dy = y - kHead.cy;
            const double u = (c * dx + s * dy) / kHead.a, v = (-s * dx + c * dy) / kHead.b;
            const bool inside = u * u + v * v <= 1;
            if (inside != (m.at<uchar>(y, x) != 0)) {
                ++differ;
                if (fetalhc::distance_to_ellipse(kHead, {double(x), double(y)}) > 1.0) ++far;
            }
        }
    EXPECT_LT(differ, 0.01 * kPi * kHead.a * kHead.b);
    EXPECT_EQ(far, 0);
}

TEST(Rasterize, InvalidEllipseGivesEmptyMask) {
    const cv::Mat m = fetalhc::rasterize(Ellipse{}, {64, 48});
    ASSERT_EQ(m.size(), cv::Size(64, 48));
    EXPECT_EQ(cv::countNonZero(m), 0);
}

// ---- Fit ------------------------------------------------------------------------------------

TEST(EllipseFit, RecoversCleanEllipseExactly) {
    // Noise-free points: the geometric refinement runs in double, so only its stopping rule is left.
    const auto fit = fetalhc::fit_ellipse(points_on(kHead, 200));
    ASSERT_TRUE(fit.ok) << fit.message;
    expect_close(fit.ellipse, kHead, 1e-4, 1e-6);
    EXPECT_EQ(fit.points, 200);
    EXPECT_EQ(fit.inliers, 200);
    EXPECT_LT(fit.rms_px, 1e-4);
    EXPECT_EQ(fit.inlier_mask.size(), 200u);
}

TEST(EllipseFit, RecoversEllipseFromNoisyPoints) {
    // 400 points, sigma 0.5 px: statistical errors are ~0.05 px and ~0.1 degree, so 0.3 px and
    // 1 degree catch any bias while leaving several sigmas of margin.
    std::mt19937 rng(1);
    const auto fit = fetalhc::fit_ellipse(add_noise(points_on(kHead, 400), 0.5, rng));
    ASSERT_TRUE(fit.ok) << fit.message;
    expect_close(fit.ellipse, kHead, 0.3, 1.0 * kPi / 180);
    EXPECT_TRUE(fit.ellipse.valid());
    EXPECT_GE(fit.inliers, 390);      // a 3-sigma band keeps ~99.7%
    EXPECT_NEAR(fit.rms_px, 0.5, 0.1);  // orthogonal residual of isotropic noise has sigma 0.5
}

TEST(EllipseFit, IgnoresTwentyPercentUniformOutliers) {
    std::mt19937 rng(2);
    auto pts = add_noise(points_on(kHead, 400), 0.5, rng);
    const cv::Point2d h = half_extent(kHead);
    std::uniform_real_distribution<double> ux(kHead.cx - h.x, kHead.cx + h.x), uy(kHead.cy - h.y, kHead.cy + h.y);
    for (int i = 0; i < 100; ++i) pts.emplace_back(ux(rng), uy(rng));  // 100 of 500 = 20%
    std::shuffle(pts.begin(), pts.end(), rng);

    const auto fit = fetalhc::fit_ellipse(pts);
    ASSERT_TRUE(fit.ok) << fit.message;
    expect_close(fit.ellipse, kHead, 0.3, 1.0 * kPi / 180);
    // Some outliers fall inside the inlier band by chance (~5% of the box is within 1.5 px of the
    // curve), so up to ~400 + 15 inliers are expected.
    EXPECT_GE(fit.inliers, 390);
    EXPECT_LE(fit.inliers, 430);
    ASSERT_EQ(fit.inlier_mask.size(), pts.size());
    int masked = 0;
    for (unsigned char f : fit.inlier_mask) masked += f != 0;
    EXPECT_EQ(masked, fit.inliers);
}

// Head cut by the image border: the points left of a vertical line chosen so that 60% of the
// perimeter stays visible (1000 points along the whole curve -> 600 kept), then noise.
std::vector<cv::Point2d> arc_cut_by_border(const Ellipse& e, std::mt19937& rng) {
    const auto all = points_on(e, 1000);
    std::vector<double> xs;
    for (const auto& p : all) xs.push_back(p.x);
    std::nth_element(xs.begin(), xs.begin() + 600, xs.end());
    std::vector<cv::Point2d> arc;
    for (const auto& p : all)
        if (p.x < xs[600]) arc.push_back(p);
    return add_noise(arc, 0.5, rng);
}

TEST(EllipseFit, RecoversArcCutByImageBorder) {
    // With 40% of the curve missing, centre and major axis trade off along the cut direction, so a
    // single fit scatters more than on a full ellipse: over 200 seeds the largest of the four
    // length errors has median 0.14 px, 95th percentile 0.32 px, maximum 0.60 px (angle: at most
    // 0.45 degree). Each fit must stay within 0.6 px and 1 degree; the mean over 20 seeds must be
    // within 0.15 px (about 4 standard errors), which is what catches a biased (shrunk) fit.
    double sum_cx = 0, sum_cy = 0, sum_a = 0, sum_b = 0;
    const int seeds = 20;
    for (int seed = 1; seed <= seeds; ++seed) {
        std::mt19937 rng(seed);
        const auto arc = arc_cut_by_border(kHead, rng);
        ASSERT_NEAR(double(arc.size()) / 1000, 0.6, 0.01);  // the set-up itself
        const auto fit = fetalhc::fit_ellipse(arc);
        ASSERT_TRUE(fit.ok) << "seed " << seed << ": " << fit.message;
        SCOPED_TRACE("seed " + std::to_string(seed));
        expect_close(fit.ellipse, kHead, 0.6, 1.0 * kPi / 180);
        sum_cx += fit.ellipse.cx - kHead.cx, sum_cy += fit.ellipse.cy - kHead.cy;
        sum_a += fit.ellipse.a - kHead.a, sum_b += fit.ellipse.b - kHead.b;
    }
    EXPECT_NEAR(sum_cx / seeds, 0.0, 0.15);
    EXPECT_NEAR(sum_cy / seeds, 0.0, 0.15);
    EXPECT_NEAR(sum_a / seeds, 0.0, 0.15);
    EXPECT_NEAR(sum_b / seeds, 0.0, 0.15);
}

TEST(EllipseFit, AgreesWithOpenCvFitEllipseOnCleanPoints) {
    // Both are exact on noise-free points; cv::fitEllipse works on float points and returns a float
    // RotatedRect (~3e-5 px at these coordinates), so 1e-3 px / 1e-4 rad covers its rounding.
    for (const Ellipse& e : {kHead, Ellipse{320.2, 180.9, 150, 95, 2.2}, Ellipse{64, 70, 30, 28, 0.1}}) {
        const auto pts = points_on(e, 120);
        const auto fit = fetalhc::fit_ellipse(pts);
        ASSERT_TRUE(fit.ok) << fit.message;
        const std::vector<cv::Point2f> f(pts.begin(), pts.end());
        const cv::RotatedRect r = cv::fitEllipse(f);
        const Ellipse cv_e =
            Ellipse{r.center.x, r.center.y, r.size.width / 2.0, r.size.height / 2.0, r.angle * kPi / 180}.normalized();
        expect_close(fit.ellipse, cv_e, 1e-3, 1e-4);
    }
}

TEST(EllipseFit, TooFewPointsFailsWithMessage) {
    for (int n : {0, 1, 5}) {
        const auto fit = fetalhc::fit_ellipse(points_on(kHead, n));
        EXPECT_FALSE(fit.ok) << n;
        EXPECT_FALSE(fit.message.empty()) << n;
        EXPECT_EQ(fit.points, n);
        EXPECT_EQ(fit.inlier_mask.size(), size_t(n));
    }
}

TEST(EllipseFit, IsRepeatableWithFixedSeed) {
    std::mt19937 rng(4);
    auto pts = add_noise(points_on(kHead, 300), 0.5, rng);
    std::uniform_real_distribution<double> u(100, 400);
    for (int i = 0; i < 80; ++i) pts.emplace_back(u(rng), u(rng));
    const auto f1 = fetalhc::fit_ellipse(pts), f2 = fetalhc::fit_ellipse(pts);
    ASSERT_TRUE(f1.ok && f2.ok);
    EXPECT_EQ(f1.ellipse.cx, f2.ellipse.cx);
    EXPECT_EQ(f1.ellipse.a, f2.ellipse.a);
    EXPECT_EQ(f1.inlier_mask, f2.inlier_mask);
}

}  // namespace
