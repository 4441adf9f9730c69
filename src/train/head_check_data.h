// Internal: the head-check trainer's data (src/train/head_check_data.cpp): the images, the
// outlines it crops on, the planes split, and the crop augmentation. No LibTorch.
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <random>
#include <string>
#include <vector>

namespace fetalhc::detail {

// One image the check learns from or is measured on.
struct CheckImage {
    std::string name;       // file name
    cv::Mat gray;           // CV_8UC1, full resolution
    bool has_outline = false;
    Ellipse outline;        // HC18: the reference ellipse; planes: the measured one (or the first pass's)
    int cls = 0;            // index into kHeadCheckPlanes of what the image shows (0: a head)
    bool planes = false;    // from the planes folder (else HC18)
    int fold = -1;          // HC18: the examination's fold; planes: -1
    bool held_back = false; // planes: the patient is on the held-back side
    std::string plane, machine, patient;  // planes: the labels.csv columns
    std::string pipeline;   // planes: "ok", "review", or "refused" (the measurement's outcome)
};

// HC18 training images with reference ellipses; fold from kfold_assignment(folds, salt) (folds >= 2) or -1.
Expected<std::vector<CheckImage>> load_hc18_check_images(const std::string& dir, int folds, const std::string& salt,
                                                         int limit);

// The planes folder's rows (labels.csv), each measured with the segmentation model (cached in
// cache_csv: written on the first run, read on later ones).
Expected<std::vector<CheckImage>> load_planes_check_images(const std::string& planes_dir, const std::string& seg_model,
                                                           const std::string& cache_csv, int limit, int threads);

// Held-back side of the planes split: a fixed hash (FNV-1a) of "fetalhc-head-check-v1/" + patient, 40%.
bool planes_patient_held_back(const std::string& patient);
// kHeadCheckPlanes index of a labels.csv plane (brain_tt / brain_tc: 0, head); -1 when unknown.
int planes_class(const std::string& plane);

// What one training or scoring crop is cut on.
struct CheckSample {
    int image = 0;   // index into the image list
    Ellipse outline;
    float head = 0;  // 1: a head in the HC plane
    int cls = 0;
};
// The image's own outline, moved as a fit error would (centre, axes, angle; `spread` scales it).
CheckSample jittered_sample(const std::vector<CheckImage>& images, int i, std::mt19937& rng, double spread);
// An HC18 negative: an outline of about the head's size centred outside it (60%), or one much too
// small (20%) or too large (20%) around the head. Class off_target.
CheckSample off_target_sample(const std::vector<CheckImage>& images, int i, std::mt19937& rng);

// Machine-like changes to a crop: gamma and gain, blur, speckle-like noise, burned-in text and
// caliper marks, a sector edge, flips.
void augment_check_crop(cv::Mat& crop8, std::mt19937& rng);

}  // namespace fetalhc::detail
