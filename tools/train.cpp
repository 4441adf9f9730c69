// `fetalhc train`: trains the segmentation network from scratch (LibTorch, CPU).
#include "cli.h"

#include "fetalhc/fetalhc.h"
#include "fetalhc/trainer.h"

#include <cmath>
#include <cstdio>

namespace fetalhc_cli {
namespace {

struct TrainArgs {
    std::string data, config, out, refine_config = "configs/refine.json";
    bool resume = false;
    long long max_steps = -1;
    int limit = 0, kfold = 0;
    bool all_images = false;
};

// --kfold K: the shipped two-stage recipe on each of K folds (fetalhc::train_kfold), resumable;
// --all-images: the same recipe on every labelled image (fetalhc::train_all_images).
int run_recipe(const TrainArgs& a) {
    auto coarse = fetalhc::load_train_config(a.config.empty() ? "configs/default.json" : a.config);
    if (!coarse) return fail(coarse.error_value());
    auto refine = fetalhc::load_train_config(a.refine_config);
    if (!refine) return fail(refine.error_value());
    fetalhc::KFoldOptions o;
    o.data_dir = a.data;
    o.out_dir = a.out;
    o.folds = a.kfold;
    o.max_steps = a.max_steps;
    o.limit = a.limit;
    if (a.all_images) {
        auto r = fetalhc::train_all_images(*coarse, *refine, o);
        if (!r) return fail(r.error_value());
        std::fprintf(stderr, "model trained on every labelled image: %s (no validation figure: the k-fold run's out-of-fold "
                             "figure is the recipe's, `fetalhc evaluate --oof`)\n", r->models[0].c_str());
        return kExitOk;
    }
    auto r = fetalhc::train_kfold(*coarse, *refine, o);
    if (!r) return fail(r.error_value());
    std::fprintf(stderr, "k-fold models (%d stages trained, %d skipped as finished):\n", r->stages_trained, r->stages_skipped);
    for (const auto& m : r->models) std::fprintf(stderr, "  %s\n", m.c_str());
    std::fprintf(stderr, "out-of-fold figures: fetalhc evaluate --data %s --oof %s\n", a.data.c_str(), a.out.c_str());
    return kExitOk;
}

int run_train(const TrainArgs& a) {
    if (a.kfold != 0 && a.all_images) return error("--kfold and --all-images are two runs: give one of them"), kExitUsage;
    if (a.kfold != 0 || a.all_images) {
        if (a.resume)
            return error(std::string("--resume is implied by ") + (a.all_images ? "--all-images" : "--kfold") +
                         " (finished stages are skipped, interrupted ones resumed)"), kExitUsage;
        return run_recipe(a);
    }
    if (a.config.empty()) return error("--config is required (e.g. configs/default.json), or give --kfold K"), kExitUsage;
    auto cfg = fetalhc::load_train_config(a.config);
    if (!cfg) return fail(cfg.error_value());
    fetalhc::TrainOptions o;
    o.data_dir = a.data;
    o.out_dir = a.out;
    o.resume = a.resume;
    o.max_steps = a.max_steps;
    o.limit = a.limit;
    auto r = fetalhc::train(*cfg, o);
    if (!r) return fail(r.error_value());
    if (std::isnan(r->best_hc_mad_mm))
        std::fprintf(stderr, "model: %s (no validation images, last epoch kept; %d epochs, %.0f s)\n", r->model_path.c_str(),
                     r->epochs_done, r->wall_seconds);
    else
        std::fprintf(stderr, "model: %s (best validation HC MAD %.2f mm, %d epochs, %.0f s)\n", r->model_path.c_str(),
                     r->best_hc_mad_mm, r->epochs_done, r->wall_seconds);
    return kExitOk;
}

}  // namespace

void add_train_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<TrainArgs>();
    auto* cmd = app.add_subcommand("train", "train the segmentation network from scratch (LibTorch, CPU)");
    cmd->add_option("--data", a->data, "HC18-layout data folder")->required();
    cmd->add_option("--config", a->config, "training config JSON (see configs/default.json; with --kfold or --all-images the coarse stage, default configs/default.json)");
    cmd->add_option("--kfold", a->kfold,
                    "k-fold cross-validation: train coarse + refine stages and calibrate on each of K folds into "
                    "OUT/fold<i>/ (rerun to resume; finished folds are skipped)");
    cmd->add_flag("--all-images", a->all_images,
                  "the same two-stage recipe on every labelled image, no validation, last epoch kept, axis scale "
                  "calibrated: the model to ship once --kfold has measured the recipe (rerun to resume)");
    cmd->add_option("--refine-config", a->refine_config, "with --kfold or --all-images: the refine-stage config")->capture_default_str();
    cmd->add_option("--out", a->out, "run folder: checkpoints, split.json, report.json, model.pt")->required();
    cmd->add_flag("--resume", a->resume, "resume from the run folder's last checkpoint");
    cmd->add_option("--max-steps", a->max_steps, "stop after this many optimizer steps (smoke tests)");
    cmd->add_option("--limit", a->limit, "use at most N images on each side of the split (smoke tests)");
    commands.push_back({cmd, [a] { return run_train(*a); }});
}

}  // namespace fetalhc_cli
