// Training loop for the segmentation network (LibTorch). See fetalhc/trainer.h.
#include "fetalhc/trainer.h"

#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "network.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace fs = std::filesystem;
using nlohmann::json;

namespace fetalhc {
namespace {

using Clock = std::chrono::steady_clock;

// ---- configuration ---------------------------------------------------------------------------

#define FETALHC_FIELDS_AUG(X) \
    X(flip_horizontal) X(flip_vertical) X(rotate90) X(brightness_min) X(brightness_max) X(blur_sigma_max) \
    X(blur_probability) X(rotate_degrees) X(scale_min) X(scale_max) X(translate) X(contrast_gamma) X(noise_std) \
    X(negative_probability) X(wide_crop_probability) X(wide_scale_max) X(wide_translate)
#define FETALHC_FIELDS_TRAIN(X) \
    X(resize_mode) X(epochs) X(steps_per_epoch) X(validation_steps) X(batch_size) X(optimizer) X(learning_rate) \
    X(schedule) X(warmup_steps) X(step_gamma) X(momentum) X(weight_decay) X(loss_bce) X(loss_dice) X(loss_presence) \
    X(loss_boundary) X(boundary_band) X(ema_decay) X(validation_fraction) X(split_salt) X(seed) X(threads) X(init_weights) X(stage) X(coarse_model) X(crop_margin)
#define FETALHC_FIELDS_NET(X) X(input_width) X(input_height) X(base_channels) X(depth) X(max_channels) X(stem_stride)

json config_to_json(const TrainConfig& c) {
    json j, a, n;
#define X(f) j[#f] = c.f;
    FETALHC_FIELDS_TRAIN(X)
#undef X
#define X(f) a[#f] = c.augment.f;
    FETALHC_FIELDS_AUG(X)
#undef X
#define X(f) n[#f] = c.network.f;
    FETALHC_FIELDS_NET(X)
#undef X
    j["augment"] = a;
    j["network"] = n;
    return j;
}

// Reads known keys; an unknown key is an error (a typo would otherwise be ignored silently).
std::string config_from_json(const json& j, TrainConfig& c) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& k = it.key();
        bool known = k == "augment" || k == "network" || k == "comment";
#define X(f) known |= k == #f;
        FETALHC_FIELDS_TRAIN(X)
#undef X
        if (!known) return "unknown key '" + k + "'";
#define X(f) if (k == #f) it->get_to(c.f);
        FETALHC_FIELDS_TRAIN(X)
#undef X
    }
    if (j.contains("augment")) {
        for (auto it = j["augment"].begin(); it != j["augment"].end(); ++it) {
            bool known = false;
#define X(f) if (it.key() == #f) it->get_to(c.augment.f), known = true;
            FETALHC_FIELDS_AUG(X)
#undef X
            if (!known) return "unknown key 'augment." + it.key() + "'";
        }
    }
    if (j.contains("network")) {
        for (auto it = j["network"].begin(); it != j["network"].end(); ++it) {
            bool known = false;
#define X(f) if (it.key() == #f) it->get_to(c.network.f), known = true;
            FETALHC_FIELDS_NET(X)
#undef X
            if (!known) return "unknown key 'network." + it.key() + "'";
        }
    }
    if (c.optimizer != "adam" && c.optimizer != "sgd") return "optimizer must be \"adam\" or \"sgd\"";
    if (c.schedule != "cosine" && c.schedule != "constant" && c.schedule != "step")
        return "schedule must be \"cosine\", \"constant\" or \"step\"";
    if (c.resize_mode != "letterbox") return "resize_mode must be \"letterbox\"";
    if (c.stage != "coarse" && c.stage != "refine") return "stage must be \"coarse\" or \"refine\"";
    if (c.stage == "refine" && c.coarse_model.empty()) return "stage \"refine\" needs coarse_model (a model from a coarse run)";
    if (c.crop_margin < 1.0 || c.crop_margin > 3.0) return "crop_margin must be in [1, 3]";
    if (c.batch_size < 1 || c.epochs < 1 || c.learning_rate <= 0) return "batch_size, epochs and learning_rate must be positive";
    if (c.validation_fraction <= 0 || c.validation_fraction >= 1) return "validation_fraction must be in (0, 1)";
    if (c.augment.wide_crop_probability < 0 || c.augment.wide_crop_probability > 1 ||
        c.augment.wide_scale_max < c.augment.scale_max || c.augment.wide_translate < 0)
        return "augment: wide_crop_probability must be in [0, 1], wide_scale_max >= scale_max, wide_translate >= 0";
    if (c.loss_boundary < 0 || c.boundary_band < 0 || c.boundary_band > 32)
        return "loss_boundary must be >= 0 and boundary_band in [0, 32] (pixels at the network input size)";
    if (c.ema_decay < 0 || c.ema_decay >= 1) return "ema_decay must be in [0, 1) (0 = no weight averaging)";
    return "";
}

// ---- data ------------------------------------------------------------------------------------

struct Sample {
    std::string filename;
    double pixel_size_mm = 0, hc_mm = 0;
    cv::Mat base, base_mask;  // image and mask resized by base_scale (kBaseOversample x the letterbox scale)
    double base_scale = 1;    // base pixels per original pixel
    cv::Mat full;             // original image (validation, and the refine stage's crops)
    cv::Mat full_mask;        // refine stage: the original mask (CV_8U)
    Ellipse ref;              // refine stage: the reference ellipse (original pixels)
};

constexpr double kBaseOversample = 1.5;  // keep detail for zoom-in augmentation

Expected<std::vector<Sample>> preload(const std::vector<Hc18Record>& recs, cv::Size net, bool keep_full, bool refine) {
    std::vector<Sample> out;
    out.reserve(recs.size());
    for (const auto& r : recs) {
        auto img = load_grayscale(r.image_path);
        if (!img) return make_error(img.error());
        if (r.mask_path.empty()) return make_error("no mask for '" + r.image_path + "' (expected " + r.filename + " _Mask.png beside it)");
        cv::Mat mask = cv::imread(r.mask_path, cv::IMREAD_GRAYSCALE);
        if (mask.empty() || mask.size() != img->size())
            return make_error("mask '" + r.mask_path + "' is unreadable or not the size of its image");
        Sample s;
        s.filename = r.filename;
        s.pixel_size_mm = r.pixel_size_mm;
        s.hc_mm = r.hc_mm;
        const double k = kBaseOversample * std::min(double(net.width) / img->cols, double(net.height) / img->rows);
        const cv::Size bs(std::max(1, int(std::lround(img->cols * k))), std::max(1, int(std::lround(img->rows * k))));
        cv::resize(*img, s.base, bs, 0, 0, cv::INTER_AREA);
        s.base_scale = double(bs.width) / img->cols;
        cv::Mat mf;
        mask.convertTo(mf, CV_32F, 1.0 / 255);
        cv::resize(mf, s.base_mask, bs, 0, 0, cv::INTER_AREA);
        if (keep_full || refine) s.full = *img;
        if (refine) {
            if (!r.has_ellipse)
                return make_error("the refine stage needs reference ellipses: '" + r.filename +
                                  "' has none (training_set_ellipses.csv missing?)");
            s.full_mask = mask;
            s.ref = r.ellipse_px;
        }
        out.push_back(std::move(s));
    }
    return out;
}

struct Augmenter {
    const AugmentConfig& a;
    cv::Size net;
    std::mt19937& rng;

    double uni(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
    bool chance(double p) { return uni(0, 1) < p; }

    // Warps one sample into the network frame. Returns presence (0 when no head is in view).
    float make(const Sample& s, cv::Mat& img_out, cv::Mat& mask_out) {
        const int quarter = chance(a.rotate90) ? 1 + int(uni(0, 3)) % 3 : 0;
        const bool fh = chance(a.flip_horizontal), fv = chance(a.flip_vertical);
        const double theta = quarter * CV_PI / 2 + uni(-a.rotate_degrees, a.rotate_degrees) * CV_PI / 180;
        const bool swapped = quarter % 2 == 1;
        const double bw = swapped ? s.base.rows : s.base.cols, bh = swapped ? s.base.cols : s.base.rows;
        double zoom = std::min(net.width / bw, net.height / bh) * uni(a.scale_min, a.scale_max);
        double tx = uni(-a.translate, a.translate) * net.width, ty = uni(-a.translate, a.translate) * net.height;
        const bool negative = chance(a.negative_probability);
        if (negative) {
            // Zoom into the background and push the head out of view.
            zoom *= uni(1.5, 3.0);
            const double ang = uni(0, 2 * CV_PI);
            tx = std::cos(ang) * net.width * uni(0.8, 1.5);
            ty = std::sin(ang) * net.height * uni(0.8, 1.5);
        }
        // p_net = c_net + t + zoom * R(theta) * F * (p_base - c_base)
        const double c = std::cos(theta), sn = std::sin(theta);
        const double fx = fh ? -1 : 1, fy = fv ? -1 : 1;
        cv::Matx23d M(zoom * c * fx, -zoom * sn * fy, 0, zoom * sn * fx, zoom * c * fy, 0);
        const cv::Point2d cb((s.base.cols - 1) / 2.0, (s.base.rows - 1) / 2.0), cn((net.width - 1) / 2.0, (net.height - 1) / 2.0);
        M(0, 2) = cn.x + tx - (M(0, 0) * cb.x + M(0, 1) * cb.y);
        M(1, 2) = cn.y + ty - (M(1, 0) * cb.x + M(1, 1) * cb.y);
        cv::warpAffine(s.base, img_out, M, net, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
        cv::warpAffine(s.base_mask, mask_out, M, net, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
        return photometric(img_out, mask_out, zoom * s.base_scale);
    }

    // Refine stage: a head-centred crop around a jittered reference ellipse (what the first pass
    // would have found), flipped within the crop frame.
    float make_crop(const Sample& s, double margin, cv::Mat& img_out, cv::Mat& mask_out) {
        Ellipse e = s.ref;
        // Now and then a first pass that took the head together with its surroundings: a crop up to
        // wide_scale_max times too large and off-centre (the head then looks small in it).
        const bool wide = a.wide_crop_probability > 0 && chance(a.wide_crop_probability);
        const double shift = uni(0, wide ? a.wide_translate : a.translate) * e.a, dir = uni(0, 2 * CV_PI);
        e.cx += shift * std::cos(dir);
        e.cy += shift * std::sin(dir);
        const double k = wide ? std::exp(uni(std::log(a.scale_max), std::log(a.wide_scale_max))) : uni(a.scale_min, a.scale_max);
        e.a *= k;
        e.b *= k * uni(0.95, 1.05);
        if (e.b > e.a) e.b = e.a;
        e.angle += uni(-a.rotate_degrees, a.rotate_degrees) * CV_PI / 180 + (chance(a.rotate90) ? CV_PI : 0);
        cv::Matx23d A = crop_frame(e, net, margin);
        if (chance(a.flip_horizontal))  // mirror about the crop's vertical centre line
            for (int c = 0; c < 3; ++c) A(0, c) = (c == 2 ? net.width - 1 : 0) - A(0, c);
        if (chance(a.flip_vertical))
            for (int c = 0; c < 3; ++c) A(1, c) = (c == 2 ? net.height - 1 : 0) - A(1, c);
        img_out = warp_to_frame(s.full, A, net);
        warp_to_frame(s.full_mask, A, net).convertTo(mask_out, CV_32F, 1.0 / 255);
        const double zoom = detail::frame_zoom(A);
        return photometric(img_out, mask_out, zoom);
    }

    // Blur (sigma drawn in original pixels; net_per_orig converts), gamma, brightness, noise.
    float photometric(cv::Mat& img_out, const cv::Mat& mask_out, double net_per_orig) {
        const double zoom = net_per_orig;
        cv::Mat f;
        img_out.convertTo(f, CV_32F, 1.0 / 255);
        // The blur sigma is drawn in original pixels; zoom * base_scale is net pixels per original pixel.
        const double sigma = chance(a.blur_probability) ? uni(0, a.blur_sigma_max) * zoom : 0;
        if (sigma > 0.3) cv::GaussianBlur(f, f, {0, 0}, sigma);
        if (a.contrast_gamma > 0) cv::pow(f, std::exp(uni(-a.contrast_gamma, a.contrast_gamma)), f);
        f *= uni(a.brightness_min, a.brightness_max);
        if (a.noise_std > 0) {
            cv::Mat noise(f.size(), CV_32F);
            cv::randn(noise, 0, a.noise_std * uni(0, 1));
            cv::Mat sector = img_out > 0;  // no noise in the black surround
            cv::add(f, noise, f, sector);
        }
        cv::min(cv::max(f, 0.0), 1.0, img_out);
        return cv::sum(mask_out)[0] > 4.0 ? 1.0f : 0.0f;
    }
};

torch::Tensor to_tensor(const std::vector<cv::Mat>& mats) {
    const int H = mats[0].rows, W = mats[0].cols;
    auto t = torch::empty({long(mats.size()), 1, H, W}, torch::kFloat32);
    for (size_t i = 0; i < mats.size(); ++i) {
        cv::Mat f;
        mats[i].convertTo(f, CV_32F);
        std::memcpy(t[long(i)].data_ptr<float>(), f.ptr<float>(), sizeof(float) * H * W);
    }
    return t;
}

torch::Tensor soft_dice_loss(const torch::Tensor& logits, const torch::Tensor& target, const torch::Tensor& weight) {
    auto p = torch::sigmoid(logits).flatten(1);
    auto g = target.flatten(1);
    auto inter = (p * g).sum(1), denom = p.sum(1) + g.sum(1);
    auto d = 1 - (2 * inter + 1) / (denom + 1);
    return (d * weight).sum() / weight.sum().clamp_min(1);
}

// Per-pixel BCE weights 1 + loss_boundary * (max - min of the target over a (2 band + 1)^2 window): pixels
// within `band` pixels (at the network input size, where the logits are compared) of the mask outline,
// where the ellipse fit reads its points, count more.
torch::Tensor boundary_weights(const torch::Tensor& target, const TrainConfig& c) {
    if (c.loss_boundary <= 0 || c.boundary_band <= 0) return {};  // undefined: unweighted BCE
    const long k = 2L * c.boundary_band + 1;
    auto hi = torch::max_pool2d(target, {k, k}, {1, 1}, {c.boundary_band, c.boundary_band});
    auto lo = -torch::max_pool2d(-target, {k, k}, {1, 1}, {c.boundary_band, c.boundary_band});
    return 1 + c.loss_boundary * (hi - lo);
}

std::string hms(double s) {
    char buf[32];
    const int t = int(s);
    std::snprintf(buf, sizeof buf, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    return buf;
}

double lr_at(const TrainConfig& c, long long step, long long total) {
    double lr = c.learning_rate;
    if (c.warmup_steps > 0 && step < c.warmup_steps) return lr * (step + 1) / c.warmup_steps;
    if (c.schedule == "cosine") {
        const double p = std::clamp(double(step - c.warmup_steps) / std::max<long long>(1, total - c.warmup_steps), 0.0, 1.0);
        return lr * (0.01 + 0.99 * 0.5 * (1 + std::cos(CV_PI * p)));
    }
    if (c.schedule == "step" && step >= total * 2 / 3) return lr * c.step_gamma;
    return lr;
}

struct EvalResult {
    double loss = 0, dice = 0, hc_mad = 0;
    int failed = 0, n = 0;
};

EvalResult evaluate(detail::UNet& net, const std::vector<Sample>& val, const TrainConfig& cfg, int max_batches,
                    double axis_scale) {
    net->eval();
    torch::NoGradGuard ng;
    EvalResult r;
    const cv::Size ns(cfg.network.input_width, cfg.network.input_height);
    const int B = cfg.batch_size;
    double hc_abs = 0, dice_sum = 0, loss_sum = 0;
    int batches = 0;
    for (size_t i0 = 0; i0 < val.size(); i0 += B) {
        if (max_batches > 0 && batches >= max_batches) break;
        ++batches;
        std::vector<cv::Mat> imgs, masks;
        std::vector<Letterbox> lbs;
        for (size_t i = i0; i < std::min(val.size(), i0 + B); ++i) {
            Letterbox lb = Letterbox::fit(val[i].full.size(), ns);
            imgs.push_back(lb.apply(val[i].full, cv::INTER_AREA));
            cv::Mat m = cv::Mat::zeros(ns, CV_32F);
            cv::resize(val[i].base_mask, m(cv::Rect(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height)),
                       lb.resized, 0, 0, cv::INTER_AREA);
            masks.push_back(m);
            lbs.push_back(lb);
        }
        auto x = detail::normalise_batch(to_tensor(imgs).div_(255.0f));
        auto y = to_tensor(masks);
        auto [logits, pres] = net->forward(x);
        auto w = torch::ones({long(imgs.size())});
        auto loss = cfg.loss_bce * torch::binary_cross_entropy_with_logits(logits, y) + cfg.loss_dice * soft_dice_loss(logits, y, w);
        loss_sum += loss.item<double>() * imgs.size();
        auto prob = torch::sigmoid(logits).contiguous();
        auto pp = torch::sigmoid(pres);
        for (size_t k = 0; k < imgs.size(); ++k) {
            const Sample& s = val[i0 + k];
            Segmentation seg;
            seg.letterbox = lbs[k];
            seg.net_probability = cv::Mat(ns, CV_32F);
            std::memcpy(seg.net_probability.data, prob[long(k)].data_ptr<float>(), sizeof(float) * ns.area());
            seg.presence = pp[long(k)].item<float>();
            seg.axis_scale = axis_scale;
            cv::Mat pm = seg.net_probability >= 0.5f, gm = masks[k] >= 0.5f;
            const double a = cv::countNonZero(pm), b = cv::countNonZero(gm);
            cv::Mat both;
            cv::bitwise_and(pm, gm, both);
            dice_sum += a + b > 0 ? 2.0 * cv::countNonZero(both) / (a + b) : 1.0;
            MeasureOptions mo;
            mo.pixel_size_mm = s.pixel_size_mm;
            auto m = measure_from_segmentation(seg, s.full, mo, s.filename);
            if (m) {
                hc_abs += std::abs(m->hc_mm - s.hc_mm);
            } else {
                hc_abs += s.hc_mm;  // a failure counts as missing the whole head
                ++r.failed;
            }
            ++r.n;
        }
    }
    if (r.n) {
        r.loss = loss_sum / r.n;
        r.dice = dice_sum / r.n;
        r.hc_mad = hc_abs / r.n;
    }
    net->train();
    return r;
}

// Refine stage: the whole two-pass pipeline on each validation image. `coarse` holds the frozen
// first pass's segmentation of each image (computed once). Loss and Dice are measured in the crop.
EvalResult evaluate_refine(detail::UNet& net, const std::vector<Sample>& val, const std::vector<Segmentation>& coarse,
                           const TrainConfig& cfg, double axis_scale) {
    net->eval();
    torch::NoGradGuard ng;
    EvalResult r;
    const cv::Size ns(cfg.network.input_width, cfg.network.input_height);
    const detail::Refiner ref{net, cfg.crop_margin};
    double hc_abs = 0, dice_sum = 0, loss_sum = 0;
    int n_crops = 0;
    for (size_t i = 0; i < val.size(); ++i) {
        const Sample& s = val[i];
        Segmentation seg = detail::refine_segmentation(coarse[i], s.full, ref);
        seg.axis_scale = axis_scale;
        if (seg.refined) {
            cv::Mat m;
            warp_to_frame(s.full_mask, seg.crop_to_net, ns).convertTo(m, CV_32F, 1.0 / 255);
            cv::Mat p = cv::min(cv::max(seg.net_probability, 1e-6), 1 - 1e-6), lp, l1p;
            cv::log(p, lp);
            cv::log(1 - p, l1p);
            const double bce = -cv::mean(m.mul(lp) + (1 - m).mul(l1p))[0];
            const double soft = 1 - (2 * cv::sum(p.mul(m))[0] + 1) / (cv::sum(p)[0] + cv::sum(m)[0] + 1);
            loss_sum += cfg.loss_bce * bce + cfg.loss_dice * soft;
            cv::Mat pm = seg.net_probability >= 0.5f, gm = m >= 0.5f, both;
            cv::bitwise_and(pm, gm, both);
            const double a = cv::countNonZero(pm), b = cv::countNonZero(gm);
            dice_sum += a + b > 0 ? 2.0 * cv::countNonZero(both) / (a + b) : 1.0;
            ++n_crops;
        }
        MeasureOptions mo;
        mo.pixel_size_mm = s.pixel_size_mm;
        auto m = measure_from_segmentation(seg, s.full, mo, s.filename);
        if (m) {
            hc_abs += std::abs(m->hc_mm - s.hc_mm);
        } else {
            hc_abs += s.hc_mm;
            ++r.failed;
        }
        ++r.n;
    }
    if (r.n) r.hc_mad = hc_abs / r.n;
    if (n_crops) r.loss = loss_sum / n_crops, r.dice = dice_sum / n_crops;
    r.failed += r.n - n_crops;  // no first-pass ellipse: the second pass could not run
    net->train();
    return r;
}

void write_text(const fs::path& p, const std::string& text) {
    const fs::path tmp = p.string() + ".tmp";
    {
        std::ofstream o(tmp);
        o << text;
    }
    fs::rename(tmp, p);  // atomic: a crash never leaves a half-written file
}

}  // namespace

Expected<TrainConfig> load_train_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) return make_error("cannot open training config '" + path + "'; see configs/default.json");
    TrainConfig c;
    try {
        json j = json::parse(in);
        if (auto e = config_from_json(j, c); !e.empty()) return make_error("training config '" + path + "': " + e);
    } catch (const std::exception& e) {
        return make_error("training config '" + path + "' is not valid JSON: " + e.what());
    }
    return c;
}

std::string to_json(const TrainConfig& cfg) { return config_to_json(cfg).dump(2); }

Expected<TrainReport> train(const TrainConfig& cfg, const TrainOptions& opt) {
    try {
        const auto t_start = Clock::now();
        if (cfg.stage == "refine" && cfg.coarse_model.empty())
            return make_error("stage \"refine\" needs coarse_model (a model file from a coarse run)");
        detail::set_threads(cfg.threads);
        // OpenCV's own worker threads would fight LibTorch's OpenMP threads for the same cores;
        // augmentation is cheap, so it runs on the calling thread.
        cv::setNumThreads(1);
        torch::manual_seed(cfg.seed);
        cv::setRNGSeed(int(cfg.seed));
        fs::create_directories(opt.out_dir);
        const fs::path out(opt.out_dir);

        auto recs = read_hc18_training(opt.data_dir);
        if (!recs) return make_error(recs.error());
        Split split = grouped_split(*recs, cfg.validation_fraction, cfg.split_salt);
        if (opt.limit > 0) {
            if (int(split.train.size()) > opt.limit) split.train.resize(opt.limit);
            if (int(split.validation.size()) > opt.limit) split.validation.resize(opt.limit);
        }
        if (split.train.empty() || split.validation.empty())
            return make_error("the grouped split of '" + opt.data_dir + "' left an empty side (" +
                              std::to_string(split.train.size()) + " train, " + std::to_string(split.validation.size()) +
                              " validation); add examinations or change validation_fraction");
        {
            json sj{{"salt", cfg.split_salt}, {"validation_fraction", cfg.validation_fraction}, {"train", json::array()},
                    {"validation", json::array()}};
            for (auto& r : split.train) sj["train"].push_back(r.filename);
            for (auto& r : split.validation) sj["validation"].push_back(r.filename);
            write_text(out / "split.json", sj.dump(1));
            write_text(out / "config.json", to_json(cfg));
        }
        // The masks' boundary lies slightly outside the reference ellipses; the factor that maps one
        // to the other is measured on the training images and stored with the model.
        double axis_scale = mask_to_reference_scale(split.train);
        if (!std::isfinite(axis_scale)) axis_scale = 1;
        std::fprintf(stderr, "fetalhc train: mask-to-reference axis scale %.5f (training split)\n", axis_scale);
        const cv::Size ns(cfg.network.input_width, cfg.network.input_height);
        std::fprintf(stderr, "fetalhc train: %zu train / %zu validation images (grouped by examination), loading...\n",
                     split.train.size(), split.validation.size());
        const bool refine = cfg.stage == "refine";
        auto train_set = preload(split.train, ns, false, refine);
        if (!train_set) return make_error(train_set.error());
        auto val_set = preload(split.validation, ns, true, refine);
        if (!val_set) return make_error(val_set.error());

        // Refine stage: the frozen first pass, run once over the validation images.
        detail::LoadedModel coarse;
        std::vector<Segmentation> coarse_val;
        if (refine) {
            coarse = detail::load_model(cfg.coarse_model);
            if (coarse.refine.net) return make_error("coarse_model '" + cfg.coarse_model + "' already has a second pass");
            torch::NoGradGuard ng;
            const cv::Size cs(coarse.cfg.input_width, coarse.cfg.input_height);
            for (const auto& s : *val_set) {
                Segmentation seg;
                seg.letterbox = Letterbox::fit(s.full.size(), cs);
                std::tie(seg.net_probability, seg.presence) = detail::forward_one(coarse.net, seg.letterbox.apply(s.full, cv::INTER_AREA));
                coarse_val.push_back(seg);
            }
            std::fprintf(stderr, "fetalhc train: refine stage over the first pass of %s\n", cfg.coarse_model.c_str());
        }

        detail::UNet net(cfg.network);
        if (!cfg.init_weights.empty() && !opt.resume) {
            auto init = detail::load_model(cfg.init_weights);
            // The weights do not depend on the input size, so a refine run may start from a coarse model.
            if (init.cfg.base_channels != cfg.network.base_channels || init.cfg.depth != cfg.network.depth ||
                init.cfg.max_channels != cfg.network.max_channels || init.cfg.stem_stride != cfg.network.stem_stride)
                return make_error("init_weights '" + cfg.init_weights + "' has different channels, depth or stem stride than this run's network");
            detail::copy_weights(*net, *init.net);
            std::fprintf(stderr, "fetalhc train: initialised from %s\n", cfg.init_weights.c_str());
        }
        net->train();
        std::unique_ptr<torch::optim::Optimizer> optim;
        if (cfg.optimizer == "adam")
            optim = std::make_unique<torch::optim::AdamW>(
                net->parameters(),
                torch::optim::AdamWOptions(cfg.learning_rate).betas({cfg.momentum, 0.999}).weight_decay(cfg.weight_decay));
        else
            optim = std::make_unique<torch::optim::SGD>(
                net->parameters(),
                torch::optim::SGDOptions(cfg.learning_rate).momentum(cfg.momentum).weight_decay(cfg.weight_decay).nesterov(true));

        const int steps_per_epoch = cfg.steps_per_epoch > 0 ? cfg.steps_per_epoch
                                                            : int((train_set->size() + cfg.batch_size - 1) / cfg.batch_size);
        const long long total_steps = (long long)steps_per_epoch * cfg.epochs;
        int start_epoch = 0;
        long long step = 0;
        double best = std::numeric_limits<double>::infinity();
        double prior_seconds = 0;
        json history = json::array();

        // Weight averaging: `ema` is what is validated and saved when ema_decay > 0.
        detail::UNet ema{nullptr};
        if (cfg.ema_decay > 0) {
            ema = detail::UNet(cfg.network);
            detail::copy_weights(*ema, *net);
        }
        const fs::path ck_ema = out / "checkpoint_ema.pt";
        const fs::path ck_model = out / "checkpoint_model.pt", ck_optim = out / "checkpoint_optim.pt", ck_state = out / "checkpoint.json";
        if (opt.resume) {
            if (!fs::exists(ck_state))
                return make_error("--resume: no checkpoint in '" + opt.out_dir + "' (checkpoint.json missing); start without --resume");
            std::ifstream in(ck_state);
            json st = json::parse(in);
            start_epoch = st["epoch"];
            step = st["step"];
            best = st["best_hc_mad_mm"].is_null() ? best : st["best_hc_mad_mm"].get<double>();
            history = st["history"];
            prior_seconds = st.value("wall_seconds", 0.0);
            torch::serialize::InputArchive am, ao;
            am.load_from(ck_model.string());
            net->load(am);
            ao.load_from(ck_optim.string());
            optim->load(ao);
            if (ema) {
                if (!fs::exists(ck_ema))
                    return make_error("--resume: '" + opt.out_dir + "' has no checkpoint_ema.pt (the run was started without ema_decay); resume with the same config");
                torch::serialize::InputArchive ae;
                ae.load_from(ck_ema.string());
                ema->load(ae);
            }
            std::fprintf(stderr, "resumed at epoch %d, step %lld\n", start_epoch, step);
        }
        std::fprintf(stderr, "network: %lld parameters, input %dx%d; %d steps/epoch x %d epochs, batch %d, %d threads\n",
                     detail::count_parameters(*net), ns.width, ns.height, steps_per_epoch, cfg.epochs, cfg.batch_size,
                     torch::get_num_threads());

        const bool tty = isatty(fileno(stderr));
        TrainReport rep;
        bool stop = false;
        auto run_start = Clock::now();
        long long run_start_step = step;
        for (int epoch = start_epoch; epoch < cfg.epochs && !stop; ++epoch) {
            std::mt19937 rng(cfg.seed * 1000003u + unsigned(epoch));  // per epoch: identical after a resume
            std::vector<size_t> order(train_set->size());
            std::iota(order.begin(), order.end(), 0);
            std::shuffle(order.begin(), order.end(), rng);
            Augmenter aug{cfg.augment, ns, rng};
            cv::theRNG().state = cfg.seed * 7919ull + epoch;
            double loss_sum = 0, aug_seconds = 0;
            int n_steps = 0;
            size_t cursor = 0;
            for (int s = 0; s < steps_per_epoch; ++s) {
                if (opt.max_steps >= 0 && step >= opt.max_steps) {
                    stop = true;
                    break;
                }
                std::vector<cv::Mat> imgs(cfg.batch_size), masks(cfg.batch_size);
                std::vector<float> pres(cfg.batch_size);
                const auto t_aug = Clock::now();
                for (int b = 0; b < cfg.batch_size; ++b) {
                    if (cursor == order.size()) {
                        std::shuffle(order.begin(), order.end(), rng);
                        cursor = 0;
                    }
                    const Sample& smp = (*train_set)[order[cursor++]];
                    pres[b] = refine ? aug.make_crop(smp, cfg.crop_margin, imgs[b], masks[b]) : aug.make(smp, imgs[b], masks[b]);
                }
                auto x = detail::normalise_batch(to_tensor(imgs));
                auto y = to_tensor(masks);
                aug_seconds += std::chrono::duration<double>(Clock::now() - t_aug).count();
                auto yp = torch::from_blob(pres.data(), {cfg.batch_size}, torch::kFloat32).clone();
                const double lr = lr_at(cfg, step, total_steps);
                for (auto& g : optim->param_groups()) g.options().set_lr(lr);
                optim->zero_grad();
                auto [logits, plog] = net->forward(x);
                auto loss = cfg.loss_bce * torch::binary_cross_entropy_with_logits(logits, y, boundary_weights(y, cfg)) +
                            cfg.loss_dice * soft_dice_loss(logits, y, yp) +
                            cfg.loss_presence * torch::binary_cross_entropy_with_logits(plog, yp);
                loss.backward();
                optim->step();
                if (ema) detail::ema_update(*ema, *net, std::min(cfg.ema_decay, (1.0 + step) / (10.0 + step)));
                const double lv = loss.item<double>();
                if (!std::isfinite(lv))
                    return make_error("training diverged (loss is " + std::to_string(lv) + ") at step " + std::to_string(step) +
                                      "; lower learning_rate in the config");
                loss_sum += lv;
                ++n_steps;
                ++step;
                const double el = std::chrono::duration<double>(Clock::now() - run_start).count();
                const double per = el / std::max<long long>(1, step - run_start_step);
                const long long left = (opt.max_steps >= 0 ? std::min(opt.max_steps, total_steps) : total_steps) - step;
                if (opt.progress && (tty || s + 1 == steps_per_epoch || (s + 1) % std::max(1, steps_per_epoch / 4) == 0)) {
                    const int width = 24, done = int(width * double(s + 1) / steps_per_epoch);
                    std::fprintf(stderr, "%sepoch %d/%d [%s%s] %d/%d loss %.4f lr %.2e %.2f s/step ETA %s%s", tty ? "\r" : "",
                                 epoch + 1, cfg.epochs, std::string(done, '#').c_str(), std::string(width - done, '.').c_str(),
                                 s + 1, steps_per_epoch, loss_sum / n_steps, lr, per, hms(per * std::max(0LL, left)).c_str(),
                                 tty ? "" : "\n");
                }
            }
            if (tty) std::fprintf(stderr, "\n");
            if (n_steps == 0) break;
            const auto t_val = Clock::now();
            auto validate = [&](detail::UNet& m) {
                return refine ? evaluate_refine(m, *val_set, coarse_val, cfg, axis_scale)
                              : evaluate(m, *val_set, cfg, cfg.validation_steps, axis_scale);
            };
            detail::UNet& kept = ema ? ema : net;  // the weights validated and saved
            EvalResult ev = validate(kept);
            // With averaging on, the raw weights are measured too, to show what the average adds.
            const double raw_mad = ema ? validate(net).hc_mad : ev.hc_mad;
            const double val_s = std::chrono::duration<double>(Clock::now() - t_val).count();
            const double wall = prior_seconds + std::chrono::duration<double>(Clock::now() - t_start).count();
            history.push_back({{"epoch", epoch + 1}, {"step", step}, {"train_loss", loss_sum / n_steps},
                               {"val_loss", ev.loss}, {"val_dice", ev.dice}, {"val_hc_mad_mm", ev.hc_mad},
                               {"val_failed", ev.failed}, {"val_images", ev.n}, {"lr", lr_at(cfg, step, total_steps)},
                               {"wall_seconds", wall}});
            if (ema) history.back()["val_hc_mad_mm_raw_weights"] = raw_mad;
            char raw_note[64] = "";
            if (ema) std::snprintf(raw_note, sizeof raw_note, " [averaged weights; raw %.2f mm]", raw_mad);
            std::fprintf(stderr, "epoch %d: train loss %.4f | val loss %.4f Dice %.4f HC MAD %.2f mm (%d failed of %d)%s | %.0f s augment, %.0f s val | %s total\n",
                         epoch + 1, loss_sum / n_steps, ev.loss, ev.dice, ev.hc_mad, ev.failed, ev.n,
                         raw_note, aug_seconds, val_s, hms(wall).c_str());
            if (ev.hc_mad < best) {
                best = ev.hc_mad;
                json meta{{"trained_by", "fetalhc train"}, {"epoch", epoch + 1}, {"step", step},
                          {"val_hc_mad_mm", ev.hc_mad}, {"val_dice_net", ev.dice}, {"val_failed", ev.failed},
                          {"val_images", ev.n}, {"split_salt", cfg.split_salt},
                          {"validation_fraction", cfg.validation_fraction}, {"axis_scale", axis_scale},
                          {"config", config_to_json(cfg)}};
                if (refine) {
                    const detail::Refiner r{kept, cfg.crop_margin};
                    meta["coarse_model"] = cfg.coarse_model;
                    detail::save_model(coarse.net, (out / "model.pt").string(), meta.dump(), &r);
                } else {
                    detail::save_model(kept, (out / "model.pt").string(), meta.dump());
                }
                rep.best_dice = ev.dice;
            }
            // Checkpoint after every epoch: model, optimizer, position, history.
            {
                torch::serialize::OutputArchive am, ao;
                net->save(am);
                am.save_to((out / "checkpoint_model.pt.tmp").string());
                optim->save(ao);
                ao.save_to((out / "checkpoint_optim.pt.tmp").string());
                if (ema) {
                    torch::serialize::OutputArchive ae;
                    ema->save(ae);
                    ae.save_to((out / "checkpoint_ema.pt.tmp").string());
                    fs::rename(out / "checkpoint_ema.pt.tmp", ck_ema);
                }
                fs::rename(out / "checkpoint_model.pt.tmp", ck_model);
                fs::rename(out / "checkpoint_optim.pt.tmp", ck_optim);
                json st{{"epoch", epoch + 1}, {"step", step}, {"best_hc_mad_mm", best}, {"history", history}, {"wall_seconds", wall}};
                write_text(ck_state, st.dump(1));
            }
            rep.epochs_done = epoch + 1;
        }
        rep.model_path = (out / "model.pt").string();
        rep.best_hc_mad_mm = best;
        rep.steps_done = step;
        rep.wall_seconds = prior_seconds + std::chrono::duration<double>(Clock::now() - t_start).count();
        json report{{"model", rep.model_path}, {"best_val_hc_mad_mm", best}, {"epochs_done", rep.epochs_done},
                    {"steps_done", step}, {"wall_seconds", rep.wall_seconds}, {"threads", torch::get_num_threads()},
                    {"parameters", detail::count_parameters(*net)}, {"train_images", train_set->size()},
                    {"validation_images", val_set->size()}, {"config", config_to_json(cfg)}, {"history", history}};
        write_text(out / "report.json", report.dump(2));
        return rep;
    } catch (const std::exception& e) {
        return make_error(std::string("training failed: ") + e.what());
    }
}

}  // namespace fetalhc
