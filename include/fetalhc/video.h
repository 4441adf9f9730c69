// fetalhc/video.h - HC over the frames of a video or cine loop.
//
//   fetalhc::VideoOptions vo;                      // pixel size etc. in vo.measure
//   vo.measure.pixel_size_mm = 0.15;
//   auto s = fetalhc::measure_video(measurer, "sweep.mp4", vo,
//                                   [](const fetalhc::VideoFrame& f) { /* per-frame result */ });
//   if (s && s->has_estimate) std::cout << s->estimate.hc_mm << " mm over " << s->ok << " frames\n";
//
// Every frame is measured. With a two-pass model the whole-image pass runs on key frames: the
// first frame, every `redetect_every` frames after the last key frame, and the frame after a key
// frame that gave no ok ellipse. The frames between only re-segment the crop around the head of
// the key frame before them (tracking); a tracked frame that loses the head is measured again with
// the whole-image pass, and the frames after it are still tracked from the key frame.
// The summary is one Measurement (VideoSummary::estimate): the medians of HC, BPD and OFD over the
// frames judged `ok`, which is robust to the frames where the probe passes through other planes;
// GA, centile and the model's interval computed from the median HC; and its own quality (review
// when too few frames are ok or the ok frames disagree: VideoOptions). Containers: whatever
// OpenCV's videoio reads (MP4, AVI, ...).
// Throughput: the calling thread decodes while `workers` threads measure frames at once (each
// network pass then runs on one core, which uses small networks better than splitting one pass
// over cores); the frames tracked from a key frame wait for that frame only, and run in parallel.
// Every frame's result depends on its pixels and its key frame's result alone, so the results and
// the summary are the same for any number of workers; they stay in frame order.
// workers = 1 measures on the calling thread, one frame after the other.
// Thread safety: one call per thread; the Measurer may be shared.
#pragma once

#include "fetalhc/measure.h"

#include <functional>
#include <optional>
#include <string>

namespace fetalhc {

bool has_video_extension(const std::string& path);  // .mp4 .avi .mov .mkv .m4v .mpg .mpeg .wmv .webm

struct VideoOptions {
    MeasureOptions measure;
    int redetect_every = 10;  // a key frame (whole-image pass) at least this often (frames); 1 = every frame
    int max_frames = 0;       // stop after this many frames (0 = all)
    int workers = 0;          // frames measured at once (0 = one per core, 1 = on the calling thread)
    // The summary is marked review when the ok frames disagree: their HC interquartile range is
    // over this share of the median HC (0.05: 8.5 mm at 170 mm; frames of one plane agree within
    // a few mm, so a wider spread means the frames show different planes or heads) ...
    double max_hc_iqr_share = 0.05;
    // ... or when fewer frames than this were judged ok (all of them when fewer were read).
    int min_ok_frames = 3;
};

struct VideoFrame {
    int index = 0;            // the frame's number: 0-based position, or the number its source gave
    double time_s = 0;        // position in the video (s), from the container or index / fps
    bool tracked = false;     // measured with the tracking pass only
    Expected<Measurement> result = make_error(ErrorKind::Internal, "not measured");
};

struct VideoSummary {
    std::string source;
    int frames = 0, measured = 0, ok = 0;
    bool has_estimate = false;    // at least one frame judged ok
    double hc_iqr_mm = 0;         // spread of HC over the ok frames (interquartile range)
    // The summary as one measurement (source "<label>#summary"): hc_mm, bpd_mm, ofd_mm the medians
    // over the ok frames, cephalic index from the median BPD and OFD, GA (Hadlock, INTERGROWTH),
    // centile (when a GA was given) and the model's interval from the median HC; the ellipse and
    // the image figures those of frame `estimate_frame` (the ok frame whose HC is closest to the
    // median); quality and reasons from the frames (VideoOptions). Without an ok frame only its
    // source, quality ("review") and reason are set.
    Measurement estimate;
    int estimate_frame = -1;
    double seconds = 0, frames_per_second = 0;  // wall time of the whole call, decoding included
};

// One frame from a FrameSource: the image (any type to_gray8 takes), its time in seconds, and its
// number (preset to its 0-based position; a source that skips frames sets the frame's own number).
struct SourceFrame {
    cv::Mat image;
    double time_s = 0;
    int number = 0;
};
// Frames from any source (DICOM multi-frame, ...): fills the next frame and returns false at the
// end. `label` names the frames ("label#number") and the summary.
using FrameSource = std::function<bool(SourceFrame& frame)>;
Expected<VideoSummary> measure_frames(const Measurer& measurer, const std::string& label, const FrameSource& next,
                                      const VideoOptions& opt, const std::function<void(const VideoFrame&)>& on_frame = {});

Expected<VideoSummary> measure_video(const Measurer& measurer, const std::string& path, const VideoOptions& opt,
                                     const std::function<void(const VideoFrame&)>& on_frame = {});

// The frames refused as not a fetal head in the HC plane (ErrorKind::NotAHeadPlane), counted as
// they come: their number and the first one's error.
struct NotAHeadFrames {
    int count = 0;
    std::optional<Error> first;
    void add(const VideoFrame& f);
};
// Why a video or cine gives no estimate (no frame judged ok), as an error naming `name`:
// NotAHeadPlane when more than half of its s.frames frames were refused as another plane (e.g. a
// cardiac cine; the first one's message), else NoHeadFound with the summary's reason. nullopt when
// the summary has an estimate.
std::optional<Error> summary_without_estimate(const VideoSummary& s, const NotAHeadFrames& refused, const std::string& name);

// JSON of a frame: to_json of its measurement (or {"error": message}) with "frame", "time_s" and
// "tracked"; of a summary: "frames", "measured", "ok_frames", "has_estimate", "seconds",
// "frames_per_second", and with an estimate "hc_median_mm", "bpd_median_mm", "ofd_median_mm",
// "hc_iqr_mm", "estimate_frame" and "estimate" (to_json of the summary's Measurement).
nlohmann::json to_json(const VideoFrame& f);
nlohmann::json to_json(const VideoSummary& s);

}  // namespace fetalhc
