// Internal: the segmentation network (LibTorch), its model file, and the two-pass logic. Only
// segmenter.cpp and the trainer's sources (src/trainer.cpp, src/train/*.cpp) include this.
#pragma once

#include "fetalhc/segmenter.h"
#include "geometry.h"

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace fetalhc::detail {

// conv3x3-BN-ReLU twice.
struct ConvBlockImpl : torch::nn::Module {
    ConvBlockImpl(int in, int out, int stride = 1);  // stride of the first convolution
    torch::Tensor forward(torch::Tensor x);
    torch::nn::Conv2d c1{nullptr}, c2{nullptr};
    torch::nn::BatchNorm2d b1{nullptr}, b2{nullptr};
};
TORCH_MODULE(ConvBlock);

struct FrozenUNet;
struct QuantUNet;

// U-Net style encoder-decoder for one object per image. Outputs the per-pixel head logit at the
// input resolution and, from the pooled bottleneck, one presence logit (is a head in view?).
struct UNetImpl : torch::nn::Module {
    explicit UNetImpl(const NetworkConfig& cfg);
    // x: [N,1,H,W] normalised intensities. Returns {mask logits [N,1,H,W], presence logits [N]}.
    std::pair<torch::Tensor, torch::Tensor> forward(torch::Tensor x);

    // Inference only. freeze() takes a copy of the current weights in a faster form: batch norm
    // folded into the convolutions, channels-last tensors, oneDNN convolutions for every layer
    // (ATen would send the small deep layers of a batch of one to its slow reference kernel).
    // infer() then gives the same result as forward() in eval mode to float rounding; before
    // freeze() it is forward(). Weights changed after freeze() are not seen until the next call.
    void freeze();
    std::pair<torch::Tensor, torch::Tensor> infer(const torch::Tensor& x) const;
    std::shared_ptr<const FrozenUNet> frozen;

    // int8 inference (src/network_int8.cpp). After freeze(): quantize() makes infer() run the
    // frozen weights as int8 (per output channel, symmetric) on 8-bit activations whose ranges are
    // `activation_max`, the largest output of each convolution after its ReLU (int8_layer_count()
    // values in infer()'s order: the down blocks' two convolutions, then the up blocks'), measured
    // on training images with ActivationRecorder. Throws when the ranges do not fit the network or
    // no quantized engine is available (int8_engine_problem()).
    void quantize(const std::vector<float>& activation_max);
    std::shared_ptr<const QuantUNet> quant;

    NetworkConfig cfg;
    torch::nn::ModuleList down{nullptr}, up{nullptr};
    torch::nn::Conv2d head{nullptr};
    torch::nn::Linear presence{nullptr};
};
TORCH_MODULE(UNet);

int int8_layer_count(const NetworkConfig& cfg);

// "" when LibTorch here has a quantized CPU engine for int8 convolutions (oneDNN, else FBGEMM);
// otherwise why not.
std::string int8_engine_problem();
// Whether this CPU has 8-bit dot-product instructions (AVX512-VNNI or AVX-VNNI, /proc/cpuinfo).
bool cpu_has_vnni();

// Calibration of the int8 ranges: while a RecordActivations is alive on a thread, every infer() of
// a frozen float network on that thread records, per network, the largest output of each
// convolution after its ReLU (the running max over calls).
struct ActivationRecorder {
    std::map<const UNetImpl*, std::vector<float>> max;
};
class RecordActivations {
public:
    explicit RecordActivations(ActivationRecorder& r);
    ~RecordActivations();
    RecordActivations(const RecordActivations&) = delete;
    RecordActivations& operator=(const RecordActivations&) = delete;
};
ActivationRecorder* current_recorder();

// Intensity normalisation shared by training and inference: 8-bit value v -> (v/255 - 0.5) / 0.25.
torch::Tensor normalise_batch(const torch::Tensor& u8_or_float01);

long long count_parameters(torch::nn::Module& m);

// Training-time weight averaging; both modules must have the same architecture.
// copy_weights: dst's parameters and buffers := src's.
// ema_update: avg := decay * avg + (1 - decay) * net for every parameter and floating-point buffer
// (batch-norm statistics); integer buffers (batch counters) are copied.
void copy_weights(torch::nn::Module& dst, torch::nn::Module& src);
void ema_update(torch::nn::Module& avg, torch::nn::Module& net, double decay);

// Model file: the module's parameters and buffers (stored as float16, loaded as float32) plus two
// strings, the network config and free-form metadata (JSON).
// A model file may also hold a refinement network (coarse-to-fine) under the key "refine", with
// its config and crop margin in "fetalhc_refine".
struct Refiner {
    UNet net{nullptr};
    double margin = 1.2;
};
void save_model(UNet& net, const std::string& path, const std::string& metadata_json, const Refiner* refine = nullptr);
struct LoadedModel {
    UNet net{nullptr};
    NetworkConfig cfg;
    std::string metadata;
    Refiner refine;  // refine.net is null when the file has none
};
LoadedModel load_model(const std::string& path);  // throws c10::Error / std::runtime_error

// The split guard (see Segmenter in fetalhc/segmenter.h): "" when the two metadata texts (JSON,
// as stored in model files) record the same split, "split_salt" and "validation_fraction", or both
// record none (no string "split_salt"); otherwise an error that names `what_a` and `what_b` (e.g.
// "'runs/a/model.pt'") and both splits. The trainer passes its config's split as `meta_a`
// (split_metadata).
std::string split_mismatch(const std::string& what_a, const std::string& meta_a, const std::string& what_b,
                           const std::string& meta_b);
std::string split_metadata(const std::string& split_salt, double validation_fraction, int folds = 0, int fold = 0);

std::string network_config_json(const NetworkConfig& c);
NetworkConfig network_config_from_json(const std::string& text);

void set_threads(int threads);  // 0 = all cores

// One forward pass on a CV_8UC1 image already in the network frame. Returns the probability map
// (CV_32F, same size) and the presence probability. Call inside an inference or no-grad guard.
std::pair<cv::Mat, float> forward_one(UNet net, const cv::Mat& input8);

// Second pass of the coarse-to-fine pipeline: fits an ellipse to the first pass's boundary, crops
// around it and re-segments with the refinement network. Returns `coarse` unchanged when no
// ellipse can be fitted.
// When the head the second network finds covers less than kSecondLookAreaShare of the crop's
// ellipse, or its centre lies more than kSecondLookShift semi-major axes from the crop's centre, it
// crops once more around that head (see needs_second_look).
// mirror_average: each crop is also segmented mirrored left-right and the maps averaged
// (SegmenterOptions::mirror_average).
Segmentation refine_segmentation(const Segmentation& coarse, const cv::Mat& gray8, const Refiner& r,
                                 bool mirror_average = false);
// The same with several members (an ensemble; all with one network config and margin): each crop
// is segmented by every member and their probability maps averaged.
Segmentation refine_segmentation(const Segmentation& coarse, const cv::Mat& gray8, const std::vector<Refiner>& members,
                                 bool mirror_average = false);

// Mean probability map and presence of several networks on one input (one member: forward_one).
// `disagreement` (members > 1): 1 - the mean IoU of each member's mask (p > 0.5) with the mask of
// the mean; 0 for one member.
struct MemberForward {
    cv::Mat probability;
    float presence = 0;
    double disagreement = 0;
};
MemberForward forward_members(const std::vector<UNet>& nets, const cv::Mat& input8);
// forward_members on input8 and on input8 mirrored left-right (its maps mirrored back), averaged:
// probability, presence and disagreement are the means of the two views. mirror == false: forward_members.
MemberForward forward_members(const std::vector<UNet>& nets, const cv::Mat& input8, bool mirror);
inline constexpr double kSecondLookAreaShare = 0.6, kSecondLookShift = 0.2;
bool needs_second_look(const Segmentation& refined, const Ellipse& crop_ellipse);

}  // namespace fetalhc::detail
