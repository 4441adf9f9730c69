// Accuracy of the shipped model (models/fetalhc_unet.pt) on its grouped validation split of
// ../shared/hc18, against the figure in models/MODEL_CARD.md. Skips (with a message) when the data
// or the model is absent.
#include "fetalhc/evaluation.h"
#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

namespace fs = std::filesystem;
using namespace fetalhc;

namespace {

// The model card states each figure on a line of its own, "<key>: X.XX".
double model_card_mad(const std::string& key) {
    std::ifstream in(FETALHC_MODEL_CARD);
    std::string line;
    const std::regex re("^" + key + R"(:\s*([0-9.]+))");
    std::smatch m;
    while (std::getline(in, line))
        if (std::regex_search(line, m, re)) return std::stod(m[1]);
    return NAN;
}

void check_model(const std::string& model, const std::string& card_key) {
    const std::string data = FETALHC_DATA_DIR;
    if (!fs::exists(fs::path(data) / "training_set")) GTEST_SKIP() << "HC18 data not found at " << data << "; accuracy not checked";
    if (!fs::exists(model)) GTEST_SKIP() << "model " << model << " not found";
    auto seg = Segmenter::load(model, {0});
    ASSERT_TRUE(seg) << seg.error();
    auto recs = read_hc18_training(data);
    ASSERT_TRUE(recs) << recs.error();
    auto split = model_split(*recs, seg->info().metadata);
    ASSERT_TRUE(split) << split.error();
    ASSERT_GT(split->validation.size(), 100u);

    // The library's one definition of the figure (evaluation.h): a failure counts as an error of
    // the whole reference HC.
    Measurer m(*seg);
    ScoreOptions o;
    o.shape_metrics = false;
    const ScoreSummary sum = summarize(score_records(split->validation, measure_with(m), o));
    const double mad = sum.hc_abs_error_mm.mean;
    std::printf("validation HC MAD %.3f mm over %d images (%d failed)\n", mad, sum.images, sum.failed);
    EXPECT_LE(mad, 2.5) << "acceptance: HC mean absolute difference <= 2.5 mm";
    const double card = model_card_mad(card_key);
    ASSERT_TRUE(std::isfinite(card)) << "models/MODEL_CARD.md lacks a '" << card_key << ":' line";
    // The card is rounded to 0.01 mm; oneDNN kernels may differ in the last bits between CPUs.
    EXPECT_NEAR(mad, card, 0.02) << "the model card's figure for " << model << " does not match this run";
}

}  // namespace

TEST(ShippedModel, ValidationSplitHcMadMeetsTargetAndMatchesModelCard) {
    check_model(FETALHC_DEFAULT_MODEL, "validation_hc_mad_mm");
}
