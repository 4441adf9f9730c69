#include "network.h"

#include "unet_traverse.h"

#include "fetalhc/hc18.h"

#include <ATen/Config.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace fetalhc::detail {

namespace nn = torch::nn;

ConvBlockImpl::ConvBlockImpl(int in, int out, int stride) {
    c1 = register_module("c1", nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).stride(stride).bias(false)));
    b1 = register_module("b1", nn::BatchNorm2d(out));
    c2 = register_module("c2", nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
    b2 = register_module("b2", nn::BatchNorm2d(out));
}

torch::Tensor ConvBlockImpl::forward(torch::Tensor x) {
    x = torch::relu(b1(c1(x)));
    return torch::relu(b2(c2(x)));
}

static int channels_at(const NetworkConfig& c, int level) {
    return std::min(c.base_channels << level, c.max_channels);
}

UNetImpl::UNetImpl(const NetworkConfig& c) : cfg(c) {
    if (cfg.depth < 1 || cfg.depth > 6 || cfg.base_channels < 2)
        throw std::invalid_argument("network config: depth must be 1..6 and base_channels >= 2");
    if (cfg.stem_stride != 1 && cfg.stem_stride != 2)
        throw std::invalid_argument("network config: stem_stride must be 1 or 2");
    const int m = cfg.stem_stride << cfg.depth;
    if (cfg.input_width % m || cfg.input_height % m)
        throw std::invalid_argument("network config: input size must be a multiple of " + std::to_string(m) +
                                    " (stem_stride x 2^depth)");
    down = register_module("down", nn::ModuleList());
    up = register_module("up", nn::ModuleList());
    down->push_back(ConvBlock(1, channels_at(cfg, 0), cfg.stem_stride));
    for (int l = 1; l <= cfg.depth; ++l) down->push_back(ConvBlock(channels_at(cfg, l - 1), channels_at(cfg, l)));
    for (int l = cfg.depth - 1; l >= 0; --l)
        up->push_back(ConvBlock(channels_at(cfg, l + 1) + channels_at(cfg, l), channels_at(cfg, l)));
    head = register_module("head", nn::Conv2d(nn::Conv2dOptions(channels_at(cfg, 0), 1, 1)));
    presence = register_module("presence", nn::Linear(channels_at(cfg, cfg.depth), 1));
}

// The float forms' traversal (unet_traverse.h): presence(pooled) gets the bottleneck's channel
// means, sizes change by torch's max pooling and bilinear upsampling.
template <class Down, class Up, class Head, class Presence>
static std::pair<torch::Tensor, torch::Tensor> run_unet(int depth, torch::Tensor x, Down down, Up up, Head head,
                                                        Presence presence) {
    return run_unet_with(
        depth, std::move(x), down, up, head,
        [&](const torch::Tensor& t) { return presence(torch::adaptive_avg_pool2d(t, {1, 1}).flatten(1)).squeeze(1); },
        [](const torch::Tensor& t) { return max_pool2x(t); },
        [](const torch::Tensor& t, const torch::Tensor& skip) {
            return torch::upsample_bilinear2d(t, {skip.size(2), skip.size(3)}, false);
        });
}

std::pair<torch::Tensor, torch::Tensor> UNetImpl::forward(torch::Tensor x) {
    return run_unet(
        cfg.depth, x, [this](int l, const torch::Tensor& t) { return down[l]->as<ConvBlock>()->forward(t); },
        [this](int i, const torch::Tensor& t) { return up[i]->as<ConvBlock>()->forward(t); },
        [this](const torch::Tensor& t) { return head(t); }, [this](const torch::Tensor& t) { return presence(t); });
}

// Eval-mode batch norm y = (x - mean) / sqrt(var + eps) * gamma + beta folded into the bias-free
// convolution before it: w' = w * s, b' = beta - mean * s with s = gamma / sqrt(var + eps).
static FrozenConv fold(const torch::nn::Conv2d& c, const torch::nn::BatchNorm2d& bn) {
    auto s = bn->weight / torch::sqrt(bn->running_var + bn->options.eps());
    FrozenConv f;
    f.weight = (c->weight * s.view({-1, 1, 1, 1})).contiguous(torch::MemoryFormat::ChannelsLast);
    f.bias = (bn->bias - bn->running_mean * s).contiguous();
    f.padding = static_cast<int>(c->weight.size(-1) / 2);  // every convolution here keeps the size
    f.stride = static_cast<int>(c->options.stride()->at(0));  // ... or halves it (the stem)
    return f;
}

void UNetImpl::freeze() {
    torch::NoGradGuard no_grad;
    auto f = std::make_shared<FrozenUNet>();
    auto block = [](const std::shared_ptr<torch::nn::Module>& m) {
        auto* b = m->as<ConvBlock>();
        return std::make_pair(fold(b->c1, b->b1), fold(b->c2, b->b2));
    };
    for (const auto& m : *down) f->down.push_back(block(m));
    for (const auto& m : *up) f->up.push_back(block(m));
    f->head.weight = head->weight.detach().clone().contiguous(torch::MemoryFormat::ChannelsLast);
    f->head.bias = head->bias.detach().clone();
    f->presence_weight = presence->weight.detach().clone();
    f->presence_bias = presence->bias.detach().clone();
    frozen = std::move(f);
}

std::pair<torch::Tensor, torch::Tensor> UNetImpl::infer(const torch::Tensor& input) const {
    if (!frozen) return const_cast<UNetImpl*>(this)->forward(input);
    if (quant) return infer_int8(*quant, cfg.depth, input);
    const FrozenUNet& f = *frozen;
    // With a recorder (int8 calibration), each convolution's largest output after its ReLU.
    std::vector<float>* record = nullptr;
    if (auto* r = current_recorder()) {
        record = &r->max[this];
        record->resize(int8_layer_count(cfg), 0.0f);
    }
    auto block = [record](const std::pair<FrozenConv, FrozenConv>& b, const torch::Tensor& x, int index) {
        auto y = b.first(x).relu_();
        if (record) (*record)[2 * index] = std::max((*record)[2 * index], y.max().item<float>());
        y = b.second(y).relu_();
        if (record) (*record)[2 * index + 1] = std::max((*record)[2 * index + 1], y.max().item<float>());
        return y;
    };
    return run_unet(
        cfg.depth, input.contiguous(torch::MemoryFormat::ChannelsLast),
        [&](int l, const torch::Tensor& t) { return block(f.down[l], t, l); },
        [&](int i, const torch::Tensor& t) { return block(f.up[i], t, cfg.depth + 1 + i); },
        [&](const torch::Tensor& t) { return f.head(t); },
        [&](const torch::Tensor& t) { return torch::linear(t, f.presence_weight, f.presence_bias); });
}

torch::Tensor normalise_batch(const torch::Tensor& t) {
    auto f = t.scalar_type() == torch::kByte ? t.to(torch::kFloat32).div_(255.0) : t;
    return (f - 0.5) / 0.25;
}

long long count_parameters(nn::Module& m) {
    long long n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    return n;
}

void copy_weights(nn::Module& dst, nn::Module& src) {
    torch::NoGradGuard ng;
    auto sp = src.named_parameters(), sb = src.named_buffers();
    for (auto& p : dst.named_parameters()) p.value().copy_(sp[p.key()]);
    for (auto& b : dst.named_buffers()) b.value().copy_(sb[b.key()]);
}

void ema_update(nn::Module& avg, nn::Module& net, double decay) {
    torch::NoGradGuard ng;
    auto np = net.named_parameters(), nb = net.named_buffers();
    for (auto& p : avg.named_parameters()) p.value().lerp_(np[p.key()], 1 - decay);
    for (auto& b : avg.named_buffers()) {
        if (b.value().is_floating_point())
            b.value().lerp_(nb[b.key()], 1 - decay);
        else
            b.value().copy_(nb[b.key()]);
    }
}

namespace {

// The split a model's metadata records: {"split_salt", "validation_fraction"}, or null when it has no
// string "split_salt" (no metadata, not JSON, or written by something other than the trainer).
std::string describe_split(const std::optional<SplitSpec>& split) {
    if (!split) return "no recorded split";
    if (split->folds > 0)
        return "split_salt " + nlohmann::json(split->salt).dump() + ", fold " + std::to_string(split->fold) + " of " +
               std::to_string(split->folds);
    return "split_salt " + nlohmann::json(split->salt).dump() + ", validation_fraction " +
           nlohmann::json(split->validation_fraction).dump();
}

}  // namespace

std::string split_metadata(const std::string& split_salt, double validation_fraction, int folds, int fold) {
    nlohmann::json j{{"split_salt", split_salt}, {"validation_fraction", validation_fraction}};
    if (folds > 0) j["folds"] = folds, j["fold"] = fold;
    return j.dump();
}

std::string split_mismatch(const std::string& what_a, const std::string& meta_a, const std::string& what_b,
                           const std::string& meta_b) {
    const auto a = recorded_split(meta_a), b = recorded_split(meta_b);
    if (a == b) return "";
    return what_a + " (" + describe_split(a) + ") and " + what_b + " (" + describe_split(b) +
           ") do not record the same train/validation split, so one network may have trained on the other's "
           "validation images; use models trained with the same split_salt and validation_fraction (and, for k-fold "
           "models, the same folds and fold)";
}

std::string network_config_json(const NetworkConfig& c) {
    nlohmann::json j{{"input_width", c.input_width}, {"input_height", c.input_height},
                     {"base_channels", c.base_channels}, {"depth", c.depth},
                     {"max_channels", c.max_channels}, {"stem_stride", c.stem_stride}, {"architecture", "unet-bn"}};
    return j.dump();
}

NetworkConfig network_config_from_json(const std::string& text) {
    auto j = nlohmann::json::parse(text);
    NetworkConfig c;
    c.input_width = j.value("input_width", c.input_width);
    c.input_height = j.value("input_height", c.input_height);
    c.base_channels = j.value("base_channels", c.base_channels);
    c.depth = j.value("depth", c.depth);
    c.max_channels = j.value("max_channels", c.max_channels);
    c.stem_stride = j.value("stem_stride", 1);  // files written before the option have none
    return c;
}

// Weights are stored as 16-bit floats (half the file; inference runs in float32 after loading).
static UNet half_copy(UNet& net) {
    UNet h(net->cfg);
    torch::NoGradGuard ng;
    auto src = net->named_parameters(), dst = h->named_parameters();
    for (auto& p : dst) p.value().copy_(src[p.key()]);
    auto sb = net->named_buffers(), db = h->named_buffers();
    for (auto& b : db) b.value().copy_(sb[b.key()]);
    h->to(torch::kHalf);
    return h;
}

void save_model(UNet& net, const std::string& path, const std::string& metadata_json, const Refiner* refine) {
    torch::serialize::OutputArchive ar;
    half_copy(net)->save(ar);
    ar.write("fetalhc_weights_dtype", c10::IValue(std::string("float16")));
    ar.write("fetalhc_network_config", c10::IValue(network_config_json(net->cfg)));
    ar.write("fetalhc_metadata", c10::IValue(metadata_json));
    if (refine && refine->net) {
        torch::serialize::OutputArchive sub;
        UNet r = refine->net;
        half_copy(r)->save(sub);
        ar.write("refine", sub);
        nlohmann::json j{{"network", nlohmann::json::parse(network_config_json(refine->net->cfg))}, {"margin", refine->margin}};
        ar.write("fetalhc_refine", c10::IValue(j.dump()));
    }
    ar.save_to(path);
}

LoadedModel load_model(const std::string& path) {
    torch::serialize::InputArchive ar;
    ar.load_from(path);
    c10::IValue cfg_v, meta_v;
    if (!ar.try_read("fetalhc_network_config", cfg_v) || !cfg_v.isString())
        throw std::runtime_error("not a fetalhc model file (no network config inside)");
    LoadedModel lm;
    lm.cfg = network_config_from_json(cfg_v.toStringRef());
    if (ar.try_read("fetalhc_metadata", meta_v) && meta_v.isString()) lm.metadata = meta_v.toStringRef();
    // Module::load keeps the stored dtype, so a float16 file is read into a float16 module first.
    c10::IValue dtype_v;
    const bool half = ar.try_read("fetalhc_weights_dtype", dtype_v) && dtype_v.isString() && dtype_v.toStringRef() == "float16";
    lm.net = UNet(lm.cfg);
    if (half) lm.net->to(torch::kHalf);
    lm.net->load(ar);
    lm.net->to(torch::kFloat);
    lm.net->eval();
    lm.net->freeze();
    c10::IValue ref_v;
    if (ar.try_read("fetalhc_refine", ref_v) && ref_v.isString()) {
        auto j = nlohmann::json::parse(ref_v.toStringRef());
        torch::serialize::InputArchive sub;
        if (!ar.try_read("refine", sub)) throw std::runtime_error("model file names a refinement network but holds none");
        lm.refine.net = UNet(network_config_from_json(j["network"].dump()));
        if (half) lm.refine.net->to(torch::kHalf);
        lm.refine.net->load(sub);
        lm.refine.net->to(torch::kFloat);
        lm.refine.net->eval();
        lm.refine.net->freeze();
        lm.refine.margin = j.value("margin", 1.2);
    }
    return lm;
}

void set_threads(int threads) {
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (torch::get_num_threads() != n) torch::set_num_threads(n);
}

}  // namespace fetalhc::detail
