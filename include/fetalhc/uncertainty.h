// fetalhc/uncertainty.h - a calibrated interval for the reference HC around each measurement.
//
//   auto model = fetalhc::interval_model_from_metadata(seg.info().metadata);  // nullopt: none stored
//   fetalhc::HcInterval iv = fetalhc::hc_interval(*model, 172.4, /*review=*/false);
//   // iv.low_mm .. iv.high_mm holds the reference HC with probability iv.coverage (0.9)
//
// Calibration (split conformal, by head size): from measurements of images the model never saw
// (the k-fold out-of-fold predictions), the signed relative residual r = (reference - measured) /
// measured is collected per bin of measured HC and per quality (ok / review); the interval is
// [hc (1 + r_lo), hc (1 + r_hi)] with r_lo, r_hi the order statistics of rank floor((n+1) a/2) and
// ceil((n+1)(1 - a/2)) of the bin's n residuals (a = 1 - coverage). Vovk, Gammerman and Shafer,
// "Algorithmic Learning in a Random World" (2005); Lei et al., "Distribution-free predictive
// inference for regression", JASA 113 (2018). A review bin with too few residuals takes the ok
// bin's interval widened by the ratio the pooled residuals show.
// The GA interval is the HC interval through Hadlock 1984 (monotonic in HC), each end left unset
// outside the formula's range. Thread safety: pure functions.
#pragma once

#include "fetalhc/expected.h"

#include <nlohmann/json_fwd.hpp>

#include <istream>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

struct HcIntervalModel {
    double coverage = 0.9;
    std::vector<double> edges_mm;                // bin edges on the measured HC (bins = edges + 1)
    std::vector<double> lo_rel, hi_rel;          // per bin, measurements judged ok
    std::vector<double> review_lo_rel, review_hi_rel;  // per bin, measurements marked review
    std::vector<int> n_ok, n_review;             // residuals behind each bin
    std::string source;                          // what the residuals came from
};

struct HcInterval {
    double low_mm = 0, high_mm = 0;
    double coverage = 0.9;
    std::optional<double> ga_hadlock_low_weeks, ga_hadlock_high_weeks;  // unset outside Hadlock's range
};

struct IntervalSample {
    double measured_hc_mm = 0, reference_hc_mm = 0;
    bool review = false;
    int fold = -1;  // the k-fold fold that held the image out (column `fold` of an out-of-fold CSV), -1 unknown
};

// Calibrates from held-out samples (failures left out: they have no measurement). Needs at least
// 20 ok samples per bin; `edges_mm` sorted ascending.
Expected<HcIntervalModel> calibrate_hc_interval(const std::vector<IntervalSample>& samples, double coverage,
                                                const std::vector<double>& edges_mm, const std::string& source);
HcInterval hc_interval(const HcIntervalModel& model, double hc_mm, bool review);

// How many of `samples` have their reference HC inside the interval `model` gives them.
struct IntervalCoverage {
    int images = 0, covered = 0;
    int review_images = 0, review_covered = 0;  // of those, the ones marked review
};
IntervalCoverage interval_coverage(const HcIntervalModel& model, const std::vector<IntervalSample>& samples);

// Samples from a per-image CSV written by `fetalhc evaluate --per-image` (columns ref_hc_mm, hc_mm,
// quality, and fold when the CSV is out-of-fold; rows of failed images have no hc_mm and are
// skipped). `name` names the file in errors.
Expected<std::vector<IntervalSample>> read_interval_samples(std::istream& csv, const std::string& name);

nlohmann::json to_json(const HcIntervalModel& model);
Expected<HcIntervalModel> interval_model_from_json(const nlohmann::json& j);
// The model file's interval (metadata key "hc_interval"); nullopt when it has none or it is malformed.
std::optional<HcIntervalModel> interval_model_from_metadata(const std::string& metadata_json);

}  // namespace fetalhc
