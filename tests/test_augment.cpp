// The training augmentation (src/train/augment.h), tested without LibTorch: this target links the
// library and OpenCV only, and includes no torch header.
//
// The synthetic sample is a head whose image is 200 x its mask (black around it), so that any warp
// that moves one with the other keeps img x 255 = 200 x mask up to interpolation rounding
// (2 grey levels: the base image is rounded to 8 bits once, the warped image once more).
#include "train/augment.h"

#include "geometry.h"

#include "fetalhc/ellipse.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <cmath>

using namespace fetalhc;
using fetalhc::training::Augmenter;
using fetalhc::training::Sample;

namespace {

const cv::Size kNet(64, 48);
const Ellipse kHead{125, 65, 40, 28, 0.4};  // off the image centre, so that flips and turns move it

// A 200x150 scan as load_sample would hold it for kNet (base at 1.5x the letterbox scale).
Sample synthetic_sample() {
    const cv::Size full(200, 150);
    Sample s;
    s.full_mask = rasterize(kHead, full);
    s.full = s.full_mask * (200.0 / 255);
    const double k = training::kBaseOversample * std::min(double(kNet.width) / full.width, double(kNet.height) / full.height);
    const cv::Size bs(int(std::lround(full.width * k)), int(std::lround(full.height * k)));
    s.base = resize_area(s.full, bs);
    cv::Mat mf;
    s.full_mask.convertTo(mf, CV_32F, 1.0 / 255);
    s.base_mask = resize_area(mf, bs);
    s.base_scale = double(bs.width) / full.width;
    s.ref = kHead;
    return s;
}

// No randomness at all: the identity placement of the letterboxed image.
AugmentConfig still() {
    AugmentConfig a;
    a.flip_horizontal = a.flip_vertical = a.rotate90 = 0;
    a.brightness_min = a.brightness_max = 1;
    a.blur_probability = 0;
    a.rotate_degrees = 0;
    a.scale_min = a.scale_max = 1;
    a.translate = 0;
    a.contrast_gamma = 0;
    a.noise_std = 0;
    a.negative_probability = 0;
    return a;
}

cv::Point2d centroid(const cv::Mat& m) {
    const cv::Moments mo = cv::moments(m);
    return {mo.m10 / mo.m00, mo.m01 / mo.m00};
}

// The largest difference between the image and 200 x the mask, in grey levels.
double image_mask_mismatch(const cv::Mat& img01, const cv::Mat& mask) {
    return cv::norm(img01 * 255.0, mask * 200.0, cv::NORM_INF);
}

struct Drawn {
    cv::Mat img, mask;
    float presence = 0;
};

Drawn draw(const AugmentConfig& a, unsigned seed, bool crop = false, double margin = 1.2) {
    static const Sample s = synthetic_sample();
    std::mt19937 rng(seed);
    cv::RNG noise(seed);
    Augmenter aug(a, kNet, rng, noise);
    Drawn d;
    d.presence = crop ? aug.make_crop(s, margin, d.img, d.mask) : aug.make(s, d.img, d.mask);
    return d;
}

}  // namespace

TEST(Augment, StillConfigCentresTheLetterboxedImage) {
    const Drawn d = draw(still(), 1);
    ASSERT_EQ(d.img.size(), kNet);
    ASSERT_EQ(d.img.type(), CV_32F);
    ASSERT_EQ(d.mask.type(), CV_32F);
    EXPECT_EQ(d.presence, 1.0f);
    EXPECT_LE(image_mask_mismatch(d.img, d.mask), 2.0);
    // The head's centre goes where the letterbox puts it (to a fraction of a pixel).
    const Letterbox lb = Letterbox::fit({200, 150}, kNet);
    const cv::Point2d c = centroid(d.mask), want = lb.to_net({kHead.cx, kHead.cy});
    EXPECT_NEAR(c.x, want.x, 0.5);
    EXPECT_NEAR(c.y, want.y, 0.5);
}

// Flips and turns warp the mask with the image: the head moves, the two stay in register.
TEST(Augment, FlipsAndTurnsMoveTheMaskWithTheImage) {
    const cv::Point2d plain = centroid(draw(still(), 1).mask);
    const double cx = (kNet.width - 1) / 2.0, cy = (kNet.height - 1) / 2.0;
    AugmentConfig fh = still(), fv = still(), half = still();
    fh.flip_horizontal = 1;
    fv.flip_vertical = 1;
    half.rotate90 = 1;
    const Drawn h = draw(fh, 1), v = draw(fv, 1);
    EXPECT_LE(image_mask_mismatch(h.img, h.mask), 2.0);
    EXPECT_LE(image_mask_mismatch(v.img, v.mask), 2.0);
    EXPECT_NEAR(centroid(h.mask).x, 2 * cx - plain.x, 0.5);  // mirrored about the frame's centre line
    EXPECT_NEAR(centroid(h.mask).y, plain.y, 0.5);
    EXPECT_NEAR(centroid(v.mask).x, plain.x, 0.5);
    EXPECT_NEAR(centroid(v.mask).y, 2 * cy - plain.y, 0.5);
    int half_turns = 0;
    const Sample s = synthetic_sample();
    for (unsigned seed = 1; seed <= 30; ++seed) {
        std::mt19937 rng(seed);
        cv::RNG noise(seed);
        const Augmenter::Frame f = Augmenter(half, kNet, rng, noise).draw_frame(s);
        ASSERT_GE(f.quarter_turns, 1);
        const Drawn d = draw(half, seed);
        EXPECT_LE(image_mask_mismatch(d.img, d.mask), 2.0) << seed;
        // Wherever the head went, it is where the drawn warp sends the base mask's centre.
        const cv::Point2d cb = centroid(s.base_mask), c = centroid(d.mask);
        const cv::Matx23d& M = f.base_to_net;
        EXPECT_NEAR(c.x, M(0, 0) * cb.x + M(0, 1) * cb.y + M(0, 2), 0.5) << seed;
        EXPECT_NEAR(c.y, M(1, 0) * cb.x + M(1, 1) * cb.y + M(1, 2), 0.5) << seed;
        if (f.quarter_turns == 2) {
            ++half_turns;
            EXPECT_NEAR(c.x, 2 * cx - plain.x, 0.5) << seed;
            EXPECT_NEAR(c.y, 2 * cy - plain.y, 0.5) << seed;
        }
    }
    EXPECT_GT(half_turns, 0);
}

// Every setting at once (turns, flips, small angles, zoom, shift): image and mask stay in register.
TEST(Augment, RandomGeometryKeepsImageAndMaskInRegister) {
    AugmentConfig a = still();
    a.flip_horizontal = a.flip_vertical = a.rotate90 = 0.5;
    a.rotate_degrees = 20;
    a.scale_min = 0.8;
    a.scale_max = 1.2;
    a.translate = 0.1;
    for (unsigned seed = 1; seed <= 40; ++seed) {
        const Drawn d = draw(a, seed);
        EXPECT_LE(image_mask_mismatch(d.img, d.mask), 2.0) << seed;
        EXPECT_EQ(d.presence, Augmenter::presence_of(d.mask)) << seed;
    }
}

// Brightness, gamma, blur and noise at their strongest keep the image in [0, 1]; the noise leaves
// the black surround black.
TEST(Augment, PhotometricChangesKeepTheRange) {
    AugmentConfig a;  // the default geometry
    a.brightness_min = 0.3;
    a.brightness_max = 3.0;
    a.contrast_gamma = 1.0;
    a.noise_std = 0.5;
    a.blur_probability = 0.5;
    for (unsigned seed = 1; seed <= 40; ++seed) {
        const Drawn d = draw(a, seed);
        double lo, hi;
        cv::minMaxLoc(d.img, &lo, &hi);
        EXPECT_GE(lo, 0.0) << seed;
        EXPECT_LE(hi, 1.0) << seed;
        EXPECT_GT(hi, 0.0) << seed;
    }
    a.blur_probability = 0;
    std::mt19937 rng(5);
    cv::RNG noise(5);
    Augmenter aug(a, kNet, rng, noise);
    for (int i = 0; i < 20; ++i) {
        cv::Mat img = cv::Mat::zeros(kNet, CV_8U), mask = cv::Mat::zeros(kNet, CV_32F);
        cv::circle(img, {32, 24}, 15, cv::Scalar(180), cv::FILLED);
        const cv::Mat black = img == 0;
        aug.photometric(img, mask, 1.0);
        ASSERT_EQ(img.type(), CV_32F);
        // No noise on the black surround (cv::pow leaves values below 1e-18 there, not grey levels).
        EXPECT_LT(cv::norm(img, cv::NORM_INF, black), 1e-6) << i;
        EXPECT_GT(cv::norm(img, cv::NORM_INF), 0.0);
    }
}

// A negative sample zooms into the background and pushes the head out: its label follows what the
// warped mask shows, which is no head at all in most draws.
TEST(Augment, NegativeSamplesHaveNoHead) {
    AugmentConfig a = still();
    a.negative_probability = 1;
    int without_head = 0;
    const int n = 200;
    for (unsigned seed = 1; seed <= unsigned(n); ++seed) {
        const Drawn d = draw(a, seed);
        const double head_px = cv::sum(d.mask)[0];
        if (d.presence == 0.0f) {
            EXPECT_LE(head_px, 4.0) << seed;
            ++without_head;
        } else {
            EXPECT_GT(head_px, 4.0) << seed;
        }
    }
    EXPECT_GT(without_head, n / 2);  // 133 of these 200 draws (a large head stays partly in view)
    a.negative_probability = 0;
    for (unsigned seed = 1; seed <= 20; ++seed) EXPECT_EQ(draw(a, seed).presence, 1.0f) << seed;
}

// The refine stage's crop ellipse: centre shift, scale, aspect and angle within their settings.
TEST(Augment, CropJitterStaysInItsRanges) {
    AugmentConfig a;
    a.translate = 0.15;
    a.scale_min = 0.85;
    a.scale_max = 1.2;
    a.rotate_degrees = 12;
    a.rotate90 = 0.5;
    a.wide_crop_probability = 0.3;
    a.wide_scale_max = 2.5;
    a.wide_translate = 0.8;
    std::mt19937 rng(11);
    cv::RNG noise(11);
    Augmenter aug(a, kNet, rng, noise);
    const Ellipse ref{300, 200, 100, 80, 0.7};
    int wide = 0;
    double max_shift = 0;
    const int n = 4000;
    for (int i = 0; i < n; ++i) {
        const auto c = aug.crop_ellipse(ref);
        const Ellipse& e = c.ellipse;
        const double shift = std::hypot(e.cx - ref.cx, e.cy - ref.cy) / ref.a, k = e.a / ref.a;
        EXPECT_LE(shift, (c.wide ? a.wide_translate : a.translate) + 1e-9);
        if (c.wide) {
            ++wide;
            EXPECT_GE(k, a.scale_max - 1e-9);
            EXPECT_LE(k, a.wide_scale_max + 1e-9);
        } else {
            max_shift = std::max(max_shift, shift);
            EXPECT_GE(k, a.scale_min - 1e-9);
            EXPECT_LE(k, a.scale_max + 1e-9);
        }
        EXPECT_LE(e.b, e.a);
        EXPECT_GE(e.b / (k * ref.b), 0.95 - 1e-9);
        EXPECT_LE(e.b / (k * ref.b), 1.05 + 1e-9);
        // The angle turned by at most rotate_degrees, plus a half turn or not.
        const double turn = std::remainder(e.angle - ref.angle, CV_PI);
        EXPECT_LE(std::abs(turn), a.rotate_degrees * CV_PI / 180 + 1e-9);
    }
    EXPECT_NEAR(double(wide) / n, a.wide_crop_probability, 0.03);  // 4 standard errors
    EXPECT_GT(max_shift, 0.9 * a.translate);                       // and the range is used
}

// A crop without jitter centres the head, and the crop warps the mask with the image.
TEST(Augment, CropCentresTheHeadAndKeepsTheMaskInRegister) {
    const Drawn d = draw(still(), 3, true, 1.3);
    EXPECT_EQ(d.presence, 1.0f);
    EXPECT_LE(image_mask_mismatch(d.img, d.mask), 2.0);
    const cv::Point2d c = centroid(d.mask);
    EXPECT_NEAR(c.x, (kNet.width - 1) / 2.0, 0.5);
    EXPECT_NEAR(c.y, (kNet.height - 1) / 2.0, 0.5);
    AugmentConfig a = still();
    a.flip_horizontal = a.flip_vertical = 0.5;
    a.translate = 0.2;
    a.rotate_degrees = 15;
    for (unsigned seed = 1; seed <= 20; ++seed) {
        const Drawn j = draw(a, seed, true);
        EXPECT_LE(image_mask_mismatch(j.img, j.mask), 2.0) << seed;
    }
}

TEST(Augment, SameSeedsGiveTheSameSamples) {
    AugmentConfig a;  // every default setting on, noise included
    a.wide_crop_probability = 0.2;
    for (const bool crop : {false, true}) {
        for (unsigned seed = 1; seed <= 5; ++seed) {
            const Drawn x = draw(a, seed, crop), y = draw(a, seed, crop);
            EXPECT_EQ(cv::norm(x.img, y.img, cv::NORM_INF), 0.0) << seed;
            EXPECT_EQ(cv::norm(x.mask, y.mask, cv::NORM_INF), 0.0) << seed;
            EXPECT_EQ(x.presence, y.presence);
        }
        EXPECT_GT(cv::norm(draw(a, 1, crop).img, draw(a, 2, crop).img, cv::NORM_INF), 0.0);
    }
}
