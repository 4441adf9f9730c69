// fetalhc/hc18.h - the HC18 data layout, the grouped train/validation split and the COCO export.
//
//   auto recs = fetalhc::read_hc18_training("../shared/hc18");   // labelled images
//   fetalhc::Split s = fetalhc::grouped_split(*recs, 0.15, "fetalhc-v1");
//
// Layout (see the data folder's README): training_set/NNN_HC.png with NNN_HC_Mask.png,
// training_set_pixel_size_and_HC.csv, optionally training_set_ellipses.csv (reference ellipses in
// pixels, project conventions), test_set/ and test_set_pixel_size.csv.
// Images sharing the 3-digit prefix come from one examination; the split keeps them together.
// Thread safety: pure functions.
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

struct Hc18Record {
    std::string filename;      // e.g. "017_2HC.png"
    std::string image_path;    // full path of the image
    std::string mask_path;     // full path of the filled mask ("" if absent)
    double pixel_size_mm = 0;
    double hc_mm = 0;          // official reference HC
    bool has_ellipse = false;
    Ellipse ellipse_px;        // reference ellipse, when training_set_ellipses.csv is present
};

// Reads the labelled part of an HC18-layout folder. Errors name the missing file.
Expected<std::vector<Hc18Record>> read_hc18_training(const std::string& data_dir);

// "017_2HC.png" -> "017": the examination an image belongs to.
std::string examination_id(const std::string& filename);

struct Split {
    std::vector<Hc18Record> train, validation;
};

// Deterministic split by examination: an examination goes to validation when a hash of
// salt + examination id falls below `validation_fraction`. Independent of file order and of which
// other files are present, so the same examination always lands on the same side.
Split grouped_split(const std::vector<Hc18Record>& records, double validation_fraction,
                    const std::string& salt);

// Grouped K-fold assignment: the fold (0..folds-1) of each record, in input order. Examinations
// are taken in the order of a hash of salt + examination id (ties by id) and each goes, whole, to
// the fold with the fewest images so far (ties: the lowest fold). Independent of file order, and
// balanced to within a few images (HC18, 5 folds: 168..170 images); adding or removing
// examinations may move others. folds must be >= 2.
std::vector<int> kfold_assignment(const std::vector<Hc18Record>& records, int folds, const std::string& salt);

// Fold `fold` of the grouped K-fold split: validation = the records kfold_assignment puts in that
// fold, train = the rest, each in input order.
Split kfold_split(const std::vector<Hc18Record>& records, int folds, int fold, const std::string& salt);

// The grouped split a model file records in its metadata (JSON keys `split_salt` and
// `validation_fraction`, and for a K-fold model `folds` and `fold`, as the trainer writes them);
// nullopt when it records none. Every check that models share a split, and every figure on "the
// model's validation split", reads it here. folds == 0: the grouped_split by validation_fraction;
// folds > 0: fold `fold` of kfold_split (validation_fraction is then not compared).
struct SplitSpec {
    std::string salt;
    double validation_fraction = 0;
    int folds = 0, fold = 0;
    bool operator==(const SplitSpec& o) const {
        if (salt != o.salt || folds != o.folds) return false;
        return folds > 0 ? fold == o.fold : validation_fraction == o.validation_fraction;
    }
};
std::optional<SplitSpec> recorded_split(const std::string& metadata_json);

// The largest pixel-size CSV read, bytes. The HC18 test set's is 10 KB (335 rows); 8 MiB holds over
// 200,000 rows. A larger file is refused before it is read (a device such as /dev/zero, a named pipe
// or any other non-regular file is refused before it is opened).
constexpr size_t kMaxPixelSizeCsvBytes = size_t(8) << 20;
// The most bytes of a CSV line (or cell) an error message quotes; a longer one is cut, with "...".
constexpr size_t kMaxQuotedCsvBytes = 100;

// Reads a pixel-size CSV (`filename,pixel size(mm)[,...]`, header optional). Keys are file names.
// Refused, naming the file and the line: a file that is not a regular file or is over
// kMaxPixelSizeCsvBytes, a row without a number, a size check_pixel_size (image_io.h) refuses, one file listed
// twice with different sizes, a file without rows. Errors quote at most kMaxQuotedCsvBytes of a line.
Expected<std::map<std::string, double>> read_pixel_sizes(const std::string& csv_path);

// How the official reference relates to the filled masks: the mean over `records` of
// official HC / HC of the ellipse fitted to the mask's boundary (the edges between inside and
// outside pixels). The data set's reference ellipses are the mask ellipses with both semi-axes
// scaled by such a factor (0.990..1.000), so a network that learns the masks reports HC that
// much too large; multiplying its semi-axes by this factor undoes that. Records without a mask
// are skipped; NaN when none has one. Computed on training images only.
double mask_to_reference_scale(const std::vector<Hc18Record>& records);

// How the official reference relates to a model's own measurements: the median over `records` of
// official HC / measured_hc(record); records it returns no value for (a failed measurement) are
// skipped. Measured on the training split after training, it removes the size bias the network
// keeps (HC is proportional to the semi-axes, so the factor multiplies the axis scale). NaN when
// nothing was measured.
double measured_to_reference_scale(const std::vector<Hc18Record>& records,
                                   const std::function<std::optional<double>(const Hc18Record&)>& measured_hc);

// COCO instance-segmentation export of the labelled images: one category "fetal_head", one
// annotation per image with the mask's outer polygon, area, bbox [x, y, w, h] and iscrowd 0.
Expected<std::string> coco_annotations_json(const std::vector<Hc18Record>& records);

}  // namespace fetalhc
