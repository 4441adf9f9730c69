// The head-check trainer (fetalhc/head_check_train.h): per-fold models, the final model, scores,
// thresholds and the report.
#include "fetalhc/head_check_train.h"

#include "fetalhc/head_check.h"
#include "fetalhc/metrics.h"
#include "head_check_net.h"
#include "train/head_check_data.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

using detail::CheckImage;
using detail::CheckSample;
using detail::HeadCheckNet;
using Clock = std::chrono::steady_clock;

constexpr double kLearningRate = 2e-3;
// At most this share of the HC18 out-of-fold heads is refused (the bound for heads).
constexpr double kMaxHeadsRefused = 0.005;
constexpr int kPlanesRepeats = 8;  // each planes training row appears this often per epoch (they are few)

torch::Tensor crops_tensor(const std::vector<cv::Mat>& crops) {
    const int n = kHeadCheckCropSize;
    auto t = torch::empty({long(crops.size()), 1, n, n}, torch::kUInt8);
    for (size_t i = 0; i < crops.size(); ++i)
        std::memcpy(t[long(i)].data_ptr<unsigned char>(), crops[i].ptr<unsigned char>(), size_t(n * n));
    return t;
}

// The samples of one epoch of a stage: per HC18 image in the stage one jittered head and one
// off-target outline, per planes training row kPlanesRepeats jittered outlines; shuffled.
std::vector<CheckSample> epoch_samples(const std::vector<CheckImage>& im, int fold, std::mt19937& rng) {
    std::vector<CheckSample> s;
    for (int i = 0; i < int(im.size()); ++i) {
        const CheckImage& c = im[size_t(i)];
        if (!c.has_outline) continue;
        if (c.planes) {
            if (c.held_back) continue;
            for (int r = 0; r < kPlanesRepeats; ++r) s.push_back(detail::jittered_sample(im, i, rng, 1.0));
        } else if (c.fold != fold || fold < 0) {
            s.push_back(detail::jittered_sample(im, i, rng, 1.0));
            s.push_back(detail::off_target_sample(im, i, rng));
        }
    }
    std::shuffle(s.begin(), s.end(), rng);
    return s;
}

struct StageState {
    int epoch = 0;
    double wall = 0;
};

// Trains one stage (fold model, or fold -1: every HC18 image) into dir, one checkpoint per epoch.
// Returns the trained network; a stage whose model.pt exists is loaded instead.
HeadCheckNet train_stage(const std::vector<CheckImage>& im, int fold, const fs::path& dir, const HeadCheckTrainOptions& o) {
    fs::create_directories(dir);
    if (fs::exists(dir / "model.pt")) return detail::load_head_check((dir / "model.pt").string()).first;
    HeadCheckNet net;
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(kLearningRate).weight_decay(1e-4));
    StageState st;
    if (fs::exists(dir / "state.json")) {
        const auto j = nlohmann::json::parse(std::ifstream(dir / "state.json"));
        st.epoch = j.at("epoch").get<int>();
        st.wall = j.at("wall_seconds").get<double>();
        torch::load(net, (dir / "checkpoint_net.pt").string());
        torch::load(opt, (dir / "checkpoint_opt.pt").string());
        std::fprintf(stderr, "head check %s: resuming after epoch %d\n", dir.filename().c_str(), st.epoch);
    }
    long long steps = 0;
    for (; st.epoch < o.epochs; ++st.epoch) {
        const auto t0 = Clock::now();
        const unsigned seed = o.seed * 1000003u + unsigned(fold + 1) * 7919u + unsigned(st.epoch);
        std::mt19937 rng(seed);
        torch::manual_seed(seed);
        const double lr = kLearningRate * 0.5 * (1 + std::cos(M_PI * st.epoch / o.epochs));
        for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
        net->train();
        const auto samples = epoch_samples(im, fold, rng);
        double loss_sum = 0;
        int batches = 0;
        for (size_t b = 0; b < samples.size(); b += size_t(o.batch)) {
            const size_t e = std::min(samples.size(), b + size_t(o.batch));
            if (e - b < 2) break;  // batch norm needs two
            std::vector<cv::Mat> crops;
            std::vector<float> head;
            std::vector<long> cls;
            for (size_t k = b; k < e; ++k) {
                cv::Mat c = head_check_crop(im[size_t(samples[k].image)].gray, samples[k].outline);
                detail::augment_check_crop(c, rng);
                crops.push_back(c);
                head.push_back(samples[k].head);
                cls.push_back(samples[k].cls);
            }
            auto [hl, pl] = net->forward(crops_tensor(crops));
            auto loss = torch::binary_cross_entropy_with_logits(hl, torch::tensor(head)) +
                        0.5 * torch::cross_entropy_loss(pl, torch::tensor(cls, torch::kLong));
            opt.zero_grad();
            loss.backward();
            opt.step();
            loss_sum += loss.item<double>();
            ++batches;
            if (o.max_steps >= 0 && ++steps >= o.max_steps) break;
        }
        st.wall += std::chrono::duration<double>(Clock::now() - t0).count();
        torch::save(net, (dir / "checkpoint_net.pt").string());
        torch::save(opt, (dir / "checkpoint_opt.pt").string());
        std::ofstream(dir / "state.json.tmp") << nlohmann::json{{"epoch", st.epoch + 1}, {"wall_seconds", st.wall}}.dump();
        fs::rename(dir / "state.json.tmp", dir / "state.json");
        std::fprintf(stderr, "head check %s: epoch %d/%d loss %.4f (%zu crops, %.0f s so far)\n", dir.filename().c_str(),
                     st.epoch + 1, o.epochs, batches ? loss_sum / batches : 0.0, samples.size(), st.wall);
        if (o.max_steps >= 0 && steps >= o.max_steps) break;
    }
    net->eval();
    detail::save_head_check(net, (dir / "model.pt").string(),
                            nlohmann::json{{"stage_fold", fold}, {"wall_seconds", st.wall}}.dump());
    return net;
}

// Head scores of crops cut on the given outlines (eval mode).
std::vector<double> score_samples(HeadCheckNet& net, const std::vector<CheckImage>& im, const std::vector<CheckSample>& s) {
    net->eval();
    c10::InferenceMode guard;
    std::vector<double> out;
    for (size_t b = 0; b < s.size(); b += 64) {
        std::vector<cv::Mat> crops;
        for (size_t k = b; k < std::min(s.size(), b + 64); ++k)
            crops.push_back(head_check_crop(im[size_t(s[k].image)].gray, s[k].outline));
        auto p = torch::sigmoid(net->forward(crops_tensor(crops)).first);
        for (long k = 0; k < p.size(0); ++k) out.push_back(p[k].item<double>());
    }
    return out;
}

// Between the k-th and (k+1)-th lowest score, k = floor(share x n): refuses k of the n heads.
double refusal_threshold(std::vector<double> v, double share) {
    std::sort(v.begin(), v.end());
    const size_t k = size_t(std::floor(share * double(v.size())));
    if (k == 0) return v.empty() ? NAN : v[0] / 2;
    if (k >= v.size()) return v.back();
    return (v[k - 1] + v[k]) / 2;
}

double share_below(const std::vector<double>& v, double t) {
    if (v.empty()) return NAN;
    return double(std::count_if(v.begin(), v.end(), [t](double x) { return x < t; })) / double(v.size());
}

// Per-group counts of the check's decisions on planes rows.
struct Tally {
    int n = 0, refused_pipeline = 0, refused_check = 0, review_check = 0, passed = 0, ok_and_passed = 0;
    nlohmann::json json() const {
        auto sh = [this](int k) { return n ? double(k) / n : NAN; };
        return {{"n", n},
                {"refused_by_measurement", refused_pipeline},
                {"check_refuses", refused_check},
                {"check_reviews", review_check},
                {"check_passes", passed},
                {"measurement_ok_and_check_passes", ok_and_passed},
                {"share_refused_total", sh(refused_pipeline + refused_check)},
                {"share_not_refused", sh(review_check + passed)}};
    }
};


// Planes rows scored by the final model: per plane, per machine (non-head rows), split by side.
nlohmann::json planes_figures(const std::vector<CheckImage>& im, const std::vector<double>& score, double t1, double t2,
                              bool held_back) {
    std::map<std::string, Tally> by_plane, by_machine_nonhead, by_machine_brain_tt;
    for (size_t i = 0; i < im.size(); ++i) {
        const CheckImage& c = im[i];
        if (!c.planes || c.held_back != held_back) continue;
        for (Tally* t : {&by_plane[c.plane], c.cls == 0 ? (c.plane == "brain_tt" ? &by_machine_brain_tt[c.machine] : nullptr)
                                                          : &by_machine_nonhead[c.machine]}) {
            if (!t) continue;
            ++t->n;
            if (c.pipeline == "refused") ++t->refused_pipeline;
            else if (score[i] < t1) ++t->refused_check;
            else if (score[i] < t2) ++t->review_check;
            else {
                ++t->passed;
                if (c.pipeline == "ok") ++t->ok_and_passed;
            }
        }
    }
    nlohmann::json j;
    for (auto& [k, t] : by_plane) j["per_plane"][k] = t.json();
    for (auto& [k, t] : by_machine_nonhead) j["non_head_per_machine"][k] = t.json();
    for (auto& [k, t] : by_machine_brain_tt) j["brain_tt_per_machine"][k] = t.json();
    Tally all_nonhead;
    for (auto& [k, t] : by_machine_nonhead) {
        all_nonhead.n += t.n;
        all_nonhead.refused_pipeline += t.refused_pipeline;
        all_nonhead.refused_check += t.refused_check;
        all_nonhead.review_check += t.review_check;
        all_nonhead.passed += t.passed;
        all_nonhead.ok_and_passed += t.ok_and_passed;
    }
    j["non_head_all"] = all_nonhead.json();
    return j;
}

// Deterministic scoring outlines for image i: its own outline with a fit-error-sized jitter and
// (HC18) one off-target outline, from a generator seeded by the image's index.
std::pair<CheckSample, CheckSample> scoring_samples(const std::vector<CheckImage>& im, int i) {
    std::mt19937 rng(1000u + unsigned(i));
    CheckSample own = detail::jittered_sample(im, i, rng, im[size_t(i)].planes ? 0.0 : 1.0);
    return {own, detail::off_target_sample(im, i, rng)};
}

// Trains the fold models and scores HC18 out of fold: each image's own (jittered) reference outline
// into `head`, one off-target outline into `off`; both also into OUT/hc18_oof_scores.csv.
void train_folds_and_score(const std::vector<CheckImage>& im, size_t n_hc, const fs::path& out, const HeadCheckTrainOptions& o,
                           std::vector<double>& head, std::vector<double>& off) {
    std::ofstream csv(out / "hc18_oof_scores.csv");
    csv << "filename,fold,head_score,off_target_score\n";
    for (int f = 0; f < (o.folds >= 2 ? o.folds : 0); ++f) {
        HeadCheckNet net = train_stage(im, f, out / ("fold" + std::to_string(f)), o);
        std::vector<CheckSample> own, other;
        for (int i = 0; i < int(n_hc); ++i)
            if (im[size_t(i)].fold == f) {
                auto [a, b] = scoring_samples(im, i);
                own.push_back(a);
                other.push_back(b);
            }
        const auto head_scores = score_samples(net, im, own), off_scores = score_samples(net, im, other);
        for (size_t k = 0; k < own.size(); ++k)
            csv << im[size_t(own[k].image)].name << "," << f << "," << head_scores[k] << "," << off_scores[k] << "\n";
        head.insert(head.end(), head_scores.begin(), head_scores.end());
        off.insert(off.end(), off_scores.begin(), off_scores.end());
    }
}

// Every planes row's score by the final model, with its labels and side of the split (NaN: no outline).
void write_planes_scores(const fs::path& file, const std::vector<CheckImage>& im, size_t first_planes_row,
                         const std::vector<double>& score) {
    std::ofstream csv(file);
    csv << "filename,plane,machine,patient,held_back,measurement,head_score\n";
    for (size_t i = first_planes_row; i < im.size(); ++i)
        csv << im[i].name << "," << im[i].plane << "," << im[i].machine << "," << im[i].patient << "," << (im[i].held_back ? 1 : 0)
            << "," << im[i].pipeline << "," << (im[i].has_outline ? score[i] : NAN) << "\n";
}

// The fold models rewritten with the final model's metadata (thresholds, recipe) and their fold,
// so that HeadCheck::load reads them for out-of-fold use.
void add_metadata_to_fold_models(const fs::path& out, int folds, const nlohmann::json& meta) {
    for (int f = 0; f < folds; ++f) {
        const fs::path dir = out / ("fold" + std::to_string(f));
        HeadCheckNet fold_net = detail::load_head_check((dir / "model.pt").string()).first;
        nlohmann::json fm = meta;
        fm["fold"] = f;
        detail::save_head_check(fold_net, (dir / "model.pt").string(), fm.dump());
    }
}

}  // namespace

// Loads the data, trains the stages, scores, chooses thresholds, writes model and report.
Expected<HeadCheckTrainReport> train_head_check(const HeadCheckTrainOptions& o) {
    const auto t0 = Clock::now();
    const fs::path out(o.out_dir);
    if (!o.resume && fs::exists(out) && !fs::is_empty(out))
        return make_error(ErrorKind::InvalidArgument, "'" + o.out_dir + "' already holds a run: resume it or give a new folder", "resume");
    fs::create_directories(out);
    torch::set_num_threads(std::max(1, o.threads));
    auto hc = detail::load_hc18_check_images(o.hc18_dir, o.folds, o.hc18_split_salt, o.limit);
    if (!hc) return hc.error_value();
    auto pl = detail::load_planes_check_images(o.planes_dir, o.seg_model, (out / "planes_ellipses.csv").string(), o.limit, o.threads);
    if (!pl) return pl.error_value();
    std::vector<CheckImage> im = std::move(*hc);
    const size_t n_hc = im.size();
    for (auto& r : *pl) im.push_back(std::move(r));
    std::fprintf(stderr, "head check: %zu HC18 images, %zu planes rows\n", n_hc, im.size() - n_hc);

    std::vector<double> oof_head, oof_off;
    train_folds_and_score(im, n_hc, out, o, oof_head, oof_off);
    HeadCheckNet net = train_stage(im, -1, out / "all", o);

    // Thresholds from the training rows only: the HC18 out-of-fold head scores.
    const double t1 = oof_head.empty() ? 0.2 : std::clamp(refusal_threshold(oof_head, kMaxHeadsRefused), 0.02, 0.5);
    const double t2 = oof_head.empty() ? 0.5 : std::clamp(quantile(oof_head, 0.02), t1, 0.8);

    std::vector<CheckSample> planes_own;
    std::vector<size_t> planes_index;
    for (size_t i = n_hc; i < im.size(); ++i)
        if (im[i].has_outline) {
            planes_own.push_back(scoring_samples(im, int(i)).first);
            planes_index.push_back(i);
        }
    std::vector<double> score(im.size(), 0.0);
    const auto ps = score_samples(net, im, planes_own);
    for (size_t k = 0; k < ps.size(); ++k) score[planes_index[k]] = ps[k];
    write_planes_scores(out / "planes_scores.csv", im, n_hc, score);

    nlohmann::json rep;
    rep["thresholds"] = {{"refuse_below", t1}, {"review_below", t2},
                         {"rule", "refuse_below: between the k-th and (k+1)-th lowest HC18 out-of-fold head score, k = "
                                  "floor(0.005 n) (at most 0.5% of the heads refused); review_below: their 2% quantile "
                                  "(clamped to [0.02, 0.5] and [refuse_below, 0.8])"}};
    rep["hc18_oof"] = {{"heads", oof_head.size()},
                       {"heads_below_refuse", share_below(oof_head, t1)},
                       {"heads_below_review", share_below(oof_head, t2)},
                       {"off_target_outlines", oof_off.size()},
                       {"off_target_not_refused", oof_off.empty() ? NAN : 1 - share_below(oof_off, t1)},
                       {"off_target_passed", oof_off.empty() ? NAN : 1 - share_below(oof_off, t2)}};
    rep["planes_held_back"] = planes_figures(im, score, t1, t2, true);
    rep["planes_training_rows_in_sample"] = planes_figures(im, score, t1, t2, false);
    double wall = 0;
    for (const auto& d : fs::directory_iterator(out))
        if (fs::exists(d.path() / "state.json"))
            wall += nlohmann::json::parse(std::ifstream(d.path() / "state.json")).at("wall_seconds").get<double>();
    rep["training_seconds_all_stages"] = wall;
    rep["recipe"] = {{"crop", {{"size", kHeadCheckCropSize}, {"span_of_major_axis", kHeadCheckCropSpan}}},
                     {"epochs", o.epochs}, {"batch", o.batch}, {"folds", o.folds}, {"seed", o.seed},
                     {"planes_repeats_per_epoch", kPlanesRepeats}, {"learning_rate", kLearningRate},
                     {"hc18_split_salt", o.hc18_split_salt},
                     {"planes_split", "FNV-1a of 'fetalhc-head-check-v1/'+patient, held back when %100 < 40"},
                     {"limit", o.limit}, {"max_steps", o.max_steps}};
    const fs::path model = out / "model.pt";
    nlohmann::json meta = {{"kind", "fetalhc_head_check"}, {"thresholds", rep["thresholds"]}, {"recipe", rep["recipe"]},
                           {"hc18_oof", rep["hc18_oof"]}};
    detail::save_head_check(net, model.string(), meta.dump());
    add_metadata_to_fold_models(out, o.folds >= 2 ? o.folds : 0, meta);
    std::ofstream(out / "report.json") << rep.dump(2) << "\n";
    std::printf("%s\n", rep.dump(2).c_str());
    HeadCheckTrainReport r;
    r.model_path = model.string();
    r.report_path = (out / "report.json").string();
    r.refuse_below = t1;
    r.review_below = t2;
    r.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return r;
}

}  // namespace fetalhc
