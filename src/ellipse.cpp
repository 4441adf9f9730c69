#include "fetalhc/ellipse.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <random>

namespace fetalhc {

Ellipse Ellipse::normalized() const {
    Ellipse e = *this;
    if (e.b > e.a) {
        std::swap(e.a, e.b);
        e.angle += CV_PI / 2;
    }
    e.angle = std::fmod(e.angle, CV_PI);
    if (e.angle < 0) e.angle += CV_PI;
    if (e.angle >= CV_PI) e.angle = 0;  // fmod rounding at exactly pi
    return e;
}

Ellipse Ellipse::scaled(double s) const { return {cx * s, cy * s, a * s, b * s, angle}; }

bool Ellipse::valid() const {
    return std::isfinite(cx) && std::isfinite(cy) && std::isfinite(a) && std::isfinite(b) &&
           std::isfinite(angle) && b > 0 && a >= b;
}

double ramanujan_perimeter(double a, double b) {
    if (a + b <= 0) return 0;
    const double h = std::pow((a - b) / (a + b), 2);
    return CV_PI * (a + b) * (1 + 3 * h / (10 + std::sqrt(4 - 3 * h)));
}

double integrated_perimeter(double a, double b, int steps) {
    // Arc length of (a cos t, b sin t) by the composite Simpson rule over one quarter, times 4.
    const int n = steps + (steps % 2);
    const double h = (CV_PI / 2) / n;
    auto f = [&](double t) { return std::hypot(a * std::sin(t), b * std::cos(t)); };
    double s = f(0) + f(CV_PI / 2);
    for (int i = 1; i < n; ++i) s += f(i * h) * (i % 2 ? 4 : 2);
    return 4 * s * h / 3;
}

cv::Point2d ellipse_point(const Ellipse& e, double t) {
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    const double x = e.a * std::cos(t), y = e.b * std::sin(t);
    return {e.cx + c * x - s * y, e.cy + s * x + c * y};
}

namespace {

struct Closest {
    double dist;    // signed: > 0 outside
    double cp, sp;  // cos and sin of the closest point's parametric angle: the point is (a cp, b sp)
};

// Closest point on an axis-aligned ellipse (semi-axes a >= b) to (u, v): the root of
// G(t) = (a u / (t + a^2))^2 + (b v / (t + b^2))^2 - 1, after Eberly,
// "Distance from a point to an ellipse, an ellipsoid, or a hyperellipsoid" (Geometric Tools, 2013).
Closest closest_axis_aligned(double a, double b, double u, double v) {
    const double su = u < 0 ? -1 : 1, sv = v < 0 ? -1 : 1;
    u = std::abs(u);
    v = std::abs(v);
    double x, y;
    if (v > 1e-12 * b) {
        if (u > 1e-12 * a) {
            // G is convex and decreasing for t > -b^2, and G(t0) >= 0 at t0 = -b^2 + b v, so Newton's
            // method from t0 climbs to the root without overshooting (a handful of steps instead of
            // ~40 bisections). The bracket [t0, hi] guards against rounding.
            const double lo = -b * b + b * v, hi = -b * b + std::sqrt(a * a * u * u + b * b * v * v);
            const double au = a * u, bv = b * v;
            double t = lo;
            for (int i = 0; i < 40; ++i) {
                const double ia = 1 / (t + a * a), ib = 1 / (t + b * b);
                const double gx = au * ia, gy = bv * ib;
                const double G = gx * gx + gy * gy - 1;
                if (G <= 0) break;
                const double dG = -2 * (gx * gx * ia + gy * gy * ib);
                const double next = std::min(hi, t - G / dG);
                if (!(next > t) || next - t <= 1e-13 * (std::abs(t) + a * a)) {
                    t = std::max(t, next);
                    break;
                }
                t = next;
            }
            x = a * a * u / (t + a * a);
            y = b * b * v / (t + b * b);
        } else {
            x = 0;
            y = b;
        }
    } else {
        const double lim = (a * a - b * b) / a;
        if (u < lim) {
            x = a * a * u / (a * a - b * b);
            y = b * std::sqrt(std::max(0.0, 1 - (x / a) * (x / a)));
        } else {
            x = a;
            y = 0;
        }
    }
    const double dxu = u - x, dyv = v - y;
    const double d = std::sqrt(dxu * dxu + dyv * dyv);
    const bool outside = (u / a) * (u / a) + (v / b) * (v / b) > 1;
    // The point is on the ellipse, so (x/a, y/b) is already the unit vector (cos, sin) of its
    // parametric angle; normalised against rounding (no atan2 and sincos per point).
    const double ca = su * x / a, sb = sv * y / b, r = std::sqrt(ca * ca + sb * sb);
    return {outside ? d : -d, ca / r, sb / r};
}

Closest closest(const Ellipse& e, cv::Point2d p) {
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    const double dx = p.x - e.cx, dy = p.y - e.cy;
    return closest_axis_aligned(e.a, e.b, c * dx + s * dy, -s * dx + c * dy);
}

Ellipse from_rotated_rect(const cv::RotatedRect& r) {
    Ellipse e{r.center.x, r.center.y, r.size.width / 2.0, r.size.height / 2.0, r.angle * CV_PI / 180.0};
    return e.normalized();
}

bool direct_fit(const std::vector<cv::Point2f>& pts, Ellipse& out) {
    if (pts.size() < 5) return false;
    try {
        out = from_rotated_rect(cv::fitEllipseDirect(pts));
    } catch (const cv::Exception&) {
        return false;
    }
    return out.valid();
}

// Levenberg-Marquardt on orthogonal distances with the analytic Jacobian at the closest points
// (the closest point's parameter is held fixed when differentiating: it is stationary).
Ellipse geometric_refine(Ellipse e, const std::vector<cv::Point2d>& pts, int iterations = 15) {
    double lambda = 1e-3;
    auto cost = [&](const Ellipse& q) {
        double c2 = 0;
        for (const auto& p : pts) {
            const double d = closest(q, p).dist;
            c2 += d * d;
        }
        return c2;
    };
    double current = cost(e);
    for (int it = 0; it < iterations; ++it) {
        cv::Matx<double, 5, 5> JtJ = cv::Matx<double, 5, 5>::zeros();
        cv::Vec<double, 5> Jtr = cv::Vec<double, 5>::zeros();
        const double c = std::cos(e.angle), s = std::sin(e.angle);
        for (const auto& p : pts) {
            const Closest q = closest(e, p);
            const double cp = q.cp, sp = q.sp;
            // Outward unit normal at the closest point, in image axes.
            double nx_l = cp / e.a, ny_l = sp / e.b;
            const double nn = std::hypot(nx_l, ny_l);
            nx_l /= nn;
            ny_l /= nn;
            const double nx = c * nx_l - s * ny_l, ny = s * nx_l + c * ny_l;
            // d(dist)/d(param) = -n . dX/d(param)
            const double xl = e.a * cp, yl = e.b * sp;
            cv::Vec<double, 5> J(-nx, -ny, -(nx * c * cp + ny * s * cp), -(-nx * s * sp + ny * c * sp),
                                 -(nx * (-s * xl - c * yl) + ny * (c * xl - s * yl)));
            JtJ += J * J.t();
            Jtr += J * q.dist;
        }
        bool improved = false;
        for (int tries = 0; tries < 6 && !improved; ++tries) {
            cv::Matx<double, 5, 5> A = JtJ;
            for (int k = 0; k < 5; ++k) A(k, k) *= 1 + lambda;
            cv::Vec<double, 5> delta;
            if (!cv::solve(A, -Jtr, delta, cv::DECOMP_CHOLESKY)) break;
            Ellipse cand{e.cx + delta[0], e.cy + delta[1], e.a + delta[2], e.b + delta[3], e.angle + delta[4]};
            if (cand.a <= 0 || cand.b <= 0) {
                lambda *= 10;
                continue;
            }
            const double cc = cost(cand);
            if (cc < current) {
                const double gain = current - cc;
                e = cand;
                current = cc;
                lambda = std::max(lambda / 10, 1e-9);
                improved = true;
                // Converged: the step moved no point of the ellipse by more than 1/1000 px.
                const double moved = std::max({std::abs(delta[0]), std::abs(delta[1]), std::abs(delta[2]),
                                               std::abs(delta[3]), std::abs(delta[4]) * e.a});
                if (moved < 1e-3 || gain < 1e-10 * (current + 1e-12)) return e.normalized();
            } else {
                lambda *= 10;
            }
        }
        if (!improved) break;
    }
    return e.normalized();
}

// The points to fit, as given and as floats (for cv::fitEllipseDirect), and the size of their
// bounding box, which bounds a plausible ellipse.
struct FitPoints {
    const std::vector<cv::Point2d>& points;
    std::vector<cv::Point2f> all;
    double extent;

    explicit FitPoints(const std::vector<cv::Point2d>& p) : points(p), all(p.begin(), p.end()) {
        cv::Rect2f box = cv::boundingRect(all);
        extent = std::max(box.width, box.height) + 1;
    }
    bool plausible(const Ellipse& e) const { return e.valid() && e.a < 5 * extent && e.b > 0.5; }
};

// RANSAC score: points whose Sampson distance |F| / |grad F| (a cheap first-order approximation
// of the orthogonal distance) is inside the band. F = P dx^2 + Q dx dy + R dy^2 - 1 is the
// rotated ellipse (u/a)^2 + (v/b)^2 - 1 expanded about the centre, grad F = (2P dx + Q dy,
// Q dx + 2R dy); the test is done squared, F^2 < t^2 |grad F|^2, without sqrt or division.
int count_inliers(const std::vector<cv::Point2d>& points, const Ellipse& e, double inlier_px) {
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    const double ia2 = 1 / (e.a * e.a), ib2 = 1 / (e.b * e.b);
    const double P = c * c * ia2 + s * s * ib2, Q = 2 * c * s * (ia2 - ib2), R = s * s * ia2 + c * c * ib2;
    const double t2 = inlier_px * inlier_px;
    int n = 0;
    for (const auto& p : points) {
        const double dx = p.x - e.cx, dy = p.y - e.cy;
        const double F = P * dx * dx + Q * dx * dy + R * dy * dy - 1;
        const double gx = 2 * P * dx + Q * dy, gy = Q * dx + 2 * R * dy;
        n += F * F < t2 * (gx * gx + gy * gy);
    }
    return n;
}

struct Candidate {
    Ellipse e;
    int inliers = -1;  // -1: no plausible ellipse found
};

// The starting ellipse with the most inliers: the direct fit to all points, or, when that leaves
// more than 5% of the points outside the band, the best of RANSAC's 6-point direct fits.
Candidate search_candidate(const FitPoints& in, const EllipseFitOptions& opt) {
    Candidate best;
    if (direct_fit(in.all, best.e) && in.plausible(best.e))
        best.inliers = count_inliers(in.points, best.e, opt.inlier_px);
    if (best.inliers < 0.95 * in.points.size()) {
        std::mt19937 rng(opt.seed);
        std::uniform_int_distribution<size_t> pick(0, in.points.size() - 1);
        std::vector<cv::Point2f> sample(6);
        for (int it = 0; it < opt.ransac_iterations; ++it) {
            for (auto& q : sample) q = in.all[pick(rng)];
            Ellipse cand;
            if (!direct_fit(sample, cand) || !in.plausible(cand)) continue;
            const int n = count_inliers(in.points, cand, opt.inlier_px);
            if (n > best.inliers) best.e = cand, best.inliers = n;
        }
    }
    return best;
}

// Orthogonal distance of every point to e.
void orthogonal_distances(const Ellipse& e, const std::vector<cv::Point2d>& points, std::vector<double>& dist) {
    for (size_t i = 0; i < points.size(); ++i) dist[i] = std::abs(closest(e, points[i]).dist);
}

// Sigma-clipping band: outlier_sigmas robust sigmas (1.4826 x the median distance of the kept points),
// at least 0.75 px.
double clipping_band(const std::vector<double>& dist, const std::vector<unsigned char>& keep, double outlier_sigmas) {
    std::vector<double> kept;
    for (size_t i = 0; i < dist.size(); ++i)
        if (keep[i]) kept.push_back(dist[i]);
    std::nth_element(kept.begin(), kept.begin() + kept.size() / 2, kept.end());
    const double sigma = 1.4826 * kept[kept.size() / 2];
    return std::max(outlier_sigmas * sigma, 0.75);
}

// Refit on the consensus, then alternate sigma-clipping and geometric refinement (three rounds,
// fewer when too few points remain). Updates best and returns the last inlier band.
double refine_on_consensus(const FitPoints& in, const EllipseFitOptions& opt, Ellipse& best) {
    const auto& points = in.points;
    std::vector<unsigned char> keep(points.size());
    double band = opt.inlier_px;
    std::vector<double> dist(points.size());
    for (int round = 0; round < 3; ++round) {
        orthogonal_distances(best, points, dist);
        if (round > 0) band = clipping_band(dist, keep, opt.outlier_sigmas);
        std::vector<cv::Point2f> in_f;
        std::vector<cv::Point2d> in_d;
        for (size_t i = 0; i < points.size(); ++i) {
            keep[i] = dist[i] < band;
            if (keep[i]) in_f.push_back(in.all[i]), in_d.push_back(points[i]);
        }
        if (int(in_d.size()) < opt.min_points) break;
        Ellipse e;
        if (round == 0 && direct_fit(in_f, e) && in.plausible(e)) best = e;
        if (opt.geometric_refine) {
            Ellipse g = geometric_refine(best, in_d);
            if (in.plausible(g)) best = g;
        }
    }
    return band;
}

// Marks the points within band of best as inliers and fills the result from them (ok, or the reason not).
void assemble_fit(const FitPoints& in, const Ellipse& best, double band, int min_points, EllipseFit& fit) {
    std::vector<double> dist(in.points.size());
    orthogonal_distances(best, in.points, dist);
    double ss = 0;
    int n = 0;
    for (size_t i = 0; i < in.points.size(); ++i) {
        fit.inlier_mask[i] = dist[i] < band;
        if (fit.inlier_mask[i]) ss += dist[i] * dist[i], ++n;
    }
    if (n < min_points) {
        fit.message = "too few boundary points agree on one ellipse";
        return;
    }
    fit.ok = true;
    fit.ellipse = best.normalized();
    fit.inliers = n;
    fit.rms_px = std::sqrt(ss / n);
}

}  // namespace

double distance_to_ellipse(const Ellipse& e, cv::Point2d p) { return std::abs(closest(e, p).dist); }

cv::Mat rasterize(const Ellipse& e, cv::Size size) {
    cv::Mat m = cv::Mat::zeros(size, CV_8U);
    if (!e.valid()) return m;
    // A pixel is inside when its centre is: (u/a)^2 + (v/b)^2 <= 1 in the ellipse frame.
    // (cv::ellipse's filled drawing also fills every pixel its outline touches, ~0.4 px too wide.)
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    const double hx = std::sqrt(e.a * e.a * c * c + e.b * e.b * s * s), hy = std::sqrt(e.a * e.a * s * s + e.b * e.b * c * c);
    const int y0 = std::max(0, int(std::floor(e.cy - hy))), y1 = std::min(size.height - 1, int(std::ceil(e.cy + hy)));
    const int x0 = std::max(0, int(std::floor(e.cx - hx))), x1 = std::min(size.width - 1, int(std::ceil(e.cx + hx)));
    const double ia2 = 1 / (e.a * e.a), ib2 = 1 / (e.b * e.b);
    for (int y = y0; y <= y1; ++y) {
        unsigned char* row = m.ptr<unsigned char>(y);
        const double dy = y - e.cy;
        for (int x = x0; x <= x1; ++x) {
            const double dx = x - e.cx, u = c * dx + s * dy, v = -s * dx + c * dy;
            if (u * u * ia2 + v * v * ib2 <= 1) row[x] = 255;
        }
    }
    return m;
}

EllipseFit fit_ellipse(const std::vector<cv::Point2d>& points, const EllipseFitOptions& opt) {
    EllipseFit fit;
    fit.points = int(points.size());
    fit.inlier_mask.assign(points.size(), 0);
    if (int(points.size()) < std::max(opt.min_points, 6)) {
        fit.message = "only " + std::to_string(points.size()) + " boundary points; at least " +
                      std::to_string(std::max(opt.min_points, 6)) + " are needed to fit an ellipse";
        return fit;
    }
    const FitPoints in(points);
    Candidate best = search_candidate(in, opt);
    if (best.inliers < opt.min_points) {
        fit.message = "no ellipse is consistent with the boundary points";
        return fit;
    }
    const double band = refine_on_consensus(in, opt, best.e);
    assemble_fit(in, best.e, band, opt.min_points, fit);
    return fit;
}

}  // namespace fetalhc
