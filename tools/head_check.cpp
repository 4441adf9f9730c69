// `fetalhc train-head-check`: trains the head check (is the outline a fetal head in the HC plane?)
// and writes its figures (fetalhc/head_check_train.h). LibTorch, CPU; resumable.
#include "cli.h"

#include "fetalhc/head_check_train.h"

#include <cstdio>

namespace fetalhc_cli {

void add_train_head_check_command(CLI::App& app, Commands& commands) {
    auto o = std::make_shared<fetalhc::HeadCheckTrainOptions>();
    auto* cmd = app.add_subcommand("train-head-check",
                                   "train the head-vs-other check on crops around the measured ellipse (LibTorch, CPU)");
    cmd->add_option("--data", o->hc18_dir, "HC18-layout data folder (with training_set_ellipses.csv)")->required();
    cmd->add_option("--planes", o->planes_dir, "planes folder (labels.csv, images/)")->required();
    cmd->add_option("--model", o->seg_model, "segmentation model that measures the planes images")->required();
    cmd->add_option("--out", o->out_dir, "run folder: fold models, checkpoints, report.json, model.pt")->required();
    cmd->add_flag("--resume", o->resume, "go on from the run folder's checkpoints (finished models are kept)");
    cmd->add_option("--folds", o->folds, "HC18 folds for out-of-fold scores (0: final model only)")->capture_default_str();
    cmd->add_option("--epochs", o->epochs, "epochs per model")->capture_default_str();
    cmd->add_option("--threads", o->threads, "LibTorch threads")->capture_default_str();
    cmd->add_option("--max-steps", o->max_steps, "stop every model after this many steps (smoke tests)");
    cmd->add_option("--limit", o->limit, "use at most N HC18 images and N planes rows (smoke tests)");
    commands.push_back({cmd, [o] {
                            auto r = fetalhc::train_head_check(*o);
                            if (!r) return fail(r.error_value());
                            std::fprintf(stderr, "head check: %s (refuse below %.3f, review below %.3f), figures in %s, %.0f s\n",
                                         r->model_path.c_str(), r->refuse_below, r->review_below, r->report_path.c_str(),
                                         r->wall_seconds);
                            return kExitOk;
                        }});
}

}  // namespace fetalhc_cli
