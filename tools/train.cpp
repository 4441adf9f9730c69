// `fetalhc train`: trains the segmentation network from scratch (LibTorch, CPU).
#include "cli.h"

#include "fetalhc/fetalhc.h"

#include <cstdio>

namespace fetalhc_cli {
namespace {

struct TrainArgs {
    std::string data, config, out;
    bool resume = false;
    long long max_steps = -1;
    int limit = 0;
};

int run_train(const TrainArgs& a) {
    auto cfg = fetalhc::load_train_config(a.config);
    if (!cfg) return error(cfg.error()), kExitUsage;
    fetalhc::TrainOptions o;
    o.data_dir = a.data;
    o.out_dir = a.out;
    o.resume = a.resume;
    o.max_steps = a.max_steps;
    o.limit = a.limit;
    auto r = fetalhc::train(*cfg, o);
    if (!r) return error(r.error()), kExitSomeFailed;
    std::fprintf(stderr, "model: %s (best validation HC MAD %.2f mm, %d epochs, %.0f s)\n", r->model_path.c_str(),
                 r->best_hc_mad_mm, r->epochs_done, r->wall_seconds);
    return kExitOk;
}

}  // namespace

void add_train_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<TrainArgs>();
    auto* cmd = app.add_subcommand("train", "train the segmentation network from scratch (LibTorch, CPU)");
    cmd->add_option("--data", a->data, "HC18-layout data folder")->required();
    cmd->add_option("--config", a->config, "training config JSON (see configs/default.json)")->required();
    cmd->add_option("--out", a->out, "run folder: checkpoints, split.json, report.json, model.pt")->required();
    cmd->add_flag("--resume", a->resume, "resume from the run folder's last checkpoint");
    cmd->add_option("--max-steps", a->max_steps, "stop after this many optimizer steps (smoke tests)");
    cmd->add_option("--limit", a->limit, "use at most N images on each side of the split (smoke tests)");
    commands.push_back({cmd, [a] { return run_train(*a); }});
}

}  // namespace fetalhc_cli
