// Tests for fetalhc/hc18.h: examination grouping, the grouped split, pixel-size CSVs, the HC18
// folder reader and the COCO export, all on synthetic data written into a temporary folder.
//
// Tolerance classes:
//   - exact: parsed numbers, record counts, split membership, COCO area (= countNonZero of the mask);
//   - rasterisation: the COCO bbox of a drawn ellipse against its analytic bounding box, within
//     2 px (cv::ellipse approximates the curve by a polygon and rounds to the pixel grid);
//   - statistics: the split's validation share over 1000 examinations, 10..20 % for 15 % (a hash
//     is a fair coin per examination: the standard deviation is ~1.1 %, so this is > 4 sigma).
#include "child_process.h"
#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"  // check_pixel_size, which the pixel-size CSV applies

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// A fresh folder per test, removed afterwards.
class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::temp_directory_path() / ("fetalhc_test_hc18_" + std::to_string(::getpid()) + "_" +
                                            std::to_string(counter++) + "_" + (info ? info->name() : "x"));
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const fs::path& path() const { return dir_; }
    std::string file(const std::string& name) const { return (dir_ / name).string(); }
    std::string write(const std::string& name, const std::string& text) const {
        const fs::path p = dir_ / name;
        fs::create_directories(p.parent_path());
        std::ofstream(p, std::ios::binary) << text;
        return p.string();
    }

private:
    fs::path dir_;
};

// ---- examination_id ---------------------------------------------------------------------------------

TEST(ExaminationId, IsTheLeadingDigits) {
    EXPECT_EQ(fetalhc::examination_id("017_2HC.png"), "017");
    EXPECT_EQ(fetalhc::examination_id("017_HC.png"), "017");
    EXPECT_EQ(fetalhc::examination_id("017_3HC.png"), "017");
    EXPECT_EQ(fetalhc::examination_id("805_HC_Mask.png"), "805");
}

TEST(ExaminationId, IgnoresTheFolder) {
    EXPECT_EQ(fetalhc::examination_id("training_set/123_2HC.png"), "123");
    EXPECT_EQ(fetalhc::examination_id("/data/2019_scans/045_HC.png"), "045");
}

TEST(ExaminationId, NameWithoutDigitsIsItsOwnExamination) {
    EXPECT_EQ(fetalhc::examination_id("scan.png"), "scan.png");
}

// ---- grouped_split --------------------------------------------------------------------------------------

// 1000 examinations; every third has a second image ("NNNN_2HC.png") and every seventh a third.
std::vector<fetalhc::Hc18Record> synthetic_records() {
    std::vector<fetalhc::Hc18Record> recs;
    for (int e = 0; e < 1000; ++e) {
        char id[8];
        std::snprintf(id, sizeof id, "%04d", e);
        std::vector<std::string> names{std::string(id) + "_HC.png"};
        if (e % 3 == 0) names.push_back(std::string(id) + "_2HC.png");
        if (e % 7 == 0) names.push_back(std::string(id) + "_3HC.png");
        for (const auto& n : names) {
            fetalhc::Hc18Record r;
            r.filename = n;
            r.image_path = "/data/training_set/" + n;
            r.pixel_size_mm = 0.1 + 0.0001 * e;
            r.hc_mm = 100 + 0.2 * e;
            recs.push_back(r);
        }
    }
    return recs;
}

std::map<std::string, bool> membership(const fetalhc::Split& s) {
    std::map<std::string, bool> in_validation;
    for (const auto& r : s.train) in_validation[r.filename] = false;
    for (const auto& r : s.validation) in_validation[r.filename] = true;
    return in_validation;
}

TEST(GroupedSplit, EveryRecordLandsOnExactlyOneSide) {
    const auto recs = synthetic_records();
    const auto s = fetalhc::grouped_split(recs, 0.15, "test-salt");
    EXPECT_EQ(s.train.size() + s.validation.size(), recs.size());
    EXPECT_EQ(membership(s).size(), recs.size()) << "a record appears on both sides or twice";
}

TEST(GroupedSplit, KeepsEachExaminationOnOneSide) {
    const auto s = fetalhc::grouped_split(synthetic_records(), 0.15, "test-salt");
    std::set<std::string> train_exams, val_exams;
    for (const auto& r : s.train) train_exams.insert(fetalhc::examination_id(r.filename));
    for (const auto& r : s.validation) val_exams.insert(fetalhc::examination_id(r.filename));
    for (const auto& e : val_exams) EXPECT_EQ(train_exams.count(e), 0u) << "examination " << e << " is on both sides";
    // The multi-image examinations really are exercised on both sides.
    int multi_in_val = 0;
    for (const auto& r : s.validation) multi_in_val += contains(r.filename, "_2HC");
    EXPECT_GT(multi_in_val, 0);
}

TEST(GroupedSplit, RoughlyHonoursTheFraction) {
    const auto s = fetalhc::grouped_split(synthetic_records(), 0.15, "test-salt");
    std::set<std::string> exams, val_exams;
    for (const auto& r : s.train) exams.insert(fetalhc::examination_id(r.filename));
    for (const auto& r : s.validation) {
        exams.insert(fetalhc::examination_id(r.filename));
        val_exams.insert(fetalhc::examination_id(r.filename));
    }
    ASSERT_EQ(exams.size(), 1000u);
    EXPECT_GE(val_exams.size(), 100u);
    EXPECT_LE(val_exams.size(), 200u);
}

TEST(GroupedSplit, ExtremeFractionsPutEverythingOnOneSide) {
    const auto recs = synthetic_records();
    const auto none = fetalhc::grouped_split(recs, 0.0, "test-salt");
    EXPECT_TRUE(none.validation.empty());
    EXPECT_EQ(none.train.size(), recs.size());
    const auto all = fetalhc::grouped_split(recs, 1.0, "test-salt");
    EXPECT_TRUE(all.train.empty());
    EXPECT_EQ(all.validation.size(), recs.size());
}

TEST(GroupedSplit, IsDeterministic) {
    const auto recs = synthetic_records();
    EXPECT_EQ(membership(fetalhc::grouped_split(recs, 0.15, "test-salt")),
              membership(fetalhc::grouped_split(recs, 0.15, "test-salt")));
}

TEST(GroupedSplit, IsIndependentOfRecordOrderAndOfOtherRecords) {
    auto recs = synthetic_records();
    const auto reference = membership(fetalhc::grouped_split(recs, 0.15, "test-salt"));

    std::mt19937 rng(7);
    std::shuffle(recs.begin(), recs.end(), rng);
    EXPECT_EQ(membership(fetalhc::grouped_split(recs, 0.15, "test-salt")), reference);

    // Dropping records (images held back, a --limit) moves nobody else.
    recs.resize(recs.size() / 3);
    for (const auto& [name, in_val] : membership(fetalhc::grouped_split(recs, 0.15, "test-salt")))
        EXPECT_EQ(in_val, reference.at(name)) << name;
}

TEST(GroupedSplit, SaltChangesTheSplit) {
    const auto recs = synthetic_records();
    EXPECT_NE(membership(fetalhc::grouped_split(recs, 0.15, "salt-a")),
              membership(fetalhc::grouped_split(recs, 0.15, "salt-b")));
}

TEST(GroupedSplit, LargerFractionOnlyAddsExaminations) {
    // One hash per examination compared with the fraction: validation at 0.15 is a subset of 0.30.
    const auto recs = synthetic_records();
    const auto small = membership(fetalhc::grouped_split(recs, 0.15, "test-salt"));
    const auto large = membership(fetalhc::grouped_split(recs, 0.30, "test-salt"));
    for (const auto& [name, in_val] : small)
        if (in_val) EXPECT_TRUE(large.at(name)) << name;
}

// ---- read_pixel_sizes ------------------------------------------------------------------------------------

TEST(ReadPixelSizes, ReadsTheOfficialLayoutWithHeader) {
    TempDir t;
    const auto p = t.write("test_set_pixel_size.csv",
                           "filename,pixel size(mm)\n000_HC.png,0.0987167308768\n001_HC.png,0.1593\n");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_TRUE(s) << s.error();
    ASSERT_EQ(s->size(), 2u);
    EXPECT_DOUBLE_EQ(s->at("000_HC.png"), 0.0987167308768);
    EXPECT_DOUBLE_EQ(s->at("001_HC.png"), 0.1593);
}

TEST(ReadPixelSizes, HeaderIsOptionalAndExtraColumnsAreIgnored) {
    TempDir t;
    const auto p = t.write("sizes.csv", "a.png,0.1,180.5\nb.png,0.2,200\n");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_TRUE(s) << s.error();
    ASSERT_EQ(s->size(), 2u);
    EXPECT_DOUBLE_EQ(s->at("a.png"), 0.1);
    EXPECT_DOUBLE_EQ(s->at("b.png"), 0.2);
}

TEST(ReadPixelSizes, WindowsLineEndingsAndBlankLinesAreTolerated) {
    TempDir t;
    const auto p = t.write("sizes.csv", "filename,pixel size(mm)\r\na.png,0.125\r\n\r\nb.png, 0.25 \r\n");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_TRUE(s) << s.error();
    ASSERT_EQ(s->size(), 2u);
    EXPECT_DOUBLE_EQ(s->at("a.png"), 0.125);
    EXPECT_DOUBLE_EQ(s->at("b.png"), 0.25);
}

TEST(ReadPixelSizes, BadRowIsAnErrorWithItsLineNumber) {
    TempDir t;
    const auto p = t.write("sizes.csv", "filename,pixel size(mm)\na.png,0.1\nb.png,zero point one\nc.png,0.2\n");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error(), "line 3")) << s.error();
    EXPECT_TRUE(contains(s.error(), p)) << s.error();
    EXPECT_TRUE(contains(s.error(), "zero point one")) << s.error();
}

TEST(ReadPixelSizes, RowWithoutSizeIsAnError) {
    TempDir t;
    const auto p = t.write("sizes.csv", "a.png,0.1\nb.png\n");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error(), "line 2")) << s.error();
}

TEST(ReadPixelSizes, QuotedNamesAndAByteOrderMarkWithoutHeader) {
    TempDir t;
    // A spreadsheet export: BOM on the first data row (no header), a name with a comma quoted.
    const auto p = t.write("sizes.csv", "\xEF\xBB\xBF" "a.png,0.1\n\"b,1.png\",\"0.2\"\n");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_TRUE(s) << s.error();
    ASSERT_EQ(s->size(), 2u);
    EXPECT_DOUBLE_EQ(s->at("a.png"), 0.1);  // the first row is not taken for a header
    EXPECT_DOUBLE_EQ(s->at("b,1.png"), 0.2);
}

TEST(ReadPixelSizes, UnclosedQuoteNonFiniteAndConflictingRowsAreErrors) {
    TempDir t;
    auto open_quote = fetalhc::read_pixel_sizes(t.write("q.csv", "a.png,0.1\n\"b.png,0.2\n"));
    ASSERT_FALSE(open_quote);
    EXPECT_TRUE(contains(open_quote.error(), "line 2")) << open_quote.error();
    auto not_finite = fetalhc::read_pixel_sizes(t.write("n.csv", "a.png,0.1\nb.png,nan\n"));
    ASSERT_FALSE(not_finite);
    EXPECT_TRUE(contains(not_finite.error(), "line 2")) << not_finite.error();
    auto twice = fetalhc::read_pixel_sizes(t.write("d.csv", "a.png,0.1\na.png,0.2\n"));
    ASSERT_FALSE(twice);
    EXPECT_TRUE(contains(twice.error(), "twice")) << twice.error();
    // The same row repeated is harmless.
    EXPECT_TRUE(fetalhc::read_pixel_sizes(t.write("s.csv", "a.png,0.1\na.png,0.1\n")));
}

TEST(ReadPixelSizes, MissingFileIsNamed) {
    TempDir t;
    const std::string p = t.file("nope.csv");
    auto s = fetalhc::read_pixel_sizes(p);
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error(), p)) << s.error();
}

TEST(ReadPixelSizes, FileWithoutRowsIsAnError) {
    TempDir t;
    for (const char* text : {"", "filename,pixel size(mm)\n"}) {
        const auto p = t.write("sizes.csv", text);
        auto s = fetalhc::read_pixel_sizes(p);
        ASSERT_FALSE(s) << "content: '" << text << "'";
        EXPECT_TRUE(contains(s.error(), p)) << s.error();
    }
}

// ---- check_pixel_size -------------------------------------------------------------------------------------

TEST(CheckPixelSize, ValidSizesPass) {
    EXPECT_EQ(fetalhc::check_pixel_size(0.1, "--pixel-size"), "");
    EXPECT_EQ(fetalhc::check_pixel_size(0.049, "x"), "");  // smallest in HC18
    EXPECT_EQ(fetalhc::check_pixel_size(0.39, "x"), "");   // largest in HC18
    EXPECT_EQ(fetalhc::check_pixel_size(2.0, "x"), "");    // the plausibility limit itself
}

TEST(CheckPixelSize, ZeroAndNegativeMustBePositive) {
    for (double v : {0.0, -1.0, -0.13}) {
        const std::string e = fetalhc::check_pixel_size(v, "--pixel-size");
        EXPECT_TRUE(contains(e, "positive")) << v << ": " << e;
        EXPECT_TRUE(contains(e, "--pixel-size")) << e;
        EXPECT_TRUE(contains(e, "mm per pixel")) << e;
    }
}

TEST(CheckPixelSize, NotANumberIsSaidSo) {
    const double inf = std::numeric_limits<double>::infinity();
    for (double v : {std::numeric_limits<double>::quiet_NaN(), inf, -inf}) {
        const std::string e = fetalhc::check_pixel_size(v, "'scan.png'");
        EXPECT_TRUE(contains(e, "not a number")) << v << ": " << e;
        EXPECT_TRUE(contains(e, "'scan.png'")) << e;
    }
}

TEST(CheckPixelSize, AbsurdlyLargeSuggestsAUnitMistake) {
    const std::string e = fetalhc::check_pixel_size(3.0, "--pixel-size");
    ASSERT_FALSE(e.empty());
    EXPECT_TRUE(contains(e, "--pixel-size")) << e;
    EXPECT_TRUE(contains(e, "unit")) << e;
    EXPECT_FALSE(fetalhc::check_pixel_size(7.8, "x").empty());  // pixels per mm given by mistake
}

// ---- read_hc18_training --------------------------------------------------------------------------------------

struct DrawnEllipse {
    std::string filename;
    cv::Size size;
    double cx, cy, a, b, angle_deg;
};

// Two labelled images (one examination with a second image) plus an image-less CSV row for a
// held-back file, as in the project's data folder.
const std::vector<DrawnEllipse> kDrawn{{"001_HC.png", {160, 120}, 80, 60, 50, 35, 30},
                                       {"001_2HC.png", {140, 130}, 70, 62, 40, 38, 100}};

void write_hc18_folder(const TempDir& t, bool with_ellipses) {
    fs::create_directories(t.path() / "training_set");
    for (const auto& d : kDrawn) {
        cv::Mat img(d.size, CV_8U, cv::Scalar(20));
        cv::ellipse(img, {{float(d.cx), float(d.cy)}, {float(2 * d.a), float(2 * d.b)}, float(d.angle_deg)},
                    cv::Scalar(200), 3);
        cv::Mat mask = cv::Mat::zeros(d.size, CV_8U);
        cv::ellipse(mask, {{float(d.cx), float(d.cy)}, {float(2 * d.a), float(2 * d.b)}, float(d.angle_deg)},
                    cv::Scalar(255), cv::FILLED);
        const std::string stem = fs::path(d.filename).stem().string();
        ASSERT_TRUE(cv::imwrite((t.path() / "training_set" / d.filename).string(), img));
        ASSERT_TRUE(cv::imwrite((t.path() / "training_set" / (stem + "_Mask.png")).string(), mask));
    }
    t.write("training_set_pixel_size_and_HC.csv",
            "filename,pixel size(mm),head circumference (mm)\n"
            "001_HC.png,0.1,44.3\n"
            "001_2HC.png,0.12,50.25\n"
            "002_HC.png,0.2,180.0\n");  // held back: no image in training_set/
    if (with_ellipses)
        t.write("training_set_ellipses.csv",
                "filename,pixel_size_mm,hc_mm,center_x_px,center_y_px,semi_axis_a_px,semi_axis_b_px,angle_rad,"
                "center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm\n"
                "001_HC.png,0.1,44.3,80,60,50,35,0.5235987756,8,6,5,3.5\n"
                // b > a on purpose: the reader normalises (swap axes, turn by pi/2).
                "001_2HC.png,0.12,50.25,70,62,38,40,0.1,8.4,7.44,4.56,4.8\n"
                "002_HC.png,0.2,180,1,1,1,1,0,0,0,0,0\n");
}

TEST(ReadHc18Training, ReadsImagesMasksAndReferenceValues) {
    TempDir t;
    write_hc18_folder(t, /*with_ellipses=*/false);
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_TRUE(recs) << recs.error();
    ASSERT_EQ(recs->size(), 2u) << "the row without an image is skipped";
    const auto& r0 = (*recs)[0];
    EXPECT_EQ(r0.filename, "001_HC.png");
    EXPECT_EQ(fs::path(r0.image_path), t.path() / "training_set" / "001_HC.png");
    EXPECT_EQ(fs::path(r0.mask_path), t.path() / "training_set" / "001_HC_Mask.png");
    EXPECT_DOUBLE_EQ(r0.pixel_size_mm, 0.1);
    EXPECT_DOUBLE_EQ(r0.hc_mm, 44.3);
    EXPECT_FALSE(r0.has_ellipse);
    EXPECT_EQ((*recs)[1].filename, "001_2HC.png");
    EXPECT_DOUBLE_EQ((*recs)[1].pixel_size_mm, 0.12);
    EXPECT_DOUBLE_EQ((*recs)[1].hc_mm, 50.25);
}

TEST(ReadHc18Training, ReadsReferenceEllipsesWhenPresent) {
    TempDir t;
    write_hc18_folder(t, /*with_ellipses=*/true);
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_TRUE(recs) << recs.error();
    ASSERT_EQ(recs->size(), 2u);
    const auto& e0 = (*recs)[0];
    ASSERT_TRUE(e0.has_ellipse);
    EXPECT_DOUBLE_EQ(e0.ellipse_px.cx, 80);
    EXPECT_DOUBLE_EQ(e0.ellipse_px.cy, 60);
    EXPECT_DOUBLE_EQ(e0.ellipse_px.a, 50);
    EXPECT_DOUBLE_EQ(e0.ellipse_px.b, 35);
    EXPECT_NEAR(e0.ellipse_px.angle, 0.5235987756, 1e-12);
    const auto& e1 = (*recs)[1];
    ASSERT_TRUE(e1.has_ellipse);
    EXPECT_DOUBLE_EQ(e1.ellipse_px.a, 40);
    EXPECT_DOUBLE_EQ(e1.ellipse_px.b, 38);
    EXPECT_NEAR(e1.ellipse_px.angle, 0.1 + CV_PI / 2, 1e-12);
}

TEST(ReadHc18Training, MissingMaskLeavesAnEmptyMaskPath) {
    TempDir t;
    write_hc18_folder(t, false);
    fs::remove(t.path() / "training_set" / "001_2HC_Mask.png");
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_TRUE(recs) << recs.error();
    ASSERT_EQ(recs->size(), 2u);
    EXPECT_FALSE((*recs)[0].mask_path.empty());
    EXPECT_TRUE((*recs)[1].mask_path.empty());
}

TEST(ReadHc18Training, MissingFolderIsNamed) {
    TempDir t;
    const std::string missing = t.file("no_hc18_here");
    auto recs = fetalhc::read_hc18_training(missing);
    ASSERT_FALSE(recs);
    EXPECT_TRUE(contains(recs.error(), missing)) << recs.error();
    EXPECT_TRUE(contains(recs.error(), "training_set")) << recs.error();
}

TEST(ReadHc18Training, MissingReferenceCsvIsNamed) {
    TempDir t;
    write_hc18_folder(t, false);
    fs::remove(t.path() / "training_set_pixel_size_and_HC.csv");
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_FALSE(recs);
    EXPECT_TRUE(contains(recs.error(), "training_set_pixel_size_and_HC.csv")) << recs.error();
}

TEST(ReadHc18Training, BadCsvRowIsAnErrorWithItsLineNumber) {
    TempDir t;
    write_hc18_folder(t, false);
    t.write("training_set_pixel_size_and_HC.csv",
            "filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.1,44.3\n001_2HC.png,0.12,fifty\n");
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_FALSE(recs);
    EXPECT_TRUE(contains(recs.error(), "line 3")) << recs.error();
}

TEST(ReadHc18Training, FolderWithoutLabelledImagesIsAnError) {
    TempDir t;
    fs::create_directories(t.path() / "training_set");
    t.write("training_set_pixel_size_and_HC.csv", "filename,pixel size(mm),head circumference (mm)\n002_HC.png,0.2,180\n");
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_FALSE(recs);
    EXPECT_TRUE(contains(recs.error(), "training_set")) << recs.error();
}

// ---- coco_annotations_json ---------------------------------------------------------------------------------

// Axis-aligned bounding box of a rotated ellipse: half-width sqrt(a^2 cos^2 t + b^2 sin^2 t), etc.
cv::Rect2d analytic_bbox(const DrawnEllipse& d) {
    const double t = d.angle_deg * CV_PI / 180;
    const double hw = std::sqrt(d.a * d.a * std::cos(t) * std::cos(t) + d.b * d.b * std::sin(t) * std::sin(t));
    const double hh = std::sqrt(d.a * d.a * std::sin(t) * std::sin(t) + d.b * d.b * std::cos(t) * std::cos(t));
    // Pixels from round(cx - hw) to round(cx + hw) inclusive: width 2 hw + 1.
    return {d.cx - hw, d.cy - hh, 2 * hw + 1, 2 * hh + 1};
}

TEST(CocoAnnotations, DescribesEveryMaskAsOneFetalHead) {
    TempDir t;
    write_hc18_folder(t, true);
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_TRUE(recs) << recs.error();
    auto text = fetalhc::coco_annotations_json(*recs);
    ASSERT_TRUE(text) << text.error();
    const auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << "not JSON: " << text->substr(0, 200);

    ASSERT_TRUE(j.contains("categories"));
    ASSERT_EQ(j["categories"].size(), 1u);
    EXPECT_EQ(j["categories"][0]["name"], "fetal_head");
    const int category = j["categories"][0]["id"].get<int>();

    ASSERT_EQ(j["images"].size(), kDrawn.size());
    ASSERT_EQ(j["annotations"].size(), kDrawn.size());
    std::set<int> image_ids, annotation_ids;
    for (size_t i = 0; i < kDrawn.size(); ++i) {
        const auto& d = kDrawn[i];
        const auto& img = j["images"][i];
        EXPECT_EQ(img["file_name"], d.filename);
        EXPECT_EQ(img["width"].get<int>(), d.size.width);
        EXPECT_EQ(img["height"].get<int>(), d.size.height);
        image_ids.insert(img["id"].get<int>());

        // The annotation that points at this image.
        const nlohmann::json* ann = nullptr;
        for (const auto& a : j["annotations"])
            if (a["image_id"] == img["id"]) ann = &a;
        ASSERT_NE(ann, nullptr) << "no annotation for " << d.filename;
        annotation_ids.insert((*ann)["id"].get<int>());
        EXPECT_EQ((*ann)["category_id"].get<int>(), category);
        EXPECT_EQ((*ann)["iscrowd"].get<int>(), 0);

        const cv::Mat mask = cv::imread((*recs)[i].mask_path, cv::IMREAD_GRAYSCALE);
        ASSERT_FALSE(mask.empty());
        EXPECT_EQ((*ann)["area"].get<double>(), cv::countNonZero(mask)) << d.filename;

        const auto& bbox = (*ann)["bbox"];
        ASSERT_EQ(bbox.size(), 4u);
        const cv::Rect2d want = analytic_bbox(d);
        EXPECT_NEAR(bbox[0].get<double>(), want.x, 2.0) << d.filename;
        EXPECT_NEAR(bbox[1].get<double>(), want.y, 2.0) << d.filename;
        EXPECT_NEAR(bbox[2].get<double>(), want.width, 2.0) << d.filename;
        EXPECT_NEAR(bbox[3].get<double>(), want.height, 2.0) << d.filename;

        // One polygon of x, y pairs, every vertex inside the bbox.
        const auto& seg = (*ann)["segmentation"];
        ASSERT_EQ(seg.size(), 1u);
        const auto& poly = seg[0];
        ASSERT_GE(poly.size(), 6u);
        ASSERT_EQ(poly.size() % 2, 0u);
        for (size_t k = 0; k < poly.size(); k += 2) {
            EXPECT_GE(poly[k].get<double>(), bbox[0].get<double>());
            EXPECT_LE(poly[k].get<double>(), bbox[0].get<double>() + bbox[2].get<double>());
            EXPECT_GE(poly[k + 1].get<double>(), bbox[1].get<double>());
            EXPECT_LE(poly[k + 1].get<double>(), bbox[1].get<double>() + bbox[3].get<double>());
        }
    }
    EXPECT_EQ(image_ids.size(), kDrawn.size()) << "image ids are unique";
    EXPECT_EQ(annotation_ids.size(), kDrawn.size()) << "annotation ids are unique";
}

TEST(CocoAnnotations, RecordWithoutMaskIsNamed) {
    TempDir t;
    write_hc18_folder(t, false);
    fs::remove(t.path() / "training_set" / "001_2HC_Mask.png");
    auto recs = fetalhc::read_hc18_training(t.path().string());
    ASSERT_TRUE(recs) << recs.error();
    auto text = fetalhc::coco_annotations_json(*recs);
    ASSERT_FALSE(text);
    EXPECT_TRUE(contains(text.error(), "001_2HC.png")) << text.error();
}

TEST(CocoAnnotations, NoRecordsGiveAnEmptyButValidDataset) {
    auto text = fetalhc::coco_annotations_json({});
    ASSERT_TRUE(text) << text.error();
    const auto j = nlohmann::json::parse(*text);
    EXPECT_TRUE(j["images"].empty());
    EXPECT_TRUE(j["annotations"].empty());
    EXPECT_EQ(j["categories"].size(), 1u);
}

// ---- the real data set (optional) ------------------------------------------------------------------------------

TEST(RealHc18, ExaminationsOfTheShippedFolderStayTogether) {
#ifdef FETALHC_DATA_DIR
    const std::string dir = FETALHC_DATA_DIR;
    if (!fs::is_directory(fs::path(dir) / "training_set")) GTEST_SKIP() << "HC18 data absent at " << dir;
    auto recs = fetalhc::read_hc18_training(dir);
    ASSERT_TRUE(recs) << recs.error();
    EXPECT_GT(recs->size(), 800u);
    const auto s = fetalhc::grouped_split(*recs, 0.15, "fetalhc-split-v1");
    std::set<std::string> train_exams;
    for (const auto& r : s.train) train_exams.insert(fetalhc::examination_id(r.filename));
    for (const auto& r : s.validation) EXPECT_EQ(train_exams.count(fetalhc::examination_id(r.filename)), 0u) << r.filename;
#else
    GTEST_SKIP() << "FETALHC_DATA_DIR is not defined for this test; the synthetic tests above cover the code";
#endif
}

}  // namespace

// The model's own measurements -> reference HC: the median ratio, so one gross failure does not
// move it; records the callback could not measure are skipped.
TEST(MeasuredToReferenceScale, MedianRatioOverTheMeasuredRecords) {
    std::vector<fetalhc::Hc18Record> recs;
    for (double hc : {100.0, 200.0, 300.0, 400.0, 150.0}) {
        fetalhc::Hc18Record r;
        r.filename = std::to_string(int(hc)) + "_HC.png";
        r.hc_mm = hc;
        recs.push_back(r);
    }
    auto measured = [](const fetalhc::Hc18Record& r) -> std::optional<double> {
        if (r.hc_mm == 400) return std::nullopt;  // a failed measurement
        if (r.hc_mm == 150) return 75.0;          // a gross error (ratio 2)
        return r.hc_mm * 0.98;
    };
    EXPECT_NEAR(fetalhc::measured_to_reference_scale(recs, measured), 1 / 0.98, 1e-12);
    EXPECT_TRUE(std::isnan(fetalhc::measured_to_reference_scale(recs, [](const fetalhc::Hc18Record&) -> std::optional<double> {
        return std::nullopt;
    })));
}

// ---- grouped k-fold split ----------------------------------------------------------------------------------------

TEST(KFoldSplit, CoversEveryRecordOnceKeepsExaminationsTogetherAndIsBalanced) {
    const auto recs = synthetic_records();
    const auto f = fetalhc::kfold_assignment(recs, 5, "test-salt");
    ASSERT_EQ(f.size(), recs.size());
    std::map<std::string, int> fold_of_exam;
    std::vector<int> size(5, 0);
    for (size_t i = 0; i < recs.size(); ++i) {
        ASSERT_GE(f[i], 0);
        ASSERT_LT(f[i], 5);
        ++size[f[i]];
        const auto e = fetalhc::examination_id(recs[i].filename);
        auto [it, fresh] = fold_of_exam.insert({e, f[i]});
        EXPECT_EQ(it->second, f[i]) << "examination " << e << " is split over two folds";
    }
    // Greedy by image count: folds within the largest examination (3 images) of each other.
    EXPECT_LE(*std::max_element(size.begin(), size.end()) - *std::min_element(size.begin(), size.end()), 3);
    // The K validation sets are disjoint and together are every record; each fold's train is the rest.
    std::map<std::string, int> seen;
    for (int k = 0; k < 5; ++k) {
        const auto s = fetalhc::kfold_split(recs, 5, k, "test-salt");
        EXPECT_EQ(s.train.size() + s.validation.size(), recs.size());
        EXPECT_EQ(int(s.validation.size()), size[k]);
        for (const auto& r : s.validation) ++seen[r.filename];
        std::set<std::string> val_exams;
        for (const auto& r : s.validation) val_exams.insert(fetalhc::examination_id(r.filename));
        for (const auto& r : s.train) EXPECT_EQ(val_exams.count(fetalhc::examination_id(r.filename)), 0u) << r.filename;
    }
    EXPECT_EQ(seen.size(), recs.size());
    for (const auto& [name, n] : seen) EXPECT_EQ(n, 1) << name;
}

TEST(KFoldSplit, IsDeterministicIndependentOfOrderAndSalted) {
    auto recs = synthetic_records();
    const auto a = fetalhc::kfold_assignment(recs, 5, "test-salt");
    EXPECT_EQ(a, fetalhc::kfold_assignment(recs, 5, "test-salt"));
    std::map<std::string, int> by_name;
    for (size_t i = 0; i < recs.size(); ++i) by_name[recs[i].filename] = a[i];
    std::reverse(recs.begin(), recs.end());
    std::shuffle(recs.begin(), recs.end(), std::mt19937(3));
    const auto b = fetalhc::kfold_assignment(recs, 5, "test-salt");
    for (size_t i = 0; i < recs.size(); ++i) EXPECT_EQ(b[i], by_name[recs[i].filename]) << recs[i].filename;
    EXPECT_NE(a, fetalhc::kfold_assignment(synthetic_records(), 5, "other-salt"));
}

TEST(KFoldSplit, RecordedSplitReadsFoldsAndComparesThem) {
    const auto plain = fetalhc::recorded_split(R"({"split_salt": "s", "validation_fraction": 0.15})");
    ASSERT_TRUE(plain);
    EXPECT_EQ(plain->folds, 0);
    const auto f0 = fetalhc::recorded_split(R"({"split_salt": "s", "validation_fraction": 0.15, "folds": 5, "fold": 0})");
    const auto f1 = fetalhc::recorded_split(R"({"split_salt": "s", "validation_fraction": 0.15, "folds": 5, "fold": 1})");
    const auto f0b = fetalhc::recorded_split(R"({"split_salt": "s", "validation_fraction": 0.3, "folds": 5, "fold": 0})");
    ASSERT_TRUE(f0 && f1 && f0b);
    EXPECT_EQ(f0->folds, 5);
    EXPECT_EQ(f1->fold, 1);
    EXPECT_FALSE(*f0 == *f1);
    EXPECT_FALSE(*f0 == *plain);
    EXPECT_TRUE(*f0 == *f0b);  // validation_fraction does not matter for a k-fold split
}

TEST(RealHc18, KFoldSizesOfTheShippedFolder) {
#ifdef FETALHC_DATA_DIR
    const std::string dir = FETALHC_DATA_DIR;
    if (!fs::is_directory(fs::path(dir) / "training_set")) GTEST_SKIP() << "HC18 data absent at " << dir;
    auto recs = fetalhc::read_hc18_training(dir);
    ASSERT_TRUE(recs) << recs.error();
    const auto f = fetalhc::kfold_assignment(*recs, 5, "fetalhc-split-v1");
    std::vector<int> size(5, 0);
    for (int x : f) ++size[x];
    EXPECT_LE(*std::max_element(size.begin(), size.end()) - *std::min_element(size.begin(), size.end()), 4);
#else
    GTEST_SKIP() << "FETALHC_DATA_DIR is not defined for this test";
#endif
}

// ---- issue 22: a careless operator's pixel sizes and pixel-size CSVs ------------------------------------

TEST(CheckPixelSize, BelowOneHundredthOfAMillimetreIsRefusedAsAUnitMistake) {
    // 1e-320 was accepted (an HC of 1e-317 mm); the range is [0.01, 2] mm per pixel.
    for (double v : {1e-320, 1e-6, 0.0099}) {
        const std::string e = fetalhc::check_pixel_size(v, "--pixel-size");
        EXPECT_TRUE(contains(e, "under the 0.01 mm/pixel")) << v << ": " << e;
        EXPECT_TRUE(contains(e, "unit")) << e;
    }
    EXPECT_TRUE(contains(fetalhc::check_pixel_size(1e-320, "x"), "is 9.99989e-321 mm")) << "the value as given, not 0.000000";
    EXPECT_EQ(fetalhc::check_pixel_size(fetalhc::kMinPixelSizeMm, "x"), "");
    EXPECT_EQ(fetalhc::check_pixel_size(0.01, "x"), "");
    EXPECT_FALSE(fetalhc::check_pixel_size(std::nextafter(2.0, 3.0), "x").empty());
}

TEST(ReadPixelSizes, RowsOutsideThePlausibleRangeAreRefusedWithTheirLine) {
    TempDir t;
    auto tiny = fetalhc::read_pixel_sizes(t.write("tiny.csv", "filename,pixel size(mm)\na.png,0.1\nb.png,1e-320\n"));
    ASSERT_FALSE(tiny);
    EXPECT_TRUE(contains(tiny.error(), "line 3")) << tiny.error();
    EXPECT_TRUE(contains(tiny.error(), "'b.png'")) << tiny.error();
    EXPECT_TRUE(contains(tiny.error(), "under the 0.01")) << tiny.error();
    auto large = fetalhc::read_pixel_sizes(t.write("large.csv", "a.png,7.8\n"));
    ASSERT_FALSE(large);
    EXPECT_TRUE(contains(large.error(), "line 1")) << large.error();
    EXPECT_TRUE(fetalhc::read_pixel_sizes(t.write("edges.csv", "a.png,0.01\nb.png,2\n")));
}

TEST(ReadPixelSizes, ALongBadLineIsQuotedCutToAHundredBytes) {
    // A 100 MB bad line used to be echoed whole to stderr.
    TempDir t;
    const std::string long_name(1 << 20, 'x');
    auto s = fetalhc::read_pixel_sizes(t.write("long.csv", "filename,pixel size(mm)\na.png,0.1\n" + long_name + ",zz\n"));
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error(), "line 3")) << s.error().substr(0, 300);
    EXPECT_TRUE(contains(s.error(), "'" + std::string(fetalhc::kMaxQuotedCsvBytes, 'x') + "...'")) << s.error().substr(0, 300);
    EXPECT_LT(s.error().size(), 400u) << s.error().substr(0, 300);
    // The same for a name listed twice, and for a name whose size is refused.
    auto twice = fetalhc::read_pixel_sizes(t.write("twice.csv", long_name + ",0.1\n" + long_name + ",0.2\n"));
    ASSERT_FALSE(twice);
    EXPECT_LT(twice.error().size(), 400u) << twice.error().substr(0, 300);
    auto range = fetalhc::read_pixel_sizes(t.write("range.csv", long_name + ",9\n"));
    ASSERT_FALSE(range);
    EXPECT_LT(range.error().size(), 400u) << range.error().substr(0, 300);
}

TEST(ReadPixelSizes, QuotedExcerptKeepsWholeCharactersAndHidesControlBytes) {
    TempDir t;
    // 99 ASCII bytes then 'é' (2 bytes): the cut at 100 would split it, so it falls before it.
    const std::string line = std::string(99, 'a') + "\xC3\xA9" + std::string(50, 'b') + "\x1b[2J,zz";
    auto s = fetalhc::read_pixel_sizes(t.write("utf8.csv", "a.png,0.1\n" + line + "\n"));
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error(), "'" + std::string(99, 'a') + "...'")) << s.error();
    auto esc = fetalhc::read_pixel_sizes(t.write("esc.csv", "a.png,0.1\nb\x1b[2J.png,zz\n"));
    ASSERT_FALSE(esc);
    EXPECT_TRUE(contains(esc.error(), "'b?[2J.png,zz'")) << esc.error();
}

TEST(ReadPixelSizes, AFileOverTheBudgetIsRefusedBeforeItIsRead) {
    TempDir t;
    const std::string row = "000_HC.png,0.1\n";
    std::string text;
    while (text.size() <= fetalhc::kMaxPixelSizeCsvBytes) text += row;
    auto s = fetalhc::read_pixel_sizes(t.write("big.csv", text));
    ASSERT_FALSE(s);
    EXPECT_TRUE(contains(s.error(), "is " + std::to_string(text.size()) + " bytes, over the 8 MB")) << s.error();
    text.resize(fetalhc::kMaxPixelSizeCsvBytes - fetalhc::kMaxPixelSizeCsvBytes % row.size());  // whole rows, under it
    EXPECT_TRUE(fetalhc::read_pixel_sizes(t.write("big.csv", text)));
}

namespace {

std::string pixel_sizes_error(const std::string& path) {
    auto s = fetalhc::read_pixel_sizes(path);
    return s ? "read " + std::to_string(s->size()) + " rows" : s.error();
}

}  // namespace

TEST(ReadPixelSizes, DevicesAndNamedPipesAreRefusedBeforeTheyAreRead) {
    // /dev/zero used to be read for 67 s, to 16.9 GB; a named pipe blocked in open().
    const std::string zero = in_child([] { return pixel_sizes_error("/dev/zero"); }, 5);
    EXPECT_TRUE(contains(zero, "'/dev/zero' is a character device, not a regular file")) << zero;
    TempDir t;
    const std::string fifo = t.file("sizes.csv");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const std::string pipe = in_child([&] { return pixel_sizes_error(fifo); }, 5);
    EXPECT_TRUE(contains(pipe, "named pipe (FIFO)")) << pipe;
    EXPECT_TRUE(contains(pipe, fifo)) << pipe;
}
