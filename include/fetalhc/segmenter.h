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
#include "fetalhc/segmentation.h"

#include <opencv2/core.hpp>

#include <memory>
#include <string>
#include <vector>

namespace fetalhc {

struct Ellipse;

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

struct SegmenterOptions {
    int threads = 0;  // intra-op threads for LibTorch; 0 = all cores (Debian's build defaults to 1)
    // Second pass (two-pass models): also segment the head-centred crop mirrored left-right and
    // average the two probability maps (the crop's major axis lies along x, so the mirror is the
    // same head seen the other way round). One more forward of the second network per crop, about
    // a third more time per image; out-of-fold HC error 1.89 instead of 1.93 mm (models/MODEL_CARD.md).
    bool mirror_average = false;
    // Run both networks in 8 bits (weights per output channel, activations per layer in the ranges
    // stored by Segmenter::calibrate_int8): about a quarter of the convolution time where the CPU
    // has 8-bit dot products (VNNI), the same HC to a fraction of a millimetre (models/MODEL_CARD.md).
    // Loading fails when the model holds no int8 ranges or LibTorch has no quantized engine.
    bool int8 = false;
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
    // An ensemble: every pass runs each member and averages their probability maps and presence
    // scores (Segmentation::member_disagreement says how much they differ). Members must share their
    // network configs and crop margin (e.g. the K fold models of `fetalhc train --kfold`). The axis
    // scale is the members' mean; the metadata is the first member's with "ensemble_of" added.
    static Expected<Segmenter> load_ensemble(const std::vector<std::string>& model_paths, const SegmenterOptions& opt = {});
    // gray8: CV_8UC1 image of any size (>= 16 px each side).
    Segmentation segment(const cv::Mat& gray8) const;
    // Tracking (video): with a two-pass model, skips the whole-image pass and re-segments the crop
    // around `prior` (an ellipse found on a previous frame, input pixels). Without a second
    // network it is the same as segment(gray8).
    Segmentation segment_near(const cv::Mat& gray8, const Ellipse& prior) const;
    // The last second-pass crop of `s` (a result of segment or segment_near) segmented again
    // mirrored left-right and averaged with its map, as SegmenterOptions::mirror_average does: one
    // more forward of the second network (refine_presence and member_disagreement averaged too;
    // presence stays s's). `s` itself when it has no crop or is already averaged.
    Segmentation mirror_look(const Segmentation& s) const;
    const ModelInfo& info() const;

    // Writes a copy of the model file at `in` to `out` with metadata keys replaced or added
    // (a JSON object), e.g. {"axis_scale": 0.993}. Returns the merged metadata.
    static Expected<std::string> rewrite_metadata(const std::string& in, const std::string& out,
                                                  const std::string& json_patch);

    // int8 calibration (SegmenterOptions::int8): segments each of `images` (CV_8UC1 scans the
    // model trained on, never its validation images) in float and writes a copy of the model file
    // at `in` to `out` whose metadata key "int8" holds, per network, the largest output of each
    // convolution after its ReLU. `note` (free text, e.g. which images) is stored beside them.
    // Returns the merged metadata.
    static Expected<std::string> calibrate_int8(const std::string& in, const std::string& out,
                                                const std::vector<cv::Mat>& images, const std::string& note);

    // Writes the element-wise mean of the parameters and batch-norm statistics of models that share
    // one network config (weight averaging of checkpoints from one training run). The metadata of
    // the first model is kept, with "averaged_from" added.
    static Expected<std::string> average_models(const std::vector<std::string>& in, const std::string& out);

    // Writes a two-pass model made of the first-pass network of `coarse` (a one-pass model) and the
    // second-pass network, crop margin and metadata of `two_pass`; the metadata records the coarse
    // file as "coarse_model".
    static Expected<std::string> combine_models(const std::string& coarse, const std::string& two_pass,
                                                const std::string& out);
    // Split guard (average_models, combine_models, and the trainer's init_weights / coarse_model):
    // models are mixed only when their metadata record the same train/validation split (keys
    // "split_salt" and "validation_fraction", as the trainer writes them), or when neither records
    // one. Otherwise one network may have trained on the other's validation images, and the error
    // names both splits. A model without a recorded split can be given one with rewrite_metadata.

private:
    struct Impl;  // defined with LibTorch in segmenter.cpp
    explicit Segmenter(std::shared_ptr<const Impl> impl);
    std::shared_ptr<const Impl> impl_;
};

// "" when this build can run SegmenterOptions::int8 (LibTorch has a quantized CPU engine, oneDNN or
// FBGEMM); otherwise why not.
std::string int8_problem();
// Whether this CPU has 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI), where int8 pays most.
bool cpu_has_vnni();

// The members of an ensemble folder: DIR/fold<i>/model.pt of a k-fold run (`fetalhc train --kfold`),
// else the *.pt files directly in DIR; sorted by path. Error when there are fewer than two.
Expected<std::vector<std::string>> ensemble_model_files(const std::string& dir);

}  // namespace fetalhc
