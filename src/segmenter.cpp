// The segmenter (LibTorch behind Segmenter's pimpl): loading a model, the two network passes, and
// the model-file tools (metadata rewrite, weight averaging, combining passes). The image geometry
// they use is in geometry.cpp.
#include "fetalhc/segmenter.h"

#include "geometry.h"
#include "model_file.h"
#include "net_frame.h"
#include "network.h"
#include "review.h"

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
    // One network per member (one for a model file, K for an ensemble). forward() is not const in
    // LibTorch; the networks are used read-only.
    mutable std::vector<detail::UNet> nets;
    mutable std::vector<detail::Refiner> refiners;  // empty when the model has no second pass
    bool mirror_average = false;                     // SegmenterOptions::mirror_average
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

MemberForward forward_members(const std::vector<UNet>& nets, const cv::Mat& input8) {
    MemberForward out;
    if (nets.size() == 1) {
        std::tie(out.probability, out.presence) = forward_one(nets[0], input8);
        return out;
    }
    std::vector<cv::Mat> probs;
    out.probability = cv::Mat::zeros(input8.size(), CV_32F);
    for (const auto& n : nets) {
        auto [p, presence] = forward_one(n, input8);
        out.probability += p;
        out.presence += presence;
        probs.push_back(p);
    }
    const double k = double(nets.size());
    out.probability /= k;
    out.presence = float(out.presence / k);
    const cv::Mat mean_mask = out.probability > 0.5f;
    double iou_sum = 0;
    for (const auto& p : probs) {
        const cv::Mat m = p > 0.5f;
        const double uni = cv::countNonZero(m | mean_mask);
        iou_sum += uni > 0 ? cv::countNonZero(m & mean_mask) / uni : 1.0;
    }
    out.disagreement = 1 - iou_sum / k;
    return out;
}

MemberForward forward_members(const std::vector<UNet>& nets, const cv::Mat& input8, bool mirror) {
    if (!mirror) return forward_members(nets, input8);
    cv::Mat mirrored;
    cv::flip(input8, mirrored, 1);
    MemberForward out = forward_members(nets, input8), m = forward_members(nets, mirrored);
    cv::Mat back;
    cv::flip(m.probability, back, 1);
    out.probability = 0.5f * (out.probability + back);
    out.presence = 0.5f * (out.presence + m.presence);
    out.disagreement = 0.5 * (out.disagreement + m.disagreement);
    return out;
}

Segmentation refine_segmentation(const Segmentation& coarse, const cv::Mat& gray8, const Refiner& r, bool mirror_average) {
    return refine_segmentation(coarse, gray8, std::vector<Refiner>{r}, mirror_average);
}

Segmentation refine_segmentation(const Segmentation& coarse, const cv::Mat& gray8, const std::vector<Refiner>& members,
                                 bool mirror_average) {
    const Refiner& r = members.front();
    std::vector<UNet> nets;
    for (const auto& m : members) nets.push_back(m.net);
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
        const cv::Matx23d A = crop_frame(around, ns, r.margin);
        cv::Mat input = warp_to_frame(gray8, A, ns);
        auto f = forward_members(nets, input, mirror_average);
        set_net_frame(seg, f.probability, A, input);
        seg.refine_presence = f.presence;
        seg.member_disagreement = f.disagreement;
        seg.crop_ellipse = around;
        seg.mirror_averaged = mirror_average;
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
    again.second_look = true;
    segment_crop(again, *head);
    return again;
}

bool needs_second_look(const Segmentation& refined, const Ellipse& crop_ellipse) {
    const NetFrame& net = net_frame(refined);
    const double s = frame_zoom(net.crop_to_net);
    const double expected = CV_PI * (s * crop_ellipse.a) * (s * crop_ellipse.b);
    const cv::Moments m = cv::moments(net.probability > 0.5f, true);
    if (m.m00 < 16 || expected <= 0) return false;  // nothing found: the caller's checks handle it
    const cv::Size ns = net.probability.size();
    const double dx = m.m10 / m.m00 - (ns.width - 1) / 2.0, dy = m.m01 / m.m00 - (ns.height - 1) / 2.0;
    return m.m00 < kSecondLookAreaShare * expected ||
           std::hypot(dx, dy) > kSecondLookShift * s * crop_ellipse.a;
}

}  // namespace detail

namespace {

// A model's metadata as a JSON object; empty when the file has none or it is not an object.
nlohmann::json metadata_object(const std::string& text) {
    auto j = nlohmann::json::parse(text.empty() ? "{}" : text, nullptr, false);
    return j.is_object() ? j : nlohmann::json::object();
}

}  // namespace

Segmenter::Segmenter(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

const ModelInfo& Segmenter::info() const { return impl_->info; }

namespace {

// SegmenterOptions::int8: the model's networks switched to their int8 form with the ranges in its
// metadata ("int8": {"coarse": [...], "refine": [...]}).
void quantize_from_metadata(detail::LoadedModel& lm) {
    auto meta = nlohmann::json::parse(lm.metadata.empty() ? "{}" : lm.metadata, nullptr, false);
    if (!meta.is_object() || !meta.contains("int8") || !meta["int8"].is_object())
        throw std::runtime_error("it holds no int8 ranges; measure them once with `fetalhc model quantize --data HC18_DIR "
                                 "--model MODEL --out MODEL`, or run without --int8");
    const auto& q = meta["int8"];
    auto ranges = [&](const char* key) {
        if (!q.contains(key) || !q[key].is_array()) throw std::runtime_error(std::string("its int8 ranges have no \"") + key + "\" list");
        return q[key].get<std::vector<float>>();
    };
    lm.net->quantize(ranges("coarse"));
    if (lm.refine.net) lm.refine.net->quantize(ranges("refine"));
}

}  // namespace

Expected<std::string> Segmenter::calibrate_int8(const std::string& in, const std::string& out,
                                                const std::vector<cv::Mat>& images, const std::string& note) {
    if (images.empty()) return make_error(ErrorKind::InvalidArgument, "int8 calibration needs at least one image");
    auto seg = load(in, {});
    if (!seg) return seg.error_value();
    try {
        detail::ActivationRecorder rec;
        {
            detail::RecordActivations recording(rec);
            for (const auto& img : images) seg->segment(img);
        }
        const auto& impl = *seg->impl_;
        nlohmann::json q{{"images", images.size()}, {"note", note}};
        auto ranges = [&](const detail::UNet& net) {
            auto it = rec.max.find(net.get());
            if (it == rec.max.end()) throw std::runtime_error("a network never ran on the calibration images");
            return it->second;
        };
        q["coarse"] = ranges(impl.nets.front());
        if (!impl.refiners.empty()) q["refine"] = ranges(impl.refiners.front().net);
        return rewrite_metadata(in, out, nlohmann::json{{"int8", q}}.dump());
    } catch (const std::exception& e) {
        return make_error(ErrorKind::ModelUnavailable, "int8 calibration of '" + in + "': " + e.what());
    }
}

Expected<Segmenter> Segmenter::load(const std::string& path, const SegmenterOptions& opt) {
    // Regular files only: a pipe (a model streamed in) cannot be read twice.
    std::error_code ec;
    if (auto damage = std::filesystem::is_regular_file(path, ec) ? detail::check_model_archive(path) : std::string();
        !damage.empty())
        return make_error(ErrorKind::ModelUnavailable, "cannot load model '" + path + "': " + damage +
                          "; the file is damaged: copy it again (the shipped model is models/fetalhc_unet.pt)");
    try {
        detail::set_threads(opt.threads);
        auto lm = detail::load_model(path);
        auto impl = std::make_shared<Impl>();
        impl->nets = {lm.net};
        if (lm.refine.net) impl->refiners = {lm.refine};
        if (lm.refine.net) {
            impl->info.refine_config = lm.refine.net->cfg;
            impl->info.refine_margin = lm.refine.margin;
        }
        impl->mirror_average = opt.mirror_average;
        if (opt.int8) quantize_from_metadata(lm);
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
        return make_error(ErrorKind::ModelUnavailable, "cannot load model '" + path + "': " + what +
                          " (pass a model written by `fetalhc train`, e.g. models/fetalhc_unet.pt)");
    }
}

Expected<Segmenter> Segmenter::load_ensemble(const std::vector<std::string>& paths, const SegmenterOptions& opt) {
    if (paths.empty()) return make_error(ErrorKind::InvalidArgument, "an ensemble needs at least one model file");
    std::vector<Segmenter> members;
    for (const auto& p : paths) {
        auto m = load(p, opt);
        if (!m) return m.error_value();
        members.push_back(*m);
    }
    const ModelInfo& first = members.front().info();
    auto impl = std::make_shared<Impl>(*members.front().impl_);
    double axis_scale_sum = 0;
    nlohmann::json names = nlohmann::json::array();
    for (size_t i = 0; i < members.size(); ++i) {
        const Impl& m = *members[i].impl_;
        const ModelInfo& mi = m.info;
        if (detail::network_config_json(mi.config) != detail::network_config_json(first.config) ||
            detail::network_config_json(mi.refine_config) != detail::network_config_json(first.refine_config) ||
            mi.refine_margin != first.refine_margin)
            return make_error(ErrorKind::ModelUnavailable, "ensemble: '" + paths[i] + "' has other network settings than '" + paths[0] +
                              "'; members must come from one recipe (e.g. the folds of one k-fold training run)");
        if (i > 0) {
            impl->nets.push_back(m.nets.front());
            if (!m.refiners.empty()) impl->refiners.push_back(m.refiners.front());
            impl->info.parameters += mi.parameters;
        }
        axis_scale_sum += mi.axis_scale;
        names.push_back(paths[i]);
    }
    impl->info.axis_scale = axis_scale_sum / double(members.size());
    impl->info.path = paths.front() + (paths.size() > 1 ? " (+" + std::to_string(paths.size() - 1) + " members)" : "");
    auto meta = metadata_object(first.metadata);
    meta["ensemble_of"] = names;
    meta["axis_scale"] = impl->info.axis_scale;
    impl->info.metadata = meta.dump();
    return Segmenter(impl);
}

std::string int8_problem() { return detail::int8_engine_problem(); }
bool cpu_has_vnni() { return detail::cpu_has_vnni(); }

Expected<std::vector<std::string>> ensemble_model_files(const std::string& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        return make_error(ErrorKind::NotFound, "ensemble folder '" + dir + "' is not a folder; name the folder of a k-fold training run",
                          "ensemble");
    std::vector<std::string> folds, files;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const auto name = e.path().filename().string();
        if (e.is_directory() && name.rfind("fold", 0) == 0 && fs::is_regular_file(e.path() / "model.pt"))
            folds.push_back((e.path() / "model.pt").string());
        else if (e.is_regular_file() && e.path().extension() == ".pt")
            files.push_back(e.path().string());
    }
    auto& out = folds.empty() ? files : folds;
    std::sort(out.begin(), out.end());
    if (out.size() < 2)
        return make_error(ErrorKind::ModelUnavailable, "ensemble folder '" + dir + "' holds " + std::to_string(out.size()) +
                          " model(s); expected fold<i>/model.pt of a finished k-fold run or at least two .pt files");
    return out;
}

Segmentation Segmenter::segment(const cv::Mat& gray8) const {
    CV_Assert(gray8.type() == CV_8UC1 && !gray8.empty());
    const auto& cfg = impl_->info.config;
    Segmentation out;
    out.letterbox = Letterbox::fit(gray8.size(), {cfg.input_width, cfg.input_height});
    cv::Mat input = out.letterbox.apply(gray8, cv::INTER_AREA);

    auto t0 = std::chrono::steady_clock::now();
    c10::InferenceMode guard;
    auto first = detail::forward_members(impl_->nets, input);
    set_net_frame(out, first.probability, cv::Matx23d::eye(), input);
    out.presence = first.presence;
    out.member_disagreement = first.disagreement;
    out.axis_scale = impl_->info.axis_scale;
    out.rival_share = rival_share(first.probability);
    out.rivals = rival_ellipses(first.probability, out.letterbox);
    if (!impl_->refiners.empty()) out = detail::refine_segmentation(out, gray8, impl_->refiners, impl_->mirror_average);
    out.network_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

Segmentation Segmenter::segment_near(const cv::Mat& gray8, const Ellipse& prior) const {
    if (impl_->refiners.empty() || !prior.valid()) return segment(gray8);
    CV_Assert(gray8.type() == CV_8UC1 && !gray8.empty());
    const auto& cfg = impl_->info.config;
    const auto& rc = impl_->refiners.front().net->cfg;
    const cv::Size ns(rc.input_width, rc.input_height);
    Segmentation out;
    out.letterbox = Letterbox::fit(gray8.size(), {cfg.input_width, cfg.input_height});
    out.axis_scale = impl_->info.axis_scale;
    out.refined = true;
    const cv::Matx23d crop_to_net = crop_frame(prior, ns, impl_->refiners.front().margin);
    auto t0 = std::chrono::steady_clock::now();
    c10::InferenceMode guard;
    cv::Mat input = warp_to_frame(gray8, crop_to_net, ns);
    // The second network's own score: is the crop still centred on a head?
    std::vector<detail::UNet> nets;
    for (const auto& r : impl_->refiners) nets.push_back(r.net);
    auto f = detail::forward_members(nets, input, impl_->mirror_average);
    set_net_frame(out, f.probability, crop_to_net, input);
    out.presence = f.presence;
    out.member_disagreement = f.disagreement;
    out.refine_presence = out.presence;
    out.crop_ellipse = prior;
    out.mirror_averaged = impl_->mirror_average;
    out.network_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

Segmentation Segmenter::mirror_look(const Segmentation& s) const {
    const NetFrame& frame = net_frame(s);
    if (impl_->refiners.empty() || !s.refined || s.mirror_averaged || frame.input.empty()) return s;
    auto t0 = std::chrono::steady_clock::now();
    c10::InferenceMode guard;
    std::vector<detail::UNet> nets;
    for (const auto& r : impl_->refiners) nets.push_back(r.net);
    cv::Mat mirrored, back;
    cv::flip(frame.input, mirrored, 1);
    auto m = detail::forward_members(nets, mirrored);
    cv::flip(m.probability, back, 1);
    Segmentation out = s;
    set_net_frame(out, 0.5f * (frame.probability + back), frame.crop_to_net, frame.input);
    out.mirror_averaged = true;
    out.refine_presence = 0.5f * (s.refine_presence + m.presence);
    out.member_disagreement = 0.5 * (s.member_disagreement + m.disagreement);
    out.network_ms = s.network_ms + std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
}

Expected<std::string> Segmenter::rewrite_metadata(const std::string& in, const std::string& out,
                                                  const std::string& json_patch) {
    try {
        auto lm = detail::load_model(in);
        auto meta = nlohmann::json::parse(lm.metadata.empty() ? "{}" : lm.metadata);
        meta.update(nlohmann::json::parse(json_patch));
        detail::save_model(lm.net, out, meta.dump(), &lm.refine);
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Io, "cannot rewrite model '" + in + "' to '" + out + "': " + e.what());
    }
}

Expected<std::string> Segmenter::combine_models(const std::string& coarse, const std::string& two_pass,
                                                const std::string& out) {
    try {
        auto c = detail::load_model(coarse);
        auto t = detail::load_model(two_pass);
        if (c.refine.net)
            return make_error(ErrorKind::ModelUnavailable, "model combine: '" + coarse + "' already has a second pass; name a one-pass model");
        if (!t.refine.net) return make_error(ErrorKind::ModelUnavailable, "model combine: '" + two_pass + "' has no second pass to take");
        if (auto e = detail::split_mismatch("'" + coarse + "'", c.metadata, "'" + two_pass + "'", t.metadata); !e.empty())
            return make_error(ErrorKind::ModelUnavailable, "model combine: " + e);
        auto meta = metadata_object(t.metadata);
        meta["coarse_model"] = coarse;
        meta.erase("int8");  // ranges of other weights: `fetalhc model quantize` measures the new ones
        detail::save_model(c.net, out, meta.dump(), &t.refine);
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Io, std::string("model combine: ") + e.what());
    }
}

Expected<std::string> Segmenter::average_models(const std::vector<std::string>& in, const std::string& out) {
    if (in.empty()) return make_error(ErrorKind::InvalidArgument, "model average: name at least one input model");
    try {
        auto first = detail::load_model(in[0]);
        if (first.refine.net)
            return make_error(ErrorKind::ModelUnavailable,
                              "model average: '" + in[0] + "' is a two-pass model; average single-pass checkpoints");
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
                return make_error(ErrorKind::ModelUnavailable, "model average: '" + in[i] + "' has a different network config from '" + in[0] + "'");
            const std::string meta_i = ar.try_read("fetalhc_metadata", meta_v) && meta_v.isString() ? meta_v.toStringRef() : "";
            if (auto e = detail::split_mismatch("'" + in[0] + "'", first.metadata, "'" + in[i] + "'", meta_i); !e.empty())
                return make_error(ErrorKind::ModelUnavailable, "model average: " + e);
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
        meta.erase("int8");  // ranges of other weights: `fetalhc model quantize` measures the new ones
        detail::save_model(first.net, out, meta.dump());
        return meta.dump(2);
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Io, std::string("model average: ") + e.what());
    }
}

}  // namespace fetalhc
