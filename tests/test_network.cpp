// The frozen inference form of the network (folded batch norm, channels-last, oneDNN for every
// convolution) must give what the training form gives in eval mode; the second pass's decision to
// crop again.
#include "geometry.h"
#include "net_frame.h"
#include "network.h"
#include "unet_traverse.h"

#include "fetalhc/ellipse.h"

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <limits>
#include <thread>

#include <unistd.h>

using fetalhc::detail::UNet;

namespace {

UNet random_eval_net(int width, int height, int base, int depth, int stem_stride = 1) {
    torch::manual_seed(7);
    fetalhc::NetworkConfig cfg;
    cfg.input_width = width;
    cfg.input_height = height;
    cfg.base_channels = base;
    cfg.depth = depth;
    cfg.max_channels = 64;
    cfg.stem_stride = stem_stride;
    UNet net(cfg);
    torch::NoGradGuard no_grad;
    // Non-trivial batch-norm statistics and affine terms, so that folding them is really tested.
    for (auto& b : net->named_buffers()) {
        if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.5, 0.5);
        if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 2.0);
    }
    for (auto& p : net->named_parameters())
        if (p.key().find(".b1.") != std::string::npos || p.key().find(".b2.") != std::string::npos) p.value().uniform_(0.5, 1.5);
    net->eval();
    return net;
}

void expect_same(UNet& net, int width, int height) {
    auto x = torch::randn({1, 1, height, width});
    c10::InferenceMode guard;
    auto [ref_logits, ref_presence] = net->forward(x);
    auto [logits, presence] = net->infer(x);
    ASSERT_EQ(logits.sizes(), ref_logits.sizes());
    const float scale = ref_logits.abs().max().item<float>();
    ASSERT_GT(scale, 0.0f);
    EXPECT_LT((logits - ref_logits).abs().max().item<float>(), 1e-4f * std::max(1.0f, scale));
    EXPECT_NEAR(presence.item<float>(), ref_presence.item<float>(), 1e-4f);
}

}  // namespace

TEST(FrozenNetwork, BeforeFreezeInferIsForward) {
    UNet net = random_eval_net(64, 48, 4, 3);
    ASSERT_FALSE(net->frozen);
    auto x = torch::randn({1, 1, 48, 64});
    c10::InferenceMode guard;
    EXPECT_TRUE(torch::equal(net->infer(x).first, net->forward(x).first));
}

TEST(FrozenNetwork, MatchesTheTrainingFormInEvalMode) {
    // 192x128 at depth 4 leaves 12x8 maps at the bottom: the small layers ATen would not hand to oneDNN.
    UNet net = random_eval_net(192, 128, 8, 4);
    net->freeze();
    ASSERT_TRUE(net->frozen);
    expect_same(net, 192, 128);
    expect_same(net, 256, 208);  // any size that is a multiple of 2^depth
}

TEST(FrozenNetwork, FreezeCopiesTheWeightsOfThatMoment) {
    UNet net = random_eval_net(64, 48, 4, 3);
    net->freeze();
    auto x = torch::randn({1, 1, 48, 64});
    c10::InferenceMode guard;
    auto before = net->infer(x).first.clone();
    {
        torch::NoGradGuard no_grad;
        net->head->bias.add_(1.0);
    }
    EXPECT_TRUE(torch::allclose(net->infer(x).first, before));
    net->freeze();
    EXPECT_TRUE(torch::allclose(net->infer(x).first, before + 1.0, 1e-4, 1e-4));
}

TEST(FrozenNetwork, StrideTwoStemPredictsAtTheInputSizeAndFreezesToo) {
    UNet net = random_eval_net(128, 96, 6, 3, 2);
    auto x = torch::randn({2, 1, 96, 128});
    {
        c10::InferenceMode guard;
        auto [logits, presence] = net->forward(x);
        EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 1, 96, 128}));
        EXPECT_EQ(presence.sizes(), (std::vector<int64_t>{2}));
    }
    net->freeze();
    expect_same(net, 128, 96);
}

TEST(FrozenNetwork, StemStrideAndSizeAreChecked) {
    fetalhc::NetworkConfig cfg;
    cfg.input_width = 208;  // a multiple of 2^4 = 16 but not of 2 x 2^4 = 32
    cfg.input_height = 128;
    cfg.depth = 4;
    cfg.stem_stride = 2;
    EXPECT_THROW(UNet{cfg}, std::invalid_argument);
    cfg.stem_stride = 3;
    cfg.input_width = 192;
    EXPECT_THROW(UNet{cfg}, std::invalid_argument);
    cfg.stem_stride = 1;
    cfg.input_width = 208;
    EXPECT_NO_THROW(UNet{cfg});
}

// The second pass crops again only when the head it found is much smaller than the crop's ellipse
// or away from the crop's centre (a first pass that took the head with its surroundings).
TEST(SecondLook, OnlyForASmallOrOffCentreHead) {
    using fetalhc::Ellipse;
    const cv::Size ns(256, 192);
    const Ellipse crop_ellipse{400, 270, 150, 110, 0.3};
    fetalhc::Segmentation seg;
    seg.refined = true;
    const cv::Matx23d crop_to_net = fetalhc::crop_frame(crop_ellipse, ns, 1.2);
    const double s = fetalhc::frame_zoom(crop_to_net);
    const double cx = (ns.width - 1) / 2.0, cy = (ns.height - 1) / 2.0;
    auto head_at = [&](double dx, double scale) {  // the crop's ellipse in net pixels, moved and scaled
        Ellipse e{cx + dx, cy, s * crop_ellipse.a * scale, s * crop_ellipse.b * scale, 0};
        cv::Mat m;
        fetalhc::rasterize(e, ns).convertTo(m, CV_32F, 1.0 / 255);
        return m;
    };
    using fetalhc::detail::needs_second_look;
    fetalhc::set_net_frame(seg, head_at(0, 1.0), crop_to_net);
    EXPECT_FALSE(needs_second_look(seg, crop_ellipse)) << "the head fills the crop's ellipse";
    fetalhc::set_net_frame(seg, head_at(0, 0.85), crop_to_net);  // 72% of the area
    EXPECT_FALSE(needs_second_look(seg, crop_ellipse));
    fetalhc::set_net_frame(seg, head_at(0, 0.6), crop_to_net);  // 36% of the area
    EXPECT_TRUE(needs_second_look(seg, crop_ellipse)) << "the head is much smaller than the crop's ellipse";
    fetalhc::set_net_frame(seg, head_at(0.3 * s * crop_ellipse.a, 1.0), crop_to_net);
    EXPECT_TRUE(needs_second_look(seg, crop_ellipse)) << "the head is off the crop's centre";
    fetalhc::set_net_frame(seg, cv::Mat::zeros(ns, CV_32F), crop_to_net);
    EXPECT_FALSE(needs_second_look(seg, crop_ellipse)) << "nothing found is left to the caller's checks";
}

// Weight averaging: every parameter and batch-norm statistic moves by (1 - decay) towards the
// training network's; the integer batch counter is copied; copy_weights makes the two equal.
TEST(WeightAverage, EmaMovesEachTensorByOneMinusDecay) {
    UNet avg = random_eval_net(32, 32, 4, 2), net = random_eval_net(32, 32, 4, 2);
    torch::NoGradGuard no_grad;
    for (auto& p : avg->parameters()) p.fill_(0.0);
    for (auto& p : net->parameters()) p.fill_(1.0);
    for (auto& b : avg->named_buffers())
        b.value().fill_(b.key().find("num_batches") != std::string::npos ? 3 : 2.0);
    for (auto& b : net->named_buffers())
        b.value().fill_(b.key().find("num_batches") != std::string::npos ? 9 : 6.0);
    fetalhc::detail::ema_update(*avg, *net, 0.75);
    int checked = 0;
    for (auto& p : avg->parameters()) EXPECT_TRUE(torch::allclose(p, torch::full_like(p, 0.25))), ++checked;
    for (auto& b : avg->named_buffers()) {
        const bool counter = b.key().find("num_batches") != std::string::npos;
        EXPECT_TRUE(torch::equal(b.value(), torch::full_like(b.value(), counter ? 9 : 3.0))) << b.key();
        ++checked;
    }
    EXPECT_GT(checked, 10);
    fetalhc::detail::copy_weights(*avg, *net);
    for (auto& p : avg->parameters()) EXPECT_TRUE(torch::equal(p, torch::ones_like(p)));
}

// Ensembles (Segmenter::load_ensemble): members' probability maps are averaged, so two copies of
// one model segment exactly as the model alone; members from other recipes are refused.
namespace {

struct TempFolder {
    std::filesystem::path path;
    TempFolder() {
        path = std::filesystem::temp_directory_path() / ("fetalhc_ens_" + std::to_string(::getpid()));
        std::filesystem::create_directories(path);
    }
    ~TempFolder() { std::filesystem::remove_all(path); }
};

cv::Mat head_scan() {
    cv::Mat img(200, 260, CV_8U, cv::Scalar(25));
    cv::ellipse(img, {130, 100}, {70, 50}, 20, 0, 360, cv::Scalar(210), 4);
    return img;
}

}  // namespace

TEST(Ensemble, TwoCopiesOfOneModelSegmentAsTheModel) {
    TempFolder t;
    UNet net = random_eval_net(64, 64, 4, 2);
    const auto a = (t.path / "a.pt").string(), b = (t.path / "b.pt").string();
    fetalhc::detail::save_model(net, a, R"({"axis_scale": 0.99})");
    fetalhc::detail::save_model(net, b, R"({"axis_scale": 0.97})");
    auto one = fetalhc::Segmenter::load(a, {1});
    auto two = fetalhc::Segmenter::load_ensemble({a, b}, {1});
    ASSERT_TRUE(one && two) << (one ? two.error() : one.error());
    const cv::Mat img = head_scan();
    const fetalhc::Segmentation s1 = one->segment(img), s2 = two->segment(img);
    EXPECT_LT(cv::norm(fetalhc::net_frame(s1).probability, fetalhc::net_frame(s2).probability, cv::NORM_INF), 1e-6);
    EXPECT_NEAR(s2.presence, s1.presence, 1e-6);
    EXPECT_EQ(s2.member_disagreement, 0.0);
    EXPECT_NEAR(two->info().axis_scale, 0.98, 1e-12);  // the members' mean
    EXPECT_NE(two->info().metadata.find("ensemble_of"), std::string::npos);
    EXPECT_EQ(two->info().parameters, 2 * one->info().parameters);
}

TEST(Ensemble, MembersOfAnotherRecipeAreRefused) {
    TempFolder t;
    UNet small = random_eval_net(64, 64, 4, 2), other = random_eval_net(96, 64, 4, 2);
    const auto a = (t.path / "a.pt").string(), b = (t.path / "b.pt").string();
    fetalhc::detail::save_model(small, a, "{}");
    fetalhc::detail::save_model(other, b, "{}");
    auto e = fetalhc::Segmenter::load_ensemble({a, b}, {1});
    ASSERT_FALSE(e);
    EXPECT_NE(e.error().find(b), std::string::npos);
    EXPECT_NE(e.error().find("other network settings"), std::string::npos);
}

TEST(Ensemble, FolderListsFoldModelsOrModelFiles) {
    TempFolder t;
    UNet net = random_eval_net(64, 64, 4, 2);
    EXPECT_FALSE(fetalhc::ensemble_model_files((t.path / "missing").string()));
    for (const char* f : {"fold1", "fold0"}) {
        std::filesystem::create_directories(t.path / f);
        fetalhc::detail::save_model(net, (t.path / f / "model.pt").string(), "{}");
    }
    fetalhc::detail::save_model(net, (t.path / "loose.pt").string(), "{}");  // ignored beside fold folders
    auto files = fetalhc::ensemble_model_files(t.path.string());
    ASSERT_TRUE(files) << files.error();
    ASSERT_EQ(files->size(), 2u);
    EXPECT_NE((*files)[0].find("fold0"), std::string::npos);
    std::filesystem::remove_all(t.path / "fold0");
    std::filesystem::remove_all(t.path / "fold1");
    auto single = fetalhc::ensemble_model_files(t.path.string());  // one .pt file: not an ensemble
    ASSERT_FALSE(single);
    EXPECT_NE(single.error().find("1 model"), std::string::npos);
}

// The second pass's mirror average: the averaged map of an input and of its mirror image are
// mirror images of each other (whatever the weights), the mean of the two single views; without
// it a random network is not symmetric, so the test can tell them apart.
TEST(MirrorAverage, IsTheMeanOfBothViewsAndMirrorSymmetric) {
    UNet net = random_eval_net(64, 48, 4, 2);
    const std::vector<UNet> nets{net};
    cv::Mat input(48, 64, CV_8UC1);
    cv::randu(input, 0, 256);
    cv::Mat mirrored;
    cv::flip(input, mirrored, 1);
    c10::InferenceMode guard;
    const auto plain = fetalhc::detail::forward_members(nets, input, false);
    const auto plain_m = fetalhc::detail::forward_members(nets, mirrored, false);
    const auto avg = fetalhc::detail::forward_members(nets, input, true);
    const auto avg_m = fetalhc::detail::forward_members(nets, mirrored, true);

    cv::Mat back;
    cv::flip(plain_m.probability, back, 1);
    EXPECT_GT(cv::norm(plain.probability, back, cv::NORM_INF), 1e-3) << "a random network should not be mirror symmetric";
    const cv::Mat expected = 0.5f * (plain.probability + back);
    EXPECT_LT(cv::norm(avg.probability, expected, cv::NORM_INF), 1e-6);
    EXPECT_NEAR(avg.presence, 0.5f * (plain.presence + plain_m.presence), 1e-6);
    cv::flip(avg_m.probability, back, 1);
    EXPECT_LT(cv::norm(avg.probability, back, cv::NORM_INF), 1e-6);
}

// int8 form (network_int8.cpp): its 2x upsampling is torch's bilinear one on the 8-bit values,
// rounded; the whole network stays close to the float form on the inputs it was calibrated on; a
// model file without ranges is refused with the command that makes them; concurrent calls agree.
TEST(Int8Network, UpsamplingIsBilinearRoundedToTheInputsSteps) {
    if (!fetalhc::int8_problem().empty()) GTEST_SKIP() << fetalhc::int8_problem();
    torch::manual_seed(3);
    auto x = torch::rand({2, 5, 6, 7}) * 3.0;
    auto q = torch::quantize_per_tensor(x, 3.0 / 255, 0, torch::kQUInt8).contiguous(torch::MemoryFormat::ChannelsLast);
    auto up = fetalhc::detail::upsample2x_int8(q);
    ASSERT_EQ(up.sizes(), (std::vector<int64_t>{2, 5, 12, 14}));
    EXPECT_EQ(up.q_scale(), q.q_scale());
    auto ref = torch::upsample_bilinear2d(q.dequantize(), {12, 14}, false);
    // Rounding to the nearest step: at most half a step away (plus float noise).
    EXPECT_LE((up.dequantize() - ref).abs().max().item<float>(), 0.5f * 3.0f / 255 + 1e-5f);
    EXPECT_GT((up.dequantize() - ref).abs().max().item<float>(), 0.0f) << "rounding should show somewhere";
}

namespace {

// A frozen random network quantized with ranges recorded on `inputs`.
void calibrate(UNet& net, const std::vector<torch::Tensor>& inputs) {
    fetalhc::detail::ActivationRecorder rec;
    {
        fetalhc::detail::RecordActivations recording(rec);
        c10::InferenceMode guard;
        for (const auto& x : inputs) net->infer(x);
    }
    ASSERT_EQ(rec.max.size(), 1u);
    const auto& ranges = rec.max.begin()->second;
    ASSERT_EQ(static_cast<int>(ranges.size()), fetalhc::detail::int8_layer_count(net->cfg));
    for (float r : ranges) EXPECT_GT(r, 0.0f);
    net->quantize(ranges);
}

}  // namespace

TEST(Int8Network, CloseToTheFloatFormOnCalibratedInputs) {
    if (!fetalhc::int8_problem().empty()) GTEST_SKIP() << fetalhc::int8_problem();
    for (int stem : {1, 2}) {
        UNet net = random_eval_net(192, 128, 8, 4, stem);
        net->freeze();
        std::vector<torch::Tensor> inputs;
        for (int i = 0; i < 4; ++i) inputs.push_back(fetalhc::detail::normalise_batch(torch::randint(0, 256, {1, 1, 128, 192}).to(torch::kByte)));
        torch::Tensor ref_logits, ref_presence;
        {
            c10::InferenceMode guard;
            std::tie(ref_logits, ref_presence) = net->infer(inputs[0]);
        }
        calibrate(net, inputs);
        ASSERT_TRUE(net->quant);
        c10::InferenceMode guard;
        auto [logits, presence] = net->infer(inputs[0]);
        ASSERT_EQ(logits.sizes(), ref_logits.sizes());
        // The map's shape is what the boundary is taken from: the two forms' logits must correlate.
        auto a = logits.flatten() - logits.mean(), b = ref_logits.flatten() - ref_logits.mean();
        const float corr = (a * b).sum().item<float>() / std::sqrt((a * a).sum().item<float>() * (b * b).sum().item<float>());
        EXPECT_GT(corr, 0.98f) << "stem " << stem;
        EXPECT_LT(corr, 1.0f) << "the int8 form should not be the float one";
        std::printf("stem %d: correlation %.5f\n", stem, corr);
        EXPECT_NEAR(presence.item<float>(), ref_presence.item<float>(), 0.1f * std::max(1.0f, std::abs(ref_presence.item<float>())));
    }
}

TEST(Int8Network, RangesMustFitTheNetwork) {
    if (!fetalhc::int8_problem().empty()) GTEST_SKIP() << fetalhc::int8_problem();
    UNet net = random_eval_net(64, 48, 4, 2);
    EXPECT_THROW(net->quantize(std::vector<float>(10, 1.0f)), std::logic_error) << "not frozen";
    net->freeze();
    EXPECT_THROW(net->quantize(std::vector<float>(3, 1.0f)), std::runtime_error);
    // Values a damaged model file could hold (JSON's 1e39 reads as an infinite float).
    const int n = fetalhc::detail::int8_layer_count(net->cfg);
    for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(), -1.0f}) {
        std::vector<float> ranges(n, 1.0f);
        ranges[1] = bad;
        EXPECT_THROW(net->quantize(ranges), std::runtime_error) << bad;
        EXPECT_FALSE(net->quant) << "a refused calibration leaves the float form";
    }
    EXPECT_NO_THROW(net->quantize(std::vector<float>(fetalhc::detail::int8_layer_count(net->cfg), 1.0f)));
}

TEST(Int8Segmenter, CalibratedModelLoadsInt8AndAgreesAcrossThreads) {
    if (!fetalhc::int8_problem().empty()) GTEST_SKIP() << fetalhc::int8_problem();
    TempFolder t;
    UNet net = random_eval_net(64, 64, 4, 2);
    const auto plain = (t.path / "plain.pt").string(), calibrated = (t.path / "int8.pt").string();
    fetalhc::detail::save_model(net, plain, R"({"axis_scale": 0.99})");

    auto refused = fetalhc::Segmenter::load(plain, {1, false, true});
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().find("model quantize"), std::string::npos) << refused.error();

    const cv::Mat img = head_scan();
    auto meta = fetalhc::Segmenter::calibrate_int8(plain, calibrated, {img, 255 - img}, "two test scans");
    ASSERT_TRUE(meta) << meta.error();
    EXPECT_NE(meta->find("\"coarse\""), std::string::npos);
    EXPECT_NE(meta->find("two test scans"), std::string::npos);
    EXPECT_NE(meta->find("0.99"), std::string::npos) << "the other metadata is kept";

    auto f32 = fetalhc::Segmenter::load(calibrated, {1});
    auto i8 = fetalhc::Segmenter::load(calibrated, {1, false, true});
    ASSERT_TRUE(f32 && i8) << (f32 ? i8.error() : f32.error());
    const cv::Mat p32 = fetalhc::net_frame(f32->segment(img)).probability;
    const cv::Mat p8 = fetalhc::net_frame(i8->segment(img)).probability;
    const double diff = cv::norm(p32, p8, cv::NORM_L1) / double(p32.total());
    EXPECT_LT(diff, 0.02) << "mean probability difference";
    EXPECT_GT(diff, 0.0);

    // Averaged weights are other weights: their file keeps no int8 ranges (measure them again).
    const auto averaged = (t.path / "averaged.pt").string();
    auto avg_meta = fetalhc::Segmenter::average_models({calibrated, calibrated}, averaged);
    ASSERT_TRUE(avg_meta) << avg_meta.error();
    EXPECT_EQ(avg_meta->find("\"int8\""), std::string::npos);
    EXPECT_FALSE(fetalhc::Segmenter::load(averaged, {1, false, true}));

    // Two threads at once give what one gives alone.
    std::vector<cv::Mat> maps(2);
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i)
        threads.emplace_back([&, i] {
            for (int k = 0; k < 20; ++k) maps[i] = fetalhc::net_frame(i8->segment(img)).probability.clone();
        });
    for (auto& th : threads) th.join();
    for (const auto& m : maps) EXPECT_EQ(cv::norm(m, p8, cv::NORM_INF), 0.0);
}
