// fetalhc/measure.h - image -> segmented head -> ellipse -> HC, BPD, OFD, GA, centile, quality.
//
//   auto seg = fetalhc::Segmenter::load("models/fetalhc_unet.pt");
//   fetalhc::Measurer m(*seg);
//   fetalhc::MeasureOptions o; o.pixel_size_mm = 0.128; o.ga_weeks = 20.0;  // GA optional
//   auto r = m.measure(gray8, o, "scan.png");
//   if (r) std::cout << r->hc_mm << " mm, " << r->quality << "\n"; else std::cerr << r.error();
//
// Units: lengths in mm unless the name ends in _px; the ellipse in `ellipse_px` uses the project's
// pixel conventions (see ellipse.h); `ellipse_mm` is the same ellipse with every length in mm.
// HC = Ramanujan II perimeter x pixel size; BPD = 2b, OFD = 2a (outer-outer, as the reference
// ellipse is the skull's outer contour); cephalic index = 100 b / a.
// Thread safety: measure() may be called concurrently on one Measurer.
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"
#include "fetalhc/growth.h"
#include "fetalhc/head_check.h"
#include "fetalhc/image_io.h"
#include "fetalhc/segmenter.h"
#include "fetalhc/uncertainty.h"

#include <nlohmann/json_fwd.hpp>

#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

struct MeasureOptions {
    double pixel_size_mm = 0;            // mm per pixel, isotropic; required (check_pixel_size, image_io.h)
    // Rows' spacing (mm per pixel along y) when it differs from pixel_size_mm (then the x spacing):
    // anisotropic pixels (DICOM). The ellipse is then fitted on the boundary points in physical
    // space and HC, BPD, OFD and ellipse_mm come from that fit; ellipse_px stays the fit in pixels.
    std::optional<double> pixel_size_y_mm;
    std::optional<double> ga_weeks;      // known GA (e.g. from a dating scan) for the centile
    EllipseFitOptions fit;
    // Measure the head a second time on the mirrored image, cropped around the first result
    // (second pass only), and record the relative HC difference (ReviewSignals::second_opinion_rel).
    // About 40% more time per image; off by default.
    bool second_opinion = false;
    // Apply the Measurer's head check (fetalhc/head_check.h), when it has one: an outline scored
    // below its refusal threshold is refused (ErrorKind::NotAHeadPlane), one below its review
    // threshold gets a review reason. Off only to compare with and without it.
    bool head_check = true;
    // The targeted second opinion (with a head check only): extra network passes spent where cheap
    // signals say so, not on every image. When the first pass found other head-like regions
    // (Segmentation::rivals), each is measured too and the outline the head check scores clearly
    // higher is kept (flagged). When the head is small (HC under second_look_below_hc_mm) or the
    // check's score under second_look_below_score, the crop is segmented again mirrored and the
    // two maps averaged (Segmenter::mirror_look), and that measurement is kept. Off: one path for
    // every image (the measurement of `--head-check none` apart from the check itself).
    bool targeted_second_opinion = true;
    double second_look_below_hc_mm = 100;
    double second_look_below_score = 0.95;
    // A rival replaces the measured outline when its head-check score is higher by this much.
    double rival_score_margin = 0.2;
    // Quality thresholds.
    double min_presence = 0.5;           // detection score below this -> review
    double min_certainty = 0.6;          // mean |2p-1| inside the head below this -> review
    double max_fit_rms_px = 2.5;         // RMS orthogonal residual above this -> review
    double max_cut_fraction = 0.10;      // share of the boundary on the border/sector edge
    // 1 - ReviewSignals::skull_evidence: the share of the fitted outline with no skull ridge under
    // it; above this -> review. A share, not a length, so that the rule does not grow with the head:
    // chosen on the k-fold out-of-fold results (models/MODEL_CARD.md, "Review flag").
    double max_unseen_outline_share = 0.65;
    double min_cephalic_index = 65, max_cephalic_index = 95;
};

struct Timings {
    double decode_ms = 0, network_ms = 0, postprocess_ms = 0, fit_ms = 0, total_ms = 0;
};

// Signals about how far a measurement can be trusted, besides the fit's own (presence, certainty,
// fit RMS, inliers, cut points). Shares are in [0, 1]; -1 where a signal does not apply.
struct ReviewSignals {
    float refine_presence = -1;   // the second network's presence score on its final crop (-1: one-pass model)
    double rival_share = 0;       // first pass: second-largest head-like region / the largest, by area
    bool second_look = false;     // the second pass had to crop again around the head it found
    double skull_evidence = -1;   // share of the fitted ellipse (inside the image) with a bright ridge under it
    double ring_contrast = -1;    // median ridge brightness along the ellipse / median brightness inside the head
    double seg_agreement = -1;    // share of the ellipse where the head probability is > 0.5 just inside, < 0.5 just outside
    double head_fraction = 0;     // OFD in pixels / the image's larger side
    double member_disagreement = 0;  // ensemble (--ensemble): 1 - mean IoU of the members' masks; 0 for one model
    // MeasureOptions::second_opinion: (HC measured on the mirrored image - HC) / HC; NaN when not
    // asked for, 1 when the second look found no head.
    double second_opinion_rel = std::numeric_limits<double>::quiet_NaN();
    // The head check's score of the measured outline ([0, 1], 1: a fetal head in the HC plane;
    // HeadCheckResult::score) and its most likely class other than a head (kHeadCheckPlanes);
    // -1 and "" when no check ran.
    double head_check = -1;
    std::string head_check_other;
    // MeasureOptions::targeted_second_opinion: the extra network passes it spent on this image (0:
    // none), the best head-check score among the first pass's other regions (-1: none measured) and
    // whether one of them replaced the outline first measured.
    int extra_passes = 0;
    double rival_head_check = -1;
    bool chose_rival = false;
};

struct Measurement {
    std::string source;                 // file name or label given by the caller
    cv::Size image_size;
    double pixel_size_mm = 0;
    std::optional<double> pixel_size_y_mm;  // set when anisotropic (MeasureOptions::pixel_size_y_mm)
    Ellipse ellipse_px;                 // fitted ellipse (px)
    Ellipse ellipse_mm;                 // the same, lengths in mm
    double hc_mm = 0, bpd_mm = 0, ofd_mm = 0, cephalic_index = 0;
    GaEstimate ga_hadlock, ga_intergrowth;
    std::optional<double> ga_weeks_given;
    std::optional<Centile> centile;     // when a GA was given
    float presence = 0;                 // detection score
    double certainty = 0;               // mean |2p-1| in the segmented head
    double fit_rms_px = 0;
    int boundary_points = 0, inliers = 0, cut_points = 0;
    ReviewSignals signals;
    // 90% interval for the reference HC (fetalhc/uncertainty.h), set by a Measurer whose model
    // file carries a calibrated interval; unset for ellipses given by hand.
    std::optional<HcInterval> interval;
    std::string quality;                // "ok" or "review"
    std::vector<std::string> reasons;   // why "review"
    Timings timings;
};

// Everything after the network: boundary, fit, numbers, quality. Public so tests and the HTTP
// stages can run it on their own.
Expected<Measurement> measure_from_segmentation(const Segmentation& seg, const cv::Mat& gray8,
                                                const MeasureOptions& opt, const std::string& source);

// Numbers and quality checks from an ellipse alone (pixel size in mm/px): the reasons on HC and the
// cephalic index, with the default thresholds.
Measurement measurement_from_ellipse(const Ellipse& px, double pixel_size_mm,
                                     std::optional<double> ga_weeks);

// Keeps a review decided earlier for the same head (e.g. the image checks of POST /v1/measure when a
// client saves the ellipse as an exam): quality becomes "review" when `flagged`, and `reasons` not
// already in m.reasons are added after them. The quality stays "review" once decided so.
void keep_earlier_review(Measurement& m, bool flagged, const std::vector<std::string>& reasons);

class Measurer {
public:
    // Reads the model's calibrated HC interval (metadata "hc_interval"), when it has one. With a
    // head check, every measured outline is scored by it (MeasureOptions::head_check).
    explicit Measurer(Segmenter seg, std::optional<HeadCheck> check = std::nullopt)
        : seg_(std::move(seg)), check_(std::move(check)), interval_(interval_model_from_metadata(seg_.info().metadata)) {}
    Expected<Measurement> measure(const cv::Mat& gray8, const MeasureOptions& opt,
                                  const std::string& source = "image") const;
    // Same, tracking a head found on a previous frame (see Segmenter::segment_near): `prior` is
    // that frame's ellipse_px, in input pixels. The head check does not run here (it ran on the
    // frame that found the head): signals.head_check stays -1.
    Expected<Measurement> measure_near(const cv::Mat& gray8, const MeasureOptions& opt, const Ellipse& prior,
                                       const std::string& source = "image") const;
    // Reads the file too (decode time is reported in timings).
    Expected<Measurement> measure_file(const std::string& path, const MeasureOptions& opt) const;
    // The model's 90% interval (uncertainty.h) around an HC measured otherwise (e.g. a video's
    // median HC) of the given quality; nullopt when the model file carries no interval.
    std::optional<HcInterval> interval_for(double hc_mm, bool review) const;
    const Segmenter& segmenter() const { return seg_; }
    const HeadCheck* head_check() const { return check_ ? &*check_ : nullptr; }

private:
    Segmenter seg_;
    std::optional<HeadCheck> check_;
    std::optional<HcIntervalModel> interval_;
};

// JSON object with every field of a measurement (mm unless _px; angles in radians). Include
// <nlohmann/json.hpp> to use the value (dump() gives the text).
nlohmann::json to_json(const Measurement& m);

}  // namespace fetalhc
