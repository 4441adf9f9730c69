// Inside the library: measure_frames with a check of every frame (dicom_measure.cpp uses it to
// refuse a frame whose head leaves its calibrated region).
#pragma once

#include "fetalhc/video.h"

#include <functional>
#include <string>

namespace fetalhc::detail {

// Called on each frame, in frame order, before it is counted and passed on: it may turn the
// frame's result into an error, and the frame then counts as not measured (not in the summary).
// The tracking plan uses the result before the check.
using FrameCheck = std::function<void(VideoFrame& frame)>;

Expected<VideoSummary> measure_checked_frames(const Measurer& measurer, const std::string& label, const FrameSource& next,
                                              const VideoOptions& opt, const FrameCheck& check,
                                              const std::function<void(const VideoFrame&)>& on_frame);

}  // namespace fetalhc::detail
