#include "fetalhc/hc18.h"

#include "fetalhc/csv.h"
#include "fetalhc/image_io.h"
#include "fetalhc/metrics.h"
#include "fnv1a.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

// Cells of one CSV line (quoted cells, a BOM on the first line and a CR line end handled), each
// trimmed of surrounding spaces. A malformed line gives no cells.
std::vector<std::string> split_csv_line(std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto cells = parse_csv_record(line);
    if (!cells) return {};
    for (auto& cell : *cells) {
        while (!cell.empty() && cell.back() == ' ') cell.pop_back();
        while (!cell.empty() && cell.front() == ' ') cell.erase(cell.begin());
    }
    return *cells;
}

// The whole of `s` as a number. A value too small for a double (1e-400) reads as what strtod
// gives (0 or a subnormal) rather than failing, so that the range check can say it is too small.
bool parse_double(const std::string& s, double& v) {
    if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
    char* end = nullptr;
    errno = 0;
    v = std::strtod(s.c_str(), &end);
    if (errno == ERANGE && std::isinf(v)) return false;  // too large, as std::stod said
    return end == s.c_str() + s.size();
}

// At most kMaxQuotedCsvBytes of `s` for an error message, cut at a UTF-8 character boundary with
// "..." when longer; control bytes (a binary file's line) are shown as '?'.
std::string excerpt(const std::string& s) {
    size_t n = std::min(s.size(), kMaxQuotedCsvBytes);
    if (n < s.size())
        while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // not inside a character
    std::string out = s.substr(0, n);
    for (char& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return n < s.size() ? out + "..." : out;
}

using detail::fnv1a;

}  // namespace

std::optional<SplitSpec> recorded_split(const std::string& metadata_json) {
    const auto j = nlohmann::json::parse(metadata_json.empty() ? "{}" : metadata_json, nullptr, false);
    if (!j.is_object() || !j.contains("split_salt") || !j["split_salt"].is_string() || !j.contains("validation_fraction") ||
        !j["validation_fraction"].is_number())
        return std::nullopt;
    SplitSpec spec{j["split_salt"].get<std::string>(), j["validation_fraction"].get<double>()};
    if (j.contains("folds") && j["folds"].is_number_integer()) {
        spec.folds = j["folds"].get<int>();
        spec.fold = j.contains("fold") && j["fold"].is_number_integer() ? j["fold"].get<int>() : -1;
    }
    return spec;
}

Expected<std::map<std::string, double>> read_pixel_sizes(const std::string& csv_path) {
    auto bytes = read_file_limited(csv_path, kMaxPixelSizeCsvBytes, "a pixel-size CSV");
    if (!bytes) return make_error(ErrorKind::InvalidArgument, "pixel-size CSV: " + bytes.error(), "pixel_sizes");
    std::istringstream in(std::string(bytes->begin(), bytes->end()));
    bytes->clear();
    std::map<std::string, double> out;
    std::string line;
    int lineno = 0;
    const auto at = [&] { return "pixel-size CSV '" + csv_path + "' line " + std::to_string(lineno) + ": "; };
    while (std::getline(in, line)) {
        ++lineno;
        auto cells = split_csv_line(line);
        if (cells.empty() && !parse_csv_record(line))
            return make_error(ErrorKind::InvalidArgument, at() + "a quoted cell is not closed; quote as \"a,b.png\" and double inner quotes",
                              "pixel_sizes");
        if (cells.empty() || cells[0].empty()) continue;
        double v = 0;
        if (cells.size() < 2 || !parse_double(cells[1], v) || !std::isfinite(v)) {
            if (lineno == 1) continue;  // header
            return make_error(ErrorKind::InvalidArgument,
                              at() + "expected `filename,pixel size(mm)` with a finite number, got '" + excerpt(line) + "'",
                              "pixel_sizes");
        }
        if (auto e = check_pixel_size(v, "'" + excerpt(cells[0]) + "'"); !e.empty())
            return make_error(ErrorKind::InvalidArgument, at() + e, "pixel_sizes");
        if (auto it = out.find(cells[0]); it != out.end() && it->second != v)
            return make_error(ErrorKind::InvalidArgument,
                              at() + "'" + excerpt(cells[0]) + "' is listed twice with different sizes; keep one row per file",
                              "pixel_sizes");
        out[cells[0]] = v;
    }
    if (out.empty())
        return make_error(ErrorKind::InvalidArgument, "pixel-size CSV '" + csv_path + "' has no rows of `filename,pixel size(mm)`",
                          "pixel_sizes");
    return out;
}

std::string examination_id(const std::string& filename) {
    const std::string base = fs::path(filename).filename().string();
    size_t n = 0;
    while (n < base.size() && std::isdigit(static_cast<unsigned char>(base[n]))) ++n;
    return n ? base.substr(0, n) : base;
}

Expected<std::vector<Hc18Record>> read_hc18_training(const std::string& data_dir) {
    const fs::path dir(data_dir);
    const fs::path hc_csv = dir / "training_set_pixel_size_and_HC.csv";
    const fs::path img_dir = dir / "training_set";
    if (!fs::is_directory(img_dir))
        return make_error(ErrorKind::NotFound, "'" + data_dir + "' is not an HC18-layout folder: '" + img_dir.string() +
                                                   "' is missing (expected training_set/ and training_set_pixel_size_and_HC.csv)",
                          "data");
    std::ifstream in(hc_csv);
    if (!in) return make_error(ErrorKind::NotFound, "cannot open '" + hc_csv.string() + "': the HC18 reference CSV is required", "data");
    std::vector<Hc18Record> recs;
    std::map<std::string, size_t> index;
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        auto c = split_csv_line(line);
        if (c.size() < 3) continue;
        Hc18Record r;
        if (!parse_double(c[1], r.pixel_size_mm) || !parse_double(c[2], r.hc_mm)) {
            if (lineno == 1) continue;
            return make_error(ErrorKind::InvalidArgument,
                              "'" + hc_csv.string() + "' line " + std::to_string(lineno) + " is not `filename,pixel size,HC`", "data");
        }
        r.filename = c[0];
        r.image_path = (img_dir / r.filename).string();
        const std::string stem = fs::path(r.filename).stem().string();
        const fs::path mask = img_dir / (stem + "_Mask.png");
        r.mask_path = fs::exists(mask) ? mask.string() : "";
        if (!fs::exists(r.image_path)) continue;  // rows for held-back images
        index[r.filename] = recs.size();
        recs.push_back(r);
    }
    std::ifstream ell(dir / "training_set_ellipses.csv");
    if (ell) {
        lineno = 0;
        while (std::getline(ell, line)) {
            ++lineno;
            auto c = split_csv_line(line);
            if (c.size() < 8 || !index.count(c[0])) continue;
            double v[5];
            bool good = true;
            for (int k = 0; k < 5; ++k) good &= parse_double(c[3 + k], v[k]);
            if (!good) continue;
            auto& r = recs[index[c[0]]];
            r.ellipse_px = Ellipse{v[0], v[1], v[2], v[3], v[4]}.normalized();
            r.has_ellipse = true;
        }
    }
    if (recs.empty()) return make_error(ErrorKind::NotFound, "no labelled images found under '" + img_dir.string() + "'", "data");
    return recs;
}

Split grouped_split(const std::vector<Hc18Record>& records, double fraction, const std::string& salt) {
    Split s;
    for (const auto& r : records) {
        const uint64_t h = fnv1a(salt + ":" + examination_id(r.filename));
        const double u = double(h % 1000000) / 1e6;
        (u < fraction ? s.validation : s.train).push_back(r);
    }
    return s;
}

std::vector<int> kfold_assignment(const std::vector<Hc18Record>& records, int folds, const std::string& salt) {
    if (folds < 2) return std::vector<int>(records.size(), 0);
    std::map<std::string, int> images;  // examination -> image count
    for (const auto& r : records) ++images[examination_id(r.filename)];
    std::vector<std::pair<uint64_t, std::string>> order;
    for (const auto& [e, n] : images) order.push_back({fnv1a(salt + ":kfold:" + e), e});
    std::sort(order.begin(), order.end());
    std::vector<int> size(folds, 0);
    std::map<std::string, int> fold_of;
    for (const auto& [h, e] : order) {
        const int f = int(std::min_element(size.begin(), size.end()) - size.begin());
        fold_of[e] = f;
        size[f] += images[e];
    }
    std::vector<int> out;
    out.reserve(records.size());
    for (const auto& r : records) out.push_back(fold_of[examination_id(r.filename)]);
    return out;
}

Split kfold_split(const std::vector<Hc18Record>& records, int folds, int fold, const std::string& salt) {
    const auto f = kfold_assignment(records, folds, salt);
    Split s;
    for (size_t i = 0; i < records.size(); ++i) (f[i] == fold ? s.validation : s.train).push_back(records[i]);
    return s;
}

namespace {

// Sub-pixel boundary of a binary mask: the midpoints of the edges between inside (nonzero) and
// outside pixels, in pixel coordinates.
std::vector<cv::Point2d> mask_edge_points(const cv::Mat& mask) {
    std::vector<cv::Point2d> pts;
    for (int y = 0; y < mask.rows; ++y) {
        const unsigned char* r = mask.ptr<unsigned char>(y);
        const unsigned char* below = y + 1 < mask.rows ? mask.ptr<unsigned char>(y + 1) : nullptr;
        for (int x = 0; x < mask.cols; ++x) {
            if (x + 1 < mask.cols && (r[x] != 0) != (r[x + 1] != 0)) pts.push_back({x + 0.5, double(y)});
            if (below && (r[x] != 0) != (below[x] != 0)) pts.push_back({double(x), y + 0.5});
        }
    }
    return pts;
}

}  // namespace

double mask_to_reference_scale(const std::vector<Hc18Record>& records) {
    double sum = 0;
    int n = 0;
    for (const auto& r : records) {
        if (r.mask_path.empty()) continue;
        cv::Mat mask = cv::imread(r.mask_path, cv::IMREAD_GRAYSCALE);
        if (mask.empty()) continue;
        EllipseFit f = fit_ellipse(mask_edge_points(mask > 127));
        if (!f.ok) continue;
        const double hc = ramanujan_perimeter(f.ellipse) * r.pixel_size_mm;
        if (hc > 0) sum += r.hc_mm / hc, ++n;
    }
    return n ? sum / n : std::numeric_limits<double>::quiet_NaN();
}

double measured_to_reference_scale(const std::vector<Hc18Record>& records,
                                   const std::function<std::optional<double>(const Hc18Record&)>& measured_hc) {
    std::vector<double> ratios;
    for (const auto& r : records)
        if (auto hc = measured_hc(r); hc && *hc > 0 && std::isfinite(*hc) && r.hc_mm > 0) ratios.push_back(r.hc_mm / *hc);
    return ratios.empty() ? std::numeric_limits<double>::quiet_NaN() : quantile(std::move(ratios), 0.5);
}

Expected<std::string> coco_annotations_json(const std::vector<Hc18Record>& records) {
    nlohmann::json images = nlohmann::json::array(), anns = nlohmann::json::array();
    int id = 0;
    for (const auto& r : records) {
        ++id;
        if (r.mask_path.empty())
            return make_error(ErrorKind::NotFound, "no mask for '" + r.filename + "': COCO export needs *_Mask.png files", "data");
        cv::Mat mask = cv::imread(r.mask_path, cv::IMREAD_GRAYSCALE);
        if (mask.empty()) return make_error(ErrorKind::Io, "cannot read mask '" + r.mask_path + "'");
        images.push_back({{"id", id}, {"file_name", r.filename}, {"width", mask.cols}, {"height", mask.rows},
                          {"pixel_size_mm", r.pixel_size_mm}, {"hc_mm", r.hc_mm}});
        std::vector<std::vector<cv::Point>> contours;
        cv::findContours(mask > 127, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
        if (contours.empty()) continue;
        auto largest = std::max_element(contours.begin(), contours.end(), [](const auto& a, const auto& b) {
            return cv::contourArea(a) < cv::contourArea(b);
        });
        nlohmann::json poly = nlohmann::json::array();
        for (const auto& p : *largest) poly.push_back(p.x), poly.push_back(p.y);
        const cv::Rect bb = cv::boundingRect(*largest);
        anns.push_back({{"id", id}, {"image_id", id}, {"category_id", 1},
                        {"segmentation", nlohmann::json::array({poly})},
                        {"area", cv::countNonZero(mask > 127)},
                        {"bbox", {bb.x, bb.y, bb.width, bb.height}}, {"iscrowd", 0}});
    }
    nlohmann::json j{{"info", {{"description", "HC18 fetal head masks exported by fetalhc"}, {"license", "CC BY 4.0"}}},
                     {"images", images}, {"annotations", anns},
                     {"categories", {{{"id", 1}, {"name", "fetal_head"}, {"supercategory", "anatomy"}}}}};
    return j.dump();
}

}  // namespace fetalhc
