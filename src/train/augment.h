// Internal: the training augmentation, pure OpenCV (no LibTorch), so that it is tested on its own
// (tests/test_augment.cpp).
//
//   std::mt19937 rng(seed);
//   cv::RNG noise(seed);
//   fetalhc::training::Augmenter aug(cfg.augment, {192, 128}, rng, noise);
//   cv::Mat img, mask;
//   float presence = aug.make(sample, img, mask);   // coarse stage; make_crop for the refine stage
//
// Outputs are in the network frame at `net`: the image CV_32F in [0, 1] (0 = black surround), the
// mask CV_32F in [0, 1] moved by the same warp as the image, and the presence label (1 when the
// warped mask shows a head, more than 4 pixels' worth; 0 otherwise, e.g. a negative sample).
// The same seeds give the same outputs. Thread safety: one Augmenter (and its generators) per thread.
#pragma once

#include "data.h"

#include "fetalhc/ellipse.h"
#include "fetalhc/trainer.h"

#include <opencv2/core.hpp>

#include <random>

namespace fetalhc::training {

class Augmenter {
public:
    // `rng` draws every choice (flips, angles, scales, shifts, photometric settings); `noise_rng`
    // fills the additive noise images (the loop passes cv::theRNG(), seeded per epoch). Both are
    // referenced, not copied.
    Augmenter(const AugmentConfig& a, cv::Size net, std::mt19937& rng, cv::RNG& noise_rng);

    // Coarse stage: the whole image (sample.base) warped into the network frame, then photometric().
    float make(const Sample& s, cv::Mat& img_out, cv::Mat& mask_out);

    // Refine stage: the head-centred crop (crop_frame with `margin`) around crop_ellipse(s.ref),
    // mirrored within the crop frame with probabilities flip_horizontal / flip_vertical, warped
    // from sample.full / full_mask, then photometric().
    float make_crop(const Sample& s, double margin, cv::Mat& img_out, cv::Mat& mask_out);

    // The warp of make(): base pixels -> network pixels,
    //   p_net = c_net + t + zoom * R(theta) * F * (p_base - c_base)
    // with c the centres, F the flips (each with its probability), theta a quarter turn (1 to 3,
    // with probability rotate90) plus U[-rotate_degrees, rotate_degrees], zoom the letterbox zoom
    // of the (turned) base times U[scale_min, scale_max], t ~ U[-translate, translate] x net size.
    // A negative sample (probability negative_probability) zooms a further U[1.5, 3] and shifts by
    // U[0.8, 1.5] x net size in a random direction, to push the head out of view.
    struct Frame {
        cv::Matx23d base_to_net;
        double zoom = 1;            // network pixels per base pixel
        int quarter_turns = 0;      // 0..3
        bool flip_x = false, flip_y = false, negative = false;
    };
    Frame draw_frame(const Sample& s);

    // The ellipse a refine crop is drawn around: `ref` with its centre shifted by U[0, translate]
    // semi-major axes in a direction U[0, 2 pi), both axes scaled by k ~ U[scale_min, scale_max] and
    // b by a further U[0.95, 1.05] (never above a), the angle turned by U[-rotate_degrees,
    // rotate_degrees] plus a half turn with probability rotate90. A wide crop (probability
    // wide_crop_probability), as if the first pass had taken the head with its surroundings:
    // shift up to wide_translate semi-major axes, k = exp(U[ln scale_max, ln wide_scale_max]).
    struct CropEllipse {
        Ellipse ellipse;
        bool wide = false;
    };
    CropEllipse crop_ellipse(const Ellipse& ref);

    // In place on a warped 8-bit image: Gaussian blur (probability blur_probability, sigma
    // U[0, blur_sigma_max] original pixels; net_per_orig converts to network pixels), gamma
    // exp(U[-contrast_gamma, contrast_gamma]), brightness U[brightness_min, brightness_max], additive
    // Gaussian noise (sd noise_std x U[0, 1]) on the sector only (not on black pixels), clamped to
    // [0, 1]. img becomes CV_32F. Returns presence_of(mask).
    float photometric(cv::Mat& img, const cv::Mat& mask, double net_per_orig);

    static float presence_of(const cv::Mat& mask);

private:
    double uni(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng_); }
    bool chance(double p) { return uni(0, 1) < p; }

    const AugmentConfig& a_;
    cv::Size net_;
    std::mt19937& rng_;
    cv::RNG& noise_rng_;
};

}  // namespace fetalhc::training
