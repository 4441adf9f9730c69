// Tensors and losses of the training loop (see loss.h).
#include "loss.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace fetalhc::training {

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

torch::Tensor boundary_weights(const torch::Tensor& target, const TrainConfig& c) {
    if (c.loss_boundary <= 0 || c.boundary_band <= 0) return {};  // undefined: unweighted BCE
    const long k = 2L * c.boundary_band + 1;
    auto hi = torch::max_pool2d(target, {k, k}, {1, 1}, {c.boundary_band, c.boundary_band});
    auto lo = -torch::max_pool2d(-target, {k, k}, {1, 1}, {c.boundary_band, c.boundary_band});
    return 1 + c.loss_boundary * (hi - lo);
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

}  // namespace fetalhc::training
