// Training augmentation (see augment.h). The order of the random draws is part of a run's
// reproducibility: change it and a config no longer trains the same weights from the same seed.
#include "augment.h"

#include "geometry.h"

#include <opencv2/imgproc.hpp>

#include <cmath>

namespace fetalhc::training {

Augmenter::Augmenter(const AugmentConfig& a, cv::Size net, std::mt19937& rng, cv::RNG& noise_rng)
    : a_(a), net_(net), rng_(rng), noise_rng_(noise_rng) {}

Augmenter::Frame Augmenter::draw_frame(const Sample& s) {
    Frame f;
    f.quarter_turns = chance(a_.rotate90) ? 1 + int(uni(0, 3)) % 3 : 0;
    f.flip_x = chance(a_.flip_horizontal);
    f.flip_y = chance(a_.flip_vertical);
    const double theta = f.quarter_turns * CV_PI / 2 + uni(-a_.rotate_degrees, a_.rotate_degrees) * CV_PI / 180;
    const bool swapped = f.quarter_turns % 2 == 1;
    const double bw = swapped ? s.base.rows : s.base.cols, bh = swapped ? s.base.cols : s.base.rows;
    f.zoom = std::min(net_.width / bw, net_.height / bh) * uni(a_.scale_min, a_.scale_max);
    double tx = uni(-a_.translate, a_.translate) * net_.width, ty = uni(-a_.translate, a_.translate) * net_.height;
    f.negative = chance(a_.negative_probability);
    if (f.negative) {
        // Zoom into the background and push the head out of view.
        f.zoom *= uni(1.5, 3.0);
        const double ang = uni(0, 2 * CV_PI);
        tx = std::cos(ang) * net_.width * uni(0.8, 1.5);
        ty = std::sin(ang) * net_.height * uni(0.8, 1.5);
    }
    const double c = std::cos(theta), sn = std::sin(theta), z = f.zoom;
    const double fx = f.flip_x ? -1 : 1, fy = f.flip_y ? -1 : 1;
    cv::Matx23d M(z * c * fx, -z * sn * fy, 0, z * sn * fx, z * c * fy, 0);
    const cv::Point2d cb((s.base.cols - 1) / 2.0, (s.base.rows - 1) / 2.0), cn((net_.width - 1) / 2.0, (net_.height - 1) / 2.0);
    M(0, 2) = cn.x + tx - (M(0, 0) * cb.x + M(0, 1) * cb.y);
    M(1, 2) = cn.y + ty - (M(1, 0) * cb.x + M(1, 1) * cb.y);
    f.base_to_net = M;
    return f;
}

float Augmenter::make(const Sample& s, cv::Mat& img_out, cv::Mat& mask_out) {
    const Frame f = draw_frame(s);
    cv::warpAffine(s.base, img_out, f.base_to_net, net_, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
    cv::warpAffine(s.base_mask, mask_out, f.base_to_net, net_, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
    return photometric(img_out, mask_out, f.zoom * s.base_scale);
}

Augmenter::CropEllipse Augmenter::crop_ellipse(const Ellipse& ref) {
    CropEllipse out;
    Ellipse& e = out.ellipse;
    e = ref;
    out.wide = a_.wide_crop_probability > 0 && chance(a_.wide_crop_probability);
    const double shift = uni(0, out.wide ? a_.wide_translate : a_.translate) * e.a, dir = uni(0, 2 * CV_PI);
    e.cx += shift * std::cos(dir);
    e.cy += shift * std::sin(dir);
    const double k = out.wide ? std::exp(uni(std::log(a_.scale_max), std::log(a_.wide_scale_max))) : uni(a_.scale_min, a_.scale_max);
    e.a *= k;
    e.b *= k * uni(0.95, 1.05);
    if (e.b > e.a) e.b = e.a;
    e.angle += uni(-a_.rotate_degrees, a_.rotate_degrees) * CV_PI / 180 + (chance(a_.rotate90) ? CV_PI : 0);
    return out;
}

float Augmenter::make_crop(const Sample& s, double margin, cv::Mat& img_out, cv::Mat& mask_out) {
    cv::Matx23d A = crop_frame(crop_ellipse(s.ref).ellipse, net_, margin);
    if (chance(a_.flip_horizontal))  // mirror about the crop's vertical centre line
        for (int c = 0; c < 3; ++c) A(0, c) = (c == 2 ? net_.width - 1 : 0) - A(0, c);
    if (chance(a_.flip_vertical))
        for (int c = 0; c < 3; ++c) A(1, c) = (c == 2 ? net_.height - 1 : 0) - A(1, c);
    img_out = warp_to_frame(s.full, A, net_);
    warp_to_frame(s.full_mask, A, net_).convertTo(mask_out, CV_32F, 1.0 / 255);
    return photometric(img_out, mask_out, frame_zoom(A));
}

float Augmenter::photometric(cv::Mat& img, const cv::Mat& mask, double net_per_orig) {
    cv::Mat f;
    img.convertTo(f, CV_32F, 1.0 / 255);
    const double sigma = chance(a_.blur_probability) ? uni(0, a_.blur_sigma_max) * net_per_orig : 0;
    if (sigma > 0.3) cv::GaussianBlur(f, f, {0, 0}, sigma);
    if (a_.contrast_gamma > 0) cv::pow(f, std::exp(uni(-a_.contrast_gamma, a_.contrast_gamma)), f);
    f *= uni(a_.brightness_min, a_.brightness_max);
    if (a_.noise_std > 0) {
        cv::Mat noise(f.size(), CV_32F);
        // As cv::randn does, from noise_rng_ instead of cv::theRNG().
        noise_rng_.fill(noise, cv::RNG::NORMAL, 0.0, a_.noise_std * uni(0, 1));
        const cv::Mat sector = img > 0;  // no noise in the black surround
        cv::add(f, noise, f, sector);
    }
    cv::min(cv::max(f, 0.0), 1.0, img);
    return presence_of(mask);
}

float Augmenter::presence_of(const cv::Mat& mask) { return cv::sum(mask)[0] > 4.0 ? 1.0f : 0.0f; }

}  // namespace fetalhc::training
