// Internal: tensors and losses of the training loop and its validation (LibTorch).
#pragma once

#include "fetalhc/trainer.h"

#include <opencv2/core.hpp>
#include <torch/torch.h>

#include <vector>

namespace fetalhc::training {

// Same-sized single-channel images as a float tensor [N, 1, H, W] (values as they are: 8-bit
// images give 0..255, float images their values).
torch::Tensor to_tensor(const std::vector<cv::Mat>& mats);

// 1 - soft Dice per sample, averaged with `weight` [N] (0 = sample left out: no head in view).
torch::Tensor soft_dice_loss(const torch::Tensor& logits, const torch::Tensor& target, const torch::Tensor& weight);

// Per-pixel BCE weights 1 + loss_boundary * (max - min of the target over a (2 band + 1)^2
// window): pixels within `boundary_band` pixels (at the network input size, where the logits are
// compared) of the mask outline, where the ellipse fit reads its points, count more. An undefined
// tensor (plain BCE) when loss_boundary or boundary_band is 0.
torch::Tensor boundary_weights(const torch::Tensor& target, const TrainConfig& c);

// The learning rate at optimizer step `step` of `total`: linear warm-up over warmup_steps, then
// the schedule (cosine down to 1% of learning_rate, constant, or step_gamma from 2/3 on).
double lr_at(const TrainConfig& c, long long step, long long total);

}  // namespace fetalhc::training
