#include "fetalhc/segmenter.h"

#include "network.h"

#include "fetalhc/ellipse.h"

#include <nlohmann/json.hpp>

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

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
    if (interpolation == cv::INTER_AREA)
        resize_area(img, resized).copyTo(roi);
    else
        cv::resize(img, roi, resized, 0, 0, interpolation);
    return canvas;
}

namespace {

// One source pixel's share of one reduced pixel along an axis.
struct AreaTap {
    int src, dst;
    float weight;
};

// Pixel-area weights for reducing n_src pixels to n_dst <= n_src, for reduced pixels d0..d1-1:
// reduced pixel d covers the source span [d s, (d+1) s), s = n_src / n_dst, and each source pixel
// counts by the length it shares with that span, over s. Sorted by dst.
std::vector<AreaTap> area_taps(int n_src, int n_dst, int d0, int d1) {
    const double s = double(n_src) / n_dst;
    std::vector<AreaTap> taps;
    taps.reserve(size_t(d1 - d0) * (size_t(s) + 2));
    for (int d = d0; d < d1; ++d) {
        const double lo = d * s, hi = std::min((d + 1) * s, double(n_src));
        for (int i = int(lo); i < n_src && i < hi; ++i) {
            const double w = std::min(hi, i + 1.0) - std::max(lo, double(i));
            if (w > 1e-9) taps.push_back({i, d, float(w / s)});
        }
    }
    return taps;
}

}  // namespace

cv::Mat resize_area(const cv::Mat& img, cv::Size size, cv::Rect part) {
    if (part.empty()) part = cv::Rect({0, 0}, size);
    CV_Assert((part & cv::Rect({0, 0}, size)) == part);
    // OpenCV's own path is already fast for whole-number factors (and rounds their halves up).
    const bool whole_factors = img.cols % size.width == 0 && img.rows % size.height == 0;
    if (img.type() != CV_8UC1 || size.width > img.cols || size.height > img.rows || whole_factors) {
        cv::Mat full;
        cv::resize(img, full, size, 0, 0, cv::INTER_AREA);
        return full(part).clone();
    }
    // Separable: each reduced row is a weighted sum of source rows (contiguous, vectorised), which
    // is then reduced along x.
    const auto tx = area_taps(img.cols, size.width, part.x, part.x + part.width);
    const auto ty = area_taps(img.rows, size.height, part.y, part.y + part.height);
    const int c0 = tx.front().src, c1 = tx.back().src + 1;  // source columns the part needs
    cv::Mat out(part.size(), CV_8U);
    std::vector<float> rows(size_t(c1 - c0)), line(size_t(part.width));
    size_t t = 0;
    for (int d = part.y; d < part.y + part.height; ++d) {
        std::fill(rows.begin(), rows.end(), 0.f);
        for (; t < ty.size() && ty[t].dst == d; ++t) {
            const uchar* src = img.ptr<uchar>(ty[t].src) + c0;
            const float w = ty[t].weight;
            float* acc = rows.data();
            for (int x = 0; x < c1 - c0; ++x) acc[x] += w * src[x];
        }
        std::fill(line.begin(), line.end(), 0.f);
        for (const AreaTap& h : tx) line[size_t(h.dst - part.x)] += h.weight * rows[size_t(h.src - c0)];
        uchar* o = out.ptr<uchar>(d - part.y);
        for (int x = 0; x < part.width; ++x) o[x] = cv::saturate_cast<uchar>(line[size_t(x)]);
    }
    return out;
}

cv::Matx23d Letterbox::affine() const {
    return {scale_x, 0, 0.5 * scale_x - 0.5 + offset_x, 0, scale_y, 0.5 * scale_y - 0.5 + offset_y};
}

cv::Matx23d crop_frame(const Ellipse& e, cv::Size net, double margin) {
    const double s = std::min(net.width / (2 * e.a * margin), net.height / (2 * e.b * margin));
    const double c = std::cos(e.angle), sn = std::sin(e.angle);
    // crop = centre + s * R(-angle) * (p - c_e)
    cv::Matx23d A(s * c, s * sn, 0, -s * sn, s * c, 0);
    A(0, 2) = (net.width - 1) / 2.0 - (A(0, 0) * e.cx + A(0, 1) * e.cy);
    A(1, 2) = (net.height - 1) / 2.0 - (A(1, 0) * e.cx + A(1, 1) * e.cy);
    return A;
}

cv::Mat warp_to_frame(const cv::Mat& img, const cv::Matx23d& A, cv::Size size) {
    const double zoom = detail::frame_zoom(A);
    cv::Mat src = img;
    cv::Matx23d M = A;
    if (zoom < 1 / 1.5) {
        // Reduce first (area averaging), then map the reduced pixels: p_small = k (p + 0.5) - 0.5.
        const double k = std::min(1.0, 1.5 * zoom);
        const cv::Size small(std::max(1, int(std::lround(img.cols * k))), std::max(1, int(std::lround(img.rows * k))));
        const double kx = double(small.width) / img.cols, ky = double(small.height) / img.rows;
        // A = M' * S where S maps image -> small; M' = A * S^-1.
        for (int r = 0; r < 2; ++r) {
            const double a0 = A(r, 0), a1 = A(r, 1);
            M(r, 0) = a0 / kx;
            M(r, 1) = a1 / ky;
            M(r, 2) = A(r, 2) + a0 * (0.5 / kx - 0.5) + a1 * (0.5 / ky - 0.5);
        }
        // Only the part of the reduced image that the frame samples (its corners mapped back, with
        // a 2-pixel margin for the interpolation) is computed; M is moved to that part's origin.
        cv::Matx23d Mi;
        cv::invertAffineTransform(M, Mi);
        double x0 = 1e300, y0 = 1e300, x1 = -1e300, y1 = -1e300;
        for (const cv::Point2d q : {cv::Point2d(-1, -1), cv::Point2d(size.width, -1), cv::Point2d(-1, size.height),
                                    cv::Point2d(size.width, size.height)}) {
            const double x = Mi(0, 0) * q.x + Mi(0, 1) * q.y + Mi(0, 2), y = Mi(1, 0) * q.x + Mi(1, 1) * q.y + Mi(1, 2);
            x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
        }
        const double lim = 4.0 * (small.width + small.height);  // keeps the casts below in range
        const int px = int(std::floor(std::clamp(x0, -lim, lim))) - 2, py = int(std::floor(std::clamp(y0, -lim, lim))) - 2;
        const int qx = int(std::ceil(std::clamp(x1, -lim, lim))) + 3, qy = int(std::ceil(std::clamp(y1, -lim, lim))) + 3;
        const cv::Rect part = cv::Rect(px, py, qx - px, qy - py) & cv::Rect({0, 0}, small);
        if (part.empty()) return cv::Mat::zeros(size, img.type());
        src = resize_area(img, small, part);
        for (int r = 0; r < 2; ++r) M(r, 2) += M(r, 0) * part.x + M(r, 1) * part.y;
    }
    cv::Mat out;
    cv::warpAffine(src, out, M, size, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
    return out;
}

cv::Mat Segmentation::probability_full() const {
    if (net_probability.empty()) return {};
    if (refined) {
        cv::Mat full;
        cv::warpAffine(net_probability, full, crop_to_net, letterbox.image_size, cv::INTER_LINEAR | cv::WARP_INVERSE_MAP,
                       cv::BORDER_CONSTANT, 0);
        return full;
    }
    const Letterbox& lb = letterbox;
    cv::Mat roi = net_probability(cv::Rect(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height));
    cv::Mat full;
    cv::resize(roi, full, lb.image_size, 0, 0, cv::INTER_LINEAR);
    return full;
}

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
        const auto cm = metadata_object(c.metadata);
        auto meta = metadata_object(t.metadata);
        if (cm.contains("split_salt") && meta.contains("split_salt") &&
            (cm["split_salt"] != meta["split_salt"] || cm.value("validation_fraction", 0.0) != meta.value("validation_fraction", 0.0)))
            return make_error("model combine: '" + coarse + "' and '" + two_pass + "' were trained on different splits");
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
            // Trainer checkpoints (checkpoint_model.pt) hold weights only: they take the first model's config.
            torch::serialize::InputArchive ar;
            ar.load_from(in[i]);
            c10::IValue cfg_v;
            if (ar.try_read("fetalhc_network_config", cfg_v) && cfg_v.isString() &&
                detail::network_config_json(detail::network_config_from_json(cfg_v.toStringRef())) != cfg)
                return make_error("model average: '" + in[i] + "' has a different network config from '" + in[0] + "'");
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
