// Internal: the review signals of a measurement (ReviewSignals in fetalhc/measure.h), pure OpenCV.
//
//   double r = fetalhc::rival_share(probability);                  // first pass, by area
//   fetalhc::ReviewSignals s = fetalhc::review_signals(seg, gray8, m.ellipse_px);
//
// Pixel conventions as in ellipse.h. Thread safety: pure functions.
#pragma once

#include "fetalhc/measure.h"

#include <opencv2/core.hpp>

namespace fetalhc {

// Area of the second-largest 8-connected region of p > 0.5 over the largest's (0 when there is at
// most one region). CV_32F probability map.
double rival_share(const cv::Mat& probability);

// Everything in ReviewSignals, from the segmentation (its pass signals and its probability map),
// the input image and the fitted ellipse in input pixels.
ReviewSignals review_signals(const Segmentation& seg, const cv::Mat& gray8, const Ellipse& ellipse_px);

}  // namespace fetalhc
