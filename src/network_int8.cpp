// int8 inference of the segmentation network: post-training quantization of the frozen (batch
// norm folded) weights, run through LibTorch's quantized CPU convolutions (oneDNN, else FBGEMM)
// with the ReLU fused. Activations are unsigned 8-bit per tensor, their ranges measured on training
// images (ActivationRecorder, `fetalhc model quantize`); weights are signed 8-bit per output
// channel, symmetric. Pooling runs on the 8-bit tensors; the 2x upsampling and the 1x1 logit layer
// are done here (the first on 8-bit values, the second into float), the presence head in float.
#include "network.h"

#include "unet_traverse.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/quantized/PackedParams.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

namespace fetalhc::detail {

using PackedConv = c10::intrusive_ptr<ConvPackedParamsBase<2>>;

struct QuantConv {
    PackedConv packed;
    double out_scale = 1;  // output: quint8, zero point 0 (after the ReLU)
};

struct QuantUNet {
    std::vector<std::pair<QuantConv, QuantConv>> down, up;
    std::vector<float> head_weight;  // the 1x1 logit layer, one weight per input channel
    float head_bias = 0;
    torch::Tensor presence_weight, presence_bias;
};

int int8_layer_count(const NetworkConfig& cfg) { return 2 * (2 * cfg.depth + 1); }

namespace {

// The normalised input x = (v/255 - 0.5) / 0.25 of an 8-bit value v is (v - 127.5) * 4/255. The
// int8 form takes v itself with scale 4/255 and zero point 128, which reads as x - 2/255; the
// first convolution's bias gets the missing 2/255 times the sum of its weights (exact but at the
// zero-padded border), so the 8-bit input loses nothing.
constexpr double kInputScale = 4.0 / 255.0;
constexpr int64_t kInputZeroPoint = 128;
constexpr double kInputShift = 0.5 * kInputScale;

std::optional<at::QEngine> pick_engine() {
    const auto& engines = at::globalContext().supportedQEngines();
    for (auto want : {at::QEngine::ONEDNN, at::QEngine::FBGEMM})
        if (std::find(engines.begin(), engines.end(), want) != engines.end()) return want;
    return std::nullopt;
}

// The engine is a process-wide LibTorch setting; it is chosen once, before the first packing.
void use_engine() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (auto e = pick_engine()) at::globalContext().setQEngine(*e);
    });
}

PackedConv pack(const FrozenConv& c) {
    static auto prepack = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("quantized::conv2d_prepack", "")
                              .typed<PackedConv(at::Tensor, c10::optional<at::Tensor>, c10::List<int64_t>,
                                                c10::List<int64_t>, c10::List<int64_t>, int64_t)>();
    auto w = c.weight.contiguous();
    auto scales = (w.abs().amax({1, 2, 3}).clamp_min(1e-12) / 127.0).to(torch::kDouble);
    auto qw = torch::quantize_per_channel(w, scales, torch::zeros({w.size(0)}, torch::kLong), 0, torch::kQInt8);
    return prepack.call(qw, c.bias.contiguous(), c10::List<int64_t>({c.stride, c.stride}),
                        c10::List<int64_t>({c.padding, c.padding}), c10::List<int64_t>({1, 1}), 1);
}

const uint8_t* bytes(const torch::Tensor& q) { return reinterpret_cast<const uint8_t*>(q.data_ptr<c10::quint8>()); }

}  // namespace

// Bilinear upsampling by exactly 2 (align_corners false, as torch::upsample_bilinear2d) of an
// 8-bit channels-last tensor: each output is 9/16, 3/16, 3/16 and 1/16 of its four nearest inputs
// (the edge repeated), rounded; the scale and zero point are kept.
torch::Tensor upsample2x_int8(const torch::Tensor& in) {
    auto x = in.contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    auto out = at::_empty_affine_quantized({n, c, 2 * h, 2 * w}, x.options(), x.q_scale(), x.q_zero_point(),
                                           torch::MemoryFormat::ChannelsLast);
    const uint8_t* src = bytes(x);
    auto* dst = reinterpret_cast<uint8_t*>(out.data_ptr<c10::quint8>());
    at::parallel_for(0, n * 2 * h, 8, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const int64_t b = r / (2 * h), oy = r % (2 * h), y0 = oy / 2;
            const int64_t y1 = oy % 2 ? std::min(y0 + 1, h - 1) : std::max<int64_t>(y0 - 1, 0);
            const uint8_t* near_row = src + (b * h + y0) * w * c;
            const uint8_t* far_row = src + (b * h + y1) * w * c;
            uint8_t* o = dst + (b * 2 * h + oy) * 2 * w * c;
            for (int64_t ox = 0; ox < 2 * w; ++ox, o += c) {
                const int64_t x0 = ox / 2, x1 = ox % 2 ? std::min(x0 + 1, w - 1) : std::max<int64_t>(x0 - 1, 0);
                const uint8_t *a = near_row + x0 * c, *a1 = near_row + x1 * c, *f = far_row + x0 * c, *f1 = far_row + x1 * c;
                for (int64_t k = 0; k < c; ++k)
                    o[k] = static_cast<uint8_t>((9 * a[k] + 3 * a1[k] + 3 * f[k] + f1[k] + 8) >> 4);
            }
        }
    });
    return out;
}

namespace {

// The 1x1 logit layer on an 8-bit channels-last tensor, in float: bias + sum_c w_c * value_c.
torch::Tensor logit_layer(const QuantUNet& q, const torch::Tensor& in) {
    auto x = in.contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    const float s = static_cast<float>(x.q_scale());
    std::vector<float> ws(q.head_weight.size());
    float bias = q.head_bias;
    for (size_t k = 0; k < ws.size(); ++k) {
        ws[k] = q.head_weight[k] * s;
        bias -= ws[k] * static_cast<float>(x.q_zero_point());
    }
    auto out = torch::empty({n, 1, h, w}, torch::kFloat);
    const uint8_t* src = bytes(x);
    float* dst = out.data_ptr<float>();
    at::parallel_for(0, n * h * w, 2048, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
            const uint8_t* v = src + p * c;
            float acc = bias;
            for (int64_t k = 0; k < c; ++k) acc += ws[k] * v[k];
            dst[p] = acc;
        }
    });
    return out;
}

thread_local ActivationRecorder* g_recorder = nullptr;

}  // namespace

std::string int8_engine_problem() {
    if (pick_engine()) return "";
    return "this LibTorch has no quantized CPU engine (neither oneDNN nor FBGEMM); run without --int8";
}

bool cpu_has_vnni() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("flags", 0) == 0)
            return line.find(" avx512_vnni") != std::string::npos || line.find(" avx_vnni") != std::string::npos;
    return false;
}

RecordActivations::RecordActivations(ActivationRecorder& r) { g_recorder = &r; }
RecordActivations::~RecordActivations() { g_recorder = nullptr; }
ActivationRecorder* current_recorder() { return g_recorder; }

void UNetImpl::quantize(const std::vector<float>& activation_max) {
    if (!frozen) throw std::logic_error("quantize() needs a frozen network");
    if (static_cast<int>(activation_max.size()) != int8_layer_count(cfg))
        throw std::runtime_error("int8 ranges: " + std::to_string(activation_max.size()) + " values for a network of " +
                                 std::to_string(int8_layer_count(cfg)) + " convolutions");
    // The ranges come from a model file: a value that is not a finite, non-negative number (a
    // damaged or edited file) would give the convolutions a scale they cannot use.
    for (float m : activation_max)
        if (!std::isfinite(m) || m < 0)
            throw std::runtime_error("int8 ranges: " + std::to_string(m) +
                                     " is not a range; measure them again with `fetalhc model quantize`");
    if (auto problem = int8_engine_problem(); !problem.empty()) throw std::runtime_error(problem);
    use_engine();
    torch::NoGradGuard no_grad;
    // Output scales: the largest value maps to 255. Both inputs of each concatenation (the skip
    // and the upsampled tensor) must share one scale, so each pair takes the larger range.
    std::vector<double> scale(activation_max.size());
    for (size_t i = 0; i < scale.size(); ++i) scale[i] = std::max(static_cast<double>(activation_max[i]), 1e-6) / 255.0;
    const int depth = cfg.depth;
    auto second_of = [](int block) { return 2 * block + 1; };
    for (int i = 0; i < depth; ++i) {
        const int skip = second_of(depth - 1 - i);
        const int below = second_of(i == 0 ? depth : depth + i);  // the bottleneck, then the previous up block
        scale[skip] = scale[below] = std::max(scale[skip], scale[below]);
    }
    auto q = std::make_shared<QuantUNet>();
    auto block = [&](const std::pair<FrozenConv, FrozenConv>& b, int index) {
        return std::make_pair(QuantConv{pack(b.first), scale[2 * index]}, QuantConv{pack(b.second), scale[2 * index + 1]});
    };
    auto first = frozen->down[0];
    first.first.bias = first.first.bias + kInputShift * first.first.weight.sum({1, 2, 3});
    q->down.push_back(block(first, 0));
    for (int l = 1; l <= depth; ++l) q->down.push_back(block(frozen->down[l], l));
    for (int i = 0; i < depth; ++i) q->up.push_back(block(frozen->up[i], depth + 1 + i));
    auto hw = frozen->head.weight.flatten().contiguous();
    q->head_weight.assign(hw.data_ptr<float>(), hw.data_ptr<float>() + hw.numel());
    q->head_bias = frozen->head.bias.item<float>();
    q->presence_weight = frozen->presence_weight;
    q->presence_bias = frozen->presence_bias;
    quant = std::move(q);
}

std::pair<torch::Tensor, torch::Tensor> infer_int8(const QuantUNet& q, int depth, const torch::Tensor& input) {
    auto block = [](const std::pair<QuantConv, QuantConv>& b, const torch::Tensor& x) {
        auto y = b.first.packed->apply_relu(x, b.first.out_scale, 0);
        return b.second.packed->apply_relu(y, b.second.out_scale, 0);
    };
    auto v = (input / kInputScale + 127.5).round_().clamp_(0, 255).to(torch::kByte).contiguous();
    auto x = at::_make_per_tensor_quantized_tensor(v, kInputScale, kInputZeroPoint);
    return run_unet_with(
        depth, x, [&](int l, const torch::Tensor& t) { return block(q.down[l], t); },
        [&](int i, const torch::Tensor& t) { return block(q.up[i], t); },
        [&](const torch::Tensor& t) { return logit_layer(q, t); },
        [&](const torch::Tensor& t) {
            auto pooled = torch::adaptive_avg_pool2d(t.dequantize(), {1, 1}).flatten(1);
            return torch::linear(pooled, q.presence_weight, q.presence_bias).squeeze(1);
        },
        [](const torch::Tensor& t) { return max_pool2x(t); },
        [](const torch::Tensor& t, const torch::Tensor& skip) {
            if (skip.size(2) != 2 * t.size(2) || skip.size(3) != 2 * t.size(3))
                throw std::runtime_error("int8 network: a level is not twice the size of the one below");
            return upsample2x_int8(t);
        });
}

}  // namespace fetalhc::detail
