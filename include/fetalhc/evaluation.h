// fetalhc/evaluation.h - the one definition of every accuracy figure fetalhc reports.
//
//   auto recs = fetalhc::read_hc18_training("../shared/hc18");
//   auto split = fetalhc::model_split(*recs, seg->info().metadata);        // the model's own split
//   fetalhc::Measurer m(*seg);
//   auto scores = fetalhc::score_records(split->validation, fetalhc::measure_with(m));
//   fetalhc::EvaluationReport rep = fetalhc::evaluate(std::move(scores));
//   std::printf("HC MAD %.2f mm\n", rep.overall.hc_abs_error_mm.mean);
//
// The CLI's `evaluate`, the trainer's per-epoch validation, `model calibrate` and the accuracy test
// all score through this module, so a figure means the same wherever it is printed.
//
// Definitions (lengths in mm):
// - HC error = measured HC - reference HC (signed). The HC MAD is the mean of |error| over EVERY
//   image of the set: an image that could not be measured (no head found, unreadable, ...) counts
//   as an error of its whole reference HC, as if 0 mm had been measured. Failures are also counted
//   on their own (`failed`) and enter `over_10mm`.
// - The signed bias, and the SD of the signed error, are over measured images only (a failure has
//   no sign worth averaging).
// - Dice and IoU compare the measured ellipse, rasterised at the image size, with the reference
//   mask (the *_Mask.png file, or the reference ellipse rasterised when there is no mask file); a
//   failure counts as Dice 0. Hausdorff is the symmetric distance between the two outlines
//   (pixels x pixel size), over measured images only (undefined for a failure).
// - Trimesters by reference HC against the INTERGROWTH-21st median HC at 14 and 28 weeks
//   (first: HC below the 14-week median, third: at or above the 28-week median).
// - Review flag: among measured images, an error over 5 mm is a gross error; the report counts
//   how many gross errors were flagged `review` and how many other images were flagged needlessly;
//   the same relative to the reference HC (over 10%, over 5%, and within 5% but flagged).
// - Mask AP / AR: one object per image, COCO-style thresholds 0.50:0.05:0.95 (see metrics.h);
//   the detection score is the measurement's presence score.
// Thread safety: pure functions; score_records calls `measure` from the calling thread only.
#pragma once

#include "fetalhc/expected.h"
#include "fetalhc/hc18.h"
#include "fetalhc/measure.h"

#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace fetalhc {

// One scored image.
struct ImageScore {
    std::string file;
    double ref_hc_mm = 0;
    double pixel_size_mm = 0;
    int trimester = 0;                       // 1, 2 or 3 (see above)
    std::optional<Measurement> measurement;  // absent when the image could not be measured
    std::string error;                       // why not, when absent
    double hc_mm = 0;                        // measured HC (0 for a failure)
    double error_mm = 0;                     // signed HC error (failures: -ref_hc_mm)
    double abs_error_mm = 0;                 // |error_mm|: what the HC MAD averages
    bool has_shape = false;                  // Dice/IoU/Hausdorff were computed
    double dice = 0, iou = 0;
    double hausdorff_mm = 0;                 // meaningful when has_shape and measured
    bool measured() const { return measurement.has_value(); }
    bool flagged() const { return measured() && measurement->quality != "ok"; }
};

// The trimester of a reference HC (1, 2 or 3).
int trimester_of(double ref_hc_mm);

// Scores one image's HC only (no mask needed): what the trainer's validation uses.
ImageScore score_hc(const std::string& file, double ref_hc_mm, double pixel_size_mm, const Expected<Measurement>& m);
// Scores one labelled image: HC, and the shape metrics when `ref_mask` (CV_8U, nonzero = head,
// image-sized) is given or the record has a mask file or a reference ellipse.
ImageScore score_image(const Hc18Record& rec, const Expected<Measurement>& m, const cv::Mat& ref_mask = cv::Mat());

using MeasureRecordFn = std::function<Expected<Measurement>(const Hc18Record&)>;
// Measures a record's image with its own pixel size (the other options from `base`).
MeasureRecordFn measure_with(const Measurer& measurer, const MeasureOptions& base = {});

struct ScoreOptions {
    bool shape_metrics = true;  // read masks and compute Dice / IoU / Hausdorff
    std::function<void(size_t done, size_t total)> progress;  // called after each image
    MeasureOptions measure;     // evaluate_out_of_fold: options of each measurement (its pixel size is the image's)
    // evaluate_out_of_fold: a head-check run folder (fetalhc/head_check_train.h) whose fold models
    // (<dir>/fold<i>/model.pt) record the same split: fold i's check joins fold i's model. "": none.
    std::string head_check_run;
};
// Measures every record in order with `measure` and scores it.
std::vector<ImageScore> score_records(const std::vector<Hc18Record>& records, const MeasureRecordFn& measure,
                                      const ScoreOptions& opt = {});

struct MeanSd {
    double mean = 0, sd = 0;  // sd: sample SD (n - 1); 0 with fewer than 2 values
    int n = 0;
};

// Figures over a group of images (all, or one trimester).
struct ScoreSummary {
    int images = 0, failed = 0, flagged_review = 0;
    MeanSd hc_abs_error_mm;     // every image, failures as their whole reference HC
    MeanSd hc_signed_error_mm;  // measured images
    MeanSd dice;                // images with shape metrics, failures as 0
    MeanSd hausdorff_mm;        // measured images with shape metrics
    int over_10mm = 0;          // |error| > 10 mm, failures included
    int errors_over_5mm = 0, errors_over_5mm_flagged = 0;  // measured images
    int good = 0, good_flagged = 0;                          // measured, |error| <= 5 mm
    int errors_over_10pct = 0, errors_over_10pct_flagged = 0;  // measured, |error| > 10% of the reference HC
    int errors_over_5pct = 0, errors_over_5pct_flagged = 0;    // measured, |error| > 5% of the reference HC
    int within_5pct = 0, within_5pct_flagged = 0;              // measured, |error| <= 5%: flagged needlessly
    int interval_images = 0, interval_covered = 0;  // measured with an HC interval; reference HC inside it
};

// `trimester` 0 summarises every image; 1..3 only that trimester's.
ScoreSummary summarize(const std::vector<ImageScore>& scores, int trimester = 0);

struct EvaluationReport {
    ScoreSummary overall;
    ScoreSummary trimester[3];  // first, second, third
    double trimester_boundaries_hc_mm[2] = {0, 0};
    double mask_ap50 = 0, mask_ap = 0, mask_ar = 0;
    double mean_ms_per_image = 0;  // measured images' total time
    std::vector<ImageScore> images;  // in input order
};

EvaluationReport evaluate(std::vector<ImageScore> scores);

// The report as JSON (the layout of `fetalhc evaluate --json`) with the `worst` images, largest
// error first (failures first of all).
nlohmann::json to_json(const EvaluationReport& report, int worst);
nlohmann::json to_json(const ScoreSummary& summary);

// One CSV row per image (header first), through the project's CSV writer.
void write_per_image_csv(const EvaluationReport& report, std::ostream& out);

// The same CSV with a last column `fold`: fold[i] is the k-fold fold of report.images[i] (the
// model that held it out; `fetalhc evaluate --oof`).
void write_per_image_csv(const EvaluationReport& report, std::ostream& out, const std::vector<int>& fold);

// K-fold cross-validation: the figures of each fold's held-out images (scores[i] measured by the
// model of fold[i], which never trained on it) and their spread over the folds: mean +- sample SD of
// the per-fold HC MAD and Dice (folds without images left out). The pooled figures are
// evaluate(scores) as for any set.
struct FoldFigures {
    std::vector<ScoreSummary> folds;  // index = fold
    MeanSd hc_mad_mm, dice;
};
FoldFigures fold_figures(const std::vector<ImageScore>& scores, const std::vector<int>& fold, int folds);

// Out-of-fold scores of a k-fold run folder (`fetalhc train --kfold K --out run_dir`): loads
// run_dir/fold<i>/model.pt for i = 0..K-1 (K from fold0's metadata) and scores every record with
// the model whose recorded split (model_split) holds it out. Error, naming the file, when a fold
// model is missing or unreadable, fold0 is not a k-fold model, or a model does not record fold i of
// the same K-fold split (same split_salt and folds). scores and fold are in the order of `records`.
struct OutOfFold {
    std::vector<ImageScore> scores;
    std::vector<int> fold;            // the fold (and model) that measured each record
    std::vector<std::string> models;  // index = fold
};
Expected<OutOfFold> evaluate_out_of_fold(const std::vector<Hc18Record>& records, const std::string& run_dir,
                                         const SegmenterOptions& model_options = {}, const ScoreOptions& opt = {});

// The grouped split a model was trained with, read from its metadata (JSON with `split_salt` and
// `validation_fraction`, and `folds`/`fold` for a k-fold model (kfold_split), as the trainer writes
// it), applied to `records`. Error when the model records no split.
Expected<Split> model_split(const std::vector<Hc18Record>& records, const std::string& model_metadata_json);

// Calibration of a model's axis scale, from the TRAINING split only:
//   axis_scale = (mask -> reference factor over the training masks) x (median over the training
//   images of reference HC / this model's HC measured with that first factor).
struct Calibration {
    double axis_scale = 0, masks_factor = 0, measured_factor = 0;
    int training_images = 0, measured_images = 0;
};
// `measure` measures a record with the model as stored (axis scale `stored_axis_scale`).
Expected<Calibration> calibrate_axis_scale(const Split& split, double stored_axis_scale, const MeasureRecordFn& measure,
                                           const ScoreOptions& opt = {});

}  // namespace fetalhc
