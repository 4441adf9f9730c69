// fetalhc/trainer.h - trains the segmentation network from scratch with LibTorch.
//
//   fetalhc::TrainConfig cfg = *fetalhc::load_train_config("configs/default.json");
//   fetalhc::TrainOptions opt{.data_dir = "../shared/hc18", .out_dir = "runs/a"};
//   auto report = fetalhc::train(cfg, opt);   // writes checkpoints, split.json, report.json
//
// Every hyper-parameter lives in the JSON config (keys as the fields below). The split is grouped
// by examination and written to out_dir/split.json; batches are drawn from its training side only.
// Training resumes from the checkpoint in out_dir with opt.resume. Seeds are fixed (config `seed`),
// so a run is repeatable on the same machine.
// Thread safety: one training per process.
#pragma once

#include "fetalhc/expected.h"
#include "fetalhc/segmenter.h"

#include <string>
#include <vector>

namespace fetalhc {

struct AugmentConfig {
    double flip_horizontal = 0.5, flip_vertical = 0.5;
    double rotate90 = 0.5;                        // probability of a 90/180/270 degree turn
    double brightness_min = 0.8, brightness_max = 1.5;
    double blur_sigma_max = 5.0;                  // Gaussian blur sigma ~ U[0, max], original pixels
    double blur_probability = 0.5;
    double rotate_degrees = 20;                   // extra small rotation ~ U[-r, r]
    double scale_min = 0.8, scale_max = 1.2;      // zoom around the image centre
    double translate = 0.1;                       // shift ~ U[-t, t] of the input size
    double contrast_gamma = 0.3;                  // gamma ~ exp(U[-g, g])
    double noise_std = 0.03;                      // additive Gaussian noise (intensity 0..1)
    double negative_probability = 0.05;           // samples shifted so no head is in view
    // Refine stage: chance that a crop is drawn as if the first pass had merged the head with its
    // surroundings: ellipse scaled by exp(U[ln scale_max, ln wide_scale_max]), centre shifted by up
    // to wide_translate semi-major axes.
    double wide_crop_probability = 0, wide_scale_max = 2.5, wide_translate = 0.8;
};

struct TrainConfig {
    NetworkConfig network;
    std::string resize_mode = "letterbox";  // the only mode: aspect kept, zero padding
    int epochs = 40;
    int steps_per_epoch = 0;       // 0 = one pass over the training images per epoch
    int validation_steps = 0;      // 0 = the whole validation split
    int batch_size = 8;
    std::string optimizer = "adam";  // "adam" (AdamW-style decoupled decay) or "sgd"
    double learning_rate = 2e-3;
    std::string schedule = "cosine";  // "cosine" or "constant" or "step"
    int warmup_steps = 100;
    double step_gamma = 0.1;          // for "step": lr *= gamma at 2/3 of training
    double momentum = 0.9;            // SGD momentum / Adam beta1
    double weight_decay = 1e-4;
    double loss_bce = 1.0, loss_dice = 1.0, loss_presence = 0.1;
    double loss_boundary = 0;         // extra BCE weight on pixels near the mask outline (0 = plain BCE)
    int boundary_band = 3;            // half-width of that band, pixels at the network input size
    // > 0: validate and save an exponential moving average of the weights, updated after every step
    // with decay min(ema_decay, (1 + t) / (10 + t)) at step t (0 = the raw weights; must be < 1).
    double ema_decay = 0;
    double validation_fraction = 0.15;
    std::string split_salt = "fetalhc-split-v1";
    // Grouped K-fold cross-validation (kfold_split in fetalhc/hc18.h): folds >= 2 trains on every
    // fold but `fold` (0..folds-1) and validates on that one; validation_fraction is then unused.
    // 0 = the plain train/validation split. Recorded in split.json and the model metadata only when
    // folds > 0, so models of different folds are never mixed.
    int folds = 0, fold = 0;
    // Which weights become model.pt: false = those of the epoch with the best validation HC MAD
    // (model selection on the validation images); true = the last epoch's, whatever validation says,
    // so that held-out images never choose the model (k-fold runs always keep the last; validation
    // then runs every 5th epoch and at the end, for the log only). Written only when true.
    bool keep_last = false;
    unsigned seed = 42;
    int threads = 0;                  // 0 = all cores
    // Start from this model file's weights (fine-tuning); "" = random. Like coarse_model, the file
    // must record this config's split (split_salt and validation_fraction in its metadata, as the
    // trainer writes them); a model of another split, or of none, is refused (see Segmenter).
    std::string init_weights;
    // "coarse": the whole-image network. "refine": the second, head-centred pass of a coarse-to-fine
    // model; trains on crops around the reference ellipses (jittered by the augment settings:
    // translate = centre shift as a fraction of the semi-major axis, scale_min/max, rotate_degrees,
    // rotate90 = chance of a half turn) and validates the whole two-pass pipeline with the frozen
    // `coarse_model`. Its model.pt holds both networks.
    std::string stage = "coarse";
    std::string coarse_model;
    double crop_margin = 1.2;         // refine: the crop is the ellipse grown by this factor
    AugmentConfig augment;
};

Expected<TrainConfig> load_train_config(const std::string& json_path);
std::string to_json(const TrainConfig& cfg);

struct TrainOptions {
    std::string data_dir;
    std::string out_dir;
    bool resume = false;
    long long max_steps = -1;  // stop after this many optimizer steps in total (-1 = no limit)
    int limit = 0;             // use only the first N images of each side of the split (0 = all)
    bool progress = true;      // progress bar with ETA on stderr
};

struct TrainReport {
    std::string model_path;    // out_dir/model.pt: the best epoch by validation HC MAD
    double best_hc_mad_mm = 0;
    double best_dice = 0;
    int epochs_done = 0;
    long long steps_done = 0;
    double wall_seconds = 0;
};

Expected<TrainReport> train(const TrainConfig& cfg, const TrainOptions& opt);

// K-fold cross-validation of a two-stage recipe (`fetalhc train --kfold K`). For each fold i of
// kfold_split (fetalhc/hc18.h; salt = the coarse config's split_salt) it runs, in out_dir/fold<i>/:
// coarse/ (the coarse config with folds = K, fold = i), refine/ (the refine config with the same
// fold, its coarse_model, and init_weights when set, replaced by coarse/model.pt), then writes
// model.pt: the refine model with its axis scale calibrated on that fold's training split
// (calibrate_axis_scale; when the model measures none of them, as after a few smoke-test steps, the
// stored scale is kept and the metadata says so). Resumable: a stage whose report.json shows it
// finished (all epochs, or opt.max_steps steps) is skipped, a stage with a checkpoint is resumed,
// a fold whose model.pt exists is skipped whole. A stage folder that records another split is an
// error. Every fold model records its fold, so `fetalhc evaluate --oof out_dir` can measure each
// image with the model that did not train on it.
struct KFoldOptions {
    std::string data_dir;
    std::string out_dir;
    int folds = 5;
    long long max_steps = -1;  // per stage (smoke tests)
    int limit = 0;             // per stage and for the calibration, as TrainOptions::limit
    bool progress = true;
};

struct KFoldReport {
    std::vector<std::string> models;  // out_dir/fold<i>/model.pt, index = fold
    int stages_trained = 0;           // stages run (or resumed) by this call
    int stages_skipped = 0;           // stages or whole folds found finished
};

Expected<KFoldReport> train_kfold(const TrainConfig& coarse, const TrainConfig& refine, const KFoldOptions& opt);

// The recipe trained on every labelled image (`fetalhc train --all-images`), for the model that
// ships once train_kfold has fixed and measured the recipe: the same two stages and calibration as
// one fold, with validation_fraction 0 and keep_last (no image is held out, none chooses the
// epoch), in out_dir/{coarse,refine}/ and out_dir/model.pt. opt.folds is unused; resumable like
// train_kfold. `fetalhc evaluate` on that model refuses its (empty) validation split.
Expected<KFoldReport> train_all_images(const TrainConfig& coarse, const TrainConfig& refine, const KFoldOptions& opt);

}  // namespace fetalhc
