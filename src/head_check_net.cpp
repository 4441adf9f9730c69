// The head-check network, its model file and HeadCheck (fetalhc/head_check.h).
#include "head_check_net.h"
#include "model_file.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <optional>

namespace fetalhc {
namespace detail {
namespace {

// The crop standardised: zero mean, unit spread (the machine's gain and offset do not count).
torch::Tensor standardised(torch::Tensor x) {
    x = x.to(torch::kFloat32);
    const auto mean = x.mean({1, 2, 3}, true);
    const auto sd = x.std({1, 2, 3}, false, true);
    return (x - mean) / (sd + 4.0);  // +4 grey levels: a flat crop stays flat instead of amplifying noise
}

// conv3x3 (no bias) + batch norm + ReLU appended to f.
void add_conv_bn_relu(torch::nn::Sequential& f, int in, int out, int stride) {
    f->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)));
    f->push_back(torch::nn::BatchNorm2d(out));
    f->push_back(torch::nn::ReLU());
}

}  // namespace

HeadCheckNetImpl::HeadCheckNetImpl() {
    const int ch[] = {16, 32, 48, 64, 96};
    torch::nn::Sequential f;
    int in = 1;
    for (int i = 0; i < 5; ++i) {
        add_conv_bn_relu(f, in, ch[i], 2);
        if (i > 0) add_conv_bn_relu(f, ch[i], ch[i], 1);
        in = ch[i];
    }
    features = register_module("features", f);
    head = register_module("head", torch::nn::Linear(in, 1));
    plane = register_module("plane", torch::nn::Linear(in, kHeadCheckPlaneCount));
}

std::pair<torch::Tensor, torch::Tensor> HeadCheckNetImpl::forward(torch::Tensor x) {
    auto h = features->forward(standardised(x)).mean({2, 3});
    return {head->forward(h).squeeze(1), plane->forward(h)};
}

void save_head_check(HeadCheckNet& net, const std::string& path, const std::string& metadata_json) {
    torch::serialize::OutputArchive ar;
    net->save(ar);
    ar.write("fetalhc_head_check", c10::IValue(metadata_json));
    const std::string tmp = path + ".tmp";
    ar.save_to(tmp);
    std::filesystem::rename(tmp, path);
}

std::pair<HeadCheckNet, std::string> load_head_check(const std::string& path) {
    torch::serialize::InputArchive ar;
    ar.load_from(path);
    c10::IValue meta;
    if (!ar.try_read("fetalhc_head_check", meta) || !meta.isString())
        throw std::runtime_error("it holds no head-check metadata (not a head-check model file)");
    HeadCheckNet net;
    net->load(ar);
    net->eval();
    return {net, meta.toStringRef()};
}

HeadCheckInference::HeadCheckInference(HeadCheckNet& net) {
    torch::NoGradGuard no_grad;
    const auto& mods = net->features->modules(false);
    for (size_t i = 0; i + 1 < mods.size(); ++i) {
        auto conv = mods[i]->as<torch::nn::Conv2d>();
        auto bn = mods[i + 1]->as<torch::nn::BatchNorm2d>();
        if (!conv || !bn) continue;
        const auto scale = bn->weight / torch::sqrt(bn->running_var + bn->options.eps());
        convs_.push_back({(conv->weight * scale.view({-1, 1, 1, 1})).contiguous(),
                          (bn->bias - bn->running_mean * scale).contiguous(), conv->options.stride()->at(0)});
    }
    head_w_ = net->head->weight.clone();
    head_b_ = net->head->bias.clone();
    plane_w_ = net->plane->weight.clone();
    plane_b_ = net->plane->bias.clone();
}

std::pair<torch::Tensor, torch::Tensor> HeadCheckInference::forward(torch::Tensor x) const {
    x = standardised(x).contiguous();
    const bool onednn = at::hasMKLDNN();
    for (const Conv& c : convs_) {
        x = onednn ? at::mkldnn_convolution(x, c.weight, c.bias, {1, 1}, {c.stride, c.stride}, {1, 1}, 1)
                   : torch::conv2d(x, c.weight, c.bias, c.stride, 1);
        x = torch::relu_(x);
    }
    const auto h = x.mean({2, 3});
    return {torch::linear(h, head_w_, head_b_).squeeze(1), torch::linear(h, plane_w_, plane_b_)};
}

}  // namespace detail

struct HeadCheck::Impl {
    std::optional<detail::HeadCheckInference> net;  // the trained network in its inference form
    std::string metadata;
    double refuse_below = 0, review_below = 0;
};

Expected<HeadCheck> HeadCheck::load(const std::string& path) {
    if (!std::filesystem::exists(path))
        return make_error(ErrorKind::ModelUnavailable, "head-check model '" + path + "' does not exist; train one with "
                                                       "the head-check trainer or give the right path");
    // LibTorch's reader does not check the archive's CRCs: the segmenter's check runs first.
    if (auto damage = detail::check_model_archive(path); !damage.empty())
        return make_error(ErrorKind::ModelUnavailable,
                          "cannot read head-check model '" + path + "': " + damage + "; give a file written by the head-check trainer");
    auto impl = std::make_shared<Impl>();
    try {
        auto [net, meta] = detail::load_head_check(path);
        impl->net.emplace(net);
        impl->metadata = meta;
        const auto j = nlohmann::json::parse(meta);
        impl->refuse_below = j.at("thresholds").at("refuse_below").get<double>();
        impl->review_below = j.at("thresholds").at("review_below").get<double>();
        // The crop it was trained on must be the crop this build cuts.
        const auto& crop = j.at("recipe").at("crop");
        const int size = crop.at("size").get<int>();
        const double span = crop.at("span_of_major_axis").get<double>();
        if (size != kHeadCheckCropSize || std::abs(span - kHeadCheckCropSpan) > 1e-9)
            return make_error(ErrorKind::ModelUnavailable,
                              "head-check model '" + path + "' was trained on " + std::to_string(size) + " px crops spanning " +
                                  std::to_string(span) + " x the major axis; this build cuts " + std::to_string(kHeadCheckCropSize) +
                                  " px crops spanning " + std::to_string(kHeadCheckCropSpan) + ": give a model trained by this build");
    } catch (const std::exception& e) {
        return make_error(ErrorKind::ModelUnavailable,
                          "cannot read head-check model '" + path + "': " + e.what() + "; give a file written by the head-check trainer");
    }
    HeadCheck h;
    h.impl_ = impl;
    return h;
}

HeadCheckResult HeadCheck::score_crop(const cv::Mat& crop8) const {
    HeadCheckResult r;
    if (crop8.empty() || crop8.type() != CV_8UC1 || crop8.rows != kHeadCheckCropSize || crop8.cols != kHeadCheckCropSize)
        return r;
    c10::InferenceMode guard;
    const cv::Mat c = crop8.isContinuous() ? crop8 : crop8.clone();
    auto x = torch::from_blob(const_cast<unsigned char*>(c.ptr<unsigned char>()), {1, 1, c.rows, c.cols}, torch::kUInt8);
    auto [logit, planes] = impl_->net->forward(x);
    r.score = torch::sigmoid(logit).item<double>();
    const auto p = torch::softmax(planes, 1).squeeze(0);
    const auto pa = p.accessor<float, 1>();
    for (int i = 0; i < kHeadCheckPlaneCount; ++i) r.plane_probability[size_t(i)] = pa[i];
    r.likely_plane = 0;
    r.likely_other = 1;
    for (int i = 1; i < kHeadCheckPlaneCount; ++i) {
        if (pa[i] > pa[r.likely_plane]) r.likely_plane = i;
        if (pa[i] > pa[r.likely_other]) r.likely_other = i;
    }
    return r;
}

HeadCheckResult HeadCheck::score(const cv::Mat& gray8, const Ellipse& e_px) const {
    if (!e_px.normalized().valid()) return {};
    return score_crop(head_check_crop(gray8, e_px));
}

double HeadCheck::refuse_below() const { return impl_->refuse_below; }
double HeadCheck::review_below() const { return impl_->review_below; }
const std::string& HeadCheck::metadata() const { return impl_->metadata; }

Expected<std::optional<HeadCheck>> head_check_for_model(const std::string& choice, const std::string& model_path,
                                                        std::string* missing) {
    if (choice == "none") return std::optional<HeadCheck>();
    std::string path = choice;
    if (path.empty()) {  // the default: beside the model, optional
        path = (std::filesystem::path(model_path).parent_path() / kHeadCheckFileName).string();
        std::error_code ec;
        if (!std::filesystem::exists(path, ec)) {
            if (missing) *missing = path;
            return std::optional<HeadCheck>();
        }
    }
    auto c = HeadCheck::load(path);
    if (!c) return c.error_value();
    return std::optional<HeadCheck>(std::move(*c));
}

}  // namespace fetalhc
