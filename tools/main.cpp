// fetalhc command-line interface: parses arguments and wires library calls, nothing more.
// Exit codes: 0 everything measured, 1 some inputs failed, 2 usage error.
#include "fetalhc/fetalhc.h"
#include "fetalhc/server.h"

#include "bench.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kExitOk = 0, kExitSomeFailed = 1, kExitUsage = 2;

std::string default_model() {
    if (const char* env = std::getenv("FETALHC_MODEL")) return env;
#ifdef FETALHC_DEFAULT_MODEL
    return FETALHC_DEFAULT_MODEL;
#else
    return "models/fetalhc_unet.pt";
#endif
}

void error(const std::string& msg) { std::fprintf(stderr, "error: %s\n", msg.c_str()); }

std::string num(double v, int digits) {
    if (!std::isfinite(v)) return "";
    std::ostringstream s;
    s.setf(std::ios::fixed);
    s.precision(digits);
    s << v;
    return s.str();
}

std::string csv_quote(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
    return s;
}

// ---- measure ------------------------------------------------------------------------------------

struct MeasureArgs {
    std::vector<std::string> paths;
    bool pixel_size_given = false;
    double pixel_size = std::numeric_limits<double>::quiet_NaN();
    std::string pixel_sizes_csv, format = "text", overlay_dir, model = default_model();
    double ga_weeks = std::numeric_limits<double>::quiet_NaN();
    int threads = 0;
    int redetect_every = 10;
    int workers = 0;
};

void print_text(const fetalhc::Measurement& m) {
    std::printf("%s\n", m.source.c_str());
    std::printf("  HC   %.1f mm   BPD %.1f mm   OFD %.1f mm   cephalic index %.1f\n", m.hc_mm, m.bpd_mm, m.ofd_mm, m.cephalic_index);
    const auto& e = m.ellipse_px;
    std::printf("  ellipse (px)  centre (%.1f, %.1f)  a %.1f  b %.1f  angle %.3f rad   pixel size %.4f mm\n", e.cx, e.cy, e.a, e.b,
                e.angle, m.pixel_size_mm);
    auto ga = [](const char* name, const fetalhc::GaEstimate& g) {
        if (g.in_range) std::printf("  GA %-13s %s (%.1f weeks)\n", name, fetalhc::format_weeks(g.weeks).c_str(), g.weeks);
        else std::printf("  GA %-13s n/a: %s\n", name, g.note.c_str());
    };
    ga("Hadlock", m.ga_hadlock);
    ga("INTERGROWTH", m.ga_intergrowth);
    if (m.centile) {
        const auto& c = *m.centile;
        if (c.in_range)
            std::printf("  HC for GA %.1f w: centile %.1f (z %.2f; median %.1f mm)%s\n", *m.ga_weeks_given, c.centile, c.z,
                        c.median_mm, c.below_3rd ? "  BELOW 3rd" : c.above_97th ? "  ABOVE 97th" : "");
        else std::printf("  centile n/a: %s\n", c.note.c_str());
    }
    std::printf("  quality %s%s%s\n", m.quality.c_str(), m.reasons.empty() ? "" : ": ", join(m.reasons, "; ").c_str());
    std::printf("  time %.1f ms (decode %.1f, network %.1f, post %.1f, fit %.1f)\n", m.timings.total_ms, m.timings.decode_ms,
                m.timings.network_ms, m.timings.postprocess_ms, m.timings.fit_ms);
}

std::string csv_row(const std::string& file, const fetalhc::Measurement& m) {
    const auto& e = m.ellipse_px;
    std::string cent, z;
    if (m.centile && m.centile->in_range) cent = num(m.centile->centile, 1), z = num(m.centile->z, 3);
    const std::vector<std::string> cols{csv_quote(file), num(m.hc_mm, 2), num(m.bpd_mm, 2), num(m.ofd_mm, 2),
                                        num(m.cephalic_index, 1), num(e.cx, 3), num(e.cy, 3), num(e.a, 3), num(e.b, 3),
                                        num(e.angle, 6), num(m.pixel_size_mm, 6),
                                        m.ga_hadlock.in_range ? num(m.ga_hadlock.weeks, 2) : "",
                                        m.ga_intergrowth.in_range ? num(m.ga_intergrowth.weeks, 2) : "",
                                        m.ga_weeks_given ? num(*m.ga_weeks_given, 2) : "", cent, z, m.quality,
                                        csv_quote(join(m.reasons, "; ")), ""};
    return join(cols, ",");
}

// One video: per-frame results as they come, then the summary. Returns false when it failed.
bool run_video(const fetalhc::Measurer& measurer, const std::string& path, const fetalhc::VideoOptions& vo,
               const std::string& format, json& all) {
    if (format == "hc18") {
        error("'" + path + "': --format hc18 takes still images only; use --format csv or json for videos");
        return false;
    }
    json frames = json::array();
    auto s = fetalhc::measure_video(measurer, path, vo, [&](const fetalhc::VideoFrame& f) {
        const std::string label = path + "#" + std::to_string(f.index);
        if (format == "json") {
            json j = f.result ? json::parse(fetalhc::to_json(*f.result)) : json{{"error", f.result.error()}};
            j["frame"] = f.index;
            j["time_s"] = f.time_s;
            j["tracked"] = f.tracked;
            frames.push_back(j);
        } else if (format == "csv") {
            if (f.result) std::printf("%s\n", csv_row(label, *f.result).c_str());
            else std::printf("%s,,,,,,,,,,,,,,,,,,%s\n", csv_quote(label).c_str(), csv_quote(f.result.error()).c_str());
        } else if (f.result) {
            std::printf("%s  t %.2f s  HC %.1f mm  %s%s\n", label.c_str(), f.time_s, f.result->hc_mm, f.result->quality.c_str(),
                        f.tracked ? "  (tracked)" : "");
        } else {
            std::printf("%s  t %.2f s  no measurement: %s\n", label.c_str(), f.time_s, f.result.error().c_str());
        }
        std::fflush(stdout);
    });
    if (!s) {
        error(s.error());
        if (format == "json") all.push_back({{"source", path}, {"error", s.error()}});
        return false;
    }
    json summary{{"frames", s->frames}, {"measured", s->measured}, {"ok_frames", s->ok}, {"seconds", s->seconds},
                 {"frames_per_second", s->frames_per_second}, {"has_estimate", s->has_estimate}};
    if (s->has_estimate)
        summary.update({{"hc_median_mm", s->hc_median_mm}, {"bpd_median_mm", s->bpd_median_mm},
                        {"ofd_median_mm", s->ofd_median_mm}, {"hc_iqr_mm", s->hc_iqr_mm}, {"estimate_frame", s->estimate_frame},
                        {"estimate", json::parse(fetalhc::to_json(s->estimate))}});
    if (format == "json") {
        all.push_back({{"source", path}, {"frames", frames}, {"summary", summary}});
    } else if (format == "csv") {
        const std::string label = path + "#summary";
        if (s->has_estimate) {
            fetalhc::Measurement m = s->estimate;
            m.hc_mm = s->hc_median_mm;
            m.bpd_mm = s->bpd_median_mm;
            m.ofd_mm = s->ofd_median_mm;
            m.reasons = {"median of " + std::to_string(s->ok) + " ok frames of " + std::to_string(s->frames) +
                         "; ellipse of frame " + std::to_string(s->estimate_frame)};
            std::printf("%s\n", csv_row(label, m).c_str());
        } else {
            std::printf("%s,,,,,,,,,,,,,,,,review,,no frame judged ok\n", csv_quote(label).c_str());
        }
    } else {
        std::printf("%s: %d frames, %d measured, %d ok, %.1f frames/s\n", path.c_str(), s->frames, s->measured, s->ok,
                    s->frames_per_second);
        if (s->has_estimate)
            std::printf("  summary over ok frames: HC %.1f mm (median; IQR %.1f mm)  BPD %.1f mm  OFD %.1f mm  (closest frame %d)\n",
                        s->hc_median_mm, s->hc_iqr_mm, s->bpd_median_mm, s->ofd_median_mm, s->estimate_frame);
        else
            std::printf("  no frame judged ok: no summary estimate; review the video\n");
    }
    std::fflush(stdout);
    if (!s->has_estimate) error("'" + path + "': no frame gave an ok measurement");
    return s->has_estimate;
}

int run_measure(const MeasureArgs& a) {
    const bool have_size = a.pixel_size_given || !a.pixel_sizes_csv.empty();
    if (a.pixel_size_given && !a.pixel_sizes_csv.empty()) {
        error("give either --pixel-size or --pixel-sizes, not both");
        return kExitUsage;
    }
    if (!have_size) {
        error("the pixel size is missing: pass --pixel-size MM (mm per pixel) or --pixel-sizes CSV (filename,pixel size(mm))");
        return kExitUsage;
    }
    if (a.pixel_size_given) {
        if (auto e = fetalhc::check_pixel_size(a.pixel_size, "--pixel-size"); !e.empty()) {
            error(e);
            return kExitUsage;
        }
    }
    if (!std::isnan(a.ga_weeks) && !(a.ga_weeks > 0 && a.ga_weeks < 45)) {
        error("--ga-weeks must be a gestational age in weeks (e.g. 20.5), got " + std::to_string(a.ga_weeks));
        return kExitUsage;
    }
    std::map<std::string, double> sizes;
    if (!a.pixel_sizes_csv.empty()) {
        auto s = fetalhc::read_pixel_sizes(a.pixel_sizes_csv);
        if (!s) {
            error(s.error());
            return kExitUsage;
        }
        sizes = *s;
    }
    if (!a.overlay_dir.empty()) {
        std::error_code ec;
        fs::create_directories(a.overlay_dir, ec);
        if (ec || !fs::is_directory(a.overlay_dir)) {
            error("cannot create overlay folder '" + a.overlay_dir + "': " + ec.message());
            return kExitUsage;
        }
    }
    auto seg = fetalhc::Segmenter::load(a.model, {a.threads});
    if (!seg) {
        error(seg.error());
        return kExitUsage;
    }
    fetalhc::Measurer measurer(*seg);

    const auto items = fetalhc::expand_inputs(a.paths);
    int failed = 0;
    json all = json::array();
    if (a.format == "hc18") std::printf("filename,center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm,angle_rad\n");
    if (a.format == "csv")
        std::printf("file,hc_mm,bpd_mm,ofd_mm,cephalic_index,center_x_px,center_y_px,semi_axis_a_px,semi_axis_b_px,angle_rad,"
                    "pixel_size_mm,ga_hadlock_weeks,ga_intergrowth_weeks,ga_given_weeks,centile,z,quality,reasons,error\n");
    for (const auto& item : items) {
        const std::string name = fs::path(item.path).filename().string();
        if (item.error.empty() && fetalhc::has_video_extension(item.path)) {
            fetalhc::VideoOptions vo;
            vo.measure.pixel_size_mm = a.pixel_size;
            if (!sizes.empty()) {
                auto it = sizes.find(name);
                vo.measure.pixel_size_mm = it == sizes.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
            }
            if (!std::isnan(a.ga_weeks)) vo.measure.ga_weeks = a.ga_weeks;
            vo.redetect_every = a.redetect_every;
            vo.workers = a.workers;
            if (!run_video(measurer, item.path, vo, a.format, all)) ++failed;
            continue;
        }
        fetalhc::Expected<fetalhc::Measurement> r = fetalhc::make_error(item.error);
        cv::Mat gray;
        if (item.error.empty()) {
            fetalhc::MeasureOptions o;
            if (!sizes.empty()) {
                auto it = sizes.find(name);
                o.pixel_size_mm = it == sizes.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
                if (it == sizes.end())
                    r = fetalhc::make_error("'" + name + "' has no row in '" + a.pixel_sizes_csv +
                                            "'; add `" + name + ",<mm per pixel>` or use --pixel-size");
            } else {
                o.pixel_size_mm = a.pixel_size;
            }
            if (!std::isnan(a.ga_weeks)) o.ga_weeks = a.ga_weeks;
            if (std::isfinite(o.pixel_size_mm) || sizes.empty()) {
                const auto t0 = std::chrono::steady_clock::now();
                auto img = fetalhc::load_grayscale(item.path);
                const double decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
                if (!img) {
                    r = fetalhc::make_error(img.error());
                } else {
                    gray = *img;
                    r = measurer.measure(gray, o, item.path);
                    if (r) {
                        r->timings.decode_ms = decode_ms;
                        r->timings.total_ms += decode_ms;
                    }
                }
            }
        }
        if (!r) {
            ++failed;
            error(r.error());
        }
        if (r && !a.overlay_dir.empty()) {
            const fs::path out = fs::path(a.overlay_dir) / (fs::path(item.path).stem().string() + "_overlay.png");
            if (!cv::imwrite(out.string(), fetalhc::draw_overlay(gray, *r))) error("cannot write overlay '" + out.string() + "'");
        }
        if (a.format == "hc18") {
            if (r) {
                const auto& e = r->ellipse_mm;
                std::printf("%s,%s,%s,%s,%s,%s\n", name.c_str(), num(e.cx, 6).c_str(), num(e.cy, 6).c_str(), num(e.a, 6).c_str(),
                            num(e.b, 6).c_str(), num(e.angle, 6).c_str());
            } else {
                std::printf("%s,,,,,\n", name.c_str());
            }
        } else if (a.format == "csv") {
            if (r) {
                std::printf("%s\n", csv_row(item.path, *r).c_str());
            } else {
                std::printf("%s,,,,,,,,,,,,,,,,,,%s\n", csv_quote(item.path).c_str(), csv_quote(r.error()).c_str());
            }
        } else if (a.format == "json") {
            all.push_back(r ? json::parse(fetalhc::to_json(*r)) : json{{"source", item.path}, {"error", r.error()}});
        } else if (r) {
            print_text(*r);
        }
        std::fflush(stdout);
    }
    if (a.format == "json") std::printf("%s\n", all.dump(2).c_str());
    return failed ? kExitSomeFailed : kExitOk;
}

// ---- evaluate -------------------------------------------------------------------------------------

struct EvalArgs {
    std::string data, model = default_model(), split = "all";
    bool json_out = false;
    int worst = 10, threads = 0;
    std::string per_image_csv;
};

int run_evaluate(const EvalArgs& a) {
    auto recs = fetalhc::read_hc18_training(a.data);
    if (!recs) {
        error(recs.error());
        return kExitUsage;
    }
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
    }
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
            f << csv_quote(r.file) << ',' << num(r.ref_hc, 2) << ',';
            if (!r.m) {
                f << ",,,," << r.trimester << ",,,,,,," << csv_quote(r.error) << '\n';
                continue;
            }
            const auto& m = *r.m;
            f << num(r.hc, 2) << ',' << num(r.diff, 2) << ',' << num(r.dice, 4) << ',' << num(r.hd_mm, 2) << ','
              << r.trimester << ',' << r.quality << ',' << num(m.presence, 3) << ',' << num(m.certainty, 3) << ','
              << num(m.fit_rms_px, 3) << ',' << num(double(m.inliers) / std::max(1, m.boundary_points), 3) << ','
              << num(double(m.cut_points) / std::max(1, m.cut_points + m.boundary_points), 3) << ','
              << csv_quote(join(m.reasons, "; "))
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

int run_calibrate(const std::string& data, const std::string& in, const std::string& out) {
    auto seg = fetalhc::Segmenter::load(in, {});
    if (!seg) return error(seg.error()), kExitUsage;
    json meta = json::parse(seg->info().metadata.empty() ? "{}" : seg->info().metadata, nullptr, false);
    if (!meta.is_object() || !meta.contains("split_salt")) return error("model '" + in + "' records no training split"), kExitUsage;
    auto recs = fetalhc::read_hc18_training(data);
    if (!recs) return error(recs.error()), kExitUsage;
    auto split = fetalhc::grouped_split(*recs, meta["validation_fraction"].get<double>(), meta["split_salt"].get<std::string>());
    // Two factors, both from the training split: masks -> reference ellipses, then the model's own
    // measurements (made with the first factor) -> reference HC.
    const double f = fetalhc::mask_to_reference_scale(split.train);
    if (!std::isfinite(f)) return error("no training masks found under '" + data + "'"), kExitSomeFailed;
    fetalhc::Measurer measurer(*seg);
    const double stored = seg->info().axis_scale;
    int measured = 0;
    const double g = fetalhc::measured_to_reference_scale(split.train, [&](const fetalhc::Hc18Record& r) -> std::optional<double> {
        fetalhc::MeasureOptions o;
        o.pixel_size_mm = r.pixel_size_mm;
        auto m = measurer.measure_file(r.image_path, o);
        if (!m) return std::nullopt;
        ++measured;
        return m->hc_mm * f / stored;  // HC is proportional to the axis scale
    });
    if (!std::isfinite(g)) return error("model '" + in + "' measured none of the training images under '" + data + "'"), kExitSomeFailed;
    auto r = fetalhc::Segmenter::rewrite_metadata(
        in, out, json{{"axis_scale", f * g}, {"axis_scale_masks", f}, {"axis_scale_measured", g}, {"axis_scale_images", measured}}.dump());
    if (!r) return error(r.error()), kExitSomeFailed;
    std::fprintf(stderr, "axis scale %.5f = %.5f (masks -> reference ellipses, %zu training images) x %.5f (this model's HC -> reference HC, median of %d); wrote %s\n",
                 f * g, f, split.train.size(), g, measured, out.c_str());
    return kExitOk;
}

// ---- serve ----------------------------------------------------------------------------------------

int run_serve(fetalhc::ServerOptions o, double max_upload_mb) {
    if (!(max_upload_mb > 0 && max_upload_mb <= 1024)) {
        error("--max-upload-mb must be in (0, 1024]");
        return kExitUsage;
    }
    o.max_upload_bytes = size_t(max_upload_mb * (1 << 20));
    // Ctrl-C / SIGTERM are taken by one waiting thread (blocked everywhere else, so the server's
    // threads inherit the mask): it stops the server, which finishes the requests in flight.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    auto server = fetalhc::Server::create(o);
    if (!server) {
        error(server.error());
        return kExitUsage;
    }
    fetalhc::Server* s = server->get();
    std::thread([s, stop_signals] {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        s->stop();
    }).detach();
    std::printf("fetalhc: open %s  (the model loads in the background; GET /health says when ready)\n", s->url().c_str());
    std::fflush(stdout);
    s->run();
    return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"fetalhc - fetal head circumference (HC) from 2D ultrasound images"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("fetalhc ") + FETALHC_VERSION_STRING);

    MeasureArgs ma;
    auto* meas = app.add_subcommand("measure", "measure HC, BPD, OFD, GA (and centile) on images or folders");
    meas->add_option("paths", ma.paths, "image files (PNG, JPEG, BMP, TIFF), folders of images, or videos (MP4, AVI, ...)")->required();
    meas->add_option("--pixel-size", ma.pixel_size, "pixel size in mm per pixel, for every image");
    meas->add_option("--pixel-sizes", ma.pixel_sizes_csv, "CSV `filename,pixel size(mm)` (the HC18 layout)");
    meas->add_option("--ga-weeks", ma.ga_weeks, "known gestational age in weeks, for the INTERGROWTH-21st centile");
    meas->add_option("--format", ma.format, "output format")->check(CLI::IsMember({"text", "json", "csv", "hc18"}))->capture_default_str();
    meas->add_option("--overlay", ma.overlay_dir, "write <image>_overlay.png with the ellipse and numbers into this folder");
    meas->add_option("--threads", ma.threads, "CPU threads for the network (0 = all cores)")->capture_default_str();
    meas->add_option("--model", ma.model, "model file (or set FETALHC_MODEL)")->capture_default_str();
    meas->add_option("--redetect-every", ma.redetect_every,
                     "videos: whole-image pass at least every N frames, tracking between (1 = every frame)")
        ->check(CLI::Range(1, 100000))->capture_default_str();
    meas->add_option("--workers", ma.workers, "videos: frames measured at once, each on one core (0 = one per core)")
        ->check(CLI::Range(0, 256))->capture_default_str();

    EvalArgs ea;
    auto* ev = app.add_subcommand("evaluate", "HC18 metrics (HC difference, Dice, Hausdorff, mask AP/AR) on a labelled folder");
    ev->add_option("--data", ea.data, "HC18-layout folder (training_set/ + training_set_pixel_size_and_HC.csv)")->required();
    ev->add_option("--split", ea.split, "which images: all, or the model's grouped validation/train split")
        ->check(CLI::IsMember({"all", "validation", "train"}))->capture_default_str();
    ev->add_flag("--json", ea.json_out, "print JSON instead of a table");
    ev->add_option("--per-image", ea.per_image_csv, "also write one CSV row per image (errors, quality signals, reasons)");
    ev->add_option("--worst", ea.worst, "how many worst cases to list")->capture_default_str();
    ev->add_option("--threads", ea.threads, "CPU threads (0 = all cores)")->capture_default_str();
    ev->add_option("--model", ea.model, "model file")->capture_default_str();

    std::string coco_data, coco_out;
    auto* ds = app.add_subcommand("dataset", "data set tools");
    ds->require_subcommand(1);
    auto* coco = ds->add_subcommand("coco", "export HC18 masks as COCO instance-segmentation annotations");
    coco->add_option("--data", coco_data, "HC18-layout folder")->required();
    coco->add_option("--out", coco_out, "annotations JSON to write")->required();

    std::string cal_data, cal_in = default_model(), cal_out;
    auto* mdl = app.add_subcommand("model", "model file tools");
    mdl->require_subcommand(1);
    auto* cal = mdl->add_subcommand("calibrate",
                                    "store the axis scale that maps this model's HC onto the reference, measured on its training split");
    cal->add_option("--data", cal_data, "HC18-layout folder the model was trained on")->required();
    cal->add_option("--model", cal_in, "model to read")->capture_default_str();
    cal->add_option("--out", cal_out, "model file to write (may equal --model)")->required();

    std::vector<std::string> avg_in;
    std::string avg_out;
    auto* avg = mdl->add_subcommand("average", "average the weights of models from one training run (same network)");
    avg->add_option("models", avg_in, "model files to average")->required();
    avg->add_option("--out", avg_out, "model file to write")->required();

    std::string comb_coarse, comb_two, comb_out;
    auto* comb = mdl->add_subcommand("combine", "two-pass model from a one-pass model's network and another model's second pass");
    comb->add_option("--coarse", comb_coarse, "one-pass model whose network becomes the first pass")->required();
    comb->add_option("--refine", comb_two, "two-pass model whose second pass (and metadata) is kept")->required();
    comb->add_option("--out", comb_out, "model file to write")->required();

    std::string tdata, tconfig, tout;
    bool resume = false;
    long long max_steps = -1;
    int limit = 0;
    auto* tr = app.add_subcommand("train", "train the segmentation network from scratch (LibTorch, CPU)");
    tr->add_option("--data", tdata, "HC18-layout data folder")->required();
    tr->add_option("--config", tconfig, "training config JSON (see configs/default.json)")->required();
    tr->add_option("--out", tout, "run folder: checkpoints, split.json, report.json, model.pt")->required();
    tr->add_flag("--resume", resume, "resume from the run folder's last checkpoint");
    tr->add_option("--max-steps", max_steps, "stop after this many optimizer steps (smoke tests)");
    tr->add_option("--limit", limit, "use at most N images on each side of the split (smoke tests)");

    fetalhc::ServerOptions so;
    so.model_path = default_model();
    double max_upload_mb = 20;
    auto* srv = app.add_subcommand("serve", "HTTP service: JSON API (see /openapi.json), web page, per-pregnancy history");
    srv->add_option("--host", so.host, "address to listen on; off loopback every POST needs the bearer token")->capture_default_str();
    srv->add_option("--port", so.port, "TCP port (0 = any free port)")->capture_default_str();
    srv->add_option("--db", so.db_path, "SQLite database (created if missing); images go to <db>.images/")->capture_default_str();
    srv->add_option("--threads", so.threads, "requests running the network at once (0 = CPU cores)")->capture_default_str();
    srv->add_option("--token-file", so.token_file, "file whose first line is the bearer token (required off loopback)");
    srv->add_option("--max-upload-mb", max_upload_mb, "request body cap in MB; larger uploads get 413")->capture_default_str();
    srv->add_option("--model", so.model_path, "model file (or set FETALHC_MODEL)")->capture_default_str();

    fetalhc_cli::BenchArgs ba;
    ba.model = default_model();
    auto* bn = app.add_subcommand("bench", "median ms per image (file on disk -> HC) per stage, images/s and video frames/s here");
    bn->add_option("image", ba.image, "image to time (PNG, JPEG, ...); default: a synthetic 800x540 scan");
    bn->add_option("--threads", ba.threads, "CPU threads for the network (0 = all cores)")->capture_default_str();
    bn->add_option("--runs", ba.runs, "timed end-to-end runs, after 3 warm-up runs")->capture_default_str();
    bn->add_option("--video-frames", ba.video_frames, "frames of the synthetic cine loop (0 = skip)")->capture_default_str();
    bn->add_option("--workers", ba.workers, "video: frames measured at once (0 = one per core)")->capture_default_str();
    bn->add_option("--model", ba.model, "model file (or set FETALHC_MODEL)")->capture_default_str();
    bn->add_flag("--json", ba.json, "print JSON");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? kExitOk : kExitUsage;
    }

    ma.pixel_size_given = meas->count("--pixel-size") > 0;
    if (meas->parsed()) return run_measure(ma);
    if (srv->parsed()) return run_serve(so, max_upload_mb);
    if (bn->parsed()) return fetalhc_cli::run_bench(ba);
    if (cal->parsed()) return run_calibrate(cal_data, cal_in, cal_out);
    if (avg->parsed()) {
        auto r = fetalhc::Segmenter::average_models(avg_in, avg_out);
        if (!r) return error(r.error()), kExitSomeFailed;
        std::fprintf(stderr, "averaged %zu models into %s\n", avg_in.size(), avg_out.c_str());
        return kExitOk;
    }
    if (comb->parsed()) {
        auto r = fetalhc::Segmenter::combine_models(comb_coarse, comb_two, comb_out);
        if (!r) return error(r.error()), kExitSomeFailed;
        std::fprintf(stderr, "wrote %s\n", comb_out.c_str());
        return kExitOk;
    }
    if (ev->parsed()) return run_evaluate(ea);
    if (coco->parsed()) {
        auto recs = fetalhc::read_hc18_training(coco_data);
        if (!recs) return error(recs.error()), kExitUsage;
        auto j = fetalhc::coco_annotations_json(*recs);
        if (!j) return error(j.error()), kExitSomeFailed;
        std::ofstream o(coco_out);
        if (!(o << *j)) return error("cannot write '" + coco_out + "'"), kExitSomeFailed;
        std::fprintf(stderr, "wrote %zu images to %s\n", recs->size(), coco_out.c_str());
        return kExitOk;
    }
    if (tr->parsed()) {
        auto cfg = fetalhc::load_train_config(tconfig);
        if (!cfg) return error(cfg.error()), kExitUsage;
        fetalhc::TrainOptions o;
        o.data_dir = tdata;
        o.out_dir = tout;
        o.resume = resume;
        o.max_steps = max_steps;
        o.limit = limit;
        auto r = fetalhc::train(*cfg, o);
        if (!r) return error(r.error()), kExitSomeFailed;
        std::fprintf(stderr, "model: %s (best validation HC MAD %.2f mm, %d epochs, %.0f s)\n", r->model_path.c_str(),
                     r->best_hc_mad_mm, r->epochs_done, r->wall_seconds);
        return kExitOk;
    }
    return kExitUsage;
}
