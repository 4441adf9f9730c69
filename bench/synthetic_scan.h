// The synthetic scan both benchmarks time (bench/bench_pipeline.cpp and `fetalhc bench`): speckle-
// like background and one bright elliptical ring at the centre, from a fixed seed so runs compare.
#pragma once

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

namespace fetalhc_bench {

inline cv::Mat synthetic_scan(int w, int h) {
    cv::Mat img(h, w, CV_8U);
    cv::setRNGSeed(1234);
    cv::randu(img, 10, 70);
    cv::GaussianBlur(img, img, {0, 0}, 1.5);
    cv::ellipse(img, {w / 2, h / 2}, {w / 4, h / 3}, 20, 0, 360, cv::Scalar(230), 6);
    return img;
}

}  // namespace fetalhc_bench
