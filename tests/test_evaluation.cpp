// The one definition of the accuracy figures (include/fetalhc/evaluation.h), on synthetic records
// and a stand-in measurer: no model and no data needed.
#include "fetalhc/evaluation.h"

#include "fetalhc/growth.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <set>
#include <sstream>

using namespace fetalhc;

namespace {

Hc18Record record(const std::string& file, double ref_hc_mm) {
    Hc18Record r;
    r.filename = file;
    r.image_path = "/nonexistent/" + file;
    r.pixel_size_mm = 0.1;
    r.hc_mm = ref_hc_mm;
    return r;
}

// A measurement whose HC is `hc_mm` (an ellipse of cephalic index 80 at pixel size 0.1 mm), quality
// as given.
Measurement measured(double hc_mm, const std::string& quality = "ok") {
    Ellipse e;
    e.cx = e.cy = 200;
    e.a = hc_mm / 0.1 / ramanujan_perimeter(1.0, 0.8);
    e.b = 0.8 * e.a;
    Measurement m = measurement_from_ellipse(e, 0.1, std::nullopt);
    EXPECT_EQ(m.quality, "ok") << hc_mm << " mm: " << (m.reasons.empty() ? "" : m.reasons[0]);
    if (quality != "ok") m.reasons = {"test"}, m.quality = quality;
    m.image_size = {400, 400};
    m.timings.total_ms = 10;
    return m;
}

}  // namespace

// Exact identities: the figures below are sums of numbers chosen in the test.
TEST(Evaluation, FailureCountsAsTheWholeReferenceHc) {
    std::vector<ImageScore> s;
    s.push_back(score_hc("a.png", 100, 0.1, measured(102)));
    s.push_back(score_hc("b.png", 150, 0.1, make_error(ErrorKind::NoHeadFound, "no fetal head found")));
    const ScoreSummary sum = summarize(s);
    EXPECT_EQ(sum.images, 2);
    EXPECT_EQ(sum.failed, 1);
    EXPECT_NEAR(sum.hc_abs_error_mm.mean, (2 + 150) / 2.0, 1e-6);
    // The signed bias is over measured images only.
    EXPECT_EQ(sum.hc_signed_error_mm.n, 1);
    EXPECT_NEAR(sum.hc_signed_error_mm.mean, 2, 1e-6);
    EXPECT_EQ(sum.over_10mm, 1);  // the failure
}

TEST(Evaluation, TrimestersFollowIntergrowthMediansAt14And28Weeks) {
    const double t1 = intergrowth_hc_median(14), t2 = intergrowth_hc_median(28);
    EXPECT_EQ(trimester_of(t1 - 0.01), 1);
    EXPECT_EQ(trimester_of(t1), 2);
    EXPECT_EQ(trimester_of(t2 - 0.01), 2);
    EXPECT_EQ(trimester_of(t2), 3);
    std::vector<ImageScore> s{score_hc("a", t1 - 1, 0.1, measured(t1 - 2)), score_hc("b", t2 + 10, 0.1, measured(t2 + 13))};
    const EvaluationReport rep = evaluate(s);
    EXPECT_EQ(rep.trimester[0].images, 1);
    EXPECT_EQ(rep.trimester[1].images, 0);
    EXPECT_EQ(rep.trimester[2].images, 1);
    EXPECT_NEAR(rep.trimester[2].hc_abs_error_mm.mean, 3, 1e-6);
    // An empty group has no mean in JSON.
    EXPECT_TRUE(to_json(rep, 5)["per_trimester"]["second"]["hc_abs_diff_mm"]["mean"].is_null());
}

TEST(Evaluation, ReviewFlagHitsSeparateGrossErrorsFromTheRest) {
    std::vector<ImageScore> s{score_hc("gross_flagged", 200, 0.1, measured(207, "review")),
                              score_hc("gross_missed", 200, 0.1, measured(193)),
                              score_hc("good_flagged", 200, 0.1, measured(201, "review")),
                              score_hc("good", 200, 0.1, measured(199))};
    const ScoreSummary sum = summarize(s);
    EXPECT_EQ(sum.errors_over_5mm, 2);
    EXPECT_EQ(sum.errors_over_5mm_flagged, 1);
    EXPECT_EQ(sum.good, 2);
    EXPECT_EQ(sum.good_flagged, 1);
    EXPECT_EQ(sum.flagged_review, 2);
    EXPECT_EQ(sum.errors_over_10pct, 0);  // 7 mm of 200 is 3.5%
}

TEST(Evaluation, GrossRelativeErrorsAndIntervalCoverage) {
    auto with_interval = [](Measurement m, double lo, double hi) {
        m.interval = HcInterval{lo, hi, 0.9, std::nullopt, std::nullopt};
        return m;
    };
    std::vector<ImageScore> s{score_hc("trunk_for_head", 68, 0.1, with_interval(measured(81, "review"), 76, 86)),
                              score_hc("missed", 68, 0.1, with_interval(measured(60), 58, 62)),
                              score_hc("inside", 200, 0.1, with_interval(measured(201), 196, 206)),
                              score_hc("no_interval", 200, 0.1, measured(201))};
    const ScoreSummary sum = summarize(s);
    EXPECT_EQ(sum.errors_over_10pct, 2);          // 13 of 68 and 8 of 68 mm
    EXPECT_EQ(sum.errors_over_10pct_flagged, 1);
    EXPECT_EQ(sum.interval_images, 3);
    EXPECT_EQ(sum.interval_covered, 1);           // 68 lies outside 76..86 and 58..62
    EXPECT_DOUBLE_EQ(to_json(sum)["hc_interval"]["coverage"].get<double>(), 1.0 / 3);
}

// The issue's relative count: over 5% of the reference HC is an error, within 5% but flagged is
// a needless flag, whatever the head size (12 mm on 300 is within, 4 mm on 60 is not).
TEST(Evaluation, ReviewFlagRelativeToTheReferenceHc) {
    std::vector<ImageScore> s{score_hc("small_off_flagged", 60, 0.1, measured(64, "review")),
                              score_hc("small_off_missed", 60, 0.1, measured(56.5)),
                              score_hc("large_close_flagged", 300, 0.1, measured(312, "review")),
                              score_hc("large_close", 300, 0.1, measured(304)),
                              score_hc("mid_close", 180, 0.1, measured(181))};
    const ScoreSummary sum = summarize(s);
    EXPECT_EQ(sum.errors_over_5pct, 2);
    EXPECT_EQ(sum.errors_over_5pct_flagged, 1);
    EXPECT_EQ(sum.within_5pct, 3);
    EXPECT_EQ(sum.within_5pct_flagged, 1);
    EXPECT_EQ(sum.errors_over_5mm, 1);  // only the 12 mm error is one in millimetres
    const auto j = to_json(sum)["review_flag"];
    EXPECT_EQ(j["errors_over_5pct_flagged"].get<int>(), 1);
    EXPECT_EQ(j["within_5pct_flagged"].get<int>(), 1);
}

TEST(Evaluation, ShapeMetricsAgainstTheReferenceMask) {
    Hc18Record r = record("c.png", 0);
    Measurement m = measured(150);
    r.hc_mm = m.hc_mm;
    const cv::Mat same = rasterize(m.ellipse_px, m.image_size);
    ImageScore s = score_image(r, m, same);
    ASSERT_TRUE(s.has_shape);
    EXPECT_DOUBLE_EQ(s.dice, 1.0);
    EXPECT_DOUBLE_EQ(s.hausdorff_mm, 0.0);
    // A failure with a reference mask counts as Dice 0.
    ImageScore f = score_image(r, make_error("no head"), same);
    EXPECT_TRUE(f.has_shape);
    EXPECT_EQ(f.dice, 0.0);
    const ScoreSummary sum = summarize({s, f});
    EXPECT_NEAR(sum.dice.mean, 0.5, 1e-9);
    EXPECT_EQ(sum.hausdorff_mm.n, 1);
}

TEST(Evaluation, ScoreRecordsKeepsOrderAndReportsProgress) {
    std::vector<Hc18Record> recs{record("1.png", 100), record("2.png", 120), record("3.png", 140)};
    size_t last = 0;
    ScoreOptions o;
    o.shape_metrics = false;
    o.progress = [&](size_t done, size_t total) {
        EXPECT_EQ(done, last + 1);
        EXPECT_EQ(total, 3u);
        last = done;
    };
    auto scores = score_records(recs, [](const Hc18Record& r) -> Expected<Measurement> { return measured(r.hc_mm + 1); }, o);
    ASSERT_EQ(scores.size(), 3u);
    EXPECT_EQ(last, 3u);
    EXPECT_EQ(scores[1].file, "2.png");
    EXPECT_NEAR(evaluate(scores).overall.hc_abs_error_mm.mean, 1, 1e-6);
}

TEST(Evaluation, WorstListPutsFailuresFirstThenLargestErrors) {
    std::vector<ImageScore> s{score_hc("small", 100, 0.1, measured(101)), score_hc("failed", 100, 0.1, make_error("x")),
                              score_hc("large", 100, 0.1, measured(90))};
    const auto j = to_json(evaluate(s), 2);
    ASSERT_EQ(j["worst"].size(), 2u);
    EXPECT_EQ(j["worst"][0]["file"], "failed");
    EXPECT_EQ(j["worst"][1]["file"], "large");
}

TEST(Evaluation, PerImageCsvQuotesAndNeutralisesClientText) {
    std::vector<ImageScore> s{score_hc("=cmd,x.png", 100, 0.1, measured(101)), score_hc("b.png", 100, 0.1, make_error("bad, \"file\""))};
    std::ostringstream o;
    write_per_image_csv(evaluate(s), o);
    const std::string csv = o.str();
    EXPECT_NE(csv.find("\n\"'=cmd,x.png\",100.00,"), std::string::npos) << csv;
    EXPECT_NE(csv.find("\"bad, \"\"file\"\"\"\n"), std::string::npos) << csv;
    // Header + two rows, each with 14 cells (13 separators outside quotes).
    EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);
}

TEST(Evaluation, ModelSplitNeedsTheRecordedSplit) {
    std::vector<Hc18Record> recs;
    for (int e = 0; e < 40; ++e) recs.push_back(record((e < 10 ? "00" : "0") + std::to_string(e) + "_HC.png", 150));
    EXPECT_FALSE(model_split(recs, ""));
    EXPECT_FALSE(model_split(recs, R"({"split_salt": "s"})"));
    auto s = model_split(recs, R"({"split_salt": "s", "validation_fraction": 0.3})");
    ASSERT_TRUE(s) << s.error();
    const Split direct = grouped_split(recs, 0.3, "s");
    EXPECT_EQ(s->validation.size(), direct.validation.size());
    EXPECT_EQ(s->train.size() + s->validation.size(), recs.size());
}

// Calibration reads the training split only: a stand-in measurer records every image it is asked
// for, and none may come from the validation side.
TEST(Evaluation, CalibrationMeasuresOnlyTrainingImages) {
    Split split;
    for (int i = 0; i < 6; ++i) split.train.push_back(record("t" + std::to_string(i) + ".png", 150));
    for (int i = 0; i < 4; ++i) split.validation.push_back(record("v" + std::to_string(i) + ".png", 150));
    std::set<std::string> asked;
    auto fn = [&](const Hc18Record& r) -> Expected<Measurement> {
        asked.insert(r.filename);
        return measured(r.hc_mm * 1.02);
    };
    // No mask files: refused before anything is measured.
    EXPECT_FALSE(calibrate_axis_scale(split, 1.0, fn));
    EXPECT_TRUE(asked.empty());
    // With masks (a filled circle per training image) it measures the six training images only.
    const std::string dir = ::testing::TempDir();
    for (auto& r : split.train) {
        cv::Mat mask = rasterize(measured(r.hc_mm).ellipse_px, {400, 400});
        r.mask_path = dir + "/" + r.filename;
        ASSERT_TRUE(cv::imwrite(r.mask_path, mask));
    }
    auto c = calibrate_axis_scale(split, 1.0, fn);
    ASSERT_TRUE(c) << c.error();
    EXPECT_EQ(c->measured_images, 6);
    EXPECT_EQ(asked.size(), 6u);
    for (const auto& f : asked) EXPECT_EQ(f[0], 't') << f << " is not a training image";
    // The model measures 2% large: the measured factor undoes it.
    EXPECT_NEAR(c->measured_factor * c->masks_factor, c->axis_scale, 1e-12);
    EXPECT_NEAR(c->measured_factor, 1 / 1.02 / c->masks_factor, 1e-6);
}
