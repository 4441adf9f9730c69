// Internal: the trainer's per-epoch validation (LibTorch): the network being trained, scored on the
// validation images of the run's split.
#pragma once

#include "data.h"
#include "network.h"

#include "fetalhc/evaluation.h"
#include "fetalhc/segmenter.h"
#include "fetalhc/trainer.h"

#include <vector>

namespace fetalhc::training {

struct EvalResult {
    double loss = 0;    // the training loss (BCE + Dice terms, no boundary weight) on the validation images
    double dice = 0;    // Dice of the 0.5-thresholded map against the mask, in the network frame
    double hc_mad = 0;  // mean |HC error| in mm over every image, failures counted as their whole HC
    int failed = 0, n = 0;
};

// The HC part of one image's score, through the library's one definition (fetalhc/evaluation.h,
// score_hc): the measured HC after boundary, fit and `seg.axis_scale`, as `fetalhc measure` would
// report it, against the reference; a failure counts as its whole reference HC.
ImageScore score_hc_error(const Segmentation& seg, const Sample& s);

// Coarse stage: the whole-image pass on each validation image (letterboxed, batches of
// cfg.batch_size, at most cfg.validation_steps batches when > 0). `net` is put in eval mode for the
// call and back in training mode after it.
EvalResult validate_coarse(detail::UNet& net, const std::vector<Sample>& val, const TrainConfig& cfg, double axis_scale);

// Refine stage: the whole two-pass pipeline on each validation image, over `first_pass` (the frozen
// coarse network's segmentation of each image, see first_pass_segmentations). Loss and Dice are
// measured in the crop; an image where no crop could be made counts as failed.
EvalResult validate_refine(detail::UNet& net, const std::vector<Sample>& val, const std::vector<Segmentation>& first_pass,
                           const TrainConfig& cfg, double axis_scale);

// The coarse network's whole-image pass on each image (`full`), as Segmenter::segment runs it.
std::vector<Segmentation> first_pass_segmentations(detail::UNet& coarse, const std::vector<Sample>& images);

}  // namespace fetalhc::training
