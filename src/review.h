// Internal: the review of a measurement, pure OpenCV. The one owner of every review reason and of
// the quality flag: the signals (ReviewSignals in fetalhc/measure.h), the rules that turn them and
// the fit into reasons (thresholds in MeasureOptions), and "review" exactly when a reason is given.
//
//   double r = fetalhc::rival_share(probability);                  // first pass, by area
//   m.signals = fetalhc::review_signals(seg, gray8, m.ellipse_px);
//   fetalhc::review_measurement(m, opt);                           // m.reasons, m.quality
//
// Pixel conventions as in ellipse.h. Thread safety: pure functions.
#pragma once

#include "fetalhc/measure.h"
#include "fetalhc/video.h"

#include "fixed_text.h"

#include <opencv2/core.hpp>

#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

// Area of the second-largest 8-connected region of p > 0.5 over the largest's (0 when there is at
// most one region). CV_32F probability map.
double rival_share(const cv::Mat& probability);

// The regions of p > 0.5 other than the largest (8-connected, each at least kRivalMinShare of the
// largest's area and 16 pixels; largest first, at most kMaxRivals), as the ellipses with their
// second moments (a filled ellipse's: semi-axis = 2 sqrt(eigenvalue)), mapped from the network's
// letterbox frame to input pixels. Segmentation::rivals.
std::vector<Ellipse> rival_ellipses(const cv::Mat& probability, const Letterbox& letterbox);

// Everything in ReviewSignals, from the segmentation (its pass signals and its probability map),
// the input image and the fitted ellipse in input pixels.
ReviewSignals review_signals(const Segmentation& seg, const cv::Mat& gray8, const Ellipse& ellipse_px);

// The reasons of a measurement of an image, added to m.reasons in this order: HC outside 40..400 mm,
// detection score under opt.min_presence, certainty under opt.min_certainty, fit RMS over
// opt.max_fit_rms_px, under 80% of the boundary points kept by the fit, a cut share over
// opt.max_cut_fraction, over opt.max_unseen_outline_share of the outline with no skull under it, a
// cephalic index outside opt.min/max_cephalic_index. Then decide_quality. Reads the numbers, the
// fit's counts and m.signals, so set those first.
void review_measurement(Measurement& m, const MeasureOptions& opt);

// The reasons of an ellipse without an image (given by hand): HC and cephalic index only, then
// decide_quality.
void review_ellipse(Measurement& m, const MeasureOptions& opt);

// The reasons of a video's or cine's summary `m` (VideoSummary::estimate, m.hc_mm the median HC of
// s's ok frames): no frame judged ok; fewer ok frames than opt.min_ok_frames (or than the frames
// read, when fewer); ok frames whose HC interquartile range is over opt.max_hc_iqr_share of the
// median. Then decide_quality.
void review_summary(Measurement& m, const VideoSummary& s, const VideoOptions& opt);

// The head check's verdict (fetalhc/head_check.h) on a measured outline, from m.signals.head_check
// and head_check_other (set them first): below refuse_below an error (ErrorKind::NotAHeadPlane)
// naming m.source and the most likely other plane; below review_below the reason "the outline may
// be the trunk or another structure, not the head" is added, then decide_quality. Nothing without
// a score (head_check < 0).
std::optional<Error> review_head_check(Measurement& m, double refuse_below, double review_below);

// The quality flag from the reasons: "review" when there is one, else "ok".
void decide_quality(Measurement& m);

// `v` with `digits` decimals (fixed notation), as the reasons write their numbers.
using detail::fixed_text;

}  // namespace fetalhc
