// Internal: the U-Net traversal shared by the training form, the frozen float form and the int8
// form of the network (network.cpp, network_int8.cpp).
#pragma once

#include <ATen/Config.h>
#include <torch/torch.h>

#include <utility>
#include <vector>

namespace fetalhc::detail {

// A convolution with batch norm folded in (UNetImpl::freeze): weights channels-last, oneDNN
// when LibTorch has it.
struct FrozenConv {
    torch::Tensor weight, bias;
    int padding = 0, stride = 1;
    torch::Tensor operator()(const torch::Tensor& x) const {
#if AT_MKLDNN_ENABLED()
        if (x.scalar_type() == torch::kFloat && at::globalContext().userEnabledMkldnn())
            return at::mkldnn_convolution(x, weight, bias, {padding, padding}, {stride, stride}, {1, 1}, 1);
#endif
        return torch::conv2d(x, weight, bias, stride, padding);
    }
};

struct FrozenUNet {
    std::vector<std::pair<FrozenConv, FrozenConv>> down, up;
    FrozenConv head;
    torch::Tensor presence_weight, presence_bias;
};

struct QuantUNet;
// The int8 form's forward (network_int8.cpp): the same outputs as UNetImpl::forward, in float.
std::pair<torch::Tensor, torch::Tensor> infer_int8(const QuantUNet& q, int depth, const torch::Tensor& input);
// Its 2x bilinear upsampling of an 8-bit (quint8) tensor: as torch::upsample_bilinear2d with
// align_corners false, rounded to the input's scale and zero point.
torch::Tensor upsample2x_int8(const torch::Tensor& q);

// 2x2 max pooling, stride 2 (all four sizes spelt out: the quantized kernel takes no defaults).
inline torch::Tensor max_pool2x(const torch::Tensor& x) { return torch::max_pool2d(x, {2, 2}, {2, 2}, {0, 0}, {1, 1}); }

// The forms differ only in their layers: down(l, x) and up(i, x) run a level's convolution block,
// head(x) gives the logits, presence(pooled) the presence logits from the bottleneck's channel
// means, pool(x) halves the size and upsample(x, skip) brings x to skip's size. Logits of a
// stride-2 stem come at half the input size and are upsampled bilinearly to it.
template <class Down, class Up, class Head, class Presence, class Pool, class Upsample>
std::pair<torch::Tensor, torch::Tensor> run_unet_with(int depth, torch::Tensor x, Down down, Up up, Head head,
                                                      Presence presence, Pool pool, Upsample upsample) {
    const std::vector<int64_t> input_size{x.size(2), x.size(3)};
    std::vector<torch::Tensor> skips;
    x = down(0, x);
    for (int l = 1; l <= depth; ++l) {
        skips.push_back(x);
        x = down(l, pool(x));
    }
    auto pres = presence(x);
    for (int i = 0; i < depth; ++i) {
        const auto& skip = skips[skips.size() - 1 - i];
        x = up(i, torch::cat({upsample(x, skip), skip}, 1));
    }
    auto logits = head(x);
    if (logits.size(2) != input_size[0] || logits.size(3) != input_size[1])
        logits = torch::upsample_bilinear2d(logits, input_size, false);
    return {logits, pres};
}

}  // namespace fetalhc::detail
