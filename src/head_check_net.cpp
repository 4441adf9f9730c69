// The head-check network, its model file and HeadCheck (fetalhc/head_check.h).
#include "head_check_net.h"
#include "model_file.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace fetalhc {
namespace detail {
namespace {

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
    x = x.to(torch::kFloat32);
    const auto mean = x.mean({1, 2, 3}, true);
    const auto sd = x.std({1, 2, 3}, false, true);
    x = (x - mean) / (sd + 4.0);  // +4 grey levels: a flat crop stays flat instead of amplifying noise
    auto h = features->forward(x).mean({2, 3});
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

}  // namespace detail

struct HeadCheck::Impl {
    // forward() in eval mode changes nothing; the holder is not const-callable, hence mutable.
    mutable detail::HeadCheckNet net{nullptr};
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
        impl->net = net;
        impl->metadata = meta;
        const auto j = nlohmann::json::parse(meta);
        impl->refuse_below = j.at("thresholds").at("refuse_below").get<double>();
        impl->review_below = j.at("thresholds").at("review_below").get<double>();
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

}  // namespace fetalhc
