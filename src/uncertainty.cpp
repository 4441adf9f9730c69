#include "fetalhc/uncertainty.h"

#include "fetalhc/csv.h"
#include "fetalhc/growth.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

namespace fetalhc {
namespace {

constexpr int kMinOkPerBin = 20;
constexpr int kMinReviewPerBin = 20;

size_t bin_of(const std::vector<double>& edges, double hc) {
    return size_t(std::upper_bound(edges.begin(), edges.end(), hc) - edges.begin());
}

// The conformal pair of order statistics of sorted residuals (see the header); clamped to the
// extremes when n is too small for the rank (then the interval is the widest residual seen).
std::pair<double, double> conformal_pair(std::vector<double> r, double coverage) {
    std::sort(r.begin(), r.end());
    const double n = double(r.size()), alpha = 1 - coverage;
    const long lo = std::max(1L, long(std::floor((n + 1) * alpha / 2)));
    const long hi = std::min(long(n), long(std::ceil((n + 1) * (1 - alpha / 2))));
    return {r[size_t(lo - 1)], r[size_t(hi - 1)]};
}

double width(const std::pair<double, double>& p) { return p.second - p.first; }

}  // namespace

Expected<HcIntervalModel> calibrate_hc_interval(const std::vector<IntervalSample>& samples, double coverage,
                                                const std::vector<double>& edges_mm, const std::string& source) {
    if (!(coverage > 0.5 && coverage < 1)) return make_error(ErrorKind::InvalidArgument, "interval coverage must be in (0.5, 1)", "coverage");
    if (!std::is_sorted(edges_mm.begin(), edges_mm.end())) return make_error(ErrorKind::InvalidArgument, "interval bin edges must be ascending", "edges");
    const size_t bins = edges_mm.size() + 1;
    std::vector<std::vector<double>> ok(bins), review(bins);
    std::vector<double> all_ok, all_review;
    for (const auto& s : samples) {
        if (!(s.measured_hc_mm > 0 && s.reference_hc_mm > 0)) continue;
        const double r = (s.reference_hc_mm - s.measured_hc_mm) / s.measured_hc_mm;
        (s.review ? review : ok)[bin_of(edges_mm, s.measured_hc_mm)].push_back(r);
        (s.review ? all_review : all_ok).push_back(r);
    }
    HcIntervalModel m;
    m.coverage = coverage, m.edges_mm = edges_mm, m.source = source;
    // How much wider the review residuals are than the ok ones, pooled over bins (1 without them).
    double widen = 1;
    if (all_review.size() >= size_t(kMinReviewPerBin) && all_ok.size() >= size_t(kMinOkPerBin))
        widen = std::max(1.0, width(conformal_pair(all_review, coverage)) / std::max(1e-9, width(conformal_pair(all_ok, coverage))));
    for (size_t b = 0; b < bins; ++b) {
        if (ok[b].size() < size_t(kMinOkPerBin))
            return make_error(ErrorKind::InvalidArgument,
                              "interval calibration: bin " + std::to_string(b) + " has " + std::to_string(ok[b].size()) +
                                  " ok measurements; at least " + std::to_string(kMinOkPerBin) + " are needed (use fewer bins)",
                              "edges");
        const auto p = conformal_pair(ok[b], coverage);
        m.lo_rel.push_back(p.first), m.hi_rel.push_back(p.second), m.n_ok.push_back(int(ok[b].size()));
        std::pair<double, double> q;
        if (review[b].size() >= size_t(kMinReviewPerBin)) {
            q = conformal_pair(review[b], coverage);
        } else {
            const double mid = (p.first + p.second) / 2, half = widen * width(p) / 2;
            q = {mid - half, mid + half};
        }
        m.review_lo_rel.push_back(std::min(q.first, p.first)), m.review_hi_rel.push_back(std::max(q.second, p.second));
        m.n_review.push_back(int(review[b].size()));
    }
    return m;
}

HcInterval hc_interval(const HcIntervalModel& model, double hc_mm, bool review) {
    HcInterval iv;
    iv.coverage = model.coverage;
    const size_t b = std::min(bin_of(model.edges_mm, hc_mm), model.lo_rel.size() - 1);
    const double lo = review ? model.review_lo_rel[b] : model.lo_rel[b];
    const double hi = review ? model.review_hi_rel[b] : model.hi_rel[b];
    iv.low_mm = std::max(0.0, hc_mm * (1 + lo));
    iv.high_mm = hc_mm * (1 + hi);
    if (auto g = hadlock_ga(iv.low_mm); g.in_range) iv.ga_hadlock_low_weeks = g.weeks;
    if (auto g = hadlock_ga(iv.high_mm); g.in_range) iv.ga_hadlock_high_weeks = g.weeks;
    return iv;
}

Expected<std::vector<IntervalSample>> read_interval_samples(std::istream& in, const std::string& name) {
    std::string line;
    if (!std::getline(in, line))
        return make_error(ErrorKind::InvalidArgument, "'" + name + "' is empty; expected the per-image CSV an evaluation writes (write_per_image_csv, the CLI's evaluate)");
    auto header = parse_csv_record(line);
    if (!header) return header.error_value().prefixed("'" + name + "' line 1: ");
    auto column = [&](const std::string& c) {
        auto it = std::find(header->begin(), header->end(), c);
        return it == header->end() ? -1 : int(it - header->begin());
    };
    const int ref = column("ref_hc_mm"), hc = column("hc_mm"), quality = column("quality"), fold = column("fold");
    if (ref < 0 || hc < 0 || quality < 0)
        return make_error(ErrorKind::InvalidArgument, "'" + name + "' lacks a ref_hc_mm, hc_mm or quality column; expected the per-image CSV an evaluation writes (write_per_image_csv, the CLI's evaluate)");
    std::vector<IntervalSample> out;
    for (int row = 2; std::getline(in, line); ++row) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        auto cells = parse_csv_record(line);
        if (!cells) return cells.error_value().prefixed("'" + name + "' line " + std::to_string(row) + ": ");
        if (int(cells->size()) <= std::max({ref, hc, quality}))
            return make_error(ErrorKind::InvalidArgument, "'" + name + "' line " + std::to_string(row) + " has too few cells");
        if ((*cells)[size_t(hc)].empty()) continue;  // a failed image
        try {
            IntervalSample s;
            s.reference_hc_mm = std::stod((*cells)[size_t(ref)]);
            s.measured_hc_mm = std::stod((*cells)[size_t(hc)]);
            s.review = (*cells)[size_t(quality)] != "ok";
            if (fold >= 0 && size_t(fold) < cells->size() && !(*cells)[size_t(fold)].empty())
                s.fold = std::stoi((*cells)[size_t(fold)]);
            out.push_back(s);
        } catch (const std::exception&) {
            return make_error(ErrorKind::InvalidArgument, "'" + name + "' line " + std::to_string(row) + ": ref_hc_mm, hc_mm (and fold, when present) must be numbers");
        }
    }
    return out;
}

IntervalCoverage interval_coverage(const HcIntervalModel& model, const std::vector<IntervalSample>& samples) {
    IntervalCoverage c;
    for (const auto& s : samples) {
        const HcInterval iv = hc_interval(model, s.measured_hc_mm, s.review);
        const bool in = s.reference_hc_mm >= iv.low_mm && s.reference_hc_mm <= iv.high_mm;
        ++c.images;
        c.covered += in;
        c.review_images += s.review;
        c.review_covered += s.review && in;
    }
    return c;
}

nlohmann::json to_json(const HcIntervalModel& m) {
    return {{"coverage", m.coverage}, {"edges_mm", m.edges_mm}, {"lo_rel", m.lo_rel}, {"hi_rel", m.hi_rel},
            {"review_lo_rel", m.review_lo_rel}, {"review_hi_rel", m.review_hi_rel}, {"n_ok", m.n_ok},
            {"n_review", m.n_review}, {"source", m.source}};
}

Expected<HcIntervalModel> interval_model_from_json(const nlohmann::json& j) {
    try {
        HcIntervalModel m;
        m.coverage = j.at("coverage").get<double>();
        m.edges_mm = j.at("edges_mm").get<std::vector<double>>();
        m.lo_rel = j.at("lo_rel").get<std::vector<double>>();
        m.hi_rel = j.at("hi_rel").get<std::vector<double>>();
        m.review_lo_rel = j.at("review_lo_rel").get<std::vector<double>>();
        m.review_hi_rel = j.at("review_hi_rel").get<std::vector<double>>();
        m.n_ok = j.value("n_ok", std::vector<int>{});
        m.n_review = j.value("n_review", std::vector<int>{});
        m.source = j.value("source", std::string());
        const size_t bins = m.edges_mm.size() + 1;
        if (m.lo_rel.size() != bins || m.hi_rel.size() != bins || m.review_lo_rel.size() != bins ||
            m.review_hi_rel.size() != bins)
            return make_error(ErrorKind::ModelUnavailable, "hc_interval: every per-bin list needs " + std::to_string(bins) + " values");
        for (size_t b = 0; b < bins; ++b)
            if (!(m.lo_rel[b] <= m.hi_rel[b] && m.review_lo_rel[b] <= m.review_hi_rel[b] && m.lo_rel[b] > -1 &&
                  m.review_lo_rel[b] > -1 && std::isfinite(m.hi_rel[b]) && std::isfinite(m.review_hi_rel[b])))
                return make_error(ErrorKind::ModelUnavailable, "hc_interval: bin " + std::to_string(b) + " has an empty or impossible interval");
        if (!(m.coverage > 0.5 && m.coverage < 1)) return make_error(ErrorKind::ModelUnavailable, "hc_interval: coverage must be in (0.5, 1)");
        return m;
    } catch (const std::exception& e) {
        return make_error(ErrorKind::ModelUnavailable, std::string("hc_interval: ") + e.what());
    }
}

std::optional<HcIntervalModel> interval_model_from_metadata(const std::string& metadata_json) {
    auto meta = nlohmann::json::parse(metadata_json.empty() ? "{}" : metadata_json, nullptr, false);
    if (!meta.is_object() || !meta.contains("hc_interval")) return std::nullopt;
    auto m = interval_model_from_json(meta["hc_interval"]);
    if (!m) return std::nullopt;
    return *m;
}

}  // namespace fetalhc
