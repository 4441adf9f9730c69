// fetalhc/head_check.h - is the measured outline a fetal head in the HC plane? A small learned
// check on a crop around an ellipse (issue 24), apart from the segmentation network.
//
//   auto check = fetalhc::HeadCheck::load("models/fetalhc_head_check.pt");
//   if (!check) { std::cerr << check.error() << "\n"; return 1; }
//   fetalhc::HeadCheckResult r = check->score(gray8, measurement.ellipse_px);
//   if (r.score < check->refuse_below()) ...   // not a head in the HC plane (r.likely_plane says what)
//
// The check sees head_check_crop(gray8, e): the image around the ellipse, turned so that the
// major axis lies along +x and scaled so that the crop's side is kHeadCheckCropSpan x the major
// axis (2a), whatever the pixel size. It answers with a score in [0, 1] (1: the outline is a fetal
// head in the HC plane) and, from an auxiliary output, the most likely of kHeadCheckPlanes.
// Thresholds (refuse below, review below) come from the model file's metadata, chosen by the
// trainer (fetalhc/head_check_train.h) on its training rows.
// Pixel coordinates as in ellipse.h (origin at the centre of the top-left pixel, angle in
// radians from +x towards +y).
// Thread safety: a loaded HeadCheck is immutable; score() may be called from many threads.
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <array>
#include <memory>
#include <optional>
#include <string>

namespace fetalhc {

// Side of the crop the check sees (pixels) and the crop's side as a multiple of the major axis 2a.
inline constexpr int kHeadCheckCropSize = 64;
inline constexpr double kHeadCheckCropSpan = 2.0;

// The classes of the auxiliary output: a head in the HC plane (HC18 heads and the planes folder's
// brain rows), the planes folder's non-head planes, and "off_target": an outline in a head image
// that is not the head's (another structure beside it, or much too small or large).
inline constexpr int kHeadCheckPlaneCount = 7;
inline constexpr std::array<const char*, kHeadCheckPlaneCount> kHeadCheckPlanes = {
    "head", "abdomen", "femur", "thorax", "cervix", "other", "off_target"};

// The crop the check scores: CV_8UC1, kHeadCheckCropSize square. The ellipse's centre maps to the
// crop's centre ((size-1)/2, (size-1)/2), its major axis to +x, and a to size / (2 * span) crop
// pixels. The image is reduced by pixel area first when the crop is coarser than the image (so
// large heads are not aliased); outside the image the crop is black. e_px must be valid().
cv::Mat head_check_crop(const cv::Mat& gray8, const Ellipse& e_px);

struct HeadCheckResult {
    double score = 0;                       // [0, 1]: 1 = a fetal head in the HC plane
    int likely_plane = 0;                   // index into kHeadCheckPlanes of the auxiliary output's best class
    std::array<double, kHeadCheckPlaneCount> plane_probability{};  // the auxiliary output (softmax)
    // The most likely class other than "head" (for a refusal's message).
    int likely_other = 1;
};

class HeadCheck {
public:
    // Reads a model file written by the head-check trainer. Errors (ModelUnavailable) name the
    // file and say whether it is missing or not a head-check model.
    static Expected<HeadCheck> load(const std::string& path);

    // Scores the outline e_px (input pixels) on gray8 (CV_8UC1). An invalid ellipse scores 0.
    HeadCheckResult score(const cv::Mat& gray8, const Ellipse& e_px) const;
    // The same on a crop made by head_check_crop.
    HeadCheckResult score_crop(const cv::Mat& crop8) const;

    double refuse_below() const;  // score below this: not a head in the HC plane
    double review_below() const;  // score below this (and not refused): the outline may be another structure
    const std::string& metadata() const;  // the model file's metadata (JSON text)

    struct Impl;  // LibTorch, src/head_check_net.cpp

private:
    std::shared_ptr<const Impl> impl_;
};

// The shipped check's file name; it lies beside the segmenter model (models/).
inline constexpr const char* kHeadCheckFileName = "fetalhc_head_check.pt";

// The head check to use with the segmenter model at model_path, as a shell's option gives it:
// "none": no check; "": kHeadCheckFileName in model_path's folder when that file exists, no check
// otherwise (then *missing, when given, is set to the path looked at, for a warning); anything
// else: that file, and its load error when it cannot be loaded.
Expected<std::optional<HeadCheck>> head_check_for_model(const std::string& choice, const std::string& model_path,
                                                        std::string* missing = nullptr);

}  // namespace fetalhc
