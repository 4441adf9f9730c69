// fetalhc/metrics.h - HC18 challenge metrics and mask AP/AR.
//
// Dice and Hausdorff compare two ellipses rasterised at the image size; the Hausdorff distance is
// between their boundaries, in mm (pixel distance x pixel size). Mask AP follows COCO's idea for
// one object per image: each prediction is a true positive at IoU threshold t when IoU >= t,
// ranked by its score. Thread safety: pure functions.
#pragma once

#include "fetalhc/ellipse.h"

#include <opencv2/core.hpp>

#include <vector>

namespace fetalhc {

double dice(const cv::Mat& mask_a, const cv::Mat& mask_b);  // CV_8U masks, nonzero = inside
double iou(const cv::Mat& mask_a, const cv::Mat& mask_b);
// Symmetric Hausdorff distance between the outer contours of two masks (px).
double hausdorff_px(const cv::Mat& mask_a, const cv::Mat& mask_b);

struct Detection {
    double score = 0;
    double iou = 0;   // with the image's one reference object; 0 when nothing was detected
    bool detected = false;
};
// Average precision at an IoU threshold, all-point interpolation over detections ranked by score;
// every image has exactly one reference object.
double average_precision(const std::vector<Detection>& dets, double iou_threshold);
// Recall at an IoU threshold (one detection per image).
double recall(const std::vector<Detection>& dets, double iou_threshold);

// The q-quantile (q in [0, 1]) of `values`, interpolating linearly between neighbouring order
// statistics (q = 0.5: the median; the mean of the two middle values for an even count).
// `values` must not be empty.
double quantile(std::vector<double> values, double q);

}  // namespace fetalhc
