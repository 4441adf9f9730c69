// The head-check trainer's data: images, outlines, the planes split, crop augmentation.
#include "train/head_check_data.h"

#include "fnv1a.h"

#include "fetalhc/csv.h"
#include "fetalhc/hc18.h"
#include "fetalhc/head_check.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "fetalhc/segmentation.h"
#include "fetalhc/segmenter.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace fetalhc::detail {
namespace {

double uniform(std::mt19937& rng, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
// A normal draw cut at +-2.5 sigma (a fit error is bounded).
double cut_normal(std::mt19937& rng, double sigma) {
    const double v = std::normal_distribution<double>(0, 1)(rng);
    return sigma * std::clamp(v, -2.5, 2.5);
}

// The outline the measurement gives on a planes image: the final ellipse with its quality, or,
// when the measurement refuses the image, the first pass's own outline (has_outline false when
// even that fails).
void measure_planes_row(const Measurer& m, CheckImage& row) {
    MeasureOptions o;
    o.pixel_size_mm = 0.15;  // no pixel size in the planes folder; the outline does not depend on it
    auto r = m.measure(row.gray, o, row.name);
    if (r) {
        row.has_outline = true;
        row.outline = r->ellipse_px;
        row.pipeline = r->quality;
        return;
    }
    row.pipeline = "refused";
    const Segmentation s = m.segmenter().segment(row.gray);
    const Boundary b = extract_boundary(s, row.gray);
    if (!b.found) return;
    const EllipseFit f = fit_ellipse(b.points);
    if (!f.ok) return;
    row.has_outline = true;
    row.outline = f.ellipse;
}

std::map<std::string, std::vector<std::string>> read_cache(const std::string& path) {
    std::map<std::string, std::vector<std::string>> out;
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
        auto cells = parse_csv_record(line);
        if (cells && cells->size() == 7) out[(*cells)[0]] = *cells;
    }
    return out;
}

}  // namespace

bool planes_patient_held_back(const std::string& patient) {
    return fnv1a("fetalhc-head-check-v1/" + patient) % 100 < 40;
}

int planes_class(const std::string& plane) {
    if (plane == "brain_tt" || plane == "brain_tc") return 0;
    for (int i = 1; i < kHeadCheckPlaneCount; ++i)
        if (plane == kHeadCheckPlanes[size_t(i)]) return i;
    return -1;
}

Expected<std::vector<CheckImage>> load_hc18_check_images(const std::string& dir, int folds, const std::string& salt,
                                                         int limit) {
    auto recs = read_hc18_training(dir);
    if (!recs) return recs.error_value();
    if (limit > 0 && int(recs->size()) > limit) recs->resize(size_t(limit));
    const std::vector<int> fold = folds >= 2 ? kfold_assignment(*recs, folds, salt)
                                             : std::vector<int>(recs->size(), -1);
    std::vector<CheckImage> out;
    for (size_t i = 0; i < recs->size(); ++i) {
        const Hc18Record& r = (*recs)[i];
        if (!r.has_ellipse)
            return make_error(ErrorKind::NotFound, "'" + dir + "' has no reference ellipse for " + r.filename +
                                                       " (training_set_ellipses.csv is needed)");
        auto img = load_grayscale(r.image_path);
        if (!img) return img.error_value();
        CheckImage c;
        c.name = r.filename;
        c.gray = *img;
        c.has_outline = true;
        c.outline = r.ellipse_px.normalized();
        c.fold = fold[i];
        out.push_back(std::move(c));
    }
    return out;
}

Expected<std::vector<CheckImage>> load_planes_check_images(const std::string& planes_dir, const std::string& seg_model,
                                                           const std::string& cache_csv, int limit, int threads) {
    std::ifstream in(planes_dir + "/labels.csv");
    if (!in) return make_error(ErrorKind::NotFound, "cannot read '" + planes_dir + "/labels.csv'");
    std::string line;
    std::getline(in, line);
    auto header = parse_csv_record(line);
    if (!header) return make_error(ErrorKind::InvalidArgument, planes_dir + "/labels.csv: " + header.error());
    std::map<std::string, size_t> col;
    for (size_t i = 0; i < header->size(); ++i) col[(*header)[i]] = i;
    for (const char* need : {"filename", "plane", "us_machine", "patient"})
        if (!col.count(need))
            return make_error(ErrorKind::InvalidArgument, planes_dir + "/labels.csv has no column '" + need + "'");
    std::vector<CheckImage> rows;
    while (std::getline(in, line) && (limit <= 0 || int(rows.size()) < limit)) {
        auto cells = parse_csv_record(line);
        if (!cells || cells->size() < header->size()) continue;
        CheckImage c;
        c.planes = true;
        c.name = (*cells)[col["filename"]];
        c.plane = (*cells)[col["plane"]];
        c.machine = (*cells)[col["us_machine"]];
        c.patient = (*cells)[col["patient"]];
        c.cls = planes_class(c.plane);
        if (c.cls < 0) return make_error(ErrorKind::InvalidArgument, planes_dir + "/labels.csv: unknown plane '" + c.plane + "'");
        c.held_back = planes_patient_held_back(c.patient);
        auto img = load_grayscale(planes_dir + "/images/" + c.name);
        if (!img) return img.error_value();
        c.gray = *img;
        rows.push_back(std::move(c));
    }
    auto cache = read_cache(cache_csv);
    std::optional<Measurer> measurer;
    int measured = 0;
    for (CheckImage& c : rows) {
        auto hit = cache.find(c.name);
        if (hit != cache.end()) {
            const auto& v = hit->second;
            c.pipeline = v[1];
            c.has_outline = !v[2].empty();
            if (c.has_outline) c.outline = Ellipse{std::stod(v[2]), std::stod(v[3]), std::stod(v[4]), std::stod(v[5]), std::stod(v[6])};
            continue;
        }
        if (!measurer) {
            SegmenterOptions so;
            so.threads = threads;
            auto seg = Segmenter::load(seg_model, so);
            if (!seg) return seg.error_value();
            measurer.emplace(std::move(*seg));
        }
        measure_planes_row(*measurer, c);
        if (++measured % 40 == 0) std::fprintf(stderr, "head check: measured %d planes images\n", measured);
    }
    if (measured > 0) {
        std::ofstream out(cache_csv + ".tmp");
        CsvWriter w(out);
        w.raw("filename").raw("pipeline").raw("cx").raw("cy").raw("a").raw("b").raw("angle").end_row();
        for (const CheckImage& c : rows) {
            w.text(c.name).text(c.pipeline);
            if (c.has_outline)
                w.number(c.outline.cx, 4).number(c.outline.cy, 4).number(c.outline.a, 4).number(c.outline.b, 4).number(c.outline.angle, 6);
            else
                w.empty(5);
            w.end_row();
        }
        out.close();
        std::filesystem::rename(cache_csv + ".tmp", cache_csv);
    }
    return rows;
}

CheckSample jittered_sample(const std::vector<CheckImage>& images, int i, std::mt19937& rng, double spread) {
    const CheckImage& c = images[size_t(i)];
    Ellipse e = c.outline;
    e.cx += cut_normal(rng, 0.03 * spread * e.a);
    e.cy += cut_normal(rng, 0.03 * spread * e.a);
    e.a *= std::exp(cut_normal(rng, 0.04 * spread));
    e.b *= std::exp(cut_normal(rng, 0.04 * spread));
    e.angle += cut_normal(rng, 0.06 * spread);
    CheckSample s;
    s.image = i;
    s.outline = e.normalized();
    s.cls = c.cls;
    s.head = c.cls == 0 ? 1.f : 0.f;
    return s;
}

CheckSample off_target_sample(const std::vector<CheckImage>& images, int i, std::mt19937& rng) {
    const CheckImage& c = images[size_t(i)];
    const Ellipse h = c.outline;
    CheckSample s;
    s.image = i;
    s.cls = kHeadCheckPlaneCount - 1;  // off_target
    s.head = 0;
    const double kind = uniform(rng, 0, 1);
    if (kind < 0.6) {
        // Centre outside the head (normalised radius > 1), same size within -40%..+30%.
        for (int tries = 0; tries < 60; ++tries) {
            const double x = uniform(rng, 0, c.gray.cols - 1), y = uniform(rng, 0, c.gray.rows - 1);
            const double cs = std::cos(h.angle), sn = std::sin(h.angle);
            const double u = ((x - h.cx) * cs + (y - h.cy) * sn) / h.a, v = (-(x - h.cx) * sn + (y - h.cy) * cs) / h.b;
            if (u * u + v * v <= 1.0) continue;
            const double a = h.a * uniform(rng, 0.6, 1.3);
            s.outline = Ellipse{x, y, a, a * (h.b / h.a) * uniform(rng, 0.85, 1.15), uniform(rng, 0, CV_PI)}.normalized();
            return s;
        }
    }
    const double k = kind < 0.8 ? uniform(rng, 0.25, 0.55) : uniform(rng, 1.7, 2.6);
    s.outline = Ellipse{h.cx + uniform(rng, -0.3, 0.3) * h.a, h.cy + uniform(rng, -0.3, 0.3) * h.a, h.a * k, h.b * k,
                        h.angle + cut_normal(rng, 0.3)}
                    .normalized();
    return s;
}

void augment_check_crop(cv::Mat& crop8, std::mt19937& rng) {
    cv::Mat f;
    crop8.convertTo(f, CV_32F, 1.0 / 255);
    if (uniform(rng, 0, 1) < 0.5) cv::flip(f, f, 1);
    if (uniform(rng, 0, 1) < 0.5) cv::flip(f, f, 0);
    if (uniform(rng, 0, 1) < 0.8) cv::pow(f, std::exp(uniform(rng, -0.5, 0.5)), f);  // dynamic range (gamma)
    if (uniform(rng, 0, 1) < 0.3) cv::GaussianBlur(f, f, cv::Size(0, 0), uniform(rng, 0.5, 1.3));
    if (uniform(rng, 0, 1) < 0.5) {  // speckle: multiplicative noise of a random grain size
        cv::Mat n(f.size(), CV_32F);
        cv::randn(n, 0, 1);
        const double grain = uniform(rng, 0.5, 1.5);
        cv::GaussianBlur(n, n, cv::Size(0, 0), grain);
        f = f.mul(1 + n * (uniform(rng, 0.1, 0.35) * grain));
    }
    f *= uniform(rng, 0.6, 1.6);  // gain (saturates at white)
    cv::Mat out;
    f.convertTo(out, CV_8U, 255);
    const int n = out.rows;
    if (uniform(rng, 0, 1) < 0.25) {  // a sector edge: black beyond a line at least n/4 from the centre
        const double t = uniform(rng, 0, 2 * CV_PI), d = uniform(rng, 0.25, 0.7) * n;
        const cv::Point2d c(n / 2.0 + d * std::cos(t), n / 2.0 + d * std::sin(t)), dir(-std::sin(t), std::cos(t));
        std::vector<cv::Point> poly = {cv::Point(c + dir * 2.0 * n), cv::Point(c - dir * 2.0 * n),
                                       cv::Point(c - dir * 2.0 * n + cv::Point2d(std::cos(t), std::sin(t)) * 2.0 * n),
                                       cv::Point(c + dir * 2.0 * n + cv::Point2d(std::cos(t), std::sin(t)) * 2.0 * n)};
        cv::fillConvexPoly(out, poly, cv::Scalar(0));
    }
    if (uniform(rng, 0, 1) < 0.3) {  // burned-in text
        const std::string txt = std::to_string(int(uniform(rng, 0, 99999)));
        cv::putText(out, txt, cv::Point(int(uniform(rng, 0, n - 20)), int(uniform(rng, 6, n))), cv::FONT_HERSHEY_PLAIN,
                    uniform(rng, 0.5, 0.9), cv::Scalar(uniform(rng, 180, 255)), 1);
    }
    if (uniform(rng, 0, 1) < 0.25) {  // caliper marks
        for (int k = 0; k < 2; ++k) {
            const cv::Point p(int(uniform(rng, 4, n - 4)), int(uniform(rng, 4, n - 4)));
            const int r = int(uniform(rng, 2, 4));
            const cv::Scalar col(uniform(rng, 200, 255));
            cv::line(out, p - cv::Point(r, 0), p + cv::Point(r, 0), col, 1);
            cv::line(out, p - cv::Point(0, r), p + cv::Point(0, r), col, 1);
        }
    }
    crop8 = out;
}

}  // namespace fetalhc::detail
