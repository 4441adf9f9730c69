// fetalhc/segmenter.h - the head segmentation network (LibTorch behind a pimpl).
//
//   auto seg = fetalhc::Segmenter::load("models/fetalhc_unet.pt", {/*threads=*/2});
//   if (!seg) { std::cerr << seg.error(); return; }
//   fetalhc::Segmentation s = seg->segment(gray8);   // any size, CV_8UC1
//   cv::Mat p = s.probability_full();                  // CV_32F at the input resolution
//   fetalhc::Boundary bnd = fetalhc::extract_boundary(s, gray8);
//
// The network sees a letterboxed copy of the image (aspect kept, padded with zeros) at its own
// input size; the probability map and the boundary points are mapped back to input pixels
// (origin at the centre of the top-left pixel, x right, y down).
// Thread safety: a loaded Segmenter is immutable; segment() may be called from many threads at
// once (each call opens its own inference guard). Copies share the same weights.
#pragma once

#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <memory>
#include <string>
#include <vector>

namespace fetalhc {

// Where an image sits inside the network input, per axis: net = scale * (img + 0.5) - 0.5 + offset
// (the half-pixel terms make pixel centres line up as cv::resize does). The two scales differ only
// by the rounding of the resized size.
struct Letterbox {
    double scale_x = 1, scale_y = 1;
    int offset_x = 0, offset_y = 0;
    cv::Size resized;     // size of the image inside the canvas
    cv::Size net_size;    // network input (width, height)
    cv::Size image_size;  // original image

    static Letterbox fit(cv::Size image, cv::Size net);
    cv::Point2d to_image(cv::Point2d net) const;
    cv::Point2d to_net(cv::Point2d img) const;
    cv::Mat apply(const cv::Mat& img, int interpolation) const;  // image -> net_size canvas
};

// Network hyper-parameters stored inside the model file.
struct NetworkConfig {
    int input_width = 288, input_height = 192;  // multiples of 2^depth
    int base_channels = 16;
    int depth = 4;                              // down-sampling steps
    int max_channels = 128;
};

struct Segmentation {
    cv::Mat net_probability;  // CV_32F at the network input size, head probability in [0,1]
    float presence = 0;       // probability that a head is in view (the detection head)
    double axis_scale = 1;    // the model's mask-to-reference factor (ModelInfo::axis_scale)
    Letterbox letterbox;
    double network_ms = 0;    // forward pass time

    // Probability map resized back to the input image (bilinear), CV_32F.
    cv::Mat probability_full() const;
};

struct SegmenterOptions {
    int threads = 0;  // intra-op threads for LibTorch; 0 = all cores (Debian's build defaults to 1)
};

struct ModelInfo {
    std::string path;
    NetworkConfig config;
    long long parameters = 0;
    std::string metadata;  // JSON text written by the trainer (split, metrics, ...)
    // Factor applied to fitted semi-axes: the network learns the filled masks, whose boundary
    // lies slightly outside the reference ellipse (see mask_to_reference_scale in hc18.h).
    // Read from the metadata key "axis_scale"; 1 when absent.
    double axis_scale = 1;
};

class Segmenter {
public:
    static Expected<Segmenter> load(const std::string& model_path, const SegmenterOptions& opt = {});
    // gray8: CV_8UC1 image of any size (>= 16 px each side).
    Segmentation segment(const cv::Mat& gray8) const;
    const ModelInfo& info() const;

    // Writes a copy of the model file at `in` to `out` with metadata keys replaced or added
    // (a JSON object), e.g. {"axis_scale": 0.993}. Returns the merged metadata.
    static Expected<std::string> rewrite_metadata(const std::string& in, const std::string& out,
                                                  const std::string& json_patch);

    struct Impl;  // defined with LibTorch in segmenter.cpp
    explicit Segmenter(std::shared_ptr<const Impl> impl);

private:
    std::shared_ptr<const Impl> impl_;
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

}  // namespace fetalhc
