// Internal: the images a training run uses: its grouped train/validation split and the samples
// loaded from it, pre-scaled for the augmentation. No LibTorch.
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"
#include "fetalhc/hc18.h"
#include "fetalhc/trainer.h"

#include <opencv2/core.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace fetalhc::training {

// One labelled image as the loop and the validation use it.
struct Sample {
    std::string filename;
    double pixel_size_mm = 0, hc_mm = 0;
    cv::Mat base, base_mask;  // image (CV_8U) and mask (CV_32F, 0..1) reduced by base_scale
    double base_scale = 1;    // base pixels per original pixel
    cv::Mat full;             // original image (validation, and the refine stage's crops)
    cv::Mat full_mask;        // refine stage: the original mask (CV_8U)
    Ellipse ref;              // refine stage: the reference ellipse (original pixels)
};

// base is kept at this many times the letterbox scale, so that zooming in keeps some detail.
inline constexpr double kBaseOversample = 1.5;

// Loads one record: base and base_mask at kBaseOversample x the letterbox scale of `net`, reduced
// with resize_area (the pixel-area reduction inference uses); `full` when keep_full or refine;
// `full_mask` and `ref` when refine (the record must then have a reference ellipse).
Expected<Sample> load_sample(const Hc18Record& r, cv::Size net, bool keep_full, bool refine);

// The split a run of `cfg` uses: the grouped split (split_salt, validation_fraction) of the labelled
// images in opt.data_dir, each side cut to its first opt.limit records when opt.limit > 0. An
// error when a side is empty.
Expected<Split> training_split(const TrainConfig& cfg, const TrainOptions& opt);

struct TrainingData {
    Split split;                      // the records of each side, as split.json lists them
    std::vector<Sample> train;        // the only images the loop draws batches from (split.train, in order)
    std::vector<Sample> validation;   // the images each epoch is scored on (split.validation, in order)
    double axis_scale = 1;            // mask-to-reference factor, measured on the training masks only
};

// training_split, then every image of both sides loaded (validation keeps `full`).
Expected<TrainingData> load_training_data(const TrainConfig& cfg, const TrainOptions& opt);

// Writes a file through a temporary and a rename, so a crash never leaves half a file.
void write_text(const std::filesystem::path& p, const std::string& text);

// out_dir/split.json: salt, validation fraction and the file names of each side.
void write_split_file(const std::filesystem::path& out_dir, const TrainConfig& cfg, const Split& split);

}  // namespace fetalhc::training
