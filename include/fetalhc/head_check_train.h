// fetalhc/head_check_train.h - trains the head check (fetalhc/head_check.h) and measures it
// (issue 24). LibTorch, CPU; used by `fetalhc train-head-check`.
//
//   fetalhc::HeadCheckTrainOptions o;
//   o.hc18_dir = "../shared/hc18"; o.planes_dir = "../shared/planes";
//   o.seg_model = "models/fetalhc_unet.pt"; o.out_dir = "runs/head_check";
//   auto r = fetalhc::train_head_check(o);   // rerun with o.resume = true to go on after a stop
//
// Data. Positives: HC18 training images cropped on their reference ellipse (jittered as a fit
// error would move it) and the planes folder's brain_tt / brain_tc rows cropped on the ellipse
// the segmentation model measures on them. Negatives: the planes folder's other rows cropped on
// the ellipse measured on them (or, when the measurement refuses the image, the first pass's own
// outline), and, on every HC18 image, outlines on other structures (same size, centred outside
// the head) or much too small or too large around the head. The measured planes ellipses are
// cached in OUT/planes_ellipses.csv.
// Split. Planes rows by patient: a fixed hash of the patient id sends ~40% of the patients to the
// held-back side, never trained on. HC18 by examination in `folds` folds (kfold_assignment with
// the segmenter's k-fold salt, so that OUT/fold<i> never saw the images `fetalhc train --kfold`'s
// fold i holds out): one model per fold gives every HC18 image an out-of-fold score, and a last
// model (OUT/all) trains on every HC18 image; every model trains on the planes training rows.
// Thresholds (refuse below, review below) are chosen on the training rows only: the HC18
// out-of-fold head scores. OUT/report.json holds the figures; OUT/model.pt is the final model;
// the fold models (OUT/fold<i>/model.pt) carry the same thresholds, for out-of-fold evaluation
// (`fetalhc evaluate --oof KFOLD_RUN --head-check OUT`).
// Resume: each model checkpoints after every epoch (OUT/<stage>/checkpoint.pt); finished stages
// (OUT/<stage>/model.pt) are skipped.
// Thread safety: one training per output folder.
#pragma once

#include "fetalhc/expected.h"

#include <string>

namespace fetalhc {

struct HeadCheckTrainOptions {
    std::string hc18_dir, planes_dir, seg_model, out_dir;
    bool resume = false;  // go on from OUT's checkpoints (without it, OUT must hold no run)
    int folds = 5;        // 0: no out-of-fold models (the final model only; no HC18 figure)
    // HC18 fold split: the segmenter's k-fold split (TrainConfig::split_salt of configs/), so
    // that check fold i and segmenter fold i hold out the same examinations.
    std::string hc18_split_salt = "fetalhc-split-v1";
    int epochs = 14;
    int batch = 32;
    int threads = 2;      // torch::set_num_threads
    long long max_steps = -1;  // stop every stage after this many steps (smoke tests)
    int limit = 0;             // use at most N HC18 images and N planes rows (smoke tests)
    unsigned seed = 24;
};

struct HeadCheckTrainReport {
    std::string model_path;   // OUT/model.pt
    std::string report_path;  // OUT/report.json
    double refuse_below = 0, review_below = 0;
    double wall_seconds = 0;  // this call's
};

Expected<HeadCheckTrainReport> train_head_check(const HeadCheckTrainOptions& opt);

}  // namespace fetalhc
