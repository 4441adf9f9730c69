#include "fetalhc/evaluation.h"

#include "fetalhc/csv.h"
#include "fetalhc/ellipse.h"
#include "fetalhc/growth.h"
#include "fetalhc/head_check.h"
#include "fetalhc/metrics.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <filesystem>
#include <cmath>
#include <limits>

namespace fetalhc {

namespace {

using json = nlohmann::json;

MeanSd mean_sd(const std::vector<double>& v) {
    MeanSd r;
    r.n = int(v.size());
    if (v.empty()) return r;
    double sum = 0;
    for (double x : v) sum += x;
    r.mean = sum / v.size();
    if (v.size() < 2) return r;
    double ss = 0;
    for (double x : v) ss += (x - r.mean) * (x - r.mean);
    r.sd = std::sqrt(ss / (v.size() - 1));
    return r;
}

json mean_sd_json(const MeanSd& m) {
    // An empty group has no mean: null, not a made-up 0.
    if (m.n == 0) return {{"mean", nullptr}, {"sd", nullptr}};
    return {{"mean", m.mean}, {"sd", m.n > 1 ? json(m.sd) : json(nullptr)}};
}

double pass_rate(const std::vector<Detection>& dets, double (*f)(const std::vector<Detection>&, double)) {
    double sum = 0;
    for (int k = 0; k < 10; ++k) sum += f(dets, 0.5 + 0.05 * k);
    return sum / 10;
}

}  // namespace

int trimester_of(double ref_hc_mm) {
    static const double t1 = intergrowth_hc_median(14), t2 = intergrowth_hc_median(28);
    return ref_hc_mm < t1 ? 1 : ref_hc_mm < t2 ? 2 : 3;
}

ImageScore score_hc(const std::string& file, double ref_hc_mm, double pixel_size_mm, const Expected<Measurement>& m) {
    ImageScore s;
    s.file = file;
    s.ref_hc_mm = ref_hc_mm;
    s.pixel_size_mm = pixel_size_mm;
    s.trimester = trimester_of(ref_hc_mm);
    if (m) {
        s.measurement = *m;
        s.hc_mm = m->hc_mm;
        s.error_mm = m->hc_mm - ref_hc_mm;
    } else {
        s.error = m.error();
        s.error_mm = -ref_hc_mm;  // a failure misses the whole head
    }
    s.abs_error_mm = std::abs(s.error_mm);
    return s;
}

ImageScore score_image(const Hc18Record& rec, const Expected<Measurement>& m, const cv::Mat& ref_mask) {
    ImageScore s = score_hc(rec.filename, rec.hc_mm, rec.pixel_size_mm, m);
    cv::Mat ref = ref_mask;
    if (ref.empty() && !rec.mask_path.empty()) ref = cv::imread(rec.mask_path, cv::IMREAD_GRAYSCALE);
    if (ref.empty() && rec.has_ellipse && m) ref = rasterize(rec.ellipse_px, m->image_size);
    if (ref.empty()) return s;
    s.has_shape = true;
    if (!m) return s;  // Dice 0, no Hausdorff
    const cv::Mat pred = rasterize(m->ellipse_px, ref.size());
    s.dice = dice(pred, ref);
    s.iou = iou(pred, ref);
    s.hausdorff_mm = hausdorff_px(pred, ref) * rec.pixel_size_mm;
    return s;
}

MeasureRecordFn measure_with(const Measurer& measurer, const MeasureOptions& base) {
    return [&measurer, base](const Hc18Record& r) {
        MeasureOptions o = base;
        o.pixel_size_mm = r.pixel_size_mm;
        return measurer.measure_file(r.image_path, o);
    };
}

std::vector<ImageScore> score_records(const std::vector<Hc18Record>& records, const MeasureRecordFn& measure,
                                      const ScoreOptions& opt) {
    std::vector<ImageScore> out;
    out.reserve(records.size());
    for (const auto& r : records) {
        const auto m = measure(r);
        out.push_back(opt.shape_metrics ? score_image(r, m) : score_hc(r.filename, r.hc_mm, r.pixel_size_mm, m));
        if (opt.progress) opt.progress(out.size(), records.size());
    }
    return out;
}

ScoreSummary summarize(const std::vector<ImageScore>& scores, int trimester) {
    ScoreSummary s;
    std::vector<double> abs_err, signed_err, dc, hd;
    for (const auto& r : scores) {
        if (trimester && r.trimester != trimester) continue;
        ++s.images;
        abs_err.push_back(r.abs_error_mm);
        s.over_10mm += r.abs_error_mm > 10;
        if (r.has_shape) dc.push_back(r.dice);
        if (!r.measured()) {
            ++s.failed;
            continue;
        }
        signed_err.push_back(r.error_mm);
        if (r.has_shape) hd.push_back(r.hausdorff_mm);
        const bool flagged = r.flagged();
        s.flagged_review += flagged;
        if (r.abs_error_mm > 5) {
            ++s.errors_over_5mm;
            s.errors_over_5mm_flagged += flagged;
        } else {
            ++s.good;
            s.good_flagged += flagged;
        }
        if (r.abs_error_mm > 0.1 * r.ref_hc_mm) {
            ++s.errors_over_10pct;
            s.errors_over_10pct_flagged += flagged;
        }
        if (r.abs_error_mm > 0.05 * r.ref_hc_mm) {
            ++s.errors_over_5pct;
            s.errors_over_5pct_flagged += flagged;
        } else {
            ++s.within_5pct;
            s.within_5pct_flagged += flagged;
        }
        if (const auto& iv = r.measurement->interval) {
            ++s.interval_images;
            s.interval_covered += r.ref_hc_mm >= iv->low_mm && r.ref_hc_mm <= iv->high_mm;
        }
    }
    s.hc_abs_error_mm = mean_sd(abs_err);
    s.hc_signed_error_mm = mean_sd(signed_err);
    s.dice = mean_sd(dc);
    s.hausdorff_mm = mean_sd(hd);
    return s;
}

EvaluationReport evaluate(std::vector<ImageScore> scores) {
    EvaluationReport rep;
    rep.overall = summarize(scores);
    for (int t = 1; t <= 3; ++t) rep.trimester[t - 1] = summarize(scores, t);
    rep.trimester_boundaries_hc_mm[0] = intergrowth_hc_median(14);
    rep.trimester_boundaries_hc_mm[1] = intergrowth_hc_median(28);
    std::vector<Detection> dets;
    double ms = 0;
    for (const auto& r : scores) {
        Detection d;
        if (r.measured()) {
            d.detected = true;
            d.score = r.measurement->presence;
            d.iou = r.iou;
            ms += r.measurement->timings.total_ms;
        }
        dets.push_back(d);
    }
    rep.mask_ap50 = average_precision(dets, 0.5);
    rep.mask_ap = pass_rate(dets, average_precision);
    rep.mask_ar = pass_rate(dets, recall);
    rep.mean_ms_per_image = scores.empty() ? 0 : ms / scores.size();
    rep.images = std::move(scores);
    return rep;
}

json to_json(const ScoreSummary& s) {
    return {{"images", s.images},
            {"failed", s.failed},
            {"flagged_review", s.flagged_review},
            {"hc_abs_diff_mm", mean_sd_json(s.hc_abs_error_mm)},
            {"hc_signed_diff_mm", mean_sd_json(s.hc_signed_error_mm)},
            {"dice", mean_sd_json(s.dice)},
            {"hausdorff_mm", mean_sd_json(s.hausdorff_mm)},
            {"over_10mm", s.over_10mm},
            {"review_flag",
             {{"errors_over_5mm", s.errors_over_5mm},
              {"errors_over_5mm_flagged", s.errors_over_5mm_flagged},
              {"good_flagged", s.good_flagged},
              {"good", s.good},
              {"errors_over_10pct", s.errors_over_10pct},
              {"errors_over_10pct_flagged", s.errors_over_10pct_flagged},
              {"errors_over_5pct", s.errors_over_5pct},
              {"errors_over_5pct_flagged", s.errors_over_5pct_flagged},
              {"within_5pct", s.within_5pct},
              {"within_5pct_flagged", s.within_5pct_flagged}}},
            {"hc_interval",
             {{"images", s.interval_images},
              {"covered", s.interval_covered},
              {"coverage", s.interval_images ? json(double(s.interval_covered) / s.interval_images) : json(nullptr)}}}};
}

json to_json(const EvaluationReport& rep, int worst) {
    json out;
    out["overall"] = to_json(rep.overall);
    out["failures_counted_as"] = "an HC error of the whole reference HC; Dice 0; left out of Hausdorff and the signed bias";
    out["trimester_boundaries_hc_mm"] = {rep.trimester_boundaries_hc_mm[0], rep.trimester_boundaries_hc_mm[1]};
    out["per_trimester"] = {{"first", to_json(rep.trimester[0])},
                            {"second", to_json(rep.trimester[1])},
                            {"third", to_json(rep.trimester[2])}};
    out["mask_ap50"] = rep.mask_ap50;
    out["mask_ap"] = rep.mask_ap;
    out["mask_ar"] = rep.mask_ar;
    out["mean_ms_per_image"] = rep.mean_ms_per_image;
    std::vector<const ImageScore*> order;
    for (const auto& r : rep.images) order.push_back(&r);
    std::stable_sort(order.begin(), order.end(), [](const ImageScore* x, const ImageScore* y) {
        const double ex = x->measured() ? x->abs_error_mm : std::numeric_limits<double>::infinity();
        const double ey = y->measured() ? y->abs_error_mm : std::numeric_limits<double>::infinity();
        return ex > ey;
    });
    json w = json::array();
    for (int i = 0; i < std::min<int>(worst, int(order.size())); ++i) {
        const ImageScore& r = *order[i];
        json row{{"file", r.file}, {"ref_hc_mm", r.ref_hc_mm}, {"trimester", r.trimester}};
        if (r.measured())
            row.update({{"hc_mm", r.hc_mm}, {"diff_mm", r.error_mm}, {"dice", r.dice}, {"quality", r.measurement->quality}});
        else
            row["error"] = r.error;
        w.push_back(row);
    }
    out["worst"] = w;
    return out;
}

namespace {

// The per-image CSV; with `fold`, a last column `fold` (the fold of each image, in report order).
void write_per_image_rows(const EvaluationReport& rep, std::ostream& out, const std::vector<int>* fold) {
    CsvWriter w(out);
    for (const char* h : {"filename", "ref_hc_mm", "hc_mm", "diff_mm", "dice", "hausdorff_mm", "trimester", "quality",
                          "detection_score", "certainty", "fit_rms_px", "inlier_share", "cut_share", "refine_presence",
                          "rival_share", "second_look", "skull_evidence", "ring_contrast", "seg_agreement", "head_fraction",
                          "member_disagreement", "second_opinion_rel", "head_check", "extra_passes", "rival_head_check", "chose_rival",
                          "reasons_or_error"})
        w.raw(h);
    if (fold) w.raw("fold");
    w.end_row();
    for (size_t i = 0; i < rep.images.size(); ++i) {
        const ImageScore& r = rep.images[i];
        w.text(r.file).number(r.ref_hc_mm, 2);
        if (!r.measured()) {
            w.empty(4).integer(r.trimester).empty(19).text(r.error);
            if (fold) w.integer(i < fold->size() ? (*fold)[i] : -1);
            w.end_row();
            continue;
        }
        const Measurement& m = *r.measurement;
        std::string reasons;
        for (const auto& s : m.reasons) reasons += (reasons.empty() ? "" : "; ") + s;
        w.number(r.hc_mm, 2).number(r.error_mm, 2);
        if (r.has_shape) w.number(r.dice, 4).number(r.hausdorff_mm, 2);
        else w.empty(2);
        w.integer(r.trimester).text(m.quality).number(m.presence, 3).number(m.certainty, 3).number(m.fit_rms_px, 3);
        w.number(double(m.inliers) / std::max(1, m.boundary_points), 3);
        w.number(double(m.cut_points) / std::max(1, m.cut_points + m.boundary_points), 3);
        const ReviewSignals& g = m.signals;
        w.number(g.refine_presence, 3).number(g.rival_share, 3).integer(g.second_look ? 1 : 0).number(g.skull_evidence, 3);
        w.number(g.ring_contrast, 3).number(g.seg_agreement, 3).number(g.head_fraction, 3).number(g.member_disagreement, 4);
        w.number(g.second_opinion_rel, 5).number(g.head_check < 0 ? NAN : g.head_check, 4);
        w.integer(g.extra_passes).number(g.rival_head_check < 0 ? NAN : g.rival_head_check, 4).integer(g.chose_rival ? 1 : 0);
        w.text(reasons);
        if (fold) w.integer(i < fold->size() ? (*fold)[i] : -1);
        w.end_row();
    }
}

}  // namespace

void write_per_image_csv(const EvaluationReport& rep, std::ostream& out) { write_per_image_rows(rep, out, nullptr); }

void write_per_image_csv(const EvaluationReport& rep, std::ostream& out, const std::vector<int>& fold) {
    write_per_image_rows(rep, out, &fold);
}

FoldFigures fold_figures(const std::vector<ImageScore>& scores, const std::vector<int>& fold, int folds) {
    FoldFigures f;
    std::vector<std::vector<ImageScore>> by_fold(std::max(0, folds));
    for (size_t i = 0; i < scores.size() && i < fold.size(); ++i)
        if (fold[i] >= 0 && fold[i] < folds) by_fold[fold[i]].push_back(scores[i]);
    std::vector<double> mad, dice;
    for (const auto& s : by_fold) {
        f.folds.push_back(summarize(s));
        if (f.folds.back().images == 0) continue;
        mad.push_back(f.folds.back().hc_abs_error_mm.mean);
        dice.push_back(f.folds.back().dice.mean);
    }
    f.hc_mad_mm = mean_sd(mad);
    f.dice = mean_sd(dice);
    return f;
}

Expected<Split> model_split(const std::vector<Hc18Record>& records, const std::string& metadata) {
    const auto spec = recorded_split(metadata);
    if (!spec)
        return make_error(ErrorKind::ModelUnavailable, "the model records no training split (metadata keys split_salt, validation_fraction)");
    if (spec->folds > 0) {
        if (spec->folds < 2 || spec->fold < 0 || spec->fold >= spec->folds)
            return make_error(ErrorKind::ModelUnavailable, "the model records an invalid k-fold split (fold " +
                                                               std::to_string(spec->fold) + " of " + std::to_string(spec->folds) + ")");
        return kfold_split(records, spec->folds, spec->fold, spec->salt);
    }
    return grouped_split(records, spec->validation_fraction, spec->salt);
}

namespace {

// Fold i's head check of a head-check run folder, checked to hold out the same examinations.
Expected<std::optional<HeadCheck>> out_of_fold_check(const std::string& run, int i, const SplitSpec& spec) {
    if (run.empty()) return std::optional<HeadCheck>();
    const std::string path = (std::filesystem::path(run) / ("fold" + std::to_string(i)) / "model.pt").string();
    auto c = HeadCheck::load(path);
    if (!c) return c.error_value();
    const auto meta = nlohmann::json::parse(c->metadata(), nullptr, false);
    const bool same = meta.is_object() && meta.value("fold", -1) == i && meta.contains("recipe") &&
                      meta["recipe"].value("folds", 0) == spec.folds && meta["recipe"].value("hc18_split_salt", "") == spec.salt;
    if (!same)
        return make_error(ErrorKind::ModelUnavailable, "head check '" + path + "' does not record fold " + std::to_string(i) +
                                                           " of the " + std::to_string(spec.folds) + "-fold split (split_salt \"" +
                                                           spec.salt + "\") of the segmentation models");
    return std::optional<HeadCheck>(std::move(*c));
}

}  // namespace

Expected<OutOfFold> evaluate_out_of_fold(const std::vector<Hc18Record>& records, const std::string& run_dir,
                                         const SegmenterOptions& model_options, const ScoreOptions& opt) {
    namespace fs = std::filesystem;
    auto path = [&](int i) { return (fs::path(run_dir) / ("fold" + std::to_string(i)) / "model.pt").string(); };
    auto load = [&](int i) -> Expected<Segmenter> {
        if (!fs::is_regular_file(path(i)))
            return make_error(ErrorKind::NotFound, "fold " + std::to_string(i) + " model '" + path(i) + "' is missing");
        return Segmenter::load(path(i), model_options);
    };
    auto first = load(0);
    if (!first) return first.error_value();
    const auto spec = recorded_split(first->info().metadata);
    if (!spec || spec->folds < 2)
        return make_error(ErrorKind::ModelUnavailable, "'" + path(0) + "' is not a k-fold model (its metadata records no folds/fold)");
    OutOfFold out;
    out.fold = kfold_assignment(records, spec->folds, spec->salt);
    out.scores.resize(records.size());
    for (int i = 0; i < spec->folds; ++i) {
        auto seg = i == 0 ? std::move(first) : load(i);
        if (!seg) return seg.error_value();
        const auto s = recorded_split(seg->info().metadata);
        if (!s || s->folds != spec->folds || s->fold != i || s->salt != spec->salt)
            return make_error(ErrorKind::ModelUnavailable,
                              "'" + path(i) + "' does not record fold " + std::to_string(i) + " of the " +
                                  std::to_string(spec->folds) + "-fold split (split_salt \"" + spec->salt + "\") that '" +
                                  path(0) + "' records; fold models of different runs or splits cannot be mixed");
        out.models.push_back(path(i));
        auto split = model_split(records, seg->info().metadata);
        if (!split) return split.error_value().prefixed("'" + path(i) + "': ");
        auto check = out_of_fold_check(opt.head_check_run, i, *spec);
        if (!check) return check.error_value();
        Measurer measurer(*seg, std::move(*check));
        auto sc = score_records(split->validation, measure_with(measurer, opt.measure), opt);
        size_t j = 0;
        for (size_t r = 0; r < records.size(); ++r) {
            if (out.fold[r] != i) continue;
            if (j >= sc.size() || sc[j].file != records[r].filename)
                return make_error(ErrorKind::ModelUnavailable, "'" + path(i) + "': its held-out images differ from the fold assignment");
            out.scores[r] = std::move(sc[j++]);
        }
    }
    return out;
}

Expected<Calibration> calibrate_axis_scale(const Split& split, double stored_axis_scale, const MeasureRecordFn& measure,
                                           const ScoreOptions& opt) {
    Calibration c;
    c.training_images = int(split.train.size());
    c.masks_factor = mask_to_reference_scale(split.train);
    if (!std::isfinite(c.masks_factor))
        return make_error(ErrorKind::NotFound, "no training masks found (the *_Mask.png files of the training split)");
    ScoreOptions so = opt;
    so.shape_metrics = false;
    const auto scores = score_records(split.train, measure, so);
    // HC is proportional to the axis scale: rescale what was measured with the stored scale to
    // what the masks factor alone would give.
    size_t i = 0;
    c.measured_factor = measured_to_reference_scale(split.train, [&](const Hc18Record&) -> std::optional<double> {
        const ImageScore& s = scores[i++];
        if (!s.measured()) return std::nullopt;
        ++c.measured_images;
        return s.hc_mm * c.masks_factor / stored_axis_scale;
    });
    if (!std::isfinite(c.measured_factor)) return make_error(ErrorKind::NoHeadFound, "the model measured none of the training images");
    c.axis_scale = c.masks_factor * c.measured_factor;
    return c;
}

}  // namespace fetalhc
