// Internal: image geometry of the network passes, pure OpenCV (no LibTorch).
//
//   cv::Matx23d A = fetalhc::crop_frame(head, {256, 192}, 1.2);   // image -> head-centred crop
//   cv::Mat crop = fetalhc::warp_to_frame(gray8, A, {256, 192});  // what the second pass sees
//   cv::Mat small = fetalhc::resize_area(gray8, {192, 130});      // pixel-area reduction
//
// One reduction serves inference and training: the letterbox (Letterbox::apply with INTER_AREA),
// the crops and the trainer's pre-scaled copies all reduce with resize_area.
// Pixel coordinates: origin at the centre of the top-left pixel, x right, y down (see ellipse.h).
// An affine `A` maps image pixels to frame pixels: frame = A * (x, y, 1).
// The Letterbox struct itself is public (fetalhc/segmentation.h: it is part of a Segmentation); its
// methods and Segmentation::probability_full are defined in geometry.cpp.
// Thread safety: pure functions.
#pragma once

#include "fetalhc/segmentation.h"

#include <opencv2/core.hpp>

#include <cmath>

namespace fetalhc {

struct Ellipse;

// Head-centred crop frame of the second pass: the image turned so that the ellipse's major axis
// runs along +x, the ellipse centred in a `net`-sized crop, and zoomed so that the ellipse grown
// by `margin` just fits (along whichever axis is tighter). Returns the image -> crop affine.
cv::Matx23d crop_frame(const Ellipse& e, cv::Size net, double margin);

// Resamples `img` into the frame of the affine A (image -> frame) at `size`, bilinear. Where A
// zooms out by more than 1.5x, the image is first reduced with resize_area (only the part the frame
// shows) so that speckle does not alias. Pixels outside the image are 0. CV_8U and CV_32F.
cv::Mat warp_to_frame(const cv::Mat& img, const cv::Matx23d& A, cv::Size size);

// Pixel-area reduction of `img` to `size`: the values of cv::resize with INTER_AREA, but separable
// and several times faster on CV_8UC1 at fractional factors (enlargements, whole-number factors and
// other types go to cv::resize itself). The three-argument form computes only `part`, a rectangle
// of the reduced image, with the same values as that rectangle of the whole result.
cv::Mat resize_area(const cv::Mat& img, cv::Size size);
cv::Mat resize_area(const cv::Mat& img, cv::Size size, cv::Rect part);

// Linear scale of an image -> frame affine (frame pixels per image pixel): sqrt(|det|).
inline double frame_zoom(const cv::Matx23d& A) { return std::sqrt(std::abs(A(0, 0) * A(1, 1) - A(0, 1) * A(1, 0))); }

}  // namespace fetalhc
