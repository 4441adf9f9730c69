// `fetalhc model ...`: model file tools (calibrate the axis scale, average weights, combine passes).
#include "cli.h"

#include "fetalhc/evaluation.h"
#include "fetalhc/fetalhc.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>

using nlohmann::json;

namespace fetalhc_cli {
namespace {

// The model at `in` (float) and the split of `data` it records (model_split); kExitOk or the exit
// code after the error was printed.
int load_with_split(const std::string& data, const std::string& in, std::optional<fetalhc::Segmenter>& seg,
                    fetalhc::Split& split) {
    if (!check_model_file(in)) return kExitUsage;
    auto loaded = fetalhc::Segmenter::load(in, {});
    if (!loaded) return fail(loaded.error_value());
    auto recs = fetalhc::read_hc18_training(data);
    if (!recs) return fail(recs.error_value());
    auto sp = fetalhc::model_split(*recs, loaded->info().metadata);
    if (!sp) return fail(sp.error_value().prefixed("model '" + in + "': "));
    seg = std::move(*loaded);
    split = std::move(*sp);
    return kExitOk;
}

// Rewrites the model's axis scale from its TRAINING split only (fetalhc::calibrate_axis_scale).
int run_calibrate(const std::string& data, const std::string& in, const std::string& out) {
    std::optional<fetalhc::Segmenter> seg;
    fetalhc::Split split;
    if (int rc = load_with_split(data, in, seg, split); rc != kExitOk) return rc;
    fetalhc::Measurer measurer(*seg);
    auto c = fetalhc::calibrate_axis_scale(split, seg->info().axis_scale, fetalhc::measure_with(measurer));
    if (!c) return fail(c.error_value().prefixed("model '" + in + "' on '" + data + "': "));
    auto r = fetalhc::Segmenter::rewrite_metadata(in, out,
                                                  json{{"axis_scale", c->axis_scale},
                                                       {"axis_scale_masks", c->masks_factor},
                                                       {"axis_scale_measured", c->measured_factor},
                                                       {"axis_scale_images", c->measured_images}}
                                                      .dump());
    if (!r) return fail(r.error_value());
    std::fprintf(stderr, "axis scale %.5f = %.5f (masks -> reference ellipses, %d training images) x %.5f (this model's HC -> reference HC, median of %d); wrote %s\n",
                 c->axis_scale, c->masks_factor, c->training_images, c->measured_factor, c->measured_images, out.c_str());
    return kExitOk;
}

// Measures the int8 activation ranges on up to `images` of the model's TRAINING split (evenly
// spaced in file order) and stores them in the model file (Segmenter::calibrate_int8).
int run_quantize(const std::string& data, const std::string& in, int images, const std::string& out) {
    if (auto problem = fetalhc::int8_problem(); !problem.empty())
        return fail(fetalhc::make_error(fetalhc::ErrorKind::ModelUnavailable, problem));
    std::optional<fetalhc::Segmenter> seg;
    fetalhc::Split split;
    if (int rc = load_with_split(data, in, seg, split); rc != kExitOk) return rc;
    auto train = split.train;
    std::sort(train.begin(), train.end(), [](const auto& a, const auto& b) { return a.image_path < b.image_path; });
    const size_t n = std::min(train.size(), static_cast<size_t>(images));
    std::vector<cv::Mat> scans;
    for (size_t i = 0; i < n; ++i) {
        const auto& r = train[i * train.size() / n];
        auto img = fetalhc::load_grayscale(r.image_path);
        if (!img) return fail(img.error_value());
        scans.push_back(*img);
    }
    auto r = fetalhc::Segmenter::calibrate_int8(in, out, scans,
                                                std::to_string(n) + " of the " + std::to_string(train.size()) +
                                                    " training images of '" + data + "', evenly spaced in name order");
    if (!r) return fail(r.error_value());
    std::fprintf(stderr, "int8 ranges measured on %zu training images; wrote %s (use it with --int8)\n", n, out.c_str());
    return kExitOk;
}

// Input models that are not readable files are refused before LibTorch sees them.
bool check_input_models(const std::vector<std::string>& paths) {
    for (const auto& p : paths) {
        if (auto problem = model_file_problem(p); !problem.empty()) {
            error(problem + "; check the path");
            return false;
        }
    }
    return true;
}

int run_average(const std::vector<std::string>& in, const std::string& out) {
    if (!check_input_models(in)) return kExitUsage;
    auto r = fetalhc::Segmenter::average_models(in, out);
    if (!r) return fail(r.error_value());
    std::fprintf(stderr, "averaged %zu models into %s\n", in.size(), out.c_str());
    return kExitOk;
}

int run_combine(const std::string& coarse, const std::string& two_pass, const std::string& out) {
    if (!check_input_models({coarse, two_pass})) return kExitUsage;
    auto r = fetalhc::Segmenter::combine_models(coarse, two_pass, out);
    if (!r) return fail(r.error_value());
    std::fprintf(stderr, "wrote %s\n", out.c_str());
    return kExitOk;
}

// --check-folds: the interval calibrated without the rows of those folds, and its coverage on them
// (images neither the fold models nor the calibration saw).
int check_held_out_folds(const std::vector<fetalhc::IntervalSample>& samples, const std::vector<int>& folds, double coverage,
                         const std::vector<double>& edges) {
    std::vector<fetalhc::IntervalSample> fit, held;
    for (const auto& s : samples) {
        if (s.fold < 0)
            return error("--check-folds needs the CSV's fold column (`fetalhc evaluate --oof DIR --per-image FILE` writes it)"), kExitUsage;
        (std::find(folds.begin(), folds.end(), s.fold) != folds.end() ? held : fit).push_back(s);
    }
    if (held.empty()) return error("no rows of the folds given to --check-folds"), kExitUsage;
    auto m = fetalhc::calibrate_hc_interval(fit, coverage, edges, "check");
    if (!m) return fail(m.error_value().prefixed("calibrating without the checked folds: "));
    const auto c = fetalhc::interval_coverage(*m, held);
    std::string names;
    for (int f : folds) names += (names.empty() ? "" : ",") + std::to_string(f);
    std::fprintf(stderr, "check: calibrated on %zu rows of the other folds, the reference HC is inside for %d of %d rows of folds "
                         "%s (%.1f%%; review %d of %d)\n",
                 fit.size(), c.covered, c.images, names.c_str(), 100.0 * c.covered / c.images, c.review_covered, c.review_images);
    return kExitOk;
}

// Stores a conformal HC interval calibrated on held-out per-image results (fetalhc/uncertainty.h).
int run_interval(const std::string& in, const std::string& per_image, double coverage, const std::vector<double>& edges,
                 const std::vector<int>& check_folds, const std::string& out) {
    if (!check_input_models({in})) return kExitUsage;
    std::ifstream f(per_image);
    if (!f) return error("cannot read '" + per_image + "'; pass the CSV of `fetalhc evaluate --oof DIR --per-image FILE`"), kExitUsage;
    auto samples = fetalhc::read_interval_samples(f, per_image);
    if (!samples) return fail(samples.error_value());
    if (!check_folds.empty())
        if (int rc = check_held_out_folds(*samples, check_folds, coverage, edges); rc != kExitOk) return rc;
    auto m = fetalhc::calibrate_hc_interval(*samples, coverage, edges,
                                            "conformal on " + std::to_string(samples->size()) + " held-out measurements of " + per_image);
    if (!m) return fail(m.error_value());
    auto r = fetalhc::Segmenter::rewrite_metadata(in, out, json{{"hc_interval", fetalhc::to_json(*m)}}.dump());
    if (!r) return fail(r.error_value());
    for (size_t b = 0; b < m->lo_rel.size(); ++b)
        std::fprintf(stderr, "bin %zu: ok %+.2f%% .. %+.2f%% (n %d), review %+.2f%% .. %+.2f%% (n %d)\n", b, 100 * m->lo_rel[b],
                     100 * m->hi_rel[b], m->n_ok[b], 100 * m->review_lo_rel[b], 100 * m->review_hi_rel[b], m->n_review[b]);
    const auto all = fetalhc::interval_coverage(*m, *samples);
    std::fprintf(stderr, "on the %d calibration rows themselves: %.1f%% inside\n", all.images, 100.0 * all.covered / all.images);
    std::fprintf(stderr, "wrote %s\n", out.c_str());
    return kExitOk;
}

struct ModelArgs {
    std::string cal_data, cal_in, cal_out;
    std::vector<std::string> avg_in;
    std::string avg_out;
    std::string q_data, q_in, q_out;
    int q_images = 128;
    std::string comb_coarse, comb_two, comb_out;
    std::string iv_in, iv_csv, iv_out;
    double iv_coverage = 0.9;
    std::vector<double> iv_edges{150, 250};
    std::vector<int> iv_check_folds;
};

}  // namespace

void add_model_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<ModelArgs>();
    auto* mdl = app.add_subcommand("model", "model file tools");
    mdl->require_subcommand(1);

    auto* cal = mdl->add_subcommand("calibrate",
                                    "store the axis scale that maps this model's HC onto the reference, measured on its training split");
    cal->add_option("--data", a->cal_data, "HC18-layout folder the model was trained on")->required();
    a->cal_in = default_model();
    cal->add_option("--model", a->cal_in, "model to read")->capture_default_str();
    cal->add_option("--out", a->cal_out, "model file to write (may equal --model)")->required();
    commands.push_back({cal, [a] { return run_calibrate(a->cal_data, a->cal_in, a->cal_out); }});

    auto* qz = mdl->add_subcommand("quantize", "store the int8 activation ranges (for --int8), measured on the model's training split");
    qz->add_option("--data", a->q_data, "HC18-layout folder the model was trained on")->required();
    a->q_in = default_model();
    qz->add_option("--model", a->q_in, "model to read")->capture_default_str();
    qz->add_option("--images", a->q_images, "training images to measure")->capture_default_str()->check(CLI::Range(1, 100000));
    qz->add_option("--out", a->q_out, "model file to write (may equal --model)")->required();
    commands.push_back({qz, [a] { return run_quantize(a->q_data, a->q_in, a->q_images, a->q_out); }});

    auto* avg = mdl->add_subcommand("average", "average the weights of models from one training run (same network)");
    avg->add_option("models", a->avg_in, "model files to average")->required();
    avg->add_option("--out", a->avg_out, "model file to write")->required();
    commands.push_back({avg, [a] { return run_average(a->avg_in, a->avg_out); }});

    auto* comb = mdl->add_subcommand("combine", "two-pass model from a one-pass model's network and another model's second pass");
    comb->add_option("--coarse", a->comb_coarse, "one-pass model whose network becomes the first pass")->required();
    comb->add_option("--refine", a->comb_two, "two-pass model whose second pass (and metadata) is kept")->required();
    comb->add_option("--out", a->comb_out, "model file to write")->required();
    commands.push_back({comb, [a] { return run_combine(a->comb_coarse, a->comb_two, a->comb_out); }});

    auto* iv = mdl->add_subcommand("interval",
                                   "store an HC interval calibrated (conformal, by head size) on held-out per-image results");
    a->iv_in = default_model();
    iv->add_option("--model", a->iv_in, "model to read")->capture_default_str();
    iv->add_option("--per-image", a->iv_csv, "per-image CSV of images the model never saw (`fetalhc evaluate --oof DIR --per-image FILE`)")
        ->required();
    iv->add_option("--coverage", a->iv_coverage, "share of reference HCs the interval should hold")->capture_default_str()->check(CLI::Range(0.6, 0.99));
    iv->add_option("--edges", a->iv_edges, "bin edges on the measured HC in mm (comma-separated)")->delimiter(',')->capture_default_str();
    iv->add_option("--check-folds", a->iv_check_folds,
                   "first calibrate without the rows of these folds (comma-separated) and report the coverage on them")
        ->delimiter(',');
    iv->add_option("--out", a->iv_out, "model file to write (may equal --model)")->required();
    commands.push_back({iv, [a] { return run_interval(a->iv_in, a->iv_csv, a->iv_coverage, a->iv_edges, a->iv_check_folds, a->iv_out); }});
}

}  // namespace fetalhc_cli
