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
    cv::Matx23d affine() const;  // the same mapping as a 2x3 affine (image -> net)
};

struct Ellipse;

// Head-centred crop frame used by the refinement pass: the image is turned so that the ellipse's
// major axis runs along +x, centred in a `net`-sized crop, and zoomed so that the ellipse grown by
// `margin` just fits. Returns the image -> crop affine.
cv::Matx23d crop_frame(const Ellipse& e, cv::Size net, double margin);

// Resamples `img` into the frame of the affine A (image -> frame) at `size`. Areas zoomed out by
// more than 1.5x are first reduced with pixel-area averaging so speckle does not alias.
// Pixels outside the image are 0. Works on CV_8U and CV_32F.
cv::Mat warp_to_frame(const cv::Mat& img, const cv::Matx23d& A, cv::Size size);

// Pixel-area reduction of `img` to `size` (as cv::resize with INTER_AREA; separable and several times
// faster on CV_8UC1 at fractional factors; other cases go to cv::resize). `part`, a rectangle of the
// reduced image, computes only those pixels (same values as in the whole result); empty = all.
cv::Mat resize_area(const cv::Mat& img, cv::Size size, cv::Rect part = {});

// Network hyper-parameters stored inside the model file.
struct NetworkConfig {
    int input_width = 288, input_height = 192;  // multiples of 2^depth (2^(depth+1) with stem_stride 2)
    int base_channels = 16;
    int depth = 4;                              // down-sampling steps
    int max_channels = 128;
    // 1: every level of the U-Net, the finest at the input size. 2: the first convolution strides
    // by 2, so the network works and predicts at half the input size and its logits are upsampled
    // bilinearly to the input size (about a quarter of the compute of the finest level).
    int stem_stride = 1;
};

struct Segmentation {
    cv::Mat net_probability;  // CV_32F at the network input size, head probability in [0,1]
    float presence = 0;       // probability that a head is in view (the detection head)
    double axis_scale = 1;    // the model's mask-to-reference factor (ModelInfo::axis_scale)
    Letterbox letterbox;      // the whole-image pass (its image_size is the input image's)
    // Set when net_probability comes from the refinement pass on a head-centred crop: the
    // image -> crop affine (see crop_frame). Otherwise the frame is the letterbox.
    bool refined = false;
    cv::Matx23d crop_to_net = cv::Matx23d::eye();
    double network_ms = 0;    // forward pass time (both passes)
    // The 8-bit image the last network saw (net_probability's frame), kept so later stages need
    // not resample the input again. Empty when the segmentation was built by hand.
    cv::Mat net_input;

    cv::Matx23d to_net() const { return refined ? crop_to_net : letterbox.affine(); }

    // Probability map resized back to the input image (bilinear), CV_32F.
    cv::Mat probability_full() const;
};

struct SegmenterOptions {
    int threads = 0;  // intra-op threads for LibTorch; 0 = all cores (Debian's build defaults to 1)
};

struct ModelInfo {
    std::string path;
    NetworkConfig config;
    // Optional second network that re-segments a crop centred on the first pass's ellipse at a
    // fixed head size (coarse-to-fine). refine_config.input_width == 0 when the model has none.
    NetworkConfig refine_config{0, 0, 0, 0, 0};
    double refine_margin = 0;
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
    // Tracking (video): with a two-pass model, skips the whole-image pass and re-segments the crop
    // around `prior` (an ellipse found on a previous frame, input pixels). Without a second
    // network it is the same as segment(gray8).
    Segmentation segment_near(const cv::Mat& gray8, const Ellipse& prior) const;
    const ModelInfo& info() const;

    // Writes a copy of the model file at `in` to `out` with metadata keys replaced or added
    // (a JSON object), e.g. {"axis_scale": 0.993}. Returns the merged metadata.
    static Expected<std::string> rewrite_metadata(const std::string& in, const std::string& out,
                                                  const std::string& json_patch);

    // Writes the element-wise mean of the parameters and batch-norm statistics of models that share
    // one network config (weight averaging of checkpoints from one training run). The metadata of
    // the first model is kept, with "averaged_from" added.
    static Expected<std::string> average_models(const std::vector<std::string>& in, const std::string& out);

    // Writes a two-pass model made of the first-pass network of `coarse` (a one-pass model) and the
    // second-pass network, crop margin and metadata of `two_pass`. Both must have been trained on
    // the same split; the metadata records the coarse file as "coarse_model".
    static Expected<std::string> combine_models(const std::string& coarse, const std::string& two_pass,
                                                const std::string& out);
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
