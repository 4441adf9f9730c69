// Internal: the part of a Segmentation (fetalhc/segmentation.h) in the network's own frame: the
// probability map, the image -> frame affine of a crop and the 8-bit image the network saw.
//
//   fetalhc::set_net_frame(seg, probability);                 // a letterbox frame (seg.letterbox)
//   fetalhc::set_net_frame(seg, probability, crop_to_net, input8);  // a crop frame (seg.refined)
//   const cv::Mat& p = fetalhc::net_frame(seg).probability;
//   cv::Matx23d A = fetalhc::to_net(seg);                     // image -> network frame
//
// Pure OpenCV (no LibTorch); defined in geometry.cpp. Thread safety: a NetFrame is never changed
// once made (set_net_frame replaces it), so copies of a Segmentation may be read concurrently.
#pragma once

#include "fetalhc/segmentation.h"

#include <opencv2/core.hpp>

namespace fetalhc {

struct NetFrame {
    cv::Mat probability;  // CV_32F at the network input size, head probability in [0,1]
    // Segmentation::refined: the image -> crop affine (crop = A * (x, y, 1)). Otherwise unused
    // (the frame is the letterbox).
    cv::Matx23d crop_to_net = cv::Matx23d::eye();
    // The 8-bit image the network saw, kept so later stages need not resample the input again.
    // Empty when the segmentation was built by hand.
    cv::Mat input;
};

// The segmentation's frame; an empty one (no probability) before a pass.
const NetFrame& net_frame(const Segmentation& s);

// Gives the segmentation a new frame (the one it had, which copies may share, is left as it was).
void set_net_frame(Segmentation& s, cv::Mat probability, const cv::Matx23d& crop_to_net = cv::Matx23d::eye(),
                   cv::Mat input = {});

// image -> network frame: the crop's affine when refined, else the letterbox's.
cv::Matx23d to_net(const Segmentation& s);

// A segmentation of a probability map (CV_32F, [0,1]) given at the image's own resolution: the
// identity letterbox, no network input, presence 0 (set it after). What a mask is read as.
Segmentation segmentation_at_image(cv::Mat probability);

}  // namespace fetalhc
