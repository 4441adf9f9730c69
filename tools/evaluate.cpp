// `fetalhc evaluate`: HC18 metrics of a model on a labelled folder (all images, or the model's
// own grouped validation or training split).
#include "cli.h"
#include "progress.h"

#include "fetalhc/csv.h"
#include "fetalhc/fetalhc.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>

using nlohmann::json;

namespace fetalhc_cli {
namespace {

std::string join(const std::vector<std::string>& v, const std::string& sep) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
    return s;
}

struct EvalArgs {
    std::string data, model = default_model(), split = "validation";
    bool json_out = false, quiet = false;
    int worst = 10, threads = 0;
    std::string per_image_csv;
};

// Moved unchanged from the old tools/main.cpp (over 80 lines): it is about to be rebuilt on the
// library's evaluation module, which takes over its arithmetic.
int run_evaluate(const EvalArgs& a) {
    auto recs = fetalhc::read_hc18_training(a.data);
    if (!recs) {
        error(recs.error());
        return kExitUsage;
    }
    if (!check_model_file(a.model)) return kExitUsage;
    auto seg = fetalhc::Segmenter::load(a.model, {a.threads});
    if (!seg) {
        error(seg.error());
        return kExitUsage;
    }
    std::vector<fetalhc::Hc18Record> chosen = *recs;
    if (a.split != "all") {
        // The split the model was trained with, read from the model's metadata.
        json meta = json::parse(seg->info().metadata.empty() ? "{}" : seg->info().metadata, nullptr, false);
        if (!meta.is_object() || !meta.contains("split_salt")) {
            error("model '" + a.model + "' records no training split; use --split all");
            return kExitUsage;
        }
        auto s = fetalhc::grouped_split(*recs, meta["validation_fraction"].get<double>(), meta["split_salt"].get<std::string>());
        chosen = a.split == "validation" ? s.validation : s.train;
    }
    fetalhc::Measurer measurer(*seg);
    const double t1 = fetalhc::intergrowth_hc_median(14), t2 = fetalhc::intergrowth_hc_median(28);
    struct Row {
        std::string file;
        double ref_hc, hc = NAN, diff = NAN, dice = 0, hd_mm = NAN, iou = 0, score = 0;
        std::string quality, error;
        std::optional<fetalhc::Measurement> m;
        int trimester;
    };
    std::vector<Row> rows;
    std::vector<fetalhc::Detection> dets;
    double ms_total = 0;
    Progress progress(int(chosen.size()), !a.quiet);
    for (const auto& r : chosen) {
        Row row;
        row.file = r.filename;
        row.ref_hc = r.hc_mm;
        row.trimester = r.hc_mm < t1 ? 1 : r.hc_mm < t2 ? 2 : 3;
        fetalhc::MeasureOptions o;
        o.pixel_size_mm = r.pixel_size_mm;
        auto m = measurer.measure_file(r.image_path, o);
        cv::Mat ref = r.mask_path.empty() ? cv::Mat() : cv::imread(r.mask_path, cv::IMREAD_GRAYSCALE);
        fetalhc::Detection d;
        if (m) {
            ms_total += m->timings.total_ms;
            row.hc = m->hc_mm;
            row.diff = m->hc_mm - r.hc_mm;
            row.quality = m->quality;
            row.m = *m;
            if (ref.empty() && r.has_ellipse) ref = fetalhc::rasterize(r.ellipse_px, m->image_size);
            if (!ref.empty()) {
                cv::Mat pred = fetalhc::rasterize(m->ellipse_px, ref.size());
                row.dice = fetalhc::dice(pred, ref);
                row.iou = fetalhc::iou(pred, ref);
                row.hd_mm = fetalhc::hausdorff_px(pred, ref) * r.pixel_size_mm;
            }
            d.detected = true;
            d.score = m->presence;
            d.iou = row.iou;
        } else {
            row.error = m.error();
        }
        dets.push_back(d);
        rows.push_back(row);
        progress.step();
    }
    progress.finish();
    auto summarise = [&](int tri) {
        json s;
        std::vector<double> ad, sd, dc, hd;
        int n = 0, failed = 0, review = 0, gross = 0, gross_flagged = 0, good_flagged = 0;
        for (const auto& r : rows) {
            if (tri && r.trimester != tri) continue;
            ++n;
            if (!r.error.empty()) {
                ++failed;
                continue;
            }
            review += r.quality == "review";
            // How well the review flag tracks real failures (errors over 5 mm).
            if (std::abs(r.diff) > 5) ++gross, gross_flagged += r.quality == "review";
            else good_flagged += r.quality == "review";
            ad.push_back(std::abs(r.diff));
            sd.push_back(r.diff);
            dc.push_back(r.dice);
            hd.push_back(r.hd_mm);
        }
        auto mean = [](const std::vector<double>& v) {
            double sum = 0;
            for (double x : v) sum += x;
            return v.empty() ? NAN : sum / v.size();
        };
        auto sdv = [&](const std::vector<double>& v) {
            const double mu = mean(v);
            double sum = 0;
            for (double x : v) sum += (x - mu) * (x - mu);
            return v.size() < 2 ? NAN : std::sqrt(sum / (v.size() - 1));
        };
        s["images"] = n;
        s["failed"] = failed;
        s["flagged_review"] = review;
        s["hc_abs_diff_mm"] = {{"mean", mean(ad)}, {"sd", sdv(ad)}};
        s["hc_signed_diff_mm"] = {{"mean", mean(sd)}, {"sd", sdv(sd)}};
        s["dice"] = {{"mean", mean(dc)}, {"sd", sdv(dc)}};
        s["hausdorff_mm"] = {{"mean", mean(hd)}, {"sd", sdv(hd)}};
        s["over_10mm"] = std::count_if(ad.begin(), ad.end(), [](double x) { return x > 10; });
        s["review_flag"] = {{"errors_over_5mm", gross}, {"errors_over_5mm_flagged", gross_flagged},
                            {"good_flagged", good_flagged}, {"good", int(ad.size()) - gross}};
        return s;
    };
    json out;
    out["data"] = a.data;
    out["model"] = a.model;
    out["split"] = a.split;
    out["overall"] = summarise(0);
    out["trimester_boundaries_hc_mm"] = {t1, t2};
    out["per_trimester"] = {{"first", summarise(1)}, {"second", summarise(2)}, {"third", summarise(3)}};
    double ap_sum = 0, ar_sum = 0;
    for (int k = 0; k < 10; ++k) {
        ap_sum += fetalhc::average_precision(dets, 0.5 + 0.05 * k);
        ar_sum += fetalhc::recall(dets, 0.5 + 0.05 * k);
    }
    out["mask_ap50"] = fetalhc::average_precision(dets, 0.5);
    out["mask_ap"] = ap_sum / 10;
    out["mask_ar"] = ar_sum / 10;
    out["mean_ms_per_image"] = rows.empty() ? 0 : ms_total / rows.size();
    std::vector<const Row*> order;
    for (const auto& r : rows) order.push_back(&r);
    std::sort(order.begin(), order.end(), [](const Row* x, const Row* y) {
        const double ex = x->error.empty() ? std::abs(x->diff) : 1e9, ey = y->error.empty() ? std::abs(y->diff) : 1e9;
        return ex > ey;
    });
    json worst = json::array();
    for (int i = 0; i < std::min<int>(a.worst, int(order.size())); ++i) {
        const Row& r = *order[i];
        json w{{"file", r.file}, {"ref_hc_mm", r.ref_hc}, {"trimester", r.trimester}};
        if (r.error.empty()) w.update({{"hc_mm", r.hc}, {"diff_mm", r.diff}, {"dice", r.dice}, {"quality", r.quality}});
        else w["error"] = r.error;
        worst.push_back(w);
    }
    out["worst"] = worst;
    if (!a.per_image_csv.empty()) {
        std::ofstream f(a.per_image_csv);
        f << "filename,ref_hc_mm,hc_mm,diff_mm,dice,hausdorff_mm,trimester,quality,detection_score,certainty,fit_rms_px,"
             "inlier_share,cut_share,reasons_or_error\n";
        for (const auto& r : rows) {
            f << fetalhc::csv_text(r.file) << ',' << fetalhc::csv_number(r.ref_hc, 2) << ',';
            if (!r.m) {
                f << ",,,," << r.trimester << ",,,,,,," << fetalhc::csv_text(r.error) << '\n';
                continue;
            }
            const auto& m = *r.m;
            f << fetalhc::csv_number(r.hc, 2) << ',' << fetalhc::csv_number(r.diff, 2) << ',' << fetalhc::csv_number(r.dice, 4) << ',' << fetalhc::csv_number(r.hd_mm, 2) << ','
              << r.trimester << ',' << r.quality << ',' << fetalhc::csv_number(m.presence, 3) << ',' << fetalhc::csv_number(m.certainty, 3) << ','
              << fetalhc::csv_number(m.fit_rms_px, 3) << ',' << fetalhc::csv_number(double(m.inliers) / std::max(1, m.boundary_points), 3) << ','
              << fetalhc::csv_number(double(m.cut_points) / std::max(1, m.cut_points + m.boundary_points), 3) << ','
              << fetalhc::csv_text(join(m.reasons, "; "))
              << '\n';
        }
        if (!f) {
            error("cannot write '" + a.per_image_csv + "'");
            return kExitSomeFailed;
        }
    }
    if (a.json_out) {
        std::printf("%s\n", out.dump(2).c_str());
    } else {
        auto line = [](const char* name, const json& s) {
            std::printf("%-8s n=%4d  |HC diff| %6.2f +- %5.2f mm  signed %+6.2f mm  Dice %6.2f%%  HD %5.2f mm  >10mm %d  failed %d  review %d\n",
                        name, s["images"].get<int>(), s["hc_abs_diff_mm"]["mean"].get<double>(),
                        s["hc_abs_diff_mm"]["sd"].is_number() ? s["hc_abs_diff_mm"]["sd"].get<double>() : 0.0,
                        s["hc_signed_diff_mm"]["mean"].get<double>(), 100 * s["dice"]["mean"].get<double>(),
                        s["hausdorff_mm"]["mean"].get<double>(), s["over_10mm"].get<int>(), s["failed"].get<int>(),
                        s["flagged_review"].get<int>());
        };
        std::printf("fetalhc evaluate: %s (%s split), model %s\n", a.data.c_str(), a.split.c_str(), a.model.c_str());
        line("all", out["overall"]);
        const json& rf = out["overall"]["review_flag"];
        std::printf("review flag: %d of %d errors > 5 mm flagged; %d of %d others flagged needlessly\n",
                    rf["errors_over_5mm_flagged"].get<int>(), rf["errors_over_5mm"].get<int>(), rf["good_flagged"].get<int>(),
                    rf["good"].get<int>());
        for (const char* t : {"first", "second", "third"})
            if (out["per_trimester"][t]["images"].get<int>() > 0 && out["per_trimester"][t]["hc_abs_diff_mm"]["mean"].is_number())
                line(t, out["per_trimester"][t]);
        std::printf("mask AP50 %.3f  AP[.5:.95] %.3f  AR %.3f  mean %.1f ms/image\nworst:\n", out["mask_ap50"].get<double>(),
                    out["mask_ap"].get<double>(), out["mask_ar"].get<double>(), out["mean_ms_per_image"].get<double>());
        for (const auto& w : worst) std::printf("  %s\n", w.dump().c_str());
    }
    const bool any_failed = out["overall"]["failed"].get<int>() > 0;
    return any_failed ? kExitSomeFailed : kExitOk;
}

}  // namespace

void add_evaluate_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<EvalArgs>();
    auto* cmd = app.add_subcommand("evaluate", "HC18 metrics (HC difference, Dice, Hausdorff, mask AP/AR) on a labelled folder");
    cmd->add_option("--data", a->data, "HC18-layout folder (training_set/ + training_set_pixel_size_and_HC.csv)")->required();
    cmd->add_option("--split", a->split,
                    "which images: the model's grouped validation split (images it was not trained on), its train "
                    "split, or all (optimistic for a model trained on this folder)")
        ->check(CLI::IsMember({"all", "validation", "train"}))
        ->capture_default_str();
    cmd->add_flag("--json", a->json_out, "print JSON instead of a table");
    cmd->add_option("--per-image", a->per_image_csv, "also write one CSV row per image (errors, quality signals, reasons)");
    cmd->add_option("--worst", a->worst, "how many worst cases to list")->capture_default_str();
    cmd->add_option("--threads", a->threads, "CPU threads (0 = all cores; at most the core count)")->capture_default_str();
    add_model_option(cmd, a->model);
    add_quiet_flag(cmd, a->quiet);
    commands.push_back({cmd, [a] {
                            if (!bound_thread_count(a->threads, "--threads")) return kExitUsage;
                            return run_evaluate(*a);
                        }});
}

}  // namespace fetalhc_cli
