// Video / cine measurement: decoding, per-frame results, tracking and the robust summary.
#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "fetalhc/video.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

namespace fs = std::filesystem;
using namespace fetalhc;

namespace {

fs::path temp_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("fetalhc_test_video_" + name + "_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
}

// Writes frames as a Motion-JPEG AVI (OpenCV's built-in writer, no codec packages needed).
bool write_avi(const fs::path& path, const std::vector<cv::Mat>& frames, double fps = 25) {
    cv::VideoWriter w(path.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), fps, frames[0].size(), false);
    if (!w.isOpened()) return false;
    for (const auto& f : frames) w.write(f);
    return true;
}

// The first HC18 training image (sorted) that the still pipeline judges ok, with an HC inside
// Hadlock's range (so that a GA can be compared), and its pixel size; an error when none is.
struct OkScan {
    cv::Mat image;
    double pixel_size_mm = 0;
    Measurement still;
};

// Frames from `frames`, in order (measure_frames' FrameSource).
FrameSource frames_from(const std::vector<cv::Mat>& frames) {
    auto k = std::make_shared<size_t>(0);
    return [&frames, k](SourceFrame& f) {
        if (*k >= frames.size()) return false;
        f.image = frames[(*k)++];
        return true;
    };
}

Expected<Measurer> shipped_measurer() {
    auto seg = Segmenter::load(FETALHC_DEFAULT_MODEL, {2});
    if (!seg) return make_error(seg.error());
    return Measurer(*seg);
}

Expected<OkScan> first_ok_scan(const Measurer& m) {
    auto recs = read_hc18_training(FETALHC_DATA_DIR);
    if (!recs) return make_error(recs.error());
    for (const auto& r : *recs) {
        auto img = load_grayscale(r.image_path);
        if (!img) return make_error(img.error());
        MeasureOptions o;
        o.pixel_size_mm = r.pixel_size_mm;
        auto still = m.measure(*img, o, r.filename);
        if (still && still->quality == "ok" && still->ga_hadlock.in_range) return OkScan{*img, r.pixel_size_mm, *still};
    }
    return make_error("no HC18 training image is measured ok with an HC in Hadlock's range");
}

// The scan moved by a few pixels per frame (a steady probe).
std::vector<cv::Mat> shifted_frames(const cv::Mat& img, int n) {
    std::vector<cv::Mat> frames;
    for (int i = 0; i < n; ++i) {
        cv::Mat f;
        const cv::Matx23d T(1, 0, 3 * std::sin(i * 0.7), 0, 1, 2 * std::cos(i * 0.5));
        cv::warpAffine(img, f, T, img.size());
        frames.push_back(f);
    }
    return frames;
}

}  // namespace

TEST(Video, RecognisesVideoExtensions) {
    EXPECT_TRUE(has_video_extension("a/b/sweep.MP4"));
    EXPECT_TRUE(has_video_extension("cine.avi"));
    EXPECT_FALSE(has_video_extension("scan.png"));
    EXPECT_FALSE(has_video_extension("mp4"));
}

TEST(Video, BadInputsGiveClearErrors) {
    if (!fs::exists(FETALHC_DEFAULT_MODEL)) GTEST_SKIP() << "model " << FETALHC_DEFAULT_MODEL << " not found";
    auto m = shipped_measurer();
    ASSERT_TRUE(m) << m.error();
    VideoOptions vo;
    vo.measure.pixel_size_mm = 0.15;
    auto missing = measure_video(*m, "/nonexistent/sweep.mp4", vo);
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().find("/nonexistent/sweep.mp4"), std::string::npos) << missing.error();

    const fs::path dir = temp_dir("bad");
    const fs::path fake = dir / "notes.mp4";
    std::ofstream(fake) << "this is a text file, not a video\n";
    auto bad = measure_video(*m, fake.string(), vo);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().find("notes.mp4"), std::string::npos) << bad.error();

    vo.measure.pixel_size_mm = -1;
    auto neg = measure_video(*m, fake.string(), vo);
    ASSERT_FALSE(neg);
    EXPECT_NE(neg.error().find("pixel size"), std::string::npos) << neg.error();
    fs::remove_all(dir);
}

TEST(Video, EveryFrameIsReportedInOrder) {
    if (!fs::exists(FETALHC_DEFAULT_MODEL)) GTEST_SKIP() << "model " << FETALHC_DEFAULT_MODEL << " not found";
    auto m = shipped_measurer();
    ASSERT_TRUE(m) << m.error();
    const fs::path dir = temp_dir("order");
    std::vector<cv::Mat> frames;
    cv::RNG rng(3);
    for (int i = 0; i < 12; ++i) {
        cv::Mat f(240, 320, CV_8U);
        rng.fill(f, cv::RNG::UNIFORM, 0, 50);
        cv::ellipse(f, {150 + i, 120}, {80, 60}, 20, 0, 360, cv::Scalar(230), 4);
        frames.push_back(f);
    }
    ASSERT_TRUE(write_avi(dir / "ring.avi", frames)) << "OpenCV cannot write MJPG AVI here";
    VideoOptions vo;
    vo.measure.pixel_size_mm = 0.2;
    std::vector<int> seen;
    auto s = measure_video(*m, (dir / "ring.avi").string(), vo, [&](const VideoFrame& f) { seen.push_back(f.index); });
    ASSERT_TRUE(s) << s.error();
    EXPECT_EQ(s->frames, 12);
    ASSERT_EQ(seen.size(), 12u);
    for (int i = 0; i < 12; ++i) EXPECT_EQ(seen[i], i);
    EXPECT_LE(s->ok, s->measured);
    EXPECT_LE(s->measured, s->frames);
    EXPECT_GT(s->frames_per_second, 0);
    vo.max_frames = 5;
    auto s5 = measure_video(*m, (dir / "ring.avi").string(), vo);
    ASSERT_TRUE(s5) << s5.error();
    EXPECT_EQ(s5->frames, 5);
    // Frames measured on worker threads: still every frame, in order, and the same results from
    // run to run (the tracking decisions depend on finished frames only, not on timing).
    vo.max_frames = 0;
    for (int workers : {1, 3}) {
        vo.workers = workers;
        std::vector<std::pair<int, double>> runs[2];
        for (auto& run : runs) {
            auto sw = measure_video(*m, (dir / "ring.avi").string(), vo, [&](const VideoFrame& f) {
                run.emplace_back(f.index, f.result ? f.result->hc_mm : -1.0);
            });
            ASSERT_TRUE(sw) << sw.error();
            EXPECT_EQ(sw->frames, 12) << workers << " workers";
        }
        ASSERT_EQ(runs[0].size(), 12u) << workers << " workers";
        for (int i = 0; i < 12; ++i) EXPECT_EQ(runs[0][i].first, i) << workers << " workers";
        EXPECT_EQ(runs[0], runs[1]) << workers << " workers: two runs differ";
    }
    fs::remove_all(dir);
}

// A cine loop made from one real scan moving by a few pixels: the summary must agree with the
// still-image measurement, and tracking must be used between whole-image passes.
TEST(Video, SummaryOfAShiftedRealScanMatchesTheStillImage) {
    const fs::path data = FETALHC_DATA_DIR;
    if (!fs::exists(data / "training_set")) GTEST_SKIP() << "HC18 data not found at " << data;
    if (!fs::exists(FETALHC_DEFAULT_MODEL)) GTEST_SKIP() << "model " << FETALHC_DEFAULT_MODEL << " not found";
    auto m = shipped_measurer();
    ASSERT_TRUE(m) << m.error();
    auto recs = read_hc18_training(data.string());
    ASSERT_TRUE(recs) << recs.error();
    // The first images (sorted) that the still pipeline judges ok; the test fails if it finds
    // fewer than two (a loop that checked nothing would otherwise pass).
    size_t used = 0;
    for (size_t k = 0; k < recs->size() && used < 2; ++k) {
        const auto& r = (*recs)[k];
        auto img = load_grayscale(r.image_path);
        ASSERT_TRUE(img) << img.error();
        MeasureOptions o;
        o.pixel_size_mm = r.pixel_size_mm;
        auto still = m->measure(*img, o, r.filename);
        if (!still || still->quality != "ok") continue;
        ++used;
        std::vector<cv::Mat> frames;
        for (int i = 0; i < 15; ++i) {
            cv::Mat f;
            const cv::Matx23d T(1, 0, 3 * std::sin(i * 0.7), 0, 1, 2 * std::cos(i * 0.5));
            cv::warpAffine(*img, f, T, img->size());
            frames.push_back(f);
        }
        const fs::path dir = temp_dir("real");
        ASSERT_TRUE(write_avi(dir / "cine.avi", frames));
        VideoOptions vo;
        vo.measure.pixel_size_mm = r.pixel_size_mm;
        int tracked = 0;
        auto s = measure_video(*m, (dir / "cine.avi").string(), vo, [&](const VideoFrame& f) { tracked += f.tracked; });
        ASSERT_TRUE(s) << s.error();
        EXPECT_EQ(s->frames, 15);
        ASSERT_TRUE(s->has_estimate) << r.filename << ": no ok frame";
        EXPECT_GE(s->ok, 10) << r.filename;
        EXPECT_NEAR(s->estimate.hc_mm, still->hc_mm, 2.0) << r.filename;
        if (m->segmenter().info().refine_config.input_width > 0) EXPECT_GT(tracked, 0) << "a two-pass model should track";
        fs::remove_all(dir);
    }
    EXPECT_EQ(used, 2u) << "fewer than two HC18 images measured ok as stills: nothing was compared";
}

// The shipped model and the first suitable HC18 scan (first_ok_scan); skipped without them.
class VideoRealScan : public ::testing::Test {
protected:
    void SetUp() override {
        if (!fs::exists(fs::path(FETALHC_DATA_DIR) / "training_set")) GTEST_SKIP() << "HC18 data not found at " << FETALHC_DATA_DIR;
        if (!fs::exists(FETALHC_DEFAULT_MODEL)) GTEST_SKIP() << "model " << FETALHC_DEFAULT_MODEL << " not found";
        auto m = shipped_measurer();
        ASSERT_TRUE(m) << m.error();
        auto scan = first_ok_scan(*m);
        ASSERT_TRUE(scan) << scan.error();
        m_.emplace(std::move(*m));
        scan_.emplace(std::move(*scan));
    }
    std::optional<Measurer> m_;
    std::optional<OkScan> scan_;
};

// The result of a sequence must not depend on how many frames are measured at once: every frame
// is tracked from its key frame (video.h), so 1 and 3 workers give the same frames, bit for bit,
// and the same summary. 9 frames with a key frame every 4: keys 0, 4, 8, tracked frames between.
TEST_F(VideoRealScan, ResultsDoNotDependOnTheWorkerCount) {
    auto& m = m_;
    auto& scan = scan_;
    const std::vector<cv::Mat> frames = shifted_frames(scan->image, 9);
    VideoOptions vo;
    vo.measure.pixel_size_mm = scan->pixel_size_mm;
    vo.redetect_every = 4;
    std::vector<VideoFrame> seen[2];
    Expected<VideoSummary> sums[2] = {make_error("not run"), make_error("not run")};
    const int workers[2] = {1, 3};
    for (int k = 0; k < 2; ++k) {
        vo.workers = workers[k];
        sums[k] = measure_frames(*m, "cine", frames_from(frames), vo, [&](const VideoFrame& f) { seen[k].push_back(f); });
        ASSERT_TRUE(sums[k]) << sums[k].error();
    }
    ASSERT_EQ(seen[0].size(), 9u);
    ASSERT_EQ(seen[1].size(), 9u);
    int tracked = 0;
    for (size_t i = 0; i < 9; ++i) {
        const VideoFrame &a = seen[0][i], &b = seen[1][i];
        EXPECT_EQ(a.index, int(i));
        EXPECT_EQ(b.index, int(i));
        EXPECT_EQ(a.tracked, b.tracked) << "frame " << i;
        tracked += a.tracked;
        ASSERT_EQ(bool(a.result), bool(b.result)) << "frame " << i;
        if (!a.result) continue;
        EXPECT_EQ(a.result->hc_mm, b.result->hc_mm) << "frame " << i;
        EXPECT_EQ(a.result->ellipse_px.cx, b.result->ellipse_px.cx) << "frame " << i;
        EXPECT_EQ(a.result->quality, b.result->quality) << "frame " << i;
    }
    // Key frames 0, 4 and 8 run the whole-image pass; a two-pass model tracks the others.
    EXPECT_FALSE(seen[0][0].tracked);
    EXPECT_FALSE(seen[0][4].tracked);
    EXPECT_FALSE(seen[0][8].tracked);
    if (m->segmenter().info().refine_config.input_width > 0) EXPECT_GT(tracked, 0) << "a two-pass model should track";
    const VideoSummary &s1 = *sums[0], &s3 = *sums[1];
    EXPECT_EQ(s1.ok, s3.ok);
    EXPECT_EQ(s1.estimate_frame, s3.estimate_frame);
    EXPECT_EQ(s1.estimate.hc_mm, s3.estimate.hc_mm);
    EXPECT_EQ(s1.estimate.bpd_mm, s3.estimate.bpd_mm);
    EXPECT_EQ(s1.estimate.ga_hadlock.weeks, s3.estimate.ga_hadlock.weeks);
    EXPECT_EQ(s1.estimate.quality, s3.estimate.quality);
    EXPECT_EQ(s1.hc_iqr_mm, s3.hc_iqr_mm);
    // The summary is one measurement of the median HC: its GA is Hadlock's for that HC.
    ASSERT_TRUE(s1.has_estimate);
    EXPECT_EQ(s1.estimate.source, "cine#summary");
    ASSERT_TRUE(s1.estimate.ga_hadlock.in_range);
    EXPECT_DOUBLE_EQ(s1.estimate.ga_hadlock.weeks, hadlock_ga(s1.estimate.hc_mm).weeks);
    EXPECT_NEAR(s1.estimate.hc_mm, scan->still.hc_mm, 2.0);
}

// Frames that disagree (half of them the scan shrunk by 15%: another head size) give a summary
// marked review with the reason; too few ok frames too.
TEST_F(VideoRealScan, SummaryOfFramesThatDisagreeIsMarkedReview) {
    auto& m = m_;
    auto& scan = scan_;
    const cv::Point2f centre(float(scan->still.ellipse_px.cx), float(scan->still.ellipse_px.cy));
    cv::Mat small;
    cv::warpAffine(scan->image, small, cv::getRotationMatrix2D(centre, 0, 0.85), scan->image.size());
    const std::vector<cv::Mat> frames{scan->image, small, scan->image, small};
    VideoOptions vo;
    vo.measure.pixel_size_mm = scan->pixel_size_mm;
    vo.workers = 1;
    std::vector<double> hc;
    auto s = measure_frames(*m, "mixed", frames_from(frames), vo, [&](const VideoFrame& f) {
        if (f.result && f.result->quality == "ok") hc.push_back(f.result->hc_mm);
    });
    ASSERT_TRUE(s) << s.error();
    ASSERT_GE(s->ok, 3) << "the test needs ok frames of both sizes";
    ASSERT_GT(s->hc_iqr_mm, 0.05 * s->estimate.hc_mm) << "the frames were meant to disagree";
    EXPECT_EQ(s->estimate.quality, "review");
    ASSERT_FALSE(s->estimate.reasons.empty());
    EXPECT_NE(s->estimate.reasons.front().find("the ok frames disagree"), std::string::npos) << s->estimate.reasons.front();
    // The same frames with a tolerance wider than their spread: ok.
    vo.max_hc_iqr_share = 0.5;
    auto wide = measure_frames(*m, "mixed", frames_from(frames), vo);
    ASSERT_TRUE(wide) << wide.error();
    EXPECT_EQ(wide->estimate.quality, "ok");
    // Asking for more ok frames than there are: review, saying how many were ok.
    vo.min_ok_frames = 10;
    auto few = measure_frames(*m, "mixed", frames_from({scan->image, scan->image}), vo);
    ASSERT_TRUE(few) << few.error();
    EXPECT_EQ(few->estimate.quality, "ok") << "2 of 2 frames ok: every frame read is enough";
    const std::vector<cv::Mat> blank_and_scan{cv::Mat(scan->image.size(), CV_8UC1, cv::Scalar(0)), scan->image,
                                              cv::Mat(scan->image.size(), CV_8UC1, cv::Scalar(0))};
    auto one = measure_frames(*m, "one", frames_from(blank_and_scan), vo);
    ASSERT_TRUE(one) << one.error();
    ASSERT_EQ(one->ok, 1);
    EXPECT_EQ(one->estimate.quality, "review");
    EXPECT_NE(one->estimate.reasons.front().find("only 1 of 3 frames judged ok"), std::string::npos) << one->estimate.reasons.front();
}

// A video without an ok frame says why: another plane when most frames were refused as such (a
// cardiac cine sent to the node), else no head.
TEST(VideoSummaryReason, MostlyAnotherPlaneOrNoHead) {
    VideoSummary s;
    s.frames = 3;
    s.estimate.reasons = {"no frame judged ok (0 of 3 frames measured): no estimate; check the frames"};
    VideoFrame femur, blank;
    femur.result = make_error(ErrorKind::NotAHeadPlane, "'v#0' is not a fetal head in the HC plane: a femur");
    blank.result = make_error(ErrorKind::NoHeadFound, "no fetal head found in 'v#2'");
    NotAHeadFrames refused;
    refused.add(femur);
    refused.add(blank);  // another failure: not counted
    auto e = summary_without_estimate(s, refused, "v.mp4");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind, ErrorKind::NoHeadFound) << "1 of 3 frames is not most of them";
    EXPECT_NE(e->message.find("no frame judged ok"), std::string::npos) << e->message;
    refused.add(femur);
    e = summary_without_estimate(s, refused, "v.mp4");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind, ErrorKind::NotAHeadPlane);
    EXPECT_NE(e->message.find("2 of 3 frames are not a fetal head in the HC plane"), std::string::npos) << e->message;
    EXPECT_NE(e->message.find("a femur"), std::string::npos) << e->message;
    s.has_estimate = true;
    EXPECT_FALSE(summary_without_estimate(s, refused, "v.mp4"));
}
