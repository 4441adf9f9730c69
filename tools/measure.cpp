// `fetalhc measure`: HC, BPD, OFD, GA (and centile) of images, folders and videos, as text, JSON,
// CSV or the HC18 submission CSV on stdout.
#include "cli.h"
#include "progress.h"
#include "shard.h"

#include "fetalhc/csv.h"
#include "fetalhc/dicom.h"
#include "fetalhc/fetalhc.h"
#include "fetalhc/report.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <deque>
#include <functional>
#include <future>
#include <thread>
#include <map>
#include <optional>

namespace fs = std::filesystem;
using nlohmann::json;

namespace fetalhc_cli {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// DICOM files are read whole before decoding (frames are then decoded one at a time).
constexpr size_t kMaxDicomFileBytes = size_t(4) << 30;
// A pixel size given, as the calibration's source in JSON: the option that gave it.
const std::string kGivenSource = "--pixel-size";

struct MeasureArgs {
    std::vector<std::string> paths;
    bool pixel_size_given = false;
    double pixel_size = kNaN;
    std::string pixel_sizes_csv, format = "text", overlay_dir, model, sr_dir, key_image_dir, ensemble;
    double ga_weeks = kNaN;
    int threads = 0;
    bool mirror = false, single_look = false, int8 = false;
    std::string head_check;  // --head-check: "" (beside the model), "none" or a file
    int redetect_every = 10;
    int workers = 0;
    bool quiet = false;
    std::string shard;  // "I/N" (--shard), empty for every input
};

// "[0.01, 2] mm": the pixel sizes check_pixel_size accepts, for the help.
std::string pixel_size_range() {
    char buf[64];
    std::snprintf(buf, sizeof buf, "[%g, %g] mm", fetalhc::kMinPixelSizeMm, fetalhc::kMaxPixelSizeMm);
    return buf;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
    return s;
}

// "  (GA Hadlock 20w1d to 20w5d)", or "" when either end is outside Hadlock's range.
std::string interval_ga_text(const fetalhc::HcInterval& iv) {
    if (!iv.ga_hadlock_low_weeks || !iv.ga_hadlock_high_weeks) return "";
    return "  (GA Hadlock " + fetalhc::format_weeks(*iv.ga_hadlock_low_weeks) + " to " +
           fetalhc::format_weeks(*iv.ga_hadlock_high_weeks) + ")";
}

void print_text(const fetalhc::Measurement& m) {
    std::printf("%s\n", m.source.c_str());
    std::printf("  HC   %.1f mm   BPD %.1f mm   OFD %.1f mm   cephalic index %.1f\n", m.hc_mm, m.bpd_mm, m.ofd_mm, m.cephalic_index);
    if (m.interval)
        std::printf("  HC %.0f%% interval %.1f to %.1f mm%s\n", 100 * m.interval->coverage, m.interval->low_mm,
                    m.interval->high_mm, interval_ga_text(*m.interval).c_str());
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

// Every result in the chosen format on stdout, in input order (JSON is printed whole at the end).
// CSV cells go through fetalhc::CsvWriter, so names and messages are quoted and formula-neutralised.
class Output {
public:
    Output(std::string format, std::string sr_dir, std::string key_image_dir)
        : format_(std::move(format)), sr_dir_(std::move(sr_dir)), key_image_dir_(std::move(key_image_dir)), csv_(std::cout) {}

    // The DICOM header of the input being measured (nullptr for other images): the SR and FHIR
    // output copy its identity and reference it.
    void set_source(const fetalhc::DicomHeader* h) { source_ = h; }
    // The image the next result was measured on (8-bit gray; nullptr: none), and its 1-based frame
    // in a multi-frame source: the key image (--key-image-dir) draws on it.
    void set_image(const cv::Mat* gray, std::optional<int> frame = std::nullopt) {
        image_ = gray;
        image_frame_ = frame;
    }
    bool record_failed() const { return record_failed_; }

    void begin() const {
        if (format_ == "hc18") std::printf("filename,center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm,angle_rad\n");
        if (format_ == "csv")
            std::printf("file,hc_mm,bpd_mm,ofd_mm,cephalic_index,center_x_px,center_y_px,semi_axis_a_px,semi_axis_b_px,"
                        "angle_rad,pixel_size_mm,ga_hadlock_weeks,ga_intergrowth_weeks,ga_given_weeks,centile,z,hc_low_mm,"
                        "hc_high_mm,quality,reasons,error\n");
    }

    // `extra`: keys added to the JSON object (the DICOM calibration).
    void image(const std::string& path, const fetalhc::Expected<fetalhc::Measurement>& r, const json& extra = nullptr) {
        if (r) record(*r, {});
        if (format_ == "hc18") {
            csv_.text(fs::path(path).filename().string());
            if (r) {
                const auto& e = r->ellipse_mm;
                csv_.number(e.cx, 6).number(e.cy, 6).number(e.a, 6).number(e.b, 6).number(e.angle, 6);
            } else {
                csv_.empty(5);
            }
            csv_.end_row();
        } else if (format_ == "csv") {
            if (r) csv_measurement(path, *r);
            else csv_error(path, r.error());
        } else if (format_ == "json") {
            json j = r ? fetalhc::to_json(*r) : json{{"source", path}, {"error", r.error()}};
            if (extra.is_object()) j.update(extra);
            all_.push_back(j);
        } else if (r && format_ == "text") {
            print_text(*r);
        }
        flush();
    }

    void frame(const std::string& path, const fetalhc::VideoFrame& f) {
        if (format_ == "fhir") return;  // the summary is the result of a multi-frame input
        const std::string label = path + "#" + std::to_string(f.index);
        if (format_ == "json") {
            frames_.push_back(fetalhc::to_json(f));
        } else if (format_ == "csv") {
            if (f.result) csv_measurement(label, *f.result);
            else csv_error(label, f.result.error());
        } else if (f.result) {
            std::printf("%s  t %.2f s  HC %.1f mm  %s%s\n", label.c_str(), f.time_s, f.result->hc_mm,
                        f.result->quality.c_str(), f.tracked ? "  (tracked)" : "");
        } else {
            std::printf("%s  t %.2f s  no measurement: %s\n", label.c_str(), f.time_s, f.result.error().c_str());
        }
        flush();
    }

    // A video that failed: its JSON entry is the error (none when `message` is empty), its frames are dropped.
    void video_failed(const std::string& path, const std::string& message) {
        if (format_ == "json" && !message.empty()) all_.push_back({{"source", path}, {"error", message}});
        frames_ = json::array();
    }

    void video_summary(const std::string& path, const fetalhc::VideoSummary& s);
    void summary(const std::string& path, const fetalhc::VideoSummary& s);
    // A multi-frame DICOM file, its frames already given to frame(): the summary, and in JSON the
    // file's entry as HTTP gives it (fetalhc::to_json of the result, frames included).
    void dicom_cine(const std::string& path, const fetalhc::DicomResult& r);

    void end() const {
        if (format_ == "json") std::printf("%s\n", all_.dump(2).c_str());
        if (format_ == "fhir") std::printf("%s\n", fetalhc::fhir_bundle(fhir_).dump(2).c_str());
    }

private:
    // One result back to the record: an SR file (--sr-dir), a key image (--key-image-dir) and an
    // entry of the FHIR bundle.
    void record(const fetalhc::Measurement& m, const fetalhc::SrOptions& sr) {
        if (!sr_dir_.empty()) {
            const std::string file = (fs::path(sr_dir_) / fetalhc::sr_file_name(m.source)).string();
            if (auto w = fetalhc::write_biometry_sr_file(m, source_, file, sr); !w) {
                error(cli_message(w.error_value()));
                record_failed_ = true;
            }
        }
        if (!key_image_dir_.empty() && !image_) {
            note("--key-image-dir: no key image for '" + m.source + "' (a video file's frames are not kept; DICOM cines and "
                 "still images get one)");
        } else if (!key_image_dir_.empty()) {
            const std::string file = (fs::path(key_image_dir_) / fetalhc::key_image_file_name(m.source)).string();
            fetalhc::KeyImageOptions ko;
            ko.referenced_frame = image_frame_;
            if (auto w = fetalhc::write_key_image_file(m, *image_, source_, file, ko); !w) {
                error(cli_message(w.error_value()));
                record_failed_ = true;
            }
        }
        if (format_ == "fhir") fhir_.push_back({m, source_ ? std::optional<fetalhc::DicomHeader>(*source_) : std::nullopt});
    }

    void flush() const {
        std::cout.flush();
        std::fflush(stdout);
    }

    void csv_measurement(const std::string& label, const fetalhc::Measurement& m) {
        const auto& e = m.ellipse_px;
        const bool centile = m.centile && m.centile->in_range;
        csv_.text(label).number(m.hc_mm, 2).number(m.bpd_mm, 2).number(m.ofd_mm, 2).number(m.cephalic_index, 1);
        csv_.number(e.cx, 3).number(e.cy, 3).number(e.a, 3).number(e.b, 3).number(e.angle, 6).number(m.pixel_size_mm, 6);
        csv_.number(m.ga_hadlock.in_range ? m.ga_hadlock.weeks : kNaN, 2)
            .number(m.ga_intergrowth.in_range ? m.ga_intergrowth.weeks : kNaN, 2)
            .number(m.ga_weeks_given ? *m.ga_weeks_given : kNaN, 2)
            .number(centile ? m.centile->centile : kNaN, 1)
            .number(centile ? m.centile->z : kNaN, 3);
        csv_.number(m.interval ? m.interval->low_mm : kNaN, 2).number(m.interval ? m.interval->high_mm : kNaN, 2);
        csv_.text(m.quality).text(join(m.reasons, "; ")).empty();
        csv_.end_row();
    }

    void csv_error(const std::string& label, const std::string& message) {
        csv_.text(label).empty(19).text(message);
        csv_.end_row();
    }

    std::string format_, sr_dir_, key_image_dir_;
    const fetalhc::DicomHeader* source_ = nullptr;
    const cv::Mat* image_ = nullptr;
    std::optional<int> image_frame_;
    std::vector<fetalhc::FhirInput> fhir_;
    bool record_failed_ = false;
    fetalhc::CsvWriter csv_;
    json all_ = json::array();
    json frames_ = json::array();  // JSON frames of the video being measured
};

// The summary in the chosen format (JSON: with the frames given to frame(), for videos); the
// summary's Measurement goes to the SR and FHIR records.
void Output::summary(const std::string& path, const fetalhc::VideoSummary& s) {
    if (s.has_estimate) {
        fetalhc::SrOptions sr;
        sr.include_outline = false;  // medians: no single frame's outline shows them
        record(s.estimate, sr);
    }
    if (format_ == "csv") {
        const std::string label = path + "#summary";
        if (s.has_estimate) {
            fetalhc::Measurement m = s.estimate;
            m.reasons.push_back("median of " + std::to_string(s.ok) + " ok frames of " + std::to_string(s.frames) +
                                "; ellipse of frame " + std::to_string(s.estimate_frame));
            csv_measurement(label, m);
        } else {
            csv_.text(label).empty(15).text("review").empty().text("no frame judged ok");
            csv_.end_row();
        }
    } else if (format_ == "text") {
        const fetalhc::Measurement& m = s.estimate;
        std::printf("%s: %d frames, %d measured, %d ok, %.1f frames/s\n", path.c_str(), s.frames, s.measured, s.ok,
                    s.frames_per_second);
        if (s.has_estimate) {
            std::printf("  summary over ok frames: HC %.1f mm (median; IQR %.1f mm)  BPD %.1f mm  OFD %.1f mm  (closest frame %d)\n",
                        m.hc_mm, s.hc_iqr_mm, m.bpd_mm, m.ofd_mm, s.estimate_frame);
            if (m.ga_hadlock.in_range)
                std::printf("  GA Hadlock %s (%.1f weeks) from the median HC\n", fetalhc::format_weeks(m.ga_hadlock.weeks).c_str(),
                            m.ga_hadlock.weeks);
            std::printf("  quality %s%s%s\n", m.quality.c_str(), m.reasons.empty() ? "" : ": ", join(m.reasons, "; ").c_str());
        } else {
            std::printf("  no frame judged ok: no summary estimate; review the video\n");
        }
    }
    flush();
}

void Output::video_summary(const std::string& path, const fetalhc::VideoSummary& s) {
    summary(path, s);
    if (format_ == "json") all_.push_back({{"source", path}, {"frames", frames_}, {"summary", fetalhc::to_json(s)}});
    frames_ = json::array();
}

void Output::dicom_cine(const std::string& path, const fetalhc::DicomResult& r) {
    summary(path, *r.summary);
    if (format_ == "json") all_.push_back(fetalhc::to_json(r, kGivenSource));
    frames_ = json::array();
}

// Pixel sizes come from --pixel-size or the --pixel-sizes table; NaN when the table has no row.
double pixel_size_for(const std::string& name, const MeasureArgs& a, const std::map<std::string, double>& sizes) {
    if (sizes.empty()) return a.pixel_size;
    auto it = sizes.find(name);
    return it == sizes.end() ? kNaN : it->second;
}

// Everything refused before the model is loaded. `items`: the inputs this run measures (its shard).
// Fills `sizes` from --pixel-sizes.
int check_measure_args(MeasureArgs& a, const std::vector<fetalhc::InputItem>& items, std::map<std::string, double>& sizes) {
    if (!bound_thread_count(a.threads, "--threads") || !bound_thread_count(a.workers, "--workers")) return kExitUsage;
    if (a.pixel_size_given && !a.pixel_sizes_csv.empty()) {
        error("give either --pixel-size or --pixel-sizes, not both");
        return kExitUsage;
    }
    if (!a.pixel_size_given && a.pixel_sizes_csv.empty()) {
        // DICOM files carry their own calibration; every other input needs one given.
        for (const auto& item : items)
            if (!item.error.empty() || !fetalhc::is_dicom_file(item.path)) {
                error("the pixel size is missing: pass --pixel-size MM (mm per pixel) or --pixel-sizes CSV (filename,pixel "
                      "size(mm)); only DICOM files carry their own");
                return kExitUsage;
            }
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
    if (!a.pixel_sizes_csv.empty()) {
        auto s = fetalhc::read_pixel_sizes(a.pixel_sizes_csv);
        if (!s) return fail(s.error_value());  // a usage error (InvalidArgument)
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
    return kExitOk;
}

// A video: per-frame results as they come, then the summary. Returns false when it failed or no
// frame was judged ok.
bool measure_one_video(const fetalhc::Measurer& measurer, const std::string& path, const MeasureArgs& a,
                       const std::map<std::string, double>& sizes, Output& out) {
    if (a.format == "hc18") {
        error("'" + path + "': --format hc18 takes still images only; use --format csv or json for videos");
        return false;
    }
    fetalhc::VideoOptions vo;
    vo.measure.pixel_size_mm = pixel_size_for(fs::path(path).filename().string(), a, sizes);
    if (!std::isnan(a.ga_weeks)) vo.measure.ga_weeks = a.ga_weeks;
    vo.redetect_every = a.redetect_every;
    vo.workers = a.workers;
    fetalhc::NotAHeadFrames refused;  // for the reason when no frame is ok
    auto s = fetalhc::measure_video(measurer, path, vo, [&](const fetalhc::VideoFrame& f) {
        out.frame(path, f);
        refused.add(f);
    });
    if (!s) {
        error(cli_message(s.error_value()));
        out.video_failed(path, s.error());
        return false;
    }
    out.video_summary(path, *s);
    if (auto none = fetalhc::summary_without_estimate(*s, refused, path)) error(none->message);
    return s->has_estimate;
}

// A DICOM file through fetalhc::measure_dicom: calibrated from the file (or the pixel size given,
// with a note when they disagree), one frame as an image, several as a video whose frames come as
// they are measured. Returns false when it failed (or no frame of a cine was judged ok).
bool measure_one_dicom(const fetalhc::Measurer& measurer, const std::string& path, const MeasureArgs& a,
                       const std::map<std::string, double>& sizes, Output& out) {
    auto fail = [&](fetalhc::Error e) {
        e.message = cli_message(e);
        error(e.message);
        out.video_failed(path, "");  // frames of a cine measured before the failure are dropped
        out.image(path, std::move(e));
        return false;
    };
    const double size = pixel_size_for(fs::path(path).filename().string(), a, sizes);
    auto bytes = fetalhc::read_file_limited(path, kMaxDicomFileBytes, "a DICOM file");
    if (!bytes) return fail(bytes.error_value());
    auto reader = fetalhc::DicomFrameReader::open(*bytes, path);
    *bytes = {};  // the reader keeps its own copy
    if (!reader) return fail(reader.error_value());
    const fetalhc::DicomHeader& h = (*reader)->header();
    if (h.frames > 1 && a.format == "hc18") {
        error("'" + path + "': --format hc18 takes still images only; use --format csv or json for videos");
        return false;
    }
    out.set_source(&h);
    struct ClearSource {
        Output& o;
        ~ClearSource() { o.set_source(nullptr); }
    } clear_source{out};
    fetalhc::DicomRequest request;
    if (!std::isnan(a.ga_weeks)) request.measure.ga_weeks = a.ga_weeks;
    if (std::isfinite(size)) request.pixel_size_mm = size;
    request.workers = a.workers;
    request.redetect_every = a.redetect_every;
    fetalhc::DicomEvents events;
    events.on_note = [](const std::string& n) { note(n); };
    events.on_frame = [&](const fetalhc::VideoFrame& f) { out.frame(path, f); };
    auto r = fetalhc::measure_dicom(measurer, **reader, request, events);
    if (!r) return fail(r.error_value());
    struct ClearImage {
        Output& o;
        ~ClearImage() { o.set_image(nullptr); }
    } clear_image{out};
    fetalhc::KeyImageFrame key_frame;  // a cine's key image shows the frame its summary's ellipse comes from
    if (r->summary) {
        if (!a.key_image_dir.empty() && r->summary->has_estimate) {
            auto f = fetalhc::key_image_frame(*r, **reader);
            if (f) key_frame = std::move(*f), out.set_image(&key_frame.image, key_frame.referenced_frame);
            else error(cli_message(f.error_value()));
        }
        out.dicom_cine(path, *r);
        // Mostly another plane (e.g. a cardiac cine): said so; otherwise no frame was judged ok.
        if (auto none = fetalhc::cine_without_estimate(*r, path)) error(none->message);
        return r->summary->has_estimate;
    }
    if (!a.overlay_dir.empty()) {
        const fs::path overlay = fs::path(a.overlay_dir) / (fs::path(path).stem().string() + "_overlay.png");
        if (!cv::imwrite(overlay.string(), fetalhc::draw_overlay(r->image, r->measurement)))
            error("cannot write overlay '" + overlay.string() + "'");
    }
    out.set_image(&r->image);
    out.image(path, r->measurement, fetalhc::to_json(*r, kGivenSource));
    return true;
}

// One still image measured (or an input that expand_inputs already refused): the result and the
// decoded image. Touches no output, so several run at once (run_measure's images in flight).
struct StillResult {
    fetalhc::Expected<fetalhc::Measurement> r = fetalhc::make_error(fetalhc::ErrorKind::Internal, "not measured");
    cv::Mat gray;
};
StillResult measure_still(const fetalhc::Measurer& measurer, const fetalhc::InputItem& item, const MeasureArgs& a,
                          const std::map<std::string, double>& sizes) {
    const std::string name = fs::path(item.path).filename().string();
    StillResult out;
    out.r = fetalhc::make_error(fetalhc::ErrorKind::ImageUnreadable, item.error);
    if (!item.error.empty()) return out;
    fetalhc::MeasureOptions o;
    o.pixel_size_mm = pixel_size_for(name, a, sizes);
    o.targeted_second_opinion = !a.single_look;
    if (!std::isnan(a.ga_weeks)) o.ga_weeks = a.ga_weeks;
    if (!std::isfinite(o.pixel_size_mm) && !sizes.empty()) {
        out.r = fetalhc::make_error(fetalhc::ErrorKind::InvalidArgument, "'" + name + "' has no row in '" + a.pixel_sizes_csv +
                                                                             "'; add `" + name + ",<mm per pixel>` or use --pixel-size");
        return out;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto img = fetalhc::load_grayscale(item.path);
    const double decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!img) {
        out.r = img.error_value();
        return out;
    }
    out.gray = std::move(*img);
    out.r = measurer.measure(out.gray, o, item.path);
    if (out.r) {
        out.r->timings.decode_ms = decode_ms;
        out.r->timings.total_ms += decode_ms;
    }
    return out;
}

// A still image's result to the output (its error to stderr, its overlay). Returns false when it failed.
bool emit_still(const fetalhc::InputItem& item, StillResult& res, const MeasureArgs& a, Output& out) {
    auto& r = res.r;
    if (!r) error(cli_message(r.error_value()));
    if (r && !a.overlay_dir.empty()) {
        const fs::path overlay = fs::path(a.overlay_dir) / (fs::path(item.path).stem().string() + "_overlay.png");
        if (!cv::imwrite(overlay.string(), fetalhc::draw_overlay(res.gray, *r)))
            error("cannot write overlay '" + overlay.string() + "'");
    }
    out.set_image(res.gray.empty() ? nullptr : &res.gray);
    out.image(item.path, r);
    out.set_image(nullptr);
    return bool(r);
}

// The inputs this run measures: folders expanded (files in name order), then --shard's part.
// Returns false after a usage error.
// An input that is not a regular file (missing, a device, a named pipe, a symlink loop) becomes an
// error entry here, before anything opens it: opening a named pipe blocks until a writer comes.
bool inputs_of(const MeasureArgs& a, std::vector<fetalhc::InputItem>& items) {
    items = fetalhc::expand_inputs_with_dicom(a.paths);
    if (!a.shard.empty()) {
        const ShardParse s = parse_shard(a.shard);
        if (!s) {
            error(s.error);
            return false;
        }
        const size_t all = items.size();
        items = take_shard(items, s.shard);
        if (items.empty())
            note("--shard " + a.shard + ": this part is empty (" + std::to_string(all) + " inputs in " +
                 std::to_string(s.shard.count) + " parts); nothing to measure");
    }
    for (auto& item : items)
        if (item.error.empty()) item.error = fetalhc::regular_file_problem(item.path, "an image, video or DICOM file");
    return true;
}

int run_measure(MeasureArgs a) {
    std::vector<fetalhc::InputItem> items;
    if (!inputs_of(a, items)) return kExitUsage;
    std::map<std::string, double> sizes;
    if (const int rc = check_measure_args(a, items, sizes); rc != kExitOk) return rc;
    // Images in flight at once (--workers, default one per core; one for a single still image,
    // whose time is then its latency), and the network's threads: by default the cores shared
    // between them (two passes of 2 threads each on 2 cores run slower than one pass at a time).
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    bool one_still = items.size() == 1 && !fetalhc::has_video_extension(items[0].path);
    if (one_still && items[0].error.empty() && fetalhc::is_dicom_file(items[0].path)) {
        auto h = fetalhc::read_dicom_header(items[0].path);  // a cine's frames are in flight
        one_still = !h || h->frames <= 1;
    }
    const int workers = one_still ? 1 : a.workers > 0 ? a.workers : hw;
    a.workers = workers;
    auto seg = load_segmenter(a.model, a.ensemble, {a.threads > 0 ? a.threads : std::max(1, hw / workers), a.mirror, a.int8});
    if (!seg) return kExitUsage;
    // An HC18 submission is a set of heads by construction, and each row needs an ellipse: the
    // check refuses nothing there unless asked for by name.
    if (a.format == "hc18" && a.head_check.empty()) a.head_check = "none";
    std::optional<fetalhc::HeadCheck> check;
    if (!load_head_check(a.head_check, a.model, check)) return kExitUsage;
    const fetalhc::Measurer measurer(*seg, std::move(check));
    Output out(a.format, a.sr_dir, a.key_image_dir);
    out.begin();
    Progress progress(int(items.size()), !a.quiet);
    int failed = 0;
    // Still images are measured `workers` at once (each network pass on one core uses a small
    // network better than one pass split over cores) and written in input order; DICOM files and
    // videos one at a time, with their frames in flight instead.
    std::deque<std::pair<const fetalhc::InputItem*, std::future<StillResult>>> in_flight;
    auto drain = [&](size_t keep) {
        while (in_flight.size() > keep) {
            StillResult res = in_flight.front().second.get();
            if (!emit_still(*in_flight.front().first, res, a, out)) ++failed;
            in_flight.pop_front();
            progress.step();
        }
    };
    for (const auto& item : items) {
        const bool dicom = item.error.empty() && fetalhc::is_dicom_file(item.path);
        const bool video = !dicom && item.error.empty() && fetalhc::has_video_extension(item.path);
        if (!dicom && !video) {
            drain(size_t(workers - 1));
            if (workers == 1) {
                StillResult res = measure_still(measurer, item, a, sizes);
                if (!emit_still(item, res, a, out)) ++failed;
                progress.step();
            } else {
                in_flight.emplace_back(&item, std::async(std::launch::async, [&measurer, &item, &a, &sizes] {
                                           return measure_still(measurer, item, a, sizes);
                                       }));
            }
            continue;
        }
        drain(0);
        const bool ok = dicom ? measure_one_dicom(measurer, item.path, a, sizes, out) : measure_one_video(measurer, item.path, a, sizes, out);
        if (!ok) ++failed;
        progress.step();
    }
    drain(0);
    progress.finish();
    out.end();
    return failed || out.record_failed() ? kExitSomeFailed : kExitOk;
}

}  // namespace

void add_measure_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<MeasureArgs>();
    auto* cmd = app.add_subcommand("measure", "measure HC, BPD, OFD, GA (and centile) on images or folders");
    cmd->footer("A pixel size is required: --pixel-size MM for every input, or --pixel-sizes CSV per file name;\n"
                "in mm per pixel, within " + pixel_size_range() + ". DICOM files carry their own (ultrasound region calibration,\n"
                "PixelSpacing): a pixel size given for them overrides it, with a note when they differ by over 1%.\n");
    cmd->add_option("paths", a->paths,
                    "image files (PNG, JPEG, BMP, TIFF, DICOM), folders of them, or videos (MP4, AVI, ..., multi-frame DICOM)")
        ->required();
    cmd->add_option("--pixel-size", a->pixel_size,
                    "pixel size in mm per pixel, for every image; required unless --pixel-sizes; " + pixel_size_range());
    cmd->add_option("--pixel-sizes", a->pixel_sizes_csv,
                    "CSV `filename,pixel size(mm)` (the HC18 layout, at most " +
                        std::to_string(fetalhc::kMaxPixelSizeCsvBytes >> 20) + " MB); required unless --pixel-size");
    cmd->add_option("--ga-weeks", a->ga_weeks, "known gestational age in weeks, for the INTERGROWTH-21st centile");
    cmd->add_option("--format", a->format, "output format (fhir: a FHIR R4 Bundle of HC/BPD/OFD Observations)")
        ->check(CLI::IsMember({"text", "json", "csv", "hc18", "fhir"}))
        ->capture_default_str();
    cmd->add_option("--sr-dir", a->sr_dir,
                    "also write a DICOM Comprehensive SR (<name>_sr.dcm, OB-GYN report TID 5000) per measured input here")
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--key-image-dir", a->key_image_dir,
                    "also write a key image (<name>_key.dcm, a DICOM Secondary Capture with the ellipse and numbers burned in) "
                    "per measured input here")
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--overlay", a->overlay_dir, "write <image>_overlay.png with the ellipse and numbers into this folder");
    cmd->add_option("--threads", a->threads,
                    "CPU threads per network pass (0 = the cores shared between --workers; at most the core count)")
        ->capture_default_str();
    add_ensemble_option(cmd, a->ensemble)->excludes(add_model_option(cmd, a->model));
    add_mirror_flag(cmd, a->mirror);
    add_int8_flag(cmd, a->int8);
    add_single_look_flag(cmd, a->single_look);
    add_head_check_option(cmd, a->head_check);
    cmd->add_option("--redetect-every", a->redetect_every,
                    "videos: whole-image pass at least every N frames, tracking between (1 = every frame)")
        ->check(CLI::Range(1, 100000))
        ->capture_default_str();
    cmd->add_option("--workers", a->workers,
                    "images (still images of a folder, a video's frames) measured at once, each on one core, output in input order "
                    "(0 = one per core; at most the core count)")
        ->capture_default_str();
    cmd->add_option("--shard", a->shard,
                    "I/N: measure only part I (0..N-1) of N, the inputs whose position in the expanded list (folders in "
                    "file name order) is I mod N; the N parts hold every input exactly once, the same on every run");
    add_quiet_flag(cmd, a->quiet);
    commands.push_back({cmd, [a, cmd] {
                            a->pixel_size_given = cmd->count("--pixel-size") > 0;
                            return run_measure(*a);
                        }});
}

}  // namespace fetalhc_cli
