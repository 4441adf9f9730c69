// Internal: what a training run writes to its folder (LibTorch): the per-epoch checkpoint that
// --resume reads back, and the best model.
//
// Files in out_dir: checkpoint_model.pt, checkpoint_optim.pt (and checkpoint_ema.pt with
// ema_decay > 0) hold the raw weights, the optimizer state and the weight average, in float32; the
// two weight files also record the run's split (metadata "split_salt", "validation_fraction"), so
// that `model average` can check them. checkpoint.json holds the position (epochs done, steps,
// best figure, history, wall time). model.pt is the best epoch's model file (see network.h).
#pragma once

#include "network.h"

#include "fetalhc/expected.h"
#include "fetalhc/trainer.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <limits>
#include <string>

namespace fetalhc::training {

// Where a run stands, saved after every epoch.
struct RunState {
    int epochs_done = 0;
    long long step = 0;  // optimizer steps done
    double best_hc_mad_mm = std::numeric_limits<double>::infinity();
    double prior_seconds = 0;  // wall time of the runs before a resume
    nlohmann::json history = nlohmann::json::array();  // one object per epoch
};

// The networks and optimizer of a run; ema is null without weight averaging.
struct RunWeights {
    detail::UNet net{nullptr}, ema{nullptr};
    std::unique_ptr<torch::optim::Optimizer> optim;
};

// Reads the checkpoint in out_dir into `w` (same config as the run that wrote it). Errors name
// the folder and say what to do (no checkpoint, or averaging switched on after the start).
Expected<RunState> read_checkpoint(const std::filesystem::path& out_dir, RunWeights& w);

// Writes the checkpoint (each file through a temporary and a rename). `wall_seconds`: the run's
// wall time so far, resumes included. `split_meta`: the run's split as metadata JSON
// (detail::split_metadata).
void write_checkpoint(const std::filesystem::path& out_dir, RunWeights& w, const RunState& st, double wall_seconds,
                      const std::string& split_meta);

}  // namespace fetalhc::training
