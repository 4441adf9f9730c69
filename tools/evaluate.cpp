// `fetalhc evaluate`: HC18 metrics of a model on a labelled folder (all images, or the model's
// own grouped validation or training split).
#include "cli.h"
#include "progress.h"

#include "fetalhc/evaluation.h"
#include "fetalhc/fetalhc.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

using nlohmann::json;

namespace fetalhc_cli {
namespace {

struct EvalArgs {
    std::string data, model = default_model(), split = "validation";
    bool json_out = false, quiet = false, second_opinion = false, mirror = false, single_look = false, int8 = false;
    int worst = 10, threads = 0;
    std::string per_image_csv;
    std::string oof;  // k-fold run folder: out-of-fold evaluation
    std::string head_check;  // --head-check: "" (beside the model), "none", a file, or with --oof a head-check run folder
};

// True when the model's recorded split holds every labelled image for training (fetalhc train --all-images).
bool trained_on_every_image(const fetalhc::Expected<fetalhc::Split>& s) {
    return s && s->validation.empty() && !s->train.empty();
}

// The records the chosen split names: the model's own grouped split `s`, read from its metadata.
fetalhc::Expected<std::vector<fetalhc::Hc18Record>> chosen_records(const EvalArgs& a,
                                                                   const std::vector<fetalhc::Hc18Record>& all,
                                                                   const fetalhc::Expected<fetalhc::Split>& s) {
    if (a.split == "all") return all;
    if (!s) return fetalhc::make_error(s.error_kind(), "model '" + a.model + "': " + s.error() + "; use --split all");
    if (a.split == "validation" && trained_on_every_image(s))
        return fetalhc::make_error(
            fetalhc::ErrorKind::InvalidArgument,
            "model '" + a.model + "' was trained on every labelled image (validation_fraction 0): no image is held out "
            "from it, so it has no validation figure. The recipe's figure is the out-of-fold one of its k-fold run "
            "(models/MODEL_CARD.md; `fetalhc evaluate --data " + a.data + " --oof RUN`); --split train or all measure "
            "images it trained on");
    return a.split == "validation" ? s->validation : s->train;
}

void print_summary_line(const char* name, const fetalhc::ScoreSummary& s) {
    std::printf("%-8s n=%4d  |HC diff| %6.2f +- %5.2f mm  signed %+6.2f mm  Dice %6.2f%%  HD %5.2f mm  >10mm %d  failed %d  review %d\n",
                name, s.images, s.hc_abs_error_mm.mean, s.hc_abs_error_mm.sd, s.hc_signed_error_mm.mean,
                100 * s.dice.mean, s.hausdorff_mm.mean, s.over_10mm, s.failed, s.flagged_review);
}

void print_table(const EvalArgs& a, const fetalhc::EvaluationReport& rep, const json& worst) {
    const char* mirror = a.mirror ? ", mirror averaging (--mirror)" : "";
    if (a.oof.empty()) std::printf("fetalhc evaluate: %s (%s split), model %s%s\n", a.data.c_str(), a.split.c_str(), a.model.c_str(), mirror);
    else std::printf("fetalhc evaluate: %s (out of fold: each image by the fold model that did not train on it), k-fold run %s%s\n",
                     a.data.c_str(), a.oof.c_str(), mirror);
    print_summary_line("all", rep.overall);
    const auto& o = rep.overall;
    std::printf("review flag: %d of %d errors > 5 mm flagged; %d of %d others flagged needlessly\n",
                o.errors_over_5mm_flagged, o.errors_over_5mm, o.good_flagged, o.good);
    std::printf("            %d of %d errors > 10%% of the reference HC flagged\n", o.errors_over_10pct_flagged, o.errors_over_10pct);
    std::printf("            %d of %d errors > 5%% of the reference HC flagged; %d of %d within 5%% flagged needlessly (%.1f%%)\n",
                o.errors_over_5pct_flagged, o.errors_over_5pct, o.within_5pct_flagged, o.within_5pct,
                o.within_5pct ? 100.0 * o.within_5pct_flagged / o.within_5pct : 0.0);
    if (o.interval_images)
        std::printf("HC interval: reference inside for %d of %d measured images (%.1f%%)\n", o.interval_covered,
                    o.interval_images, 100.0 * o.interval_covered / o.interval_images);
    const char* names[3] = {"first", "second", "third"};
    for (int t = 0; t < 3; ++t)
        if (rep.trimester[t].images > 0) print_summary_line(names[t], rep.trimester[t]);
    std::printf("mask AP50 %.3f  AP[.5:.95] %.3f  AR %.3f  mean %.1f ms/image\n", rep.mask_ap50, rep.mask_ap, rep.mask_ar,
                rep.mean_ms_per_image);
    if (o.failed) std::printf("(a failure counts as an HC error of its whole reference HC)\n");
    std::printf("worst:\n");
    for (const auto& w : worst) std::printf("  %s\n", w.dump().c_str());
}

// --oof: every labelled image measured by the fold model that held it out, then the figures of
// the whole set, of each fold, and their spread.
int run_out_of_fold(const EvalArgs& a, const std::vector<fetalhc::Hc18Record>& recs) {
    Progress progress(int(recs.size()), !a.quiet);
    fetalhc::ScoreOptions so;
    so.progress = [&](size_t, size_t) { progress.step(); };
    so.measure.second_opinion = a.second_opinion;
    so.measure.targeted_second_opinion = !a.single_look;
    // Out of fold, a check trained on every image would have seen the images it scores: only a
    // head-check run folder (its fold models) is used, and none by default.
    if (!a.head_check.empty() && a.head_check != "none") {
        if (!std::filesystem::is_directory(a.head_check))
            return error("with --oof, --head-check names a head-check run folder (fetalhc train-head-check --out DIR), whose "
                         "fold models hold out the same examinations as the segmentation folds; '" + a.head_check +
                         "' is not a folder"), kExitUsage;
        so.head_check_run = a.head_check;
    }
    auto oof = fetalhc::evaluate_out_of_fold(recs, a.oof, {a.threads, a.mirror, a.int8}, so);
    if (!oof) return error(oof.error() + " (k-fold run folder '" + a.oof + "'; `fetalhc train --data " + a.data +
                           " --kfold K --out " + a.oof + "` finishes or resumes it)"), kExitUsage;
    progress.finish();
    const int k = int(oof->models.size());
    const std::vector<int>& fold = oof->fold;
    std::vector<fetalhc::ImageScore> scores = std::move(oof->scores);
    const fetalhc::FoldFigures ff = fetalhc::fold_figures(scores, fold, k);
    const fetalhc::EvaluationReport rep = fetalhc::evaluate(std::move(scores));
    json out = fetalhc::to_json(rep, a.worst);
    out["data"] = a.data;
    out["oof"] = a.oof;
    out["split"] = "out-of-fold";
    out["mirror_average"] = a.mirror;
    out["int8"] = a.int8;
    out["head_check"] = so.head_check_run.empty() ? json(nullptr) : json(so.head_check_run);
    out["folds"] = json::array();
    for (const auto& f : ff.folds) out["folds"].push_back(fetalhc::to_json(f));
    out["fold_hc_mad_mm"] = {{"mean", ff.hc_mad_mm.mean}, {"sd", ff.hc_mad_mm.sd}, {"n", ff.hc_mad_mm.n}};
    out["fold_dice"] = {{"mean", ff.dice.mean}, {"sd", ff.dice.sd}, {"n", ff.dice.n}};
    if (!a.per_image_csv.empty()) {
        std::ofstream f(a.per_image_csv);
        fetalhc::write_per_image_csv(rep, f, fold);
        if (!f.flush()) return error("cannot write '" + a.per_image_csv + "': check the folder exists and is writable"), kExitSomeFailed;
    }
    if (a.json_out) {
        std::printf("%s\n", out.dump(2).c_str());
    } else {
        print_table(a, rep, out["worst"]);
        for (int i = 0; i < k; ++i) print_summary_line(("fold " + std::to_string(i)).c_str(), ff.folds[i]);
        std::printf("over %d folds: HC MAD %.2f +- %.2f mm (mean +- SD of the per-fold HC MAD), Dice %.2f +- %.2f%%\n", k,
                    ff.hc_mad_mm.mean, ff.hc_mad_mm.sd, 100 * ff.dice.mean, 100 * ff.dice.sd);
    }
    return rep.overall.failed > 0 ? kExitSomeFailed : kExitOk;
}

// Scores are computed by the library's evaluation module (fetalhc/evaluation.h); this only
// chooses the images, shows progress and prints.
int run_evaluate(const EvalArgs& a) {
    auto recs = fetalhc::read_hc18_training(a.data);
    if (!recs) return fail(recs.error_value());
    if (!a.oof.empty()) return run_out_of_fold(a, *recs);
    if (!check_model_file(a.model)) return kExitUsage;
    auto seg = fetalhc::Segmenter::load(a.model, {a.threads, a.mirror, a.int8});
    if (!seg) return fail(seg.error_value());
    const auto split = fetalhc::model_split(*recs, seg->info().metadata);
    auto chosen = chosen_records(a, *recs, split);
    if (!chosen) return fail(chosen.error_value());
    std::optional<fetalhc::HeadCheck> check;
    if (!load_head_check(a.head_check, a.model, check)) return kExitUsage;
    fetalhc::Measurer measurer(*seg, std::move(check));
    Progress progress(int(chosen->size()), !a.quiet);
    fetalhc::ScoreOptions so;
    so.progress = [&](size_t, size_t) { progress.step(); };
    fetalhc::MeasureOptions base;
    base.second_opinion = a.second_opinion;
    base.targeted_second_opinion = !a.single_look;
    const fetalhc::EvaluationReport rep =
        fetalhc::evaluate(fetalhc::score_records(*chosen, fetalhc::measure_with(measurer, base), so));
    progress.finish();
    json out = fetalhc::to_json(rep, a.worst);
    out["data"] = a.data;
    out["model"] = a.model;
    out["split"] = a.split;
    out["mirror_average"] = a.mirror;
    out["int8"] = a.int8;
    if (!a.per_image_csv.empty()) {
        std::ofstream f(a.per_image_csv);
        fetalhc::write_per_image_csv(rep, f);
        if (!f.flush()) return error("cannot write '" + a.per_image_csv + "': check the folder exists and is writable"), kExitSomeFailed;
    }
    const bool saw_all = trained_on_every_image(split);
    if (saw_all) out["note"] = "the model was trained on every labelled image: these are training images, not an accuracy figure";
    if (a.json_out) std::printf("%s\n", out.dump(2).c_str());
    else print_table(a, rep, out["worst"]);
    if (saw_all && !a.json_out) std::printf("note: %s\n", out["note"].get<std::string>().c_str());
    return rep.overall.failed > 0 ? kExitSomeFailed : kExitOk;
}

}  // namespace

void add_evaluate_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<EvalArgs>();
    auto* cmd = app.add_subcommand("evaluate", "HC18 metrics (HC difference, Dice, Hausdorff, mask AP/AR) on a labelled folder");
    cmd->add_option("--data", a->data, "HC18-layout folder (training_set/ + training_set_pixel_size_and_HC.csv)")->required();
    cmd->add_option("--split", a->split,
                    "which images: the model's grouped validation split (images it was not trained on), its train "
                    "split, or all (optimistic for a model trained on this folder)")
        ->check(CLI::IsMember({"all", "validation", "train"}))
        ->capture_default_str();
    cmd->add_option("--oof", a->oof,
                    "k-fold run folder (fetalhc train --kfold): measure every labelled image with the fold model that "
                    "did not train on it; per-fold figures and their spread (--split and --model do not apply)");
    cmd->add_flag("--json", a->json_out, "print JSON instead of a table");
    cmd->add_option("--per-image", a->per_image_csv, "also write one CSV row per image (errors, quality signals, reasons)");
    cmd->add_option("--worst", a->worst, "how many worst cases to list")->capture_default_str();
    cmd->add_option("--threads", a->threads, "CPU threads (0 = all cores; at most the core count)")->capture_default_str();
    add_model_option(cmd, a->model);
    add_head_check_option(cmd, a->head_check)
        ->description("head-check model (default: " + std::string(fetalhc::kHeadCheckFileName) +
                      " beside --model; 'none': without); with --oof a head-check run folder (train-head-check --out), "
                      "whose fold i scores fold i's images, and none by default");
    add_quiet_flag(cmd, a->quiet);
    add_mirror_flag(cmd, a->mirror);
    add_int8_flag(cmd, a->int8);
    add_single_look_flag(cmd, a->single_look);
    cmd->add_flag("--second-opinion", a->second_opinion,
                  "also measure each image mirrored (its second pass on another crop) and record the relative HC difference");
    commands.push_back({cmd, [a] {
                            if (!bound_thread_count(a->threads, "--threads")) return kExitUsage;
                            return run_evaluate(*a);
                        }});
}

}  // namespace fetalhc_cli
