// fetalhc/video.h - HC over the frames of a video or cine loop.
//
//   fetalhc::VideoOptions vo;                      // pixel size etc. in vo.measure
//   vo.measure.pixel_size_mm = 0.15;
//   auto s = fetalhc::measure_video(measurer, "sweep.mp4", vo,
//                                   [](const fetalhc::VideoFrame& f) { /* per-frame result */ });
//   if (s && s->has_estimate) std::cout << s->hc_median_mm << " mm over " << s->ok << " frames\n";
//
// Every frame is measured. With a two-pass model the whole-image pass runs on the first frame,
// every `redetect_every` frames and whenever the previous frame gave no usable ellipse; the
// frames between only re-segment the crop around the previous frame's head (tracking).
// The summary is the median over the frames judged `ok`, which is robust to the frames where the
// probe passes through other planes. Containers: whatever OpenCV's videoio reads (MP4, AVI, ...).
// Throughput: the calling thread decodes while `workers` threads measure frames at once (each
// network pass then runs on one core, which uses small networks better than splitting one pass
// over cores). A frame is tracked from the newest ok ellipse among the frames already finished,
// so with W workers the prior may be up to W frames old; results stay in frame order and do not
// depend on timing. workers = 1 measures on the calling thread, one frame after the other.
// Thread safety: one call per thread; the Measurer may be shared.
#pragma once

#include "fetalhc/measure.h"

#include <functional>
#include <string>

namespace fetalhc {

bool has_video_extension(const std::string& path);  // .mp4 .avi .mov .mkv .m4v .mpg .mpeg .wmv .webm

struct VideoOptions {
    MeasureOptions measure;
    int redetect_every = 10;  // run the whole-image pass at least this often (frames); 1 = always
    int max_frames = 0;       // stop after this many frames (0 = all)
    int workers = 0;          // frames measured at once (0 = one per core, 1 = on the calling thread)
};

struct VideoFrame {
    int index = 0;            // 0-based frame number
    double time_s = 0;        // position in the video (s), from the container or index / fps
    bool tracked = false;     // measured with the tracking pass only
    Expected<Measurement> result = make_error(ErrorKind::Internal, "not measured");
};

struct VideoSummary {
    std::string source;
    int frames = 0, measured = 0, ok = 0;
    bool has_estimate = false;    // at least one frame judged ok
    double hc_median_mm = 0, bpd_median_mm = 0, ofd_median_mm = 0;
    double hc_iqr_mm = 0;         // spread of HC over the ok frames (interquartile range)
    Measurement estimate;         // numbers from the median HC, ellipse from the ok frame closest to it
    int estimate_frame = -1;
    double seconds = 0, frames_per_second = 0;  // wall time of the whole call, decoding included
};

// Frames from any source (DICOM multi-frame, ...): `next` fills the next frame (any type to_gray8
// takes) and its time in seconds, and returns false at the end. `label` names the frames
// ("label#index") and the summary.
using FrameSource = std::function<bool(cv::Mat& frame, double& time_s)>;
Expected<VideoSummary> measure_frames(const Measurer& measurer, const std::string& label, const FrameSource& next,
                                      const VideoOptions& opt, const std::function<void(const VideoFrame&)>& on_frame = {});

Expected<VideoSummary> measure_video(const Measurer& measurer, const std::string& path, const VideoOptions& opt,
                                     const std::function<void(const VideoFrame&)>& on_frame = {});

}  // namespace fetalhc
