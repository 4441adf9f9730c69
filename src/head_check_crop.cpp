// The crop the head check sees (fetalhc/head_check.h): no LibTorch, shared by training and inference.
#include "fetalhc/head_check.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>

namespace fetalhc {

cv::Mat head_check_crop(const cv::Mat& gray8, const Ellipse& e_px) {
    const int n = kHeadCheckCropSize;
    cv::Mat out = cv::Mat::zeros(n, n, CV_8U);
    const Ellipse e = e_px.normalized();
    if (gray8.empty() || gray8.type() != CV_8UC1 || !e.valid()) return out;
    const double k = 2 * kHeadCheckCropSpan * e.a / n;  // image pixels per crop pixel
    // Only the part of the image under the crop is used: the square around the centre that holds
    // the turned crop (half-diagonal), clipped to the image.
    // Clipped in doubles before any conversion to int: an ellipse given by a client (POST
    // /v1/head-check) may be far outside the image or larger than any int.
    const double reach = k * n * 0.5 * std::sqrt(2.0) + 2;
    const double left = std::floor(e.cx - reach), top = std::floor(e.cy - reach), side = std::floor(2 * reach) + 2;
    const double x0 = std::max(0.0, left), y0 = std::max(0.0, top);
    const double x1 = std::min(double(gray8.cols), left + side), y1 = std::min(double(gray8.rows), top + side);
    if (!(x1 > x0 && y1 > y0)) return out;
    const cv::Rect roi(int(x0), int(y0), int(x1 - x0), int(y1 - y0));
    cv::Mat src = gray8(roi);
    // Reduce by pixel area when the crop is coarser than the image, so that the warp below samples
    // at about one source pixel per crop pixel. f: source pixels per reduced pixel (per axis).
    double fx = 1, fy = 1;
    if (k > 1.25) {
        const cv::Size reduced(std::max(1, int(std::lround(roi.width / k))), std::max(1, int(std::lround(roi.height / k))));
        cv::Mat small;
        cv::resize(src, small, reduced, 0, 0, cv::INTER_AREA);
        fx = double(roi.width) / reduced.width;
        fy = double(roi.height) / reduced.height;
        src = small;
    }
    // Crop pixel (u, v) -> image point c + R(angle) * k * (u - uc, v - uc), then into src's pixels:
    // x_src = (x - roi.x + 0.5) / fx - 0.5 (pixel centres line up as cv::resize does).
    const double uc = (n - 1) * 0.5, cs = std::cos(e.angle), sn = std::sin(e.angle);
    const double m00 = k * cs, m01 = -k * sn, m10 = k * sn, m11 = k * cs;
    const double tx = e.cx - m00 * uc - m01 * uc, ty = e.cy - m10 * uc - m11 * uc;
    const cv::Matx23d to_src((m00 / fx), (m01 / fx), (tx - roi.x + 0.5) / fx - 0.5,  //
                             (m10 / fy), (m11 / fy), (ty - roi.y + 0.5) / fy - 0.5);
    cv::warpAffine(src, out, cv::Mat(to_src), cv::Size(n, n), cv::INTER_LINEAR | cv::WARP_INVERSE_MAP, cv::BORDER_CONSTANT,
                   cv::Scalar(0));
    return out;
}

}  // namespace fetalhc
