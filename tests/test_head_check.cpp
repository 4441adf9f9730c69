// The head check (issue 24): its crop, its network's shapes, a 2-step training smoke on synthetic
// folders (save, reload, score, resume), and load errors.
#include "fetalhc/head_check.h"
#include "fetalhc/head_check_train.h"
#include "head_check_net.h"  // internal (src/): the network, for its shapes

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace fetalhc;

namespace {

// Centroid of the pixels above half the crop's maximum.
cv::Point2d bright_centroid(const cv::Mat& crop) {
    double mx = 0;
    cv::minMaxLoc(crop, nullptr, &mx);
    cv::Moments m = cv::moments(crop > mx / 2, true);
    return {m.m10 / m.m00, m.m01 / m.m00};
}

cv::Mat dot_image(cv::Point2d p) {
    cv::Mat img = cv::Mat::zeros(400, 500, CV_8U);
    cv::circle(img, cv::Point(int(std::lround(p.x)), int(std::lround(p.y))), 4, cv::Scalar(255), cv::FILLED);
    return img;
}

fs::path temp_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("fetalhc_head_check_" + name + "_" + std::to_string(getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

}  // namespace

// Tolerance: the dots are drawn at integer pixels (rounding <= 0.5 px) and the crop samples the
// image at 2.8 image pixels per crop pixel, so a centroid within 1 crop pixel is exact mapping.
TEST(HeadCheckCrop, EllipseCentreMapsToCropCentre) {
    const Ellipse e{250, 200, 60, 45, 0.7};
    const double uc = (kHeadCheckCropSize - 1) / 2.0;
    const cv::Point2d c = bright_centroid(head_check_crop(dot_image({e.cx, e.cy}), e));
    EXPECT_NEAR(c.x, uc, 1.0);
    EXPECT_NEAR(c.y, uc, 1.0);
}

TEST(HeadCheckCrop, MajorAxisEndLiesOnPlusXAtTheSpan) {
    for (double angle : {0.0, 0.7, 2.0}) {
        const Ellipse e{250, 200, 60, 45, angle};
        const double uc = (kHeadCheckCropSize - 1) / 2.0;
        const double end = uc + kHeadCheckCropSize / (2 * kHeadCheckCropSpan);
        const cv::Point2d c = bright_centroid(head_check_crop(dot_image(ellipse_point(e, 0)), e));
        EXPECT_NEAR(c.x, end, 1.0) << "angle " << angle;
        EXPECT_NEAR(c.y, uc, 1.0) << "angle " << angle;
    }
}

TEST(HeadCheckCrop, OutsideTheImageIsBlackAndInvalidEllipseGivesBlack) {
    cv::Mat img(100, 100, CV_8U, cv::Scalar(200));
    const cv::Mat crop = head_check_crop(img, Ellipse{5, 5, 30, 20, 0});  // centre near the corner
    ASSERT_EQ(crop.size(), cv::Size(kHeadCheckCropSize, kHeadCheckCropSize));
    EXPECT_EQ(crop.at<unsigned char>(0, 0), 0);  // up-left of the corner: outside
    EXPECT_GT(crop.at<unsigned char>(kHeadCheckCropSize - 1, kHeadCheckCropSize - 1), 150);
    EXPECT_EQ(cv::countNonZero(head_check_crop(img, Ellipse{50, 50, 0, 0, 0})), 0);
}

// Ellipses a client may send (POST /v1/head-check): far outside the image or larger than any int.
// The crop stays 64x64 (black where there is no image) instead of converting them to int.
TEST(HeadCheckCrop, HostileEllipsesGiveACropNotACrash) {
    const cv::Mat img(400, 500, CV_8U, cv::Scalar(200));
    for (const Ellipse& e : {Ellipse{1e12, -1e12, 50, 40, 0}, Ellipse{-3e9, 200, 60, 45, 1.0}}) {
        const cv::Mat c = head_check_crop(img, e);
        ASSERT_EQ(c.size(), cv::Size(kHeadCheckCropSize, kHeadCheckCropSize));
        EXPECT_EQ(cv::countNonZero(c), 0) << e.cx << " " << e.cy;
    }
    for (const Ellipse& e : {Ellipse{250, 200, 1e15, 1e14, 0.3}, Ellipse{250, 200, 1e300, 1e299, 0}}) {
        const cv::Mat c = head_check_crop(img, e);
        ASSERT_EQ(c.size(), cv::Size(kHeadCheckCropSize, kHeadCheckCropSize));
    }
}

TEST(HeadCheckNet, OutputShapes) {
    fetalhc::detail::HeadCheckNet net;
    net->eval();
    auto x = torch::randint(0, 255, {3, 1, kHeadCheckCropSize, kHeadCheckCropSize}).to(torch::kUInt8);
    auto [head, planes] = net->forward(x);
    EXPECT_EQ(head.sizes(), (std::vector<int64_t>{3}));
    EXPECT_EQ(planes.sizes(), (std::vector<int64_t>{3, kHeadCheckPlaneCount}));
}

// The inference form (batch norms folded into the convs, oneDNN called directly) answers what the
// trained network answers in eval mode, to float rounding; batch-norm statistics made non-trivial
// by a few training-mode forwards and random affine parameters.
TEST(HeadCheckNet, InferenceFormMatchesTheTrainedNetwork) {
    torch::manual_seed(3);
    fetalhc::detail::HeadCheckNet net;
    {
        torch::NoGradGuard no_grad;
        for (auto& p : net->named_parameters())
            if (p.key().find("features") != std::string::npos && p.value().dim() == 1) p.value().uniform_(0.5, 1.5);
    }
    net->train();
    for (int i = 0; i < 3; ++i) net->forward(torch::randint(0, 255, {8, 1, kHeadCheckCropSize, kHeadCheckCropSize}).to(torch::kUInt8));
    net->eval();
    const fetalhc::detail::HeadCheckInference fast(net);
    const auto x = torch::randint(0, 255, {2, 1, kHeadCheckCropSize, kHeadCheckCropSize}).to(torch::kUInt8);
    torch::NoGradGuard no_grad;
    auto [h0, p0] = net->forward(x);
    auto [h1, p1] = fast.forward(x);
    EXPECT_LT((h0 - h1).abs().max().item<double>(), 1e-3 * (1 + h0.abs().max().item<double>()));
    EXPECT_LT((p0 - p1).abs().max().item<double>(), 1e-3 * (1 + p0.abs().max().item<double>()));
}

TEST(HeadCheckLoad, MissingFileSaysSo) {
    auto r = HeadCheck::load("/nonexistent/fetalhc_head_check.pt");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error_kind(), ErrorKind::ModelUnavailable);
    EXPECT_NE(r.error().find("does not exist"), std::string::npos) << r.error();
}

TEST(HeadCheckLoad, CorruptFileSaysSo) {
    const fs::path d = temp_dir("corrupt");
    std::ofstream(d / "bad.pt") << "not a model";
    auto r = HeadCheck::load((d / "bad.pt").string());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error_kind(), ErrorKind::ModelUnavailable);
    EXPECT_NE(r.error().find("cannot read head-check model"), std::string::npos) << r.error();
    fs::remove_all(d);
}

// 2 steps per model on synthetic folders: HC18 layout (rings with reference ellipses) and a
// planes folder (4 rows, measured with the shipped segmentation model), then load, score, resume.
TEST(HeadCheckTrain, TwoStepSmokeSavesReloadsAndResumes) {
    const fs::path d = temp_dir("train");
    const fs::path model = fs::path(FETALHC_SOURCE_DIR) / "models" / "fetalhc_unet.pt";
    if (!fs::exists(model)) GTEST_SKIP() << "shipped segmentation model absent: " << model;
    fs::create_directories(d / "hc18" / "training_set");
    fs::create_directories(d / "planes" / "images");
    std::ofstream csv(d / "hc18" / "training_set_pixel_size_and_HC.csv");
    csv << "filename,pixel size(mm),head circumference (mm)\n";
    std::ofstream ell(d / "hc18" / "training_set_ellipses.csv");
    ell << "filename,pixel_size_mm,hc_mm,center_x_px,center_y_px,semi_axis_a_px,semi_axis_b_px,angle_rad\n";
    std::ofstream labels(d / "planes" / "labels.csv");
    labels << "filename,plane,us_machine,patient,source_repo,source_path,source_commit,width,height\n";
    const char* planes[] = {"brain_tt", "abdomen", "femur", "other"};
    for (int i = 0; i < 4; ++i) {
        cv::Mat img(150, 200, CV_8U);
        cv::randu(img, 0, 60);
        const Ellipse e{100, 75, 50.0 + 3 * i, 38, 0.2 * i};
        cv::ellipse(img, cv::Point(100, 75), cv::Size(int(e.a), int(e.b)), e.angle * 180 / CV_PI, 0, 360, cv::Scalar(220), 3);
        const std::string name = "00" + std::to_string(i + 1) + "_HC";
        cv::imwrite((d / "hc18" / "training_set" / (name + ".png")).string(), img);
        cv::imwrite((d / "hc18" / "training_set" / (name + "_Mask.png")).string(), img > 100);
        csv << name << ".png,0.5,100\n";
        ell << name << ".png,0.5,100," << e.cx << "," << e.cy << "," << e.a << "," << e.b << "," << e.angle << "\n";
        const std::string pname = "Patient0000" + std::to_string(i) + "_Plane1_1_of_1.png";
        cv::imwrite((d / "planes" / "images" / pname).string(), img);
        labels << pname << "," << planes[i] << ",Aloka," << i << ",r,p,c,200,150\n";
    }
    csv.close();
    ell.close();
    labels.close();
    HeadCheckTrainOptions o;
    o.hc18_dir = (d / "hc18").string();
    o.planes_dir = (d / "planes").string();
    o.seg_model = model.string();
    o.out_dir = (d / "run").string();
    o.folds = 2;
    o.epochs = 1;
    o.batch = 4;
    o.max_steps = 2;
    auto r = train_head_check(o);
    ASSERT_TRUE(r) << r.error();
    EXPECT_TRUE(fs::exists(d / "run" / "report.json"));
    EXPECT_TRUE(fs::exists(d / "run" / "planes_ellipses.csv"));
    auto check = HeadCheck::load(r->model_path);
    ASSERT_TRUE(check) << check.error();
    EXPECT_LE(check->refuse_below(), check->review_below());
    const HeadCheckResult s = check->score(cv::imread((d / "hc18" / "training_set" / "001_HC.png").string(), cv::IMREAD_GRAYSCALE),
                                           Ellipse{100, 75, 50, 38, 0});
    EXPECT_GE(s.score, 0.0);
    EXPECT_LE(s.score, 1.0);
    EXPECT_NE(s.likely_other, 0);
    // A second run on the same folder needs resume; with it, the finished models are kept.
    EXPECT_FALSE(train_head_check(o));
    o.resume = true;
    auto again = train_head_check(o);
    ASSERT_TRUE(again) << again.error();
    EXPECT_DOUBLE_EQ(again->refuse_below, r->refuse_below);
    fs::remove_all(d);
}
