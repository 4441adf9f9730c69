#include "progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unistd.h>
#include <utility>

namespace fetalhc_cli {

namespace {

// Width of the line now showing on stderr (0: none). One meter shows at a time.
size_t g_showing_width = 0;

constexpr double kRedrawSeconds = 0.2;

}  // namespace

std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
    const long s = std::lround(seconds);
    char buf[32];
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

std::string progress_text(int done, int total, double elapsed_s, const std::string& unit) {
    std::string text = std::to_string(done) + "/" + std::to_string(total) + " " + unit;
    if (done <= 0 || !(elapsed_s > 0)) return text;
    const double rate = done / elapsed_s;
    char buf[64];
    std::snprintf(buf, sizeof buf, "  %.1f %s/s", rate, unit.c_str());
    text += buf;
    if (done < total) text += "  " + format_duration((total - done) / rate) + " left";
    return text;
}

Progress::Progress(int total, bool wanted, std::string unit)
    : total_(total), enabled_(wanted && total > 1 && ::isatty(STDERR_FILENO)), unit_(std::move(unit)),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {
    if (enabled_) draw();
}

Progress::~Progress() { finish(); }

void Progress::step() {
    ++done_;
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done_ >= total_ || g_showing_width == 0 ||
        std::chrono::duration<double>(now - last_draw_).count() >= kRedrawSeconds)
        draw();
}

void Progress::finish() {
    if (!enabled_) return;
    clear_showing();
    enabled_ = false;
}

void Progress::clear_showing() {
    if (g_showing_width == 0) return;
    std::fprintf(stderr, "\r%s\r", std::string(g_showing_width, ' ').c_str());
    std::fflush(stderr);
    g_showing_width = 0;
}

void Progress::draw() {
    last_draw_ = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(last_draw_ - start_).count();
    std::string text = progress_text(done_, total_, elapsed, unit_);
    // Pad over the end of a longer previous line instead of sending a terminal escape.
    const size_t width = text.size();
    if (g_showing_width > width) text += std::string(g_showing_width - width, ' ');
    std::fprintf(stderr, "\r%s", text.c_str());
    std::fflush(stderr);
    g_showing_width = std::max(width, size_t(1));
}

}  // namespace fetalhc_cli
