// fetalhc/segmentation.h - what a segmentation pass returns and the skull boundary read from it:
// the value types below the network (no LibTorch, no model), shared by the segmenter, the image
// geometry and the boundary extraction.
//
//   fetalhc::Segmentation s = segmenter.segment(gray8);  // fetalhc/segmenter.h
//   cv::Mat p = s.probability_full();                    // CV_32F at the input resolution
//   fetalhc::Boundary bnd = fetalhc::extract_boundary(s, gray8);
//   fetalhc::Boundary m = fetalhc::mask_boundary(mask8); // the same from a binary mask
//
// Pixel coordinates: origin at the centre of the top-left pixel, x right, y down (see ellipse.h).
// Thread safety: plain values and pure functions.
#pragma once

#include "fetalhc/ellipse.h"

#include <opencv2/core.hpp>

#include <memory>
#include <vector>

namespace fetalhc {

// Where an image sits inside the network input, per axis: net = scale * (img + 0.5) - 0.5 + offset
// (the half-pixel terms make pixel centres line up as cv::resize does). The two scales differ only
// by the rounding of the resized size. Part of a Segmentation (the whole-image pass's frame).
struct Letterbox {
    double scale_x = 1, scale_y = 1;
    int offset_x = 0, offset_y = 0;
    cv::Size resized;     // size of the image inside the canvas
    cv::Size net_size;    // network input (width, height)
    cv::Size image_size;  // original image

    static Letterbox fit(cv::Size image, cv::Size net);
    cv::Point2d to_image(cv::Point2d net) const;
    cv::Point2d to_net(cv::Point2d img) const;
    // image -> net_size canvas; INTER_AREA is the pixel-area reduction the network passes use.
    cv::Mat apply(const cv::Mat& img, int interpolation) const;
    cv::Matx23d affine() const;  // the same mapping as a 2x3 affine (image -> net)
};

// The probability map in the frame of the network that made it, that frame and the network's
// input: internal (src/net_frame.h), read through probability_full() and extract_boundary.
struct NetFrame;

inline constexpr double kRivalMinShare = 0.05;  // Segmentation::rivals: smallest region kept, by area
inline constexpr int kMaxRivals = 2;

struct Segmentation {
    float presence = 0;       // probability that a head is in view (the detection head)
    double axis_scale = 1;    // the model's mask-to-reference factor (ModelInfo::axis_scale)
    Letterbox letterbox;      // the whole-image pass (its image_size is the input image's)
    // Set when the map comes from the refinement pass on a head-centred crop (the ellipse's major
    // axis along +x); otherwise its frame is the letterbox.
    bool refined = false;
    double network_ms = 0;    // forward pass time (both passes)
    // What the passes saw besides the head they chose (review signals, see ReviewSignals in measure.h).
    float refine_presence = -1;  // the second network's own presence score on its final crop; -1: no second pass
    double rival_share = 0;      // first pass: area of its second-largest head region / the largest (0: one region)
    bool second_look = false;    // the second pass cropped again around the head it found
    double member_disagreement = 0;  // ensemble: 1 - mean IoU of members' masks with the mean's (last pass); 0 for one model
    // The first pass's other head-like regions (each at least kRivalMinShare of the largest's area;
    // largest first, at most kMaxRivals) as the ellipses of their second moments, in input pixels:
    // where else the head may be (Measurer's targeted second opinion, measure.h).
    std::vector<Ellipse> rivals;
    // The ellipse (input pixels) the last second-pass crop was centred on; all 0 without one.
    Ellipse crop_ellipse;
    bool mirror_averaged = false;  // the last map is the mean of its crop's and the mirrored crop's
    // The map in the last network's frame (shared, never changed once made); null before a pass.
    std::shared_ptr<const NetFrame> net;

    // Probability map resized back to the input image (bilinear), CV_32F; empty before a pass.
    cv::Mat probability_full() const;
};

// Sub-pixel skull boundary from a segmentation: the 0.5 iso-contour of the probability map of the
// largest plausible component, found by linear interpolation along pixel edges (no dilation or
// erosion). Points are in input pixels. Points where the head region runs into the image border or
// the edge of the ultrasound sector are marked `cut` (they are not skull) and are left out of fits.
struct Boundary {
    std::vector<cv::Point2d> points;     // visible skull boundary (fit these)
    std::vector<cv::Point2d> cut_points; // boundary points on the image border or sector edge
    double area_px = 0;                  // area of the chosen component, input pixels
    double mean_confidence = 0;          // mean |2p-1| over the component's pixels (certainty)
    bool found = false;
};

// gray8 (the input image) is used to find the ultrasound sector; pass an empty Mat to skip that.
Boundary extract_boundary(const Segmentation& seg, const cv::Mat& gray8);

// Boundary of a binary mask image (CV_8UC1, head where the value is >= 128: an annotation, or a
// mask edited by hand or returned by POST /v1/segment): the same sub-pixel extraction as
// extract_boundary, the mask read as a probability map (0 or 1) at its own resolution, so the
// points lie on the pixel edges between head and background (half a pixel outside the outermost
// head pixel centres). The largest region is used; points where it runs into the image border are
// cut_points. No sector test. found is false when no region of at least 30 pixels is white.
Boundary mask_boundary(const cv::Mat& mask8);

// Outline of the largest region of a binary mask (CV_8UC1, non-zero = head): the polygon of the
// outer pixel centres of the region of largest polygon area, corners only (cv::findContours with
// CHAIN_APPROX_SIMPLE; on a tie the first found, scanning rows from the top). Empty when the mask
// is all zero. Integer pixel coordinates, the project's convention.
std::vector<cv::Point> mask_outline(const cv::Mat& mask);

}  // namespace fetalhc
