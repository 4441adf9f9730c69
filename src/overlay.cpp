#include "fetalhc/overlay.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace fetalhc {
namespace {

// Sub-pixel drawing: OpenCV takes fixed-point coordinates with this many fractional bits.
constexpr int kShift = 4;
constexpr double kFixed = 1 << kShift;

const cv::Scalar kGreen(0, 220, 0), kOrange(0, 165, 255), kAxis(255, 255, 0), kWhite(255, 255, 255);

std::string fmt(const char* f, double v) {
    char buf[512];  // %.1f of a huge double is over 300 characters
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

cv::Point fixed(cv::Point2d p) { return {int(std::lround(p.x * kFixed)), int(std::lround(p.y * kFixed))}; }

// Finite, positive and small enough for OpenCV's fixed-point int coordinates.
bool drawable(const Ellipse& e) {
    constexpr double lim = 1e6;
    for (double v : {e.cx, e.cy, e.a, e.b, e.angle})
        if (!std::isfinite(v)) return false;
    return e.a > 0 && e.b > 0 && std::abs(e.cx) < lim && std::abs(e.cy) < lim && e.a < lim && e.b < lim;
}

cv::Mat to_bgr(const cv::Mat& img) {
    cv::Mat src = img;
    if (src.depth() != CV_8U) {
        double lo = 0, hi = 0;
        cv::minMaxLoc(src.reshape(1), &lo, &hi);
        src.convertTo(src, CV_8U, hi > lo ? 255.0 / (hi - lo) : 1.0, hi > lo ? -lo * 255.0 / (hi - lo) : 0.0);
    }
    cv::Mat bgr;
    if (src.channels() == 1) cv::cvtColor(src, bgr, cv::COLOR_GRAY2BGR);
    else if (src.channels() == 4) cv::cvtColor(src, bgr, cv::COLOR_BGRA2BGR);
    else bgr = src.clone();
    return bgr;
}

std::string ga_text(const GaEstimate& g) { return g.in_range ? format_weeks(g.weeks) : std::string("n/a"); }

std::vector<std::string> panel_lines(const Measurement& m) {
    std::vector<std::string> lines;
    lines.push_back(fmt("HC %.1f mm", m.hc_mm));
    if (m.interval)
        lines.push_back(fmt("%.0f%% ", 100 * m.interval->coverage) + fmt("%.1f", m.interval->low_mm) +
                        fmt(" to %.1f mm", m.interval->high_mm));
    lines.push_back(fmt("BPD %.1f", m.bpd_mm) + fmt("  OFD %.1f mm", m.ofd_mm));
    lines.push_back("GA Hadlock " + ga_text(m.ga_hadlock));
    lines.push_back("GA IG-21 " + ga_text(m.ga_intergrowth));
    if (m.centile) {
        const Centile& c = *m.centile;
        const std::string at = m.ga_weeks_given ? " at " + format_weeks(*m.ga_weeks_given) : std::string();
        if (c.in_range) {
            // One decimal would print far tails as 0.0 / 100.0.
            std::string s = (c.centile < 0.1    ? std::string("HC centile <0.1")
                             : c.centile > 99.9 ? std::string("HC centile >99.9")
                                                : fmt("HC centile %.1f", c.centile)) +
                            at;
            if (c.below_3rd) s += " (<3rd)";
            if (c.above_97th) s += " (>97th)";
            lines.push_back(s);
        } else {
            lines.push_back("HC centile n/a" + at);
        }
    }
    std::string q = "quality: " + (m.quality.empty() ? std::string("n/a") : m.quality);
    if (m.quality != "ok" && !m.reasons.empty()) {
        q += " (";
        for (size_t i = 0; i < m.reasons.size(); ++i) q += (i ? "; " : "") + m.reasons[i];
        q += ")";
    }
    lines.push_back(q);
    return lines;
}

// Greedy word wrap so long quality reasons stay inside the image; continuation lines are indented.
std::vector<std::string> wrap(const std::vector<std::string>& lines, int max_width, int font, double scale,
                              int thickness) {
    auto width = [&](const std::string& s) {
        int base = 0;
        return cv::getTextSize(s, font, scale, thickness, &base).width;
    };
    std::vector<std::string> out;
    for (const std::string& line : lines) {
        if (width(line) <= max_width) {
            out.push_back(line);
            continue;
        }
        std::string cur;
        size_t pos = 0;
        while (pos < line.size()) {
            size_t end = line.find(' ', pos);
            if (end == std::string::npos) end = line.size();
            const std::string word = line.substr(pos, end - pos);
            const std::string trial = cur.empty() ? word : cur + " " + word;
            if (!cur.empty() && width(trial) > max_width) {
                out.push_back(cur);
                cur = "  " + word;
            } else {
                cur = trial;
            }
            pos = end + 1;
        }
        if (!cur.empty()) out.push_back(cur);
    }
    return out;
}

void draw_panel(cv::Mat& img, const Measurement& m) {
    const int side = std::min(img.cols, img.rows);
    const int font = cv::FONT_HERSHEY_SIMPLEX;
    // About 1/40 of the smaller side per text line, readable from thumbnails to full-size scans.
    const double scale = std::max(0.35, side / 900.0);
    const int thickness = std::max(1, int(std::lround(scale * 1.5)));
    const int margin = std::max(4, int(std::lround(8 * scale)));

    const std::vector<std::string> lines =
        wrap(panel_lines(m), std::max(1, img.cols - 4 * margin), font, scale, thickness);
    int base = 0;
    const int line_h = cv::getTextSize("Hg", font, scale, thickness, &base).height + base + margin / 2;
    int w = 0;
    for (const auto& s : lines) w = std::max(w, cv::getTextSize(s, font, scale, thickness, &base).width);

    cv::Rect box(margin, margin, w + 2 * margin, int(lines.size()) * line_h + margin);
    box &= cv::Rect(0, 0, img.cols, img.rows);
    if (box.area() > 0) {
        cv::Mat roi = img(box);
        roi.convertTo(roi, -1, 0.35);  // darken to 35%: text stays readable, the scan shows through
    }
    int y = margin + line_h - base;
    for (const auto& s : lines) {
        cv::putText(img, s, {2 * margin, y}, font, scale, kWhite, thickness, cv::LINE_AA);
        y += line_h;
    }
}

}  // namespace

cv::Mat draw_overlay(const cv::Mat& gray8, const Measurement& m) {
    if (gray8.empty()) return {};
    cv::Mat img = to_bgr(gray8);

    const Ellipse& e = m.ellipse_px;
    if (drawable(e)) {
        const int side = std::min(img.cols, img.rows);
        const int thickness = std::max(1, int(std::lround(side / 300.0)));
        const cv::Scalar colour = m.quality == "ok" ? kGreen : kOrange;
        const cv::Point2d c(e.cx, e.cy);
        const cv::Point2d u(std::cos(e.angle), std::sin(e.angle));  // major axis direction
        const cv::Point2d v(-u.y, u.x);                              // minor axis direction

        cv::line(img, fixed(c - e.a * u), fixed(c + e.a * u), kAxis, thickness, cv::LINE_AA, kShift);
        cv::line(img, fixed(c - e.b * v), fixed(c + e.b * v), kAxis, thickness, cv::LINE_AA, kShift);
        // The ellipse goes on top of the axes so its colour is the one seen where they meet.
        const cv::Size axes(int(std::lround(e.a * kFixed)), int(std::lround(e.b * kFixed)));
        cv::ellipse(img, fixed(c), axes, e.angle * 180.0 / CV_PI, 0, 360, colour, thickness, cv::LINE_AA, kShift);
        const int marker = std::max(6, side / 40);
        cv::drawMarker(img, {int(std::lround(e.cx)), int(std::lround(e.cy))}, colour, cv::MARKER_CROSS, marker,
                       thickness, cv::LINE_AA);
    }
    draw_panel(img, m);
    return img;
}

}  // namespace fetalhc
