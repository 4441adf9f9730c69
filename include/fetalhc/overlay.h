// fetalhc/overlay.h - draws a measurement on its image (ellipse, axes, HC, GA, quality).
// Thread safety: pure function.
#pragma once

#include "fetalhc/measure.h"

namespace fetalhc {

// Returns a BGR copy of gray8 with the ellipse, its axes and a text panel drawn on it.
cv::Mat draw_overlay(const cv::Mat& gray8, const Measurement& m);

}  // namespace fetalhc
