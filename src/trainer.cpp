// The training loop (LibTorch). See fetalhc/trainer.h. Its parts live in src/train/: config (the
// JSON config), data (the split and its images), augment (pure OpenCV), loss, validation (the
// per-epoch scoring) and checkpoint (what the run folder holds).
#include "fetalhc/trainer.h"

#include "fetalhc/evaluation.h"
#include "fetalhc/segmenter.h"

#include "network.h"
#include "train/augment.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/data.h"
#include "train/loss.h"
#include "train/epoch_scoring.h"

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <optional>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>

namespace fs = std::filesystem;
using nlohmann::json;

namespace fetalhc {
namespace {

using Clock = std::chrono::steady_clock;
using training::EvalResult;
using training::Sample;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string hms(double s) {
    char buf[32];
    const int t = int(s);
    std::snprintf(buf, sizeof buf, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    return buf;
}

// Everything a run holds while it trains.
struct Run {
    Run(const TrainConfig& c, const TrainOptions& o)
        : cfg(c), opt(o), out(o.out_dir), net_size(c.network.input_width, c.network.input_height),
          refine(c.stage == "refine"), split_meta(detail::split_metadata(c.split_salt, c.validation_fraction, c.folds, c.fold)) {}

    const TrainConfig& cfg;
    const TrainOptions& opt;
    const fs::path out;
    const cv::Size net_size;
    const bool refine;
    const std::string split_meta;             // the run's split, as model metadata records it
    training::TrainingData data;
    detail::LoadedModel coarse;               // refine: the frozen first pass
    std::vector<Segmentation> first_pass;     // refine: its segmentation of each validation image
    training::RunWeights w;
    training::RunState state;
    int steps_per_epoch = 0;
    long long total_steps = 0;
    double best_dice = 0;                     // of the best epoch of this call
    std::optional<EvalResult> last_ev;        // the latest validation (keep_last runs skip some epochs)
    const Clock::time_point t_start = Clock::now();
    Clock::time_point loop_start;             // for the ETA: steps since then
    long long loop_start_step = 0;
    bool tty = false;
};

// Refine stage: the frozen first pass, which must come from a one-pass model of the same split.
std::string load_coarse_model(Run& r) {
    r.coarse = detail::load_model(r.cfg.coarse_model);
    if (r.coarse.refine.net) return "coarse_model '" + r.cfg.coarse_model + "' already has a second pass";
    if (auto e = detail::split_mismatch("this run's config", r.split_meta, "coarse_model '" + r.cfg.coarse_model + "'",
                                        r.coarse.metadata);
        !e.empty())
        return e;
    r.first_pass = training::first_pass_segmentations(r.coarse.net, r.data.validation);
    std::fprintf(stderr, "fetalhc train: refine stage over the first pass of %s\n", r.cfg.coarse_model.c_str());
    return "";
}

// Fine-tuning: the weights of cfg.init_weights (same channels, depth and stem; any input size),
// from a model of the same split.
std::string init_from_model(Run& r) {
    const TrainConfig& cfg = r.cfg;
    auto init = detail::load_model(cfg.init_weights);
    // The weights do not depend on the input size, so a refine run may start from a coarse model.
    if (init.cfg.base_channels != cfg.network.base_channels || init.cfg.depth != cfg.network.depth ||
        init.cfg.max_channels != cfg.network.max_channels || init.cfg.stem_stride != cfg.network.stem_stride)
        return "init_weights '" + cfg.init_weights + "' has different channels, depth or stem stride than this run's network";
    if (auto e = detail::split_mismatch("this run's config", r.split_meta, "init_weights '" + cfg.init_weights + "'",
                                        init.metadata);
        !e.empty())
        return e;
    detail::copy_weights(*r.w.net, *init.net);
    std::fprintf(stderr, "fetalhc train: initialised from %s\n", cfg.init_weights.c_str());
    return "";
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& cfg, detail::UNet& net) {
    if (cfg.optimizer == "adam")
        return std::make_unique<torch::optim::AdamW>(
            net->parameters(),
            torch::optim::AdamWOptions(cfg.learning_rate).betas({cfg.momentum, 0.999}).weight_decay(cfg.weight_decay));
    return std::make_unique<torch::optim::SGD>(
        net->parameters(),
        torch::optim::SGDOptions(cfg.learning_rate).momentum(cfg.momentum).weight_decay(cfg.weight_decay).nesterov(true));
}

// The networks, optimizer and position: fresh (optionally from init_weights) or from the
// checkpoint with opt.resume.
std::string set_up_weights(Run& r) {
    const TrainConfig& cfg = r.cfg;
    r.w.net = detail::UNet(cfg.network);
    if (!cfg.init_weights.empty() && !r.opt.resume)
        if (auto e = init_from_model(r); !e.empty()) return e;
    r.w.net->train();
    r.w.optim = make_optimizer(cfg, r.w.net);
    // Weight averaging: `ema` is what is validated and saved when ema_decay > 0.
    if (cfg.ema_decay > 0) {
        r.w.ema = detail::UNet(cfg.network);
        detail::copy_weights(*r.w.ema, *r.w.net);
    }
    if (r.opt.resume) {
        auto st = training::read_checkpoint(r.out, r.w);
        if (!st) return st.error();
        r.state = std::move(*st);
        std::fprintf(stderr, "resumed at epoch %d, step %lld\n", r.state.epochs_done, r.state.step);
    }
    r.steps_per_epoch = cfg.steps_per_epoch > 0 ? cfg.steps_per_epoch
                                                : int((r.data.train.size() + cfg.batch_size - 1) / cfg.batch_size);
    r.total_steps = (long long)r.steps_per_epoch * cfg.epochs;
    std::fprintf(stderr, "network: %lld parameters, input %dx%d; %d steps/epoch x %d epochs, batch %d, %d threads\n",
                 detail::count_parameters(*r.w.net), r.net_size.width, r.net_size.height, r.steps_per_epoch, cfg.epochs,
                 cfg.batch_size, torch::get_num_threads());
    return "";
}

// Everything before the first step: the data and the split file, the first pass, the weights.
std::string prepare(Run& r) {
    fs::create_directories(r.out);
    auto data = training::load_training_data(r.cfg, r.opt);
    if (!data) return data.error();
    r.data = std::move(*data);
    training::write_split_file(r.out, r.cfg, r.data.split);
    training::write_text(r.out / "config.json", to_json(r.cfg));
    if (r.refine)
        if (auto e = load_coarse_model(r); !e.empty()) return e;
    if (auto e = set_up_weights(r); !e.empty()) return e;
    r.tty = isatty(fileno(stderr));
    r.loop_start = Clock::now();
    r.loop_start_step = r.state.step;
    return "";
}

// The order in which an epoch draws its samples: the training images only, shuffled, and
// shuffled again each time they run out.
class BatchDrawer {
public:
    BatchDrawer(const std::vector<Sample>& train, std::mt19937& rng) : train_(train), rng_(rng), order_(train.size()) {
        std::iota(order_.begin(), order_.end(), 0);
        std::shuffle(order_.begin(), order_.end(), rng_);
    }
    const Sample& next() {
        if (cursor_ == order_.size()) {
            std::shuffle(order_.begin(), order_.end(), rng_);
            cursor_ = 0;
        }
        return train_[order_[cursor_++]];
    }

private:
    const std::vector<Sample>& train_;
    std::mt19937& rng_;
    std::vector<size_t> order_;
    size_t cursor_ = 0;
};

// One optimizer step (and the weight average's update) on a batch; returns the loss.
double train_step(Run& r, const std::vector<cv::Mat>& imgs, const std::vector<cv::Mat>& masks, std::vector<float>& pres,
                  double lr) {
    const TrainConfig& cfg = r.cfg;
    auto x = detail::normalise_batch(training::to_tensor(imgs));
    auto y = training::to_tensor(masks);
    auto yp = torch::from_blob(pres.data(), {long(pres.size())}, torch::kFloat32).clone();
    for (auto& g : r.w.optim->param_groups()) g.options().set_lr(lr);
    r.w.optim->zero_grad();
    auto [logits, plog] = r.w.net->forward(x);
    auto loss = cfg.loss_bce * torch::binary_cross_entropy_with_logits(logits, y, training::boundary_weights(y, cfg)) +
                cfg.loss_dice * training::soft_dice_loss(logits, y, yp) +
                cfg.loss_presence * torch::binary_cross_entropy_with_logits(plog, yp);
    loss.backward();
    r.w.optim->step();
    const double t = double(r.state.step);
    if (r.w.ema) detail::ema_update(*r.w.ema, *r.w.net, std::min(cfg.ema_decay, (1.0 + t) / (10.0 + t)));
    return loss.item<double>();
}

struct EpochStats {
    double loss_sum = 0, aug_seconds = 0;
    int steps = 0;
    bool stop = false;  // opt.max_steps reached
};

void print_progress(const Run& r, int epoch, int s, const EpochStats& st, double lr) {
    const int n = r.steps_per_epoch;
    if (!r.opt.progress || !(r.tty || s + 1 == n || (s + 1) % std::max(1, n / 4) == 0)) return;
    const double per = seconds_since(r.loop_start) / std::max<long long>(1, r.state.step - r.loop_start_step);
    const long long end = r.opt.max_steps >= 0 ? std::min(r.opt.max_steps, r.total_steps) : r.total_steps;
    const int width = 24, done = int(width * double(s + 1) / n);
    std::fprintf(stderr, "%sepoch %d/%d [%s%s] %d/%d loss %.4f lr %.2e %.2f s/step ETA %s%s", r.tty ? "\r" : "", epoch + 1,
                 r.cfg.epochs, std::string(done, '#').c_str(), std::string(width - done, '.').c_str(), s + 1, n,
                 st.loss_sum / st.steps, lr, per, hms(per * std::max(0LL, end - r.state.step)).c_str(), r.tty ? "" : "\n");
}

// The optimizer steps of one epoch (fewer when opt.max_steps is reached). Random draws are seeded
// per epoch, so a resumed run draws what an uninterrupted one would have.
Expected<EpochStats> run_epoch(Run& r, int epoch) {
    const TrainConfig& cfg = r.cfg;
    std::mt19937 rng(cfg.seed * 1000003u + unsigned(epoch));
    BatchDrawer draw(r.data.train, rng);
    training::Augmenter aug(cfg.augment, r.net_size, rng, cv::theRNG());
    cv::theRNG().state = cfg.seed * 7919ull + epoch;
    EpochStats st;
    for (int s = 0; s < r.steps_per_epoch; ++s) {
        if (r.opt.max_steps >= 0 && r.state.step >= r.opt.max_steps) {
            st.stop = true;
            break;
        }
        std::vector<cv::Mat> imgs(cfg.batch_size), masks(cfg.batch_size);
        std::vector<float> pres(cfg.batch_size);
        const auto t_aug = Clock::now();
        for (int b = 0; b < cfg.batch_size; ++b) {
            const Sample& smp = draw.next();
            pres[b] = r.refine ? aug.make_crop(smp, cfg.crop_margin, imgs[b], masks[b]) : aug.make(smp, imgs[b], masks[b]);
        }
        st.aug_seconds += seconds_since(t_aug);
        const double lr = training::lr_at(cfg, r.state.step, r.total_steps);
        const double lv = train_step(r, imgs, masks, pres, lr);
        if (!std::isfinite(lv))
            return make_error(ErrorKind::Internal, "training diverged (loss is " + std::to_string(lv) + ") at step " + std::to_string(r.state.step) +
                              "; lower learning_rate in the config");
        st.loss_sum += lv;
        ++st.steps;
        ++r.state.step;
        print_progress(r, epoch, s, st, lr);
    }
    if (r.tty) std::fprintf(stderr, "\n");
    return st;
}

EvalResult validate(Run& r, detail::UNet& net) {
    return r.refine ? training::validate_refine(net, r.data.validation, r.first_pass, r.cfg, r.data.axis_scale)
                    : training::validate_coarse(net, r.data.validation, r.cfg, r.data.axis_scale);
}

// out_dir/model.pt from the weights `kept` of this epoch (a refine run writes both networks), with
// the metadata later commands read: the split, the axis scale, and the figures of `ev`, the latest
// validation (none in a run without validation images).
void save_best_model(Run& r, int epoch, const EvalResult* ev, detail::UNet& kept) {
    const TrainConfig& cfg = r.cfg;
    json meta{{"trained_by", "fetalhc train"}, {"epoch", epoch + 1}, {"step", r.state.step},
              {"split_salt", cfg.split_salt}, {"validation_fraction", cfg.validation_fraction},
              {"axis_scale", r.data.axis_scale}, {"config", training::config_to_json(cfg)}};
    if (ev)
        meta.update({{"val_hc_mad_mm", ev->hc_mad}, {"val_dice_net", ev->dice}, {"val_failed", ev->failed},
                     {"val_images", ev->n}});
    else
        meta["val_images"] = 0;
    if (cfg.folds > 0) meta["folds"] = cfg.folds, meta["fold"] = cfg.fold;
    if (r.refine) {
        const detail::Refiner second{kept, cfg.crop_margin};
        meta["coarse_model"] = cfg.coarse_model;
        detail::save_model(r.coarse.net, (r.out / "model.pt").string(), meta.dump(), &second);
    } else {
        detail::save_model(kept, (r.out / "model.pt").string(), meta.dump());
    }
}

// After an epoch: validation (of the average and, with averaging on, of the raw weights too, to
// show what the average adds), the history entry and log line, the best model, the checkpoint.
void end_epoch(Run& r, int epoch, const EpochStats& st) {
    const auto t_val = Clock::now();
    detail::UNet& kept = r.w.ema ? r.w.ema : r.w.net;  // the weights validated and saved
    // keep_last: validation is for the log only (every 5th epoch, the last, and the first after a
    // start or resume); model.pt follows the weights every epoch.
    // A run without validation images (validation_fraction 0) never validates.
    const bool validate_now = !r.data.validation.empty() &&
                              (!r.cfg.keep_last || epoch + 1 >= r.cfg.epochs || (epoch + 1) % 5 == 0 || !r.last_ev);
    std::optional<EvalResult> ev;
    double raw_mad = 0;
    if (validate_now) {
        ev = validate(r, kept);
        raw_mad = r.w.ema ? validate(r, r.w.net).hc_mad : ev->hc_mad;
    }
    const double val_s = seconds_since(t_val), wall = r.state.prior_seconds + seconds_since(r.t_start);
    const double train_loss = st.loss_sum / st.steps;
    json entry{{"epoch", epoch + 1}, {"step", r.state.step}, {"train_loss", train_loss}};
    std::string said = r.data.validation.empty() ? " (no validation images; the last epoch's weights are kept)"
                                                 : " (validated every 5th epoch; the last epoch's weights are kept)";
    if (ev) {
        entry.update({{"val_loss", ev->loss}, {"val_dice", ev->dice}, {"val_hc_mad_mm", ev->hc_mad},
                      {"val_failed", ev->failed}, {"val_images", ev->n}});
        char raw_note[64] = "";
        if (r.w.ema) {
            entry["val_hc_mad_mm_raw_weights"] = raw_mad;
            std::snprintf(raw_note, sizeof raw_note, " [averaged weights; raw %.2f mm]", raw_mad);
        }
        char text[256];
        std::snprintf(text, sizeof text, " | val loss %.4f Dice %.4f HC MAD %.2f mm (%d failed of %d)%s | %.0f s augment, %.0f s val",
                      ev->loss, ev->dice, ev->hc_mad, ev->failed, ev->n, raw_note, st.aug_seconds, val_s);
        said = text;
    }
    entry.update({{"lr", training::lr_at(r.cfg, r.state.step, r.total_steps)}, {"wall_seconds", wall}});
    r.state.history.push_back(std::move(entry));
    std::fprintf(stderr, "epoch %d: train loss %.4f%s | %s total\n", epoch + 1, train_loss, said.c_str(), hms(wall).c_str());
    if (!ev) {
        save_best_model(r, epoch, r.last_ev ? &*r.last_ev : nullptr, kept);  // keep_last: the latest validation's figures
    } else {
        r.last_ev = ev;
        if (r.cfg.keep_last || ev->hc_mad < r.state.best_hc_mad_mm) {
            r.state.best_hc_mad_mm = r.cfg.keep_last ? ev->hc_mad : std::min(ev->hc_mad, r.state.best_hc_mad_mm);
            save_best_model(r, epoch, &*ev, kept);
            r.best_dice = ev->dice;
        }
    }
    r.state.epochs_done = epoch + 1;
    training::write_checkpoint(r.out, r.w, r.state, wall, r.split_meta);
}

// The report returned and written to out_dir/report.json.
TrainReport finish(Run& r) {
    TrainReport rep;
    rep.model_path = (r.out / "model.pt").string();
    rep.best_hc_mad_mm = r.state.best_hc_mad_mm;
    rep.best_dice = r.best_dice;
    rep.epochs_done = r.state.epochs_done;
    rep.steps_done = r.state.step;
    rep.wall_seconds = r.state.prior_seconds + seconds_since(r.t_start);
    if (r.data.validation.empty()) rep.best_hc_mad_mm = std::numeric_limits<double>::quiet_NaN();  // written as null
    json report{{"model", rep.model_path}, {"best_val_hc_mad_mm", rep.best_hc_mad_mm}, {"epochs_done", rep.epochs_done},
                {"steps_done", rep.steps_done}, {"wall_seconds", rep.wall_seconds}, {"threads", torch::get_num_threads()},
                {"parameters", detail::count_parameters(*r.w.net)}, {"train_images", r.data.train.size()},
                {"validation_images", r.data.validation.size()}, {"config", training::config_to_json(r.cfg)},
                {"history", r.state.history}};
    training::write_text(r.out / "report.json", report.dump(2));
    return rep;
}

}  // namespace

Expected<TrainReport> train(const TrainConfig& cfg, const TrainOptions& opt) {
    try {
        if (auto e = training::validate_config(cfg); !e.empty())
            return make_error(ErrorKind::InvalidArgument, "training config: " + e, "config");
        detail::set_threads(cfg.threads);
        // OpenCV's own worker threads would fight LibTorch's OpenMP threads for the same cores;
        // augmentation is cheap, so it runs on the calling thread.
        cv::setNumThreads(1);
        torch::manual_seed(cfg.seed);
        cv::setRNGSeed(int(cfg.seed));
        Run r(cfg, opt);
        if (auto e = prepare(r); !e.empty()) return make_error(ErrorKind::Io, e);
        for (int epoch = r.state.epochs_done; epoch < cfg.epochs; ++epoch) {
            auto st = run_epoch(r, epoch);
            if (!st) return st.error_value();
            if (st->steps == 0) break;
            end_epoch(r, epoch, *st);
            if (st->stop) break;
        }
        return finish(r);
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Internal, std::string("training failed: ") + e.what());
    }
}

}  // namespace fetalhc

// ---- K-fold cross-validation (see train_kfold in fetalhc/trainer.h) ----

namespace fetalhc {
namespace {

json read_json_file(const fs::path& p) {
    std::ifstream in(p);
    if (!in) return json();
    return json::parse(in, nullptr, false);
}

// "" when the stage folder holds nothing or a run of cfg's split; otherwise why it cannot be used.
std::string check_stage_folder(const fs::path& dir, const TrainConfig& cfg) {
    const json sj = read_json_file(dir / "split.json");
    if (!sj.is_object()) return "";
    if (sj.value("salt", std::string()) != cfg.split_salt || sj.value("folds", 0) != cfg.folds ||
        sj.value("fold", 0) != cfg.fold)
        return "'" + dir.string() + "' holds a run of another split (split.json: " + sj.value("salt", std::string()) +
               ", fold " + std::to_string(sj.value("fold", 0)) + " of " + std::to_string(sj.value("folds", 0)) +
               "); use another output folder or remove that one";
    return "";
}

// A finished stage: report.json written after all epochs, or after max_steps steps.
bool stage_finished(const fs::path& dir, const TrainConfig& cfg, long long max_steps) {
    if (!fs::exists(dir / "model.pt")) return false;
    const json rep = read_json_file(dir / "report.json");
    if (!rep.is_object()) return false;
    return rep.value("epochs_done", 0) >= cfg.epochs || (max_steps >= 0 && rep.value("steps_done", 0LL) >= max_steps);
}

// What the log calls a run of `cfg`: "fold 2 of 5" or "all images".
std::string run_label(const TrainConfig& cfg) {
    return cfg.folds > 0 ? "fold " + std::to_string(cfg.fold) + " of " + std::to_string(cfg.folds) : "all images";
}

Expected<bool> run_stage(const TrainConfig& cfg, const fs::path& dir, const KFoldOptions& opt, const char* name) {
    if (auto e = check_stage_folder(dir, cfg); !e.empty()) return make_error(ErrorKind::InvalidArgument, e, "out");
    const std::string label = run_label(cfg);
    if (stage_finished(dir, cfg, opt.max_steps)) {
        std::fprintf(stderr, "fetalhc train: %s, %s stage finished (%s), skipped\n", label.c_str(), name, dir.string().c_str());
        return false;
    }
    TrainOptions o;
    o.data_dir = opt.data_dir;
    o.out_dir = dir.string();
    o.resume = fs::exists(dir / "checkpoint.json");
    o.max_steps = opt.max_steps;
    o.limit = opt.limit;
    o.progress = opt.progress;
    std::fprintf(stderr, "fetalhc train: %s, %s stage%s -> %s\n", label.c_str(), name, o.resume ? " (resumed)" : "",
                 dir.string().c_str());
    auto r = train(cfg, o);
    if (!r) return r.error_value().prefixed(label + ", " + name + " stage: ");
    return true;
}

// dir/model.pt: the refine model with its axis scale set on the run's training split.
std::string calibrate_stage_model(const fs::path& refine_model, const fs::path& out, const KFoldOptions& opt) {
    auto seg = Segmenter::load(refine_model.string(), {});
    if (!seg) return seg.error();
    auto recs = read_hc18_training(opt.data_dir);
    if (!recs) return recs.error();
    auto split = model_split(*recs, seg->info().metadata);
    if (!split) return "'" + refine_model.string() + "': " + split.error();
    if (opt.limit > 0 && int(split->train.size()) > opt.limit) split->train.resize(opt.limit);
    Measurer measurer(*seg);
    auto c = calibrate_axis_scale(*split, seg->info().axis_scale, measure_with(measurer));
    json patch;
    if (c) {
        patch = {{"axis_scale", c->axis_scale}, {"axis_scale_masks", c->masks_factor},
                 {"axis_scale_measured", c->measured_factor}, {"axis_scale_images", c->measured_images}};
        std::fprintf(stderr, "fetalhc train: axis scale %.5f (%d training images)\n", c->axis_scale,
                     c->measured_images);
    } else {
        patch = {{"axis_scale_calibration", "not calibrated: " + c.error()}};
        std::fprintf(stderr, "fetalhc train: warning: %s; the stored axis scale is kept\n", c.error().c_str());
    }
    const fs::path tmp = out.string() + ".tmp";
    auto w = Segmenter::rewrite_metadata(refine_model.string(), tmp.string(), patch.dump());
    if (!w) return w.error();
    fs::rename(tmp, out);
    return "";
}

// Both stages of the recipe in dir/{coarse,refine}/, then dir/model.pt; adds the stages run and
// skipped to `rep`. A run whose dir/model.pt exists is skipped whole, once its refine folder is
// found to be of this split (a folder of another run is refused).
std::string train_two_stages(TrainConfig c, TrainConfig r, const fs::path& dir, const KFoldOptions& opt, KFoldReport& rep) {
    if (fs::exists(dir / "model.pt")) {
        if (auto e = check_stage_folder(dir / "refine", r); !e.empty()) return e;
        std::fprintf(stderr, "fetalhc train: %s, finished (%s), skipped\n", run_label(c).c_str(), (dir / "model.pt").string().c_str());
        ++rep.stages_skipped;
        return "";
    }
    fs::create_directories(dir);
    r.coarse_model = (dir / "coarse" / "model.pt").string();
    if (!r.init_weights.empty()) r.init_weights = r.coarse_model;
    auto a = run_stage(c, dir / "coarse", opt, "coarse");
    if (!a) return a.error();
    auto b = run_stage(r, dir / "refine", opt, "refine");
    if (!b) return b.error();
    rep.stages_trained += int(*a) + int(*b);
    rep.stages_skipped += int(!*a) + int(!*b);
    if (auto e = calibrate_stage_model(dir / "refine" / "model.pt", dir / "model.pt", opt); !e.empty())
        return run_label(c) + " calibration: " + e;
    return "";
}

std::string check_stage_configs(const TrainConfig& coarse_cfg, const TrainConfig& refine_cfg) {
    if (coarse_cfg.stage != "coarse" || refine_cfg.stage != "refine")
        return "the recipe needs a coarse-stage config and a refine-stage config";
    if (coarse_cfg.split_salt != refine_cfg.split_salt) return "the coarse and refine configs name different split_salt values";
    return "";
}

}  // namespace

Expected<KFoldReport> train_kfold(const TrainConfig& coarse_cfg, const TrainConfig& refine_cfg, const KFoldOptions& opt) {
    if (opt.folds < 2 || opt.folds > 20)
        return make_error(ErrorKind::InvalidArgument, "the fold count must be in [2, 20] (e.g. 5)", "folds");
    if (auto e = check_stage_configs(coarse_cfg, refine_cfg); !e.empty()) return make_error(ErrorKind::InvalidArgument, e, "config");
    KFoldReport rep;
    try {
        for (int i = 0; i < opt.folds; ++i) {
            const fs::path dir = fs::path(opt.out_dir) / ("fold" + std::to_string(i));
            rep.models.push_back((dir / "model.pt").string());
            TrainConfig c = coarse_cfg, r = refine_cfg;
            c.folds = r.folds = opt.folds;
            c.fold = r.fold = i;
            c.keep_last = r.keep_last = true;  // the held-out fold must not choose the epoch
            if (auto e = train_two_stages(c, r, dir, opt, rep); !e.empty()) return make_error(ErrorKind::Internal, e);
        }
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Internal, std::string("k-fold training failed: ") + e.what());
    }
    return rep;
}

Expected<KFoldReport> train_all_images(const TrainConfig& coarse_cfg, const TrainConfig& refine_cfg, const KFoldOptions& opt) {
    if (auto e = check_stage_configs(coarse_cfg, refine_cfg); !e.empty()) return make_error(ErrorKind::InvalidArgument, e, "config");
    KFoldReport rep;
    const fs::path dir(opt.out_dir);
    rep.models.push_back((dir / "model.pt").string());
    TrainConfig c = coarse_cfg, r = refine_cfg;
    c.folds = r.folds = c.fold = r.fold = 0;
    c.validation_fraction = r.validation_fraction = 0;  // every labelled image trains
    c.keep_last = r.keep_last = true;                   // no validation to choose the epoch
    try {
        if (auto e = train_two_stages(c, r, dir, opt, rep); !e.empty()) return make_error(ErrorKind::Internal, e);
    } catch (const std::exception& e) {
        return make_error(ErrorKind::Internal, std::string("training on all images failed: ") + e.what());
    }
    return rep;
}

}  // namespace fetalhc
