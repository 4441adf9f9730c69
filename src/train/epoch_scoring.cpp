// The trainer's per-epoch validation (see epoch_scoring.h).
#include "epoch_scoring.h"

#include "geometry.h"
#include "loss.h"
#include "net_frame.h"

#include "fetalhc/measure.h"

#include <opencv2/imgproc.hpp>

#include <cmath>
#include <cstring>

namespace fetalhc::training {

ImageScore score_hc_error(const Segmentation& seg, const Sample& s) {
    MeasureOptions mo;
    mo.pixel_size_mm = s.pixel_size_mm;
    return score_hc(s.filename, s.hc_mm, s.pixel_size_mm, measure_from_segmentation(seg, s.full, mo, s.filename));
}

namespace {

// What the validation images gave, turned into an EvalResult (HC figures by summarize()).
struct Tally {
    double dice = 0, loss = 0;
    std::vector<ImageScore> scores;
    void add_hc(ImageScore score) { scores.push_back(std::move(score)); }
    void finish_hc(EvalResult& r) const {
        const ScoreSummary sum = summarize(scores);
        r.n = sum.images;
        r.failed = sum.failed;
        r.hc_mad = sum.hc_abs_error_mm.mean;
    }
};

// Dice of two maps thresholded at 0.5 (1 when both are empty).
double dice_at_half(const cv::Mat& prob, const cv::Mat& mask) {
    cv::Mat pm = prob >= 0.5f, gm = mask >= 0.5f, both;
    cv::bitwise_and(pm, gm, both);
    const double a = cv::countNonZero(pm), b = cv::countNonZero(gm);
    return a + b > 0 ? 2.0 * cv::countNonZero(both) / (a + b) : 1.0;
}

// Images [i0, i1) letterboxed into the network frame as inference does, with their masks.
struct LetterboxedBatch {
    std::vector<cv::Mat> images, masks;
    std::vector<Letterbox> frames;
};

LetterboxedBatch letterbox_batch(const std::vector<Sample>& val, size_t i0, size_t i1, cv::Size ns) {
    LetterboxedBatch b;
    for (size_t i = i0; i < i1; ++i) {
        const Letterbox lb = Letterbox::fit(val[i].full.size(), ns);
        b.images.push_back(lb.apply(val[i].full, cv::INTER_AREA));
        cv::Mat m = cv::Mat::zeros(ns, CV_32F);
        resize_area(val[i].base_mask, lb.resized).copyTo(m(cv::Rect(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height)));
        b.masks.push_back(m);
        b.frames.push_back(lb);
    }
    return b;
}

// One batch of the coarse validation: loss, then Dice and HC error per image, added to `t`.
void score_coarse_batch(detail::UNet& net, const std::vector<Sample>& val, size_t i0, const TrainConfig& cfg,
                        double axis_scale, Tally& t) {
    const cv::Size ns(cfg.network.input_width, cfg.network.input_height);
    const LetterboxedBatch b = letterbox_batch(val, i0, std::min(val.size(), i0 + size_t(cfg.batch_size)), ns);
    auto x = detail::normalise_batch(to_tensor(b.images).div_(255.0f));
    auto y = to_tensor(b.masks);
    auto [logits, pres] = net->forward(x);
    auto w = torch::ones({long(b.images.size())});
    auto loss = cfg.loss_bce * torch::binary_cross_entropy_with_logits(logits, y) + cfg.loss_dice * soft_dice_loss(logits, y, w);
    t.loss += loss.item<double>() * b.images.size();
    auto prob = torch::sigmoid(logits).contiguous();
    auto pp = torch::sigmoid(pres);
    for (size_t k = 0; k < b.images.size(); ++k) {
        Segmentation seg;
        seg.letterbox = b.frames[k];
        cv::Mat p(ns, CV_32F);
        std::memcpy(p.data, prob[long(k)].data_ptr<float>(), sizeof(float) * ns.area());
        set_net_frame(seg, p);
        seg.presence = pp[long(k)].item<float>();
        seg.axis_scale = axis_scale;
        t.dice += dice_at_half(p, b.masks[k]);
        t.add_hc(score_hc_error(seg, val[i0 + k]));
    }
}

// The training loss of one crop, from probabilities: BCE + soft Dice (their config weights).
double crop_loss(const cv::Mat& prob, const cv::Mat& mask, const TrainConfig& cfg) {
    cv::Mat p = cv::min(cv::max(prob, 1e-6), 1 - 1e-6), lp, l1p;
    cv::log(p, lp);
    cv::log(1 - p, l1p);
    const double bce = -cv::mean(mask.mul(lp) + (1 - mask).mul(l1p))[0];
    const double soft = 1 - (2 * cv::sum(p.mul(mask))[0] + 1) / (cv::sum(p)[0] + cv::sum(mask)[0] + 1);
    return cfg.loss_bce * bce + cfg.loss_dice * soft;
}

}  // namespace

EvalResult validate_coarse(detail::UNet& net, const std::vector<Sample>& val, const TrainConfig& cfg, double axis_scale) {
    net->eval();
    torch::NoGradGuard ng;
    Tally t;
    int batches = 0;
    for (size_t i0 = 0; i0 < val.size(); i0 += cfg.batch_size) {
        if (cfg.validation_steps > 0 && batches >= cfg.validation_steps) break;
        ++batches;
        score_coarse_batch(net, val, i0, cfg, axis_scale, t);
    }
    EvalResult r;
    t.finish_hc(r);
    if (r.n) {
        r.loss = t.loss / r.n;
        r.dice = t.dice / r.n;
    }
    net->train();
    return r;
}

EvalResult validate_refine(detail::UNet& net, const std::vector<Sample>& val, const std::vector<Segmentation>& first_pass,
                           const TrainConfig& cfg, double axis_scale) {
    net->eval();
    torch::NoGradGuard ng;
    const cv::Size ns(cfg.network.input_width, cfg.network.input_height);
    const detail::Refiner ref{net, cfg.crop_margin};
    Tally t;
    int crops = 0;
    for (size_t i = 0; i < val.size(); ++i) {
        const Sample& s = val[i];
        Segmentation seg = detail::refine_segmentation(first_pass[i], s.full, ref);
        seg.axis_scale = axis_scale;
        if (seg.refined) {
            cv::Mat m;
            const NetFrame& crop = net_frame(seg);
            warp_to_frame(s.full_mask, crop.crop_to_net, ns).convertTo(m, CV_32F, 1.0 / 255);
            t.loss += crop_loss(crop.probability, m, cfg);
            t.dice += dice_at_half(crop.probability, m);
            ++crops;
        }
        t.add_hc(score_hc_error(seg, s));
    }
    EvalResult r;
    t.finish_hc(r);
    r.failed += r.n - crops;  // no first-pass ellipse: the second pass could not run
    if (crops) r.loss = t.loss / crops, r.dice = t.dice / crops;
    net->train();
    return r;
}

std::vector<Segmentation> first_pass_segmentations(detail::UNet& coarse, const std::vector<Sample>& images) {
    torch::NoGradGuard ng;
    const cv::Size cs(coarse->cfg.input_width, coarse->cfg.input_height);
    std::vector<Segmentation> out;
    for (const auto& s : images) {
        Segmentation seg;
        seg.letterbox = Letterbox::fit(s.full.size(), cs);
        auto [probability, presence] = detail::forward_one(coarse, seg.letterbox.apply(s.full, cv::INTER_AREA));
        set_net_frame(seg, probability);
        seg.presence = presence;
        out.push_back(seg);
    }
    return out;
}

}  // namespace fetalhc::training
