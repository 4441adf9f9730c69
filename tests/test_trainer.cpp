// Trainer smoke test: 2 steps on a synthetic HC18-layout folder, save, reload, infer, resume.
#include "fetalhc/evaluation.h"
#include "fetalhc/hc18.h"
#include "fetalhc/measure.h"
#include "fetalhc/segmenter.h"
#include "fetalhc/trainer.h"
#include "net_frame.h"   // internal (src/): the map in the network frame
#include "train/data.h"  // internal (src/): the images the training loop draws from

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <filesystem>
#include <unistd.h>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <utility>

namespace fs = std::filesystem;
using namespace fetalhc;

namespace {

// A tiny data set in the HC18 layout: bright elliptic rings in speckle, with filled masks.
// With images_per_exam 2, each examination NNN has NNN_HC and NNN_2HC.
fs::path make_synthetic_hc18(const fs::path& root, int exams, int images_per_exam = 1) {
    fs::create_directories(root / "training_set");
    std::ofstream csv(root / "training_set_pixel_size_and_HC.csv");
    csv << "filename,pixel size(mm),head circumference (mm)\n";
    std::ofstream ell(root / "training_set_ellipses.csv");
    ell << "filename,pixel_size_mm,hc_mm,center_x_px,center_y_px,semi_axis_a_px,semi_axis_b_px,angle_rad\n";
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> U(0, 1);
    for (int k = 0; k < exams * images_per_exam; ++k) {
        const int i = k / images_per_exam + 1;
        char exam[8];
        std::snprintf(exam, sizeof exam, "%03d", i);
        const int nth = k % images_per_exam + 1;
        const std::string name = std::string(exam) + (nth == 1 ? "_HC" : "_" + std::to_string(nth) + "HC");
        cv::Mat img(150, 200, CV_8U), mask = cv::Mat::zeros(150, 200, CV_8U);
        cv::randu(img, 0, 60);
        Ellipse e{100 + 20 * (U(rng) - 0.5), 75 + 10 * (U(rng) - 0.5), 50 + 10 * U(rng), 38 + 6 * U(rng), U(rng) * CV_PI};
        const cv::Point c(int(e.cx), int(e.cy));
        const cv::Size ax(int(e.a), int(e.b));
        cv::ellipse(img, c, ax, e.angle * 180 / CV_PI, 0, 360, cv::Scalar(220), 3);
        cv::ellipse(mask, c, ax, e.angle * 180 / CV_PI, 0, 360, cv::Scalar(255), cv::FILLED);
        cv::imwrite((root / "training_set" / (std::string(name) + ".png")).string(), img);
        cv::imwrite((root / "training_set" / (std::string(name) + "_Mask.png")).string(), mask);
        csv << name << ".png,0.5," << ramanujan_perimeter(e.a, e.b) * 0.5 << "\n";
        ell << name << ".png,0.5," << ramanujan_perimeter(e.a, e.b) * 0.5 << "," << e.cx << "," << e.cy << "," << e.a << ","
            << e.b << "," << e.angle << "\n";
    }
    return root;
}

TrainConfig tiny_config() {
    TrainConfig c;
    c.network.input_width = 64;
    c.network.input_height = 48;
    c.network.base_channels = 4;
    c.network.depth = 2;
    c.network.max_channels = 16;
    c.batch_size = 2;
    c.epochs = 2;
    c.steps_per_epoch = 1;
    c.validation_fraction = 0.5;
    c.warmup_steps = 0;
    c.threads = 1;
    return c;
}

// The two-stage recipe of the k-fold and all-images tests: tiny_config as the coarse stage and a
// refine stage whose coarse_model and init_weights each run replaces with its own coarse model.
std::pair<TrainConfig, TrainConfig> tiny_recipe() {
    TrainConfig coarse = tiny_config(), refine = tiny_config();
    refine.stage = "refine";
    refine.network.input_width = 48;
    refine.network.input_height = 32;
    refine.coarse_model = "unused";
    refine.init_weights = "unused";
    return {coarse, refine};
}

}  // namespace

class TrainerSmoke : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("fetalhc_trainer_" + std::to_string(::getpid()));
        fs::remove_all(dir_);
        make_synthetic_hc18(dir_ / "data", 8);
    }
    void TearDown() override { fs::remove_all(dir_); }
    // A quiet run of `steps` optimizer steps on the synthetic data, into dir_/run_name.
    TrainOptions smoke_run(const std::string& run_name, long long steps) const {
        TrainOptions o;
        o.data_dir = (dir_ / "data").string();
        o.out_dir = (dir_ / run_name).string();
        o.progress = false;
        o.max_steps = steps;
        return o;
    }
    // Quiet two-step stages on the synthetic data, into dir_/run_name.
    KFoldOptions recipe_run(const std::string& run_name) const {
        KFoldOptions o;
        o.data_dir = (dir_ / "data").string();
        o.out_dir = (dir_ / run_name).string();
        o.max_steps = 2;
        o.progress = false;
        return o;
    }
    fs::path dir_;
};

TEST_F(TrainerSmoke, TrainsTwoStepsSavesReloadsAndInfers) {
    TrainOptions o = smoke_run("run", 2);
    auto rep = train(tiny_config(), o);
    ASSERT_TRUE(rep) << rep.error();
    EXPECT_EQ(rep->steps_done, 2);
    EXPECT_TRUE(fs::exists(dir_ / "run" / "report.json"));
    EXPECT_TRUE(fs::exists(dir_ / "run" / "checkpoint.json"));

    // The split file keeps each examination on one side.
    std::ifstream sf(dir_ / "run" / "split.json");
    auto split = nlohmann::json::parse(sf);
    ASSERT_FALSE(split["train"].empty());
    ASSERT_FALSE(split["validation"].empty());
    for (const auto& v : split["validation"])
        for (const auto& t : split["train"])
            EXPECT_NE(examination_id(v.get<std::string>()), examination_id(t.get<std::string>()));

    auto seg = Segmenter::load(rep->model_path, {1});
    ASSERT_TRUE(seg) << seg.error();
    EXPECT_EQ(seg->info().config.input_width, 64);
    EXPECT_GT(seg->info().parameters, 1000);
    auto meta = nlohmann::json::parse(seg->info().metadata);
    EXPECT_EQ(meta["split_salt"], tiny_config().split_salt);

    cv::Mat img = cv::imread((dir_ / "data" / "training_set" / "001_HC.png").string(), cv::IMREAD_GRAYSCALE);
    Segmentation s = seg->segment(img);
    ASSERT_EQ(s.probability_full().size(), img.size());
    double lo, hi;
    cv::minMaxLoc(net_frame(s).probability, &lo, &hi);
    EXPECT_GE(lo, 0.0);
    EXPECT_LE(hi, 1.0);
    EXPECT_GE(s.presence, 0.0f);
    EXPECT_LE(s.presence, 1.0f);
}

// keep_last (k-fold runs): model.pt is the last epoch's, validation runs only on the first epoch,
// every 5th and the last, and the held-out images choose nothing.
TEST_F(TrainerSmoke, KeepLastSavesTheFinalEpochAndValidatesSparsely) {
    TrainConfig c = tiny_config();
    c.keep_last = true;
    c.epochs = 6;
    TrainOptions o = smoke_run("last", -1);
    auto rep = train(c, o);
    ASSERT_TRUE(rep) << rep.error();
    auto seg = Segmenter::load(rep->model_path, {1});
    ASSERT_TRUE(seg) << seg.error();
    auto meta = nlohmann::json::parse(seg->info().metadata);
    EXPECT_EQ(meta["epoch"], 6);
    EXPECT_EQ(meta["config"]["keep_last"], true);
    std::ifstream cf(dir_ / "last" / "checkpoint.json");
    auto ck = nlohmann::json::parse(cf);
    std::vector<int> validated;
    for (const auto& h : ck["history"])
        if (h.contains("val_hc_mad_mm")) validated.push_back(h["epoch"].get<int>());
    EXPECT_EQ(validated, (std::vector<int>{1, 5, 6}));
}

// Coarse-to-fine: a refine run on crops, over a frozen coarse model, writes one file with both
// networks; the loaded Segmenter then runs the second pass.
TEST_F(TrainerSmoke, RefineStageWritesATwoPassModel) {
    TrainOptions o = smoke_run("coarse", 2);
    auto coarse = train(tiny_config(), o);
    ASSERT_TRUE(coarse) << coarse.error();

    TrainConfig rc = tiny_config();
    rc.stage = "refine";
    rc.coarse_model = coarse->model_path;
    rc.init_weights = coarse->model_path;  // same channels, other input size: allowed
    rc.network.input_width = 48;
    rc.network.input_height = 32;
    o.out_dir = (dir_ / "refine").string();
    auto rep = train(rc, o);
    ASSERT_TRUE(rep) << rep.error();
    EXPECT_EQ(rep->steps_done, 2);

    auto seg = Segmenter::load(rep->model_path, {1});
    ASSERT_TRUE(seg) << seg.error();
    EXPECT_EQ(seg->info().config.input_width, 64);         // pass 1 as trained in the coarse run
    EXPECT_EQ(seg->info().refine_config.input_width, 48);  // pass 2
    EXPECT_DOUBLE_EQ(seg->info().refine_margin, rc.crop_margin);
    cv::Mat img = cv::imread((dir_ / "data" / "training_set" / "001_HC.png").string(), cv::IMREAD_GRAYSCALE);
    Segmentation s = seg->segment(img);
    ASSERT_EQ(s.probability_full().size(), img.size());
    // Tracking from a known ellipse always runs the second pass, in the crop frame.
    Segmentation t = seg->segment_near(img, Ellipse{100, 75, 50, 40, 0.3});
    EXPECT_TRUE(t.refined);
    EXPECT_EQ(net_frame(t).probability.size(), cv::Size(48, 32));
    EXPECT_EQ(t.probability_full().size(), img.size());

    // Another first pass can be swapped in under the same second pass.
    const std::string combined = (dir_ / "combined.pt").string();
    auto comb = Segmenter::combine_models(coarse->model_path, rep->model_path, combined);
    ASSERT_TRUE(comb) << comb.error();
    auto cseg = Segmenter::load(combined, {1});
    ASSERT_TRUE(cseg) << cseg.error();
    EXPECT_EQ(cseg->info().config.input_width, 64);
    EXPECT_EQ(cseg->info().refine_config.input_width, 48);
    EXPECT_EQ(nlohmann::json::parse(cseg->info().metadata)["coarse_model"], coarse->model_path);
    // The roles cannot be swapped: the first argument must be one-pass, the second two-pass.
    auto swapped = Segmenter::combine_models(rep->model_path, coarse->model_path, combined);
    ASSERT_FALSE(swapped);
    EXPECT_NE(swapped.error().find("already has a second pass"), std::string::npos) << swapped.error();

    // A refine run without a coarse model is a config error.
    rc.coarse_model.clear();
    auto bad = train(rc, o);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().find("coarse_model"), std::string::npos) << bad.error();
}

TEST_F(TrainerSmoke, ResumeContinuesFromTheCheckpoint) {
    TrainOptions o = smoke_run("run", 1);
    ASSERT_TRUE(train(tiny_config(), o));
    o.resume = true;
    o.max_steps = 2;
    auto rep = train(tiny_config(), o);
    ASSERT_TRUE(rep) << rep.error();
    EXPECT_EQ(rep->steps_done, 2);
    std::ifstream st(dir_ / "run" / "checkpoint.json");
    auto j = nlohmann::json::parse(st);
    EXPECT_EQ(j["history"].size(), 2u);  // one entry per epoch across both runs
}

// The boundary term weights the BCE of pixels near the mask outline by up to 1 + loss_boundary:
// from the same seed, the first step's loss must come out higher than with plain BCE.
TEST_F(TrainerSmoke, BoundaryWeightRaisesTheFirstStepLoss) {
    auto first_loss = [&](const std::string& run, double weight) {
        TrainConfig c = tiny_config();
        c.loss_boundary = weight;
        c.boundary_band = 2;
        auto rep = train(c, smoke_run(run, 1));
        EXPECT_TRUE(rep) << rep.error();
        std::ifstream st(dir_ / run / "checkpoint.json");
        return nlohmann::json::parse(st)["history"][0]["train_loss"].get<double>();
    };
    const double plain = first_loss("plain", 0), weighted = first_loss("weighted", 5);
    EXPECT_GT(weighted, plain + 0.05) << "plain " << plain << ", weighted " << weighted;
}

// Weight averaging: the run validates and saves the averaged weights, records the raw weights'
// figure beside them, checkpoints the average, and resumes it.
TEST_F(TrainerSmoke, AveragedWeightsAreSavedCheckpointedAndResumed) {
    TrainConfig c = tiny_config();
    c.ema_decay = 0.9;
    TrainOptions o = smoke_run("ema", 1);
    ASSERT_TRUE(train(c, o));
    EXPECT_TRUE(fs::exists(dir_ / "ema" / "checkpoint_ema.pt"));
    o.resume = true;
    o.max_steps = 2;
    auto rep = train(c, o);
    ASSERT_TRUE(rep) << rep.error();
    std::ifstream st(dir_ / "ema" / "checkpoint.json");
    auto h = nlohmann::json::parse(st)["history"];
    ASSERT_EQ(h.size(), 2u);
    for (const auto& e : h) EXPECT_TRUE(e.contains("val_hc_mad_mm_raw_weights")) << e.dump();
    ASSERT_TRUE(Segmenter::load(rep->model_path, {1}));

    // A run started without averaging cannot be resumed with it.
    TrainOptions p = smoke_run("plain", 1);
    ASSERT_TRUE(train(tiny_config(), p));
    p.resume = true;
    p.max_steps = 2;
    auto bad = train(c, p);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().find("ema"), std::string::npos) << bad.error();
}

TEST_F(TrainerSmoke, ResumeWithoutCheckpointIsAClearError) {
    TrainOptions o;
    o.data_dir = (dir_ / "data").string();
    o.out_dir = (dir_ / "empty_run").string();
    o.resume = true;
    auto rep = train(tiny_config(), o);
    ASSERT_FALSE(rep);
    EXPECT_NE(rep.error().find("checkpoint"), std::string::npos);
}

TEST_F(TrainerSmoke, MissingDataFolderIsAClearError) {
    TrainOptions o;
    o.data_dir = (dir_ / "nope").string();
    o.out_dir = (dir_ / "run").string();
    auto rep = train(tiny_config(), o);
    ASSERT_FALSE(rep);
    EXPECT_NE(rep.error().find("nope"), std::string::npos);
}

// The split guard: fine-tuning (init_weights), a refine stage's first pass (coarse_model), `model
// average` and `model combine` refuse models of different splits, with both splits in the message;
// models of the same split, and models that both record none, may be mixed.
TEST_F(TrainerSmoke, ModelsOfDifferentSplitsAreNotMixed) {
    TrainConfig a = tiny_config(), b = tiny_config();
    a.split_salt = "salt-a";
    b.split_salt = "salt-b";
    auto ma = train(a, smoke_run("a", 1));
    ASSERT_TRUE(ma) << ma.error();
    auto mb = train(b, smoke_run("b", 1));
    ASSERT_TRUE(mb) << mb.error();
    auto names_both = [](const std::string& e) {
        return e.find("\"salt-a\"") != std::string::npos && e.find("\"salt-b\"") != std::string::npos;
    };

    TrainConfig finetune = b;
    finetune.init_weights = ma->model_path;
    auto r = train(finetune, smoke_run("finetune", 1));
    ASSERT_FALSE(r);
    EXPECT_TRUE(names_both(r.error())) << r.error();
    EXPECT_NE(r.error().find("init_weights"), std::string::npos) << r.error();

    TrainConfig refine = b;
    refine.stage = "refine";
    refine.network.input_width = 48;
    refine.network.input_height = 32;
    refine.coarse_model = ma->model_path;
    r = train(refine, smoke_run("refine_a", 1));
    ASSERT_FALSE(r);
    EXPECT_TRUE(names_both(r.error())) << r.error();
    EXPECT_NE(r.error().find("coarse_model"), std::string::npos) << r.error();
    refine.coarse_model = mb->model_path;  // the same split: allowed
    auto two_pass_b = train(refine, smoke_run("refine_b", 1));
    ASSERT_TRUE(two_pass_b) << two_pass_b.error();

    const std::string out = (dir_ / "mixed.pt").string();
    auto avg = Segmenter::average_models({ma->model_path, mb->model_path}, out);
    ASSERT_FALSE(avg);
    EXPECT_TRUE(names_both(avg.error())) << avg.error();
    // A run's checkpoint records its split: it averages with the run's model, not with another run's.
    EXPECT_TRUE(Segmenter::average_models({ma->model_path, (dir_ / "a" / "checkpoint_model.pt").string()}, out));
    avg = Segmenter::average_models({ma->model_path, (dir_ / "b" / "checkpoint_model.pt").string()}, out);
    ASSERT_FALSE(avg);
    EXPECT_TRUE(names_both(avg.error())) << avg.error();

    auto comb = Segmenter::combine_models(ma->model_path, two_pass_b->model_path, out);
    ASSERT_FALSE(comb);
    EXPECT_TRUE(names_both(comb.error())) << comb.error();
    EXPECT_TRUE(Segmenter::combine_models(mb->model_path, two_pass_b->model_path, out));

    // A model that records no split mixes only with another that records none.
    const std::string none1 = (dir_ / "none1.pt").string(), none2 = (dir_ / "none2.pt").string();
    ASSERT_TRUE(Segmenter::rewrite_metadata(ma->model_path, none1, R"({"split_salt": null})"));
    ASSERT_TRUE(Segmenter::rewrite_metadata(mb->model_path, none2, R"({"split_salt": null})"));
    avg = Segmenter::average_models({ma->model_path, none1}, out);
    ASSERT_FALSE(avg);
    EXPECT_NE(avg.error().find("no recorded split"), std::string::npos) << avg.error();
    EXPECT_TRUE(Segmenter::average_models({none1, none2}, out));
    comb = Segmenter::combine_models(none1, two_pass_b->model_path, out);
    ASSERT_FALSE(comb);
    EXPECT_NE(comb.error().find("no recorded split"), std::string::npos) << comb.error();
    finetune.init_weights = none1;
    r = train(finetune, smoke_run("finetune_none", 1));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("no recorded split"), std::string::npos) << r.error();
}

// Training reads only the training side of the split: the two lists of split.json share no
// examination, and the images the loop draws its batches from (training::load_training_data's
// `train`, the loop's only source) are exactly the train list.
TEST_F(TrainerSmoke, TheLoopDrawsOnlyFromTheTrainingSplit) {
    make_synthetic_hc18(dir_ / "pairs", 8, 2);  // two images per examination
    TrainOptions o = smoke_run("run", 1);
    o.data_dir = (dir_ / "pairs").string();
    const TrainConfig cfg = tiny_config();
    ASSERT_TRUE(train(cfg, o));
    std::ifstream sf(dir_ / "run" / "split.json");
    const auto split = nlohmann::json::parse(sf);
    std::set<std::string> train_exams, val_exams;
    for (const auto& f : split["train"]) train_exams.insert(examination_id(f.get<std::string>()));
    for (const auto& f : split["validation"]) val_exams.insert(examination_id(f.get<std::string>()));
    ASSERT_FALSE(train_exams.empty());
    ASSERT_FALSE(val_exams.empty());
    for (const auto& e : train_exams) EXPECT_EQ(val_exams.count(e), 0u) << e;
    EXPECT_EQ(split["train"].size() + split["validation"].size(), 16u);

    auto data = training::load_training_data(cfg, o);
    ASSERT_TRUE(data) << data.error();
    ASSERT_EQ(data->train.size(), split["train"].size());
    for (size_t i = 0; i < data->train.size(); ++i) {
        EXPECT_EQ(data->train[i].filename, split["train"][i].get<std::string>());
        EXPECT_EQ(val_exams.count(examination_id(data->train[i].filename)), 0u) << data->train[i].filename;
    }
    ASSERT_EQ(data->validation.size(), split["validation"].size());
    for (size_t i = 0; i < data->validation.size(); ++i)
        EXPECT_EQ(data->validation[i].filename, split["validation"][i].get<std::string>());

    // --limit cuts each side to its first records, still on its own side.
    o.limit = 3;
    auto limited = training::load_training_data(cfg, o);
    ASSERT_TRUE(limited) << limited.error();
    ASSERT_EQ(limited->train.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(limited->train[i].filename, data->train[i].filename);
}

namespace {

// Each fold's stages record the fold and hold out exactly the images kfold_assignment gives it; each
// fold model records its fold, its coarse model and keep_last.
void expect_folds_recorded(const fs::path& kfold_dir, const std::vector<std::string>& models,
                           const std::vector<Hc18Record>& recs, const std::vector<int>& assignment) {
    for (int i = 0; i < int(models.size()); ++i) {
        const fs::path fold = kfold_dir / ("fold" + std::to_string(i));
        for (const char* stage : {"coarse", "refine"}) {
            std::ifstream sf(fold / stage / "split.json");
            auto sj = nlohmann::json::parse(sf);
            EXPECT_EQ(sj["folds"], 2);
            EXPECT_EQ(sj["fold"], i);
            std::set<std::string> val;
            for (const auto& v : sj["validation"]) val.insert(v.get<std::string>());
            for (size_t r = 0; r < recs.size(); ++r)
                EXPECT_EQ(val.count(recs[r].filename) == 1, assignment[r] == i) << recs[r].filename;
        }
        auto seg = Segmenter::load(models[i], {1});
        ASSERT_TRUE(seg) << seg.error();
        EXPECT_GT(seg->info().refine_config.input_width, 0);
        auto meta = nlohmann::json::parse(seg->info().metadata);
        EXPECT_EQ(meta["folds"], 2);
        EXPECT_EQ(meta["fold"], i);
        EXPECT_EQ(meta["coarse_model"], (fold / "coarse" / "model.pt").string());
        EXPECT_EQ(meta["config"]["keep_last"], true) << "a fold's held-out images must not choose its epoch";
    }
}

// Out of fold: every image scored once, by the model of its own fold; the per-image CSV ends with
// the fold column; the per-fold figures cover every image.
void expect_out_of_fold_scores(const fs::path& kfold_dir, const std::vector<Hc18Record>& recs,
                               const std::vector<int>& assignment) {
    auto oof = evaluate_out_of_fold(recs, kfold_dir.string(), {1});
    ASSERT_TRUE(oof) << oof.error();
    ASSERT_EQ(oof->scores.size(), recs.size());
    EXPECT_EQ(oof->fold, assignment);
    for (size_t r = 0; r < recs.size(); ++r) EXPECT_EQ(oof->scores[r].file, recs[r].filename);
    const EvaluationReport er = evaluate(oof->scores);
    std::ostringstream csv;
    write_per_image_csv(er, csv, oof->fold);
    std::istringstream lines(csv.str());
    std::string line;
    std::getline(lines, line);
    EXPECT_EQ(line.substr(line.rfind(',') + 1), "fold");
    for (size_t r = 0; std::getline(lines, line); ++r) {
        ASSERT_LT(r, recs.size());
        EXPECT_EQ(line.substr(0, line.find(',')), recs[r].filename);
        EXPECT_EQ(line.substr(line.rfind(',') + 1), std::to_string(assignment[r])) << line;
    }
    const FoldFigures ff = fold_figures(oof->scores, oof->fold, 2);
    ASSERT_EQ(ff.folds.size(), 2u);
    EXPECT_EQ(ff.folds[0].images + ff.folds[1].images, int(recs.size()));
    EXPECT_EQ(ff.hc_mad_mm.n, 2);
}

}  // namespace

// K-fold: a 2-fold run trains both folds (coarse, refine, calibration), a second call skips them,
// the out-of-fold evaluation measures each image with the model that held it out, and fold models
// are not mixed.
TEST_F(TrainerSmoke, KFoldTrainsEachFoldResumesAndEvaluatesOutOfFold) {
    auto [coarse, refine] = tiny_recipe();
    KFoldOptions o = recipe_run("kfold");
    o.folds = 2;
    auto rep = train_kfold(coarse, refine, o);
    ASSERT_TRUE(rep) << rep.error();
    EXPECT_EQ(rep->stages_trained, 4);
    ASSERT_EQ(rep->models.size(), 2u);
    auto recs = read_hc18_training(o.data_dir);
    ASSERT_TRUE(recs) << recs.error();
    const auto assignment = kfold_assignment(*recs, 2, coarse.split_salt);
    expect_folds_recorded(dir_ / "kfold", rep->models, *recs, assignment);
    const auto stamp = fs::last_write_time(rep->models[0]);

    // A second call finds both folds finished and trains nothing.
    auto again = train_kfold(coarse, refine, o);
    ASSERT_TRUE(again) << again.error();
    EXPECT_EQ(again->stages_trained, 0);
    EXPECT_EQ(again->stages_skipped, 2);
    EXPECT_EQ(fs::last_write_time(rep->models[0]), stamp);

    // A fold whose calibrated model is gone: finished stages are skipped, only the calibration reruns.
    fs::remove(rep->models[1]);
    again = train_kfold(coarse, refine, o);
    ASSERT_TRUE(again) << again.error();
    EXPECT_EQ(again->stages_trained, 0);
    EXPECT_EQ(again->stages_skipped, 3);
    EXPECT_TRUE(fs::exists(rep->models[1]));

    expect_out_of_fold_scores(dir_ / "kfold", *recs, assignment);

    // Mixing fold models is refused: averaging or combining two folds, refining one fold over the
    // other's coarse model, and an OOF folder whose fold 1 is another fold's model.
    const std::string out = (dir_ / "mixed.pt").string();
    auto avg = Segmenter::average_models({(dir_ / "kfold" / "fold0" / "coarse" / "model.pt").string(),
                                          (dir_ / "kfold" / "fold1" / "coarse" / "model.pt").string()},
                                         out);
    ASSERT_FALSE(avg);
    EXPECT_NE(avg.error().find("fold 0 of 2"), std::string::npos) << avg.error();
    EXPECT_NE(avg.error().find("fold 1 of 2"), std::string::npos) << avg.error();
    const std::string coarse0 = (dir_ / "kfold" / "fold0" / "coarse" / "model.pt").string();
    EXPECT_FALSE(Segmenter::combine_models(coarse0, rep->models[1], out));
    EXPECT_TRUE(Segmenter::combine_models(coarse0, rep->models[0], out));
    TrainConfig r1 = refine;
    r1.folds = 2;
    r1.fold = 1;
    r1.coarse_model = coarse0;
    r1.init_weights = "";
    auto wrong = train(r1, smoke_run("refine_wrong_fold", 1));
    ASSERT_FALSE(wrong);
    EXPECT_NE(wrong.error().find("coarse_model"), std::string::npos) << wrong.error();
    fs::copy_file(rep->models[0], rep->models[1], fs::copy_options::overwrite_existing);
    auto mixed = evaluate_out_of_fold(*recs, (dir_ / "kfold").string(), {1});
    ASSERT_FALSE(mixed);
    EXPECT_NE(mixed.error().find("does not record fold 1"), std::string::npos) << mixed.error();
    fs::remove(rep->models[1]);
    auto missing = evaluate_out_of_fold(*recs, (dir_ / "kfold").string(), {1});
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().find("missing"), std::string::npos) << missing.error();
    // A plain (non-fold) model is not a k-fold run.
    auto plain = train(tiny_config(), smoke_run("plain/fold0", 1));
    ASSERT_TRUE(plain) << plain.error();
    auto not_kfold = evaluate_out_of_fold(*recs, (dir_ / "plain").string(), {1});
    ASSERT_FALSE(not_kfold);
    EXPECT_NE(not_kfold.error().find("not a k-fold model"), std::string::npos) << not_kfold.error();
    // A plain model's metadata has no folds keys (unchanged layout).
    auto pm = nlohmann::json::parse(Segmenter::load(plain->model_path, {1})->info().metadata);
    EXPECT_FALSE(pm.contains("folds"));
    EXPECT_FALSE(pm["config"].contains("folds"));
}

// The recipe on every labelled image (the model that ships after the k-fold run): both stages see
// all 8 images and validate none, the last epoch is kept, the model records validation_fraction 0,
// its split has no validation side, a rerun skips it; the config without keep_last is refused.
TEST_F(TrainerSmoke, AllImagesTrainsEveryImageWithoutValidation) {
    auto [coarse, refine] = tiny_recipe();
    const KFoldOptions o = recipe_run("all");
    auto rep = train_all_images(coarse, refine, o);
    ASSERT_TRUE(rep) << rep.error();
    EXPECT_EQ(rep->stages_trained, 2);
    ASSERT_EQ(rep->models.size(), 1u);
    auto recs = read_hc18_training(o.data_dir);
    ASSERT_TRUE(recs) << recs.error();
    for (const char* stage : {"coarse", "refine"}) {
        std::ifstream sf(dir_ / "all" / stage / "split.json");
        auto sj = nlohmann::json::parse(sf);
        EXPECT_EQ(sj["train"].size(), recs->size()) << stage;
        EXPECT_TRUE(sj["validation"].empty()) << stage;
        std::ifstream rf(dir_ / "all" / stage / "report.json");
        auto rj = nlohmann::json::parse(rf);
        EXPECT_TRUE(rj["best_val_hc_mad_mm"].is_null()) << stage;
        EXPECT_EQ(rj["validation_images"], 0) << stage;
    }
    auto seg = Segmenter::load(rep->models[0], {1});
    ASSERT_TRUE(seg) << seg.error();
    auto meta = nlohmann::json::parse(seg->info().metadata);
    EXPECT_EQ(meta["validation_fraction"], 0.0);
    EXPECT_EQ(meta["val_images"], 0);
    EXPECT_FALSE(meta.contains("val_hc_mad_mm"));
    EXPECT_EQ(meta["config"]["keep_last"], true);
    auto split = model_split(*recs, seg->info().metadata);
    ASSERT_TRUE(split) << split.error();
    EXPECT_TRUE(split->validation.empty());
    EXPECT_EQ(split->train.size(), recs->size());

    auto again = train_all_images(coarse, refine, o);
    ASSERT_TRUE(again) << again.error();
    EXPECT_EQ(again->stages_trained, 0);

    TrainConfig no_keep = tiny_config();
    no_keep.validation_fraction = 0;
    auto refused = train(no_keep, smoke_run("no_keep", 1));
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().find("keep_last"), std::string::npos) << refused.error();
    no_keep.keep_last = true;
    auto plain = train(no_keep, smoke_run("keep", 1));
    ASSERT_TRUE(plain) << plain.error();
    EXPECT_TRUE(std::isnan(plain->best_hc_mad_mm));
}

TEST(TrainConfig, FoldKeysAreChecked) {
    TrainConfig c = tiny_config();
    nlohmann::json j = nlohmann::json::parse(to_json(c));
    EXPECT_FALSE(j.contains("folds"));  // plain configs write what they always did
    c.folds = 5;
    c.fold = 4;
    j = nlohmann::json::parse(to_json(c));
    EXPECT_EQ(j["folds"], 5);
    EXPECT_EQ(j["fold"], 4);
    const fs::path p = fs::temp_directory_path() / ("fetalhc_foldcfg_" + std::to_string(::getpid()) + ".json");
    auto load_with = [&](const std::string& extra) {
        std::ofstream(p) << "{\"epochs\": 1" << extra << "}";
        auto r = load_train_config(p.string());
        fs::remove(p);
        return r;
    };
    auto ok = load_with(", \"folds\": 5, \"fold\": 2");
    ASSERT_TRUE(ok) << ok.error();
    EXPECT_EQ(ok->folds, 5);
    EXPECT_EQ(ok->fold, 2);
    EXPECT_FALSE(load_with(", \"folds\": 5, \"fold\": 5"));
    EXPECT_FALSE(load_with(", \"folds\": 1"));
    EXPECT_FALSE(load_with(", \"fold\": 1"));
    EXPECT_FALSE(load_with(", \"folds\": 5, \"fold\": -1"));
}

TEST(TrainConfig, UnknownKeysAndBadValuesAreRejected) {
    const fs::path p = fs::temp_directory_path() / "fetalhc_bad_config.json";
    {
        std::ofstream(p) << R"({"epochs": 3, "learning_rat": 0.1})";
    }
    auto c = load_train_config(p.string());
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().find("learning_rat"), std::string::npos);
    {
        std::ofstream(p) << R"({"optimizer": "rmsprop"})";
    }
    EXPECT_FALSE(load_train_config(p.string()));
    {
        std::ofstream(p) << R"({"loss_boundary": -1})";
    }
    auto neg = load_train_config(p.string());
    ASSERT_FALSE(neg);
    EXPECT_NE(neg.error().find("loss_boundary"), std::string::npos) << neg.error();
    {
        std::ofstream(p) << R"({"ema_decay": 1.0})";
    }
    auto ema = load_train_config(p.string());
    ASSERT_FALSE(ema);
    EXPECT_NE(ema.error().find("ema_decay"), std::string::npos) << ema.error();
    {
        std::ofstream(p) << R"({"augment": {"wide_crop_probability": 0.2, "scale_max": 1.3, "wide_scale_max": 1.1}})";
    }
    auto wide = load_train_config(p.string());
    ASSERT_FALSE(wide);
    EXPECT_NE(wide.error().find("wide_scale_max"), std::string::npos) << wide.error();
    {
        std::ofstream(p) << R"({"epochs": 3, "augment": {"rotate90": 0.25}, "network": {"base_channels": 8}})";
    }
    auto ok = load_train_config(p.string());
    ASSERT_TRUE(ok) << ok.error();
    EXPECT_EQ(ok->epochs, 3);
    EXPECT_DOUBLE_EQ(ok->augment.rotate90, 0.25);
    EXPECT_EQ(ok->network.base_channels, 8);
    {
        std::ofstream(p) << "{not json";
    }
    EXPECT_FALSE(load_train_config(p.string()));
    fs::remove(p);
}

TEST(TrainConfig, ShippedDefaultConfigLoads) {
    auto c = load_train_config(std::string(FETALHC_SOURCE_DIR) + "/configs/default.json");
    ASSERT_TRUE(c) << c.error();
}

// A damaged model file is refused at load (LibTorch's reader does not check the archive's CRC-32s:
// a file with 4 KB flipped used to load and then find no head anywhere).
TEST(ModelFile, DamagedOrTruncatedFilesAreRefusedAtLoad) {
    const fs::path shipped = fs::path(FETALHC_SOURCE_DIR) / "models" / "fetalhc_unet.pt";
    if (!fs::exists(shipped)) GTEST_SKIP() << "shipped model " << shipped << " not found";
    const fs::path dir = fs::temp_directory_path() / ("fetalhc_model_file_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ifstream in(shipped, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_GT(bytes.size(), 100000u);
    auto write = [&](const std::string& name, const std::string& content) {
        std::ofstream(dir / name, std::ios::binary) << content;
        return (dir / name).string();
    };
    ASSERT_TRUE(Segmenter::load(write("intact.pt", bytes))) << "an intact copy must load";
    std::string flipped = bytes;
    for (size_t i = flipped.size() / 2; i < flipped.size() / 2 + 4096; ++i) flipped[i] = char(~flipped[i]);
    auto damaged = Segmenter::load(write("flipped.pt", flipped));
    ASSERT_FALSE(damaged) << "a model with 4 KB flipped loaded";
    EXPECT_NE(damaged.error().find("damaged"), std::string::npos) << damaged.error();
    EXPECT_NE(damaged.error().find("flipped.pt"), std::string::npos) << damaged.error();
    auto cut = Segmenter::load(write("cut.pt", bytes.substr(0, bytes.size() / 2)));
    ASSERT_FALSE(cut);
    EXPECT_NE(cut.error().find("cut.pt"), std::string::npos) << cut.error();
    fs::remove_all(dir);
}
