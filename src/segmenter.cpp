#include "fetalhc/segmenter.h"

#include "network.h"

#include <nlohmann/json.hpp>

#include <opencv2/imgproc.hpp>

#include <chrono>
#include <cmath>

namespace fetalhc {

Letterbox Letterbox::fit(cv::Size image, cv::Size net) {
    Letterbox lb;
    lb.net_size = net;
    lb.image_size = image;
    const double s = std::min(double(net.width) / image.width, double(net.height) / image.height);
    lb.resized = {std::clamp(int(std::lround(image.width * s)), 1, net.width),
                  std::clamp(int(std::lround(image.height * s)), 1, net.height)};
    lb.scale_x = double(lb.resized.width) / image.width;
    lb.scale_y = double(lb.resized.height) / image.height;
    lb.offset_x = (net.width - lb.resized.width) / 2;
    lb.offset_y = (net.height - lb.resized.height) / 2;
    return lb;
}

cv::Point2d Letterbox::to_image(cv::Point2d p) const {
    return {(p.x - offset_x + 0.5) / scale_x - 0.5, (p.y - offset_y + 0.5) / scale_y - 0.5};
}

cv::Point2d Letterbox::to_net(cv::Point2d p) const {
    return {scale_x * (p.x + 0.5) - 0.5 + offset_x, scale_y * (p.y + 0.5) - 0.5 + offset_y};
}

cv::Mat Letterbox::apply(const cv::Mat& img, int interpolation) const {
    cv::Mat canvas = cv::Mat::zeros(net_size, img.type());
    cv::Mat roi = canvas(cv::Rect(offset_x, offset_y, resized.width, resized.height));
    cv::resize(img, roi, resized, 0, 0, interpolation);
    return canvas;
}

cv::Mat Segmentation::probability_full() const {
    if (net_probability.empty()) return {};
    const Letterbox& lb = letterbox;
    cv::Mat roi = net_probability(cv::Rect(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height));
    cv::Mat full;
    cv::resize(roi, full, lb.image_size, 0, 0, cv::INTER_LINEAR);
    return full;
}

struct Segmenter::Impl {
    mutable detail::UNet net{nullptr};  // forward() is not const in LibTorch; used read-only
    ModelInfo info;
};

Segmenter::Segmenter(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

const ModelInfo& Segmenter::info() const { return impl_->info; }

Expected<Segmenter> Segmenter::load(const std::string& path, const SegmenterOptions& opt) {
    try {
        detail::set_threads(opt.threads);
        auto lm = detail::load_model(path);
        auto impl = std::make_shared<Impl>();
        impl->net = lm.net;
        impl->info.path = path;
        impl->info.config = lm.cfg;
        impl->info.metadata = lm.metadata;
        impl->info.parameters = detail::count_parameters(*lm.net);
        if (!lm.metadata.empty()) {
            auto meta = nlohmann::json::parse(lm.metadata, nullptr, false);
            if (meta.is_object() && meta.contains("axis_scale") && meta["axis_scale"].is_number())
                impl->info.axis_scale = meta["axis_scale"].get<double>();
        }
        return Segmenter(impl);
    } catch (const std::exception& e) {
        std::string what = e.what();
        if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
        return make_error("cannot load model '" + path + "': " + what +
                          " (pass a model written by `fetalhc train`, e.g. models/fetalhc_unet.pt)");
    }
}

Segmentation Segmenter::segment(const cv::Mat& gray8) const {
    CV_Assert(gray8.type() == CV_8UC1 && !gray8.empty());
    const auto& cfg = impl_->info.config;
    Segmentation out;
    out.letterbox = Letterbox::fit(gray8.size(), {cfg.input_width, cfg.input_height});
    cv::Mat input = out.letterbox.apply(gray8, cv::INTER_AREA);

    auto t0 = std::chrono::steady_clock::now();
    c10::InferenceMode guard;
    auto x = torch::from_blob(input.data, {1, 1, input.rows, input.cols}, torch::kByte);
    auto [logits, presence] = impl_->net->forward(detail::normalise_batch(x));
    auto prob = torch::sigmoid(logits).contiguous();
    out.net_probability = cv::Mat(input.rows, input.cols, CV_32F);
    std::memcpy(out.net_probability.data, prob.data_ptr<float>(), sizeof(float) * input.total());
    out.presence = torch::sigmoid(presence).item<float>();
    out.axis_scale = impl_->info.axis_scale;
    out.network_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

Expected<std::string> Segmenter::rewrite_metadata(const std::string& in, const std::string& out,
                                                  const std::string& json_patch) {
    try {
        auto lm = detail::load_model(in);
        auto meta = nlohmann::json::parse(lm.metadata.empty() ? "{}" : lm.metadata);
        meta.update(nlohmann::json::parse(json_patch));
        detail::save_model(lm.net, out, meta.dump());
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error("cannot rewrite model '" + in + "' to '" + out + "': " + e.what());
    }
}

}  // namespace fetalhc
