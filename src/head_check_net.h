// Internal: the head-check network (LibTorch) and its model file. Only src/head_check_net.cpp and
// the head-check trainer (src/train/head_check_train.cpp) include this.
#pragma once

#include "fetalhc/head_check.h"

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace fetalhc::detail {

// A small classifier on kHeadCheckCropSize square crops: the crop standardised (zero mean, unit
// spread, so the machine's gain and offset do not matter), then five conv3x3 stride-2 blocks
// (16, 32, 48, 64, 96 channels; BN + ReLU; a second stride-1 conv in the last four), global
// average pooling, and two linear outputs: the head logit and the kHeadCheckPlaneCount plane logits.
struct HeadCheckNetImpl : torch::nn::Module {
    HeadCheckNetImpl();
    // x: [N,1,S,S] uint8 or float in 0..255. Returns {head logits [N], plane logits [N,C]}.
    std::pair<torch::Tensor, torch::Tensor> forward(torch::Tensor x);
    torch::nn::Sequential features{nullptr};
    torch::nn::Linear head{nullptr}, plane{nullptr};
};
TORCH_MODULE(HeadCheckNet);

// Inference form of a trained network (eval only; the same outputs as forward() to float rounding):
// each conv + batch norm folded into one conv with a bias, run by oneDNN directly (LibTorch's
// generic conv2d takes a slow path for one small image: about 3 ms against 0.5 ms here).
class HeadCheckInference {
public:
    explicit HeadCheckInference(HeadCheckNet& net);
    std::pair<torch::Tensor, torch::Tensor> forward(torch::Tensor x) const;

private:
    struct Conv {
        torch::Tensor weight, bias;
        int64_t stride;
    };
    std::vector<Conv> convs_;
    torch::Tensor head_w_, head_b_, plane_w_, plane_b_;
};

// Model file: parameters and buffers (float32) plus the metadata JSON under "fetalhc_head_check".
void save_head_check(HeadCheckNet& net, const std::string& path, const std::string& metadata_json);
// Throws c10::Error / std::runtime_error (a file without the "fetalhc_head_check" key is not a head-check model).
std::pair<HeadCheckNet, std::string> load_head_check(const std::string& path);

}  // namespace fetalhc::detail
