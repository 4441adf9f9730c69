// Helpers shared by the HTTP service tests (test_routes.cpp: handlers called directly;
// test_server.cpp: the real server on a loopback port): temporary folders, synthetic scans.
#pragma once

#include "fetalhc/ellipse.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace fetalhc::test {

inline const std::string kModel = FETALHC_DEFAULT_MODEL;
constexpr double kPixelMm = 0.15;
// The head drawn in the synthetic scan (px).
inline const Ellipse kHead{402.0, 268.0, 170.0, 130.0, 0.45};

inline std::filesystem::path temp_dir(const std::string& tag) {
    static std::mt19937_64 rng{std::random_device{}()};
    std::filesystem::path p =
        std::filesystem::temp_directory_path() / ("fetalhc_server_test_" + tag + "_" + std::to_string(rng()));
    std::filesystem::create_directories(p);
    return p;
}

inline std::string png(const cv::Mat& img) {
    std::vector<unsigned char> b;
    cv::imencode(".png", img, b);
    return std::string(b.begin(), b.end());
}

// A head-like scan: dark speckled background, a bright speckled skull ring along kHead, a faint
// textured brain inside.
inline std::string synthetic_scan(unsigned seed = 7) {
    cv::Mat img(540, 800, CV_8U);
    cv::RNG rng(seed);
    rng.fill(img, cv::RNG::UNIFORM, 0, 30);
    cv::Mat inside = cv::Mat::zeros(img.size(), CV_8U), ring = inside.clone();
    const cv::Size axes(int(kHead.a), int(kHead.b));
    const double deg = kHead.angle * 180 / CV_PI;
    cv::ellipse(inside, {int(kHead.cx), int(kHead.cy)}, axes, deg, 0, 360, 255, cv::FILLED);
    cv::ellipse(ring, {int(kHead.cx), int(kHead.cy)}, axes, deg, 0, 360, 255, 9);
    cv::Mat tex(img.size(), CV_8U);
    rng.fill(tex, cv::RNG::UNIFORM, 30, 80);
    tex.copyTo(img, inside);
    rng.fill(tex, cv::RNG::UNIFORM, 170, 255);
    tex.copyTo(img, ring);
    cv::GaussianBlur(img, img, {3, 3}, 0.8);
    return png(img);
}

// An all-black frame: nothing the network takes for a head.
inline std::string blank_scan() { return png(cv::Mat::zeros(540, 800, CV_8U)); }

}  // namespace fetalhc::test
