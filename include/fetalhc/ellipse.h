// fetalhc/ellipse.h - ellipses, their perimeter and a robust fit to boundary points.
//
//   std::vector<cv::Point2d> pts = ...;             // skull boundary, pixel coordinates
//   fetalhc::EllipseFit fit = fetalhc::fit_ellipse(pts);
//   if (fit.ok) double hc_mm = fetalhc::ramanujan_perimeter(fit.ellipse) * pixel_size_mm;
//
// Conventions (shared by every interface of the project):
//   - pixel coordinates: origin at the centre of the top-left pixel, x to the right, y down;
//   - a >= b are the semi-major and semi-minor axes, in pixels (or mm where a name says so);
//   - angle in radians in [0, pi), from +x towards +y (clockwise on screen) to the major axis.
//     With OpenCV: cv::ellipse(img, {cx, cy}, {a, b}, angle * 180 / CV_PI, 0, 360, ...).
// Thread safety: all functions are pure and may be called concurrently.
#pragma once

#include <opencv2/core.hpp>

#include <string>
#include <vector>

namespace fetalhc {

struct Ellipse {
    double cx = 0, cy = 0;  // centre (px)
    double a = 0, b = 0;    // semi-axes (px), a >= b after normalized()
    double angle = 0;       // radians in [0, pi) after normalized()

    // Swaps the axes if b > a (turning the angle by pi/2) and wraps the angle into [0, pi).
    Ellipse normalized() const;
    // Same ellipse with every length multiplied by s (pixel -> mm with s = pixel size).
    Ellipse scaled(double s) const;
    bool valid() const;  // finite, a >= b > 0
};

// Ramanujan's second approximation of the perimeter, in the unit of a and b:
// h = ((a-b)/(a+b))^2, P = pi (a+b) (1 + 3h / (10 + sqrt(4 - 3h))).
// Ramanujan, "Modular equations and approximations to pi", Quart. J. Math. 45 (1914); the HC18 reference.
double ramanujan_perimeter(double a, double b);
inline double ramanujan_perimeter(const Ellipse& e) { return ramanujan_perimeter(e.a, e.b); }

// Perimeter by numerical integration of the arc length (reference for tests; slow).
double integrated_perimeter(double a, double b, int steps = 200000);

// Unsigned geometric (orthogonal) distance from a point to the ellipse curve (px).
double distance_to_ellipse(const Ellipse& e, cv::Point2d p);

// Point on the ellipse at parametric angle t (x = a cos t, y = b sin t in the ellipse frame).
cv::Point2d ellipse_point(const Ellipse& e, double t);

// Filled ellipse as a CV_8U mask (255 inside) of the given size; a pixel is inside when its centre is.
cv::Mat rasterize(const Ellipse& e, cv::Size size);

struct EllipseFitOptions {
    int ransac_iterations = 300;     // 6-point direct fits tried to find the consensus
    double inlier_px = 3.0;          // RANSAC inlier band (px), also the floor of the refit band
    double outlier_sigmas = 3.0;     // after RANSAC, keep points within this many robust sigmas
    int min_points = 12;             // fewer inliers than this is a failed fit
    bool geometric_refine = true;    // Gauss-Newton on orthogonal distances after the algebraic fit
    unsigned seed = 12345;           // fixed so results are repeatable
};

struct EllipseFit {
    bool ok = false;
    std::string message;     // why it failed, when !ok
    Ellipse ellipse;         // normalized
    int points = 0;          // points given
    int inliers = 0;         // points kept by the robust fit
    double rms_px = 0;       // RMS orthogonal distance of the inliers (px)
    std::vector<unsigned char> inlier_mask;  // one flag per given point
};

// Robust fit: RANSAC over direct least-squares fits (Fitzgibbon, Pilu & Fisher 1999, via
// cv::fitEllipseDirect), a refit on the consensus, sigma-clipping of orthogonal residuals and a
// geometric (orthogonal-distance) refinement. Works on partial arcs such as heads cut by the border.
EllipseFit fit_ellipse(const std::vector<cv::Point2d>& points, const EllipseFitOptions& opt = {});

}  // namespace fetalhc
