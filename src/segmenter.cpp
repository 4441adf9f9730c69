// The segmenter (LibTorch behind Segmenter's pimpl): loading a model, the two network passes, and
// the model-file tools (metadata rewrite, weight averaging, combining passes). The image geometry
// they use is in geometry.cpp.
#include "fetalhc/segmenter.h"

#include "geometry.h"
#include "model_file.h"
#include "network.h"

#include "fetalhc/ellipse.h"

#include <nlohmann/json.hpp>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <vector>

namespace fetalhc {

struct Segmenter::Impl {
    mutable detail::UNet net{nullptr};  // forward() is not const in LibTorch; used read-only
    mutable detail::Refiner refine;     // refine.net null when the model has no second pass
    ModelInfo info;
};

namespace detail {

std::pair<cv::Mat, float> forward_one(UNet net, const cv::Mat& input8) {
    CV_Assert(input8.type() == CV_8UC1 && input8.isContinuous());
    auto x = torch::from_blob(input8.data, {1, 1, input8.rows, input8.cols}, torch::kByte);
    auto [logits, presence] = net->infer(normalise_batch(x));
    auto prob = torch::sigmoid(logits).contiguous();
    cv::Mat p(input8.rows, input8.cols, CV_32F);
    std::memcpy(p.data, prob.data_ptr<float>(), sizeof(float) * input8.total());
    return {p, torch::sigmoid(presence).item<float>()};
}

Segmentation refine_segmentation(const Segmentation& coarse, const cv::Mat& gray8, const Refiner& r) {
    // The crop only needs a rough ellipse: a short RANSAC without the geometric refinement.
    auto rough_ellipse = [&](const Segmentation& seg) -> std::optional<Ellipse> {
        Boundary b = extract_boundary(seg, gray8);
        if (!b.found) return std::nullopt;
        EllipseFitOptions quick;
        quick.ransac_iterations = 60;
        quick.geometric_refine = false;
        EllipseFit fit = fit_ellipse(b.points, quick);
        if (!fit.ok || fit.ellipse.b < 2) return std::nullopt;
        return fit.ellipse;
    };
    const auto& cfg = r.net->cfg;
    const cv::Size ns(cfg.input_width, cfg.input_height);
    auto segment_crop = [&](Segmentation& seg, const Ellipse& around) {
        seg.crop_to_net = crop_frame(around, ns, r.margin);
        seg.net_input = warp_to_frame(gray8, seg.crop_to_net, ns);
        seg.net_probability = forward_one(r.net, seg.net_input).first;
    };
    const auto first = rough_ellipse(coarse);
    if (!first) return coarse;
    Segmentation out = coarse;
    out.refined = true;
    segment_crop(out, *first);
    if (!needs_second_look(out, *first)) return out;
    // The first pass took more than the head (e.g. the head and the fluid beside it): crop again
    // around the head the second network found, so that it is seen at its trained size.
    const auto head = rough_ellipse(out);
    if (!head) return out;
    Segmentation again = out;
    segment_crop(again, *head);
    return again;
}

bool needs_second_look(const Segmentation& refined, const Ellipse& crop_ellipse) {
    const double s = frame_zoom(refined.crop_to_net);
    const double expected = CV_PI * (s * crop_ellipse.a) * (s * crop_ellipse.b);
    const cv::Moments m = cv::moments(refined.net_probability > 0.5f, true);
    if (m.m00 < 16 || expected <= 0) return false;  // nothing found: the caller's checks handle it
    const cv::Size ns = refined.net_probability.size();
    const double dx = m.m10 / m.m00 - (ns.width - 1) / 2.0, dy = m.m01 / m.m00 - (ns.height - 1) / 2.0;
    return m.m00 < kSecondLookAreaShare * expected ||
           std::hypot(dx, dy) > kSecondLookShift * s * crop_ellipse.a;
}

}  // namespace detail

Segmenter::Segmenter(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

const ModelInfo& Segmenter::info() const { return impl_->info; }

Expected<Segmenter> Segmenter::load(const std::string& path, const SegmenterOptions& opt) {
    // Regular files only: a pipe (a model streamed in) cannot be read twice.
    std::error_code ec;
    if (auto damage = std::filesystem::is_regular_file(path, ec) ? detail::check_model_archive(path) : std::string();
        !damage.empty())
        return make_error("cannot load model '" + path + "': " + damage +
                          "; the file is damaged: copy it again (the shipped model is models/fetalhc_unet.pt)");
    try {
        detail::set_threads(opt.threads);
        auto lm = detail::load_model(path);
        auto impl = std::make_shared<Impl>();
        impl->net = lm.net;
        impl->refine = lm.refine;
        if (lm.refine.net) {
            impl->info.refine_config = lm.refine.net->cfg;
            impl->info.refine_margin = lm.refine.margin;
        }
        impl->info.path = path;
        impl->info.config = lm.cfg;
        impl->info.metadata = lm.metadata;
        impl->info.parameters = detail::count_parameters(*lm.net) + (lm.refine.net ? detail::count_parameters(*lm.refine.net) : 0);
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
    std::tie(out.net_probability, out.presence) = detail::forward_one(impl_->net, input);
    out.net_input = input;
    out.axis_scale = impl_->info.axis_scale;
    if (impl_->refine.net) out = detail::refine_segmentation(out, gray8, impl_->refine);
    out.network_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

Segmentation Segmenter::segment_near(const cv::Mat& gray8, const Ellipse& prior) const {
    if (!impl_->refine.net || !prior.valid()) return segment(gray8);
    CV_Assert(gray8.type() == CV_8UC1 && !gray8.empty());
    const auto& cfg = impl_->info.config;
    const auto& rc = impl_->refine.net->cfg;
    const cv::Size ns(rc.input_width, rc.input_height);
    Segmentation out;
    out.letterbox = Letterbox::fit(gray8.size(), {cfg.input_width, cfg.input_height});
    out.axis_scale = impl_->info.axis_scale;
    out.refined = true;
    out.crop_to_net = crop_frame(prior, ns, impl_->refine.margin);
    auto t0 = std::chrono::steady_clock::now();
    c10::InferenceMode guard;
    cv::Mat input = warp_to_frame(gray8, out.crop_to_net, ns);
    // The second network's own score: is the crop still centred on a head?
    std::tie(out.net_probability, out.presence) = detail::forward_one(impl_->refine.net, input);
    out.net_input = input;
    out.network_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

namespace {

// A model's metadata as a JSON object; empty when the file has none or it is not an object.
nlohmann::json metadata_object(const std::string& text) {
    auto j = nlohmann::json::parse(text.empty() ? "{}" : text, nullptr, false);
    return j.is_object() ? j : nlohmann::json::object();
}

}  // namespace

Expected<std::string> Segmenter::rewrite_metadata(const std::string& in, const std::string& out,
                                                  const std::string& json_patch) {
    try {
        auto lm = detail::load_model(in);
        auto meta = nlohmann::json::parse(lm.metadata.empty() ? "{}" : lm.metadata);
        meta.update(nlohmann::json::parse(json_patch));
        detail::save_model(lm.net, out, meta.dump(), &lm.refine);
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error("cannot rewrite model '" + in + "' to '" + out + "': " + e.what());
    }
}

Expected<std::string> Segmenter::combine_models(const std::string& coarse, const std::string& two_pass,
                                                const std::string& out) {
    try {
        auto c = detail::load_model(coarse);
        auto t = detail::load_model(two_pass);
        if (c.refine.net) return make_error("model combine: '" + coarse + "' already has a second pass; name a one-pass model");
        if (!t.refine.net) return make_error("model combine: '" + two_pass + "' has no second pass to take");
        if (auto e = detail::split_mismatch("'" + coarse + "'", c.metadata, "'" + two_pass + "'", t.metadata); !e.empty())
            return make_error("model combine: " + e);
        auto meta = metadata_object(t.metadata);
        meta["coarse_model"] = coarse;
        detail::save_model(c.net, out, meta.dump(), &t.refine);
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error(std::string("model combine: ") + e.what());
    }
}

Expected<std::string> Segmenter::average_models(const std::vector<std::string>& in, const std::string& out) {
    if (in.empty()) return make_error("model average: name at least one input model");
    try {
        auto first = detail::load_model(in[0]);
        if (first.refine.net) return make_error("model average: '" + in[0] + "' is a two-pass model; average single-pass checkpoints");
        const std::string cfg = detail::network_config_json(first.cfg);
        auto acc_params = first.net->named_parameters();
        auto acc_buffers = first.net->named_buffers();
        torch::NoGradGuard no_grad;
        for (size_t i = 1; i < in.size(); ++i) {
            // Trainer checkpoints (checkpoint_model.pt) hold float32 weights and the run's split but no
            // network config: they take the first model's.
            torch::serialize::InputArchive ar;
            ar.load_from(in[i]);
            c10::IValue cfg_v, meta_v;
            if (ar.try_read("fetalhc_network_config", cfg_v) && cfg_v.isString() &&
                detail::network_config_json(detail::network_config_from_json(cfg_v.toStringRef())) != cfg)
                return make_error("model average: '" + in[i] + "' has a different network config from '" + in[0] + "'");
            const std::string meta_i = ar.try_read("fetalhc_metadata", meta_v) && meta_v.isString() ? meta_v.toStringRef() : "";
            if (auto e = detail::split_mismatch("'" + in[0] + "'", first.metadata, "'" + in[i] + "'", meta_i); !e.empty())
                return make_error("model average: " + e);
            detail::LoadedModel m;
            m.net = detail::UNet(first.cfg);
            m.net->load(ar);
            for (const auto& p : m.net->named_parameters()) acc_params[p.key()].add_(p.value());
            for (const auto& b : m.net->named_buffers())
                if (b.value().is_floating_point()) acc_buffers[b.key()].add_(b.value());
        }
        const double n = static_cast<double>(in.size());
        for (auto& p : acc_params) p.value().div_(n);
        for (auto& b : acc_buffers)
            if (b.value().is_floating_point()) b.value().div_(n);
        auto meta = metadata_object(first.metadata);
        meta["averaged_from"] = in;
        detail::save_model(first.net, out, meta.dump());
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error(std::string("model average: ") + e.what());
    }
}

}  // namespace fetalhc
