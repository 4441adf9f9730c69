// A progress line for long batches: "12/335 images  8.3 images/s  0:39 left", rewritten in place
// (\r) on stderr and cleared at the end. It shows only when stderr is a terminal and the user did
// not pass --quiet, so pipes, files and logs never see it; stdout is never touched.
//
//   fetalhc_cli::Progress progress(items.size(), !quiet);
//   for (...) { ...; progress.step(); }
//   progress.finish();
//
// Thread safety: one thread drives a meter. error() in cli.h clears a line that is showing before
// it prints, so messages are never glued to the meter.
#pragma once

#include <chrono>
#include <string>

namespace fetalhc_cli {

// The meter's text after `done` of `total` items in `elapsed_s` seconds (pure; unit-tested).
// Rate and time left are left out until there is something to estimate them from.
std::string progress_text(int done, int total, double elapsed_s, const std::string& unit = "images");
// Seconds as "m:ss", or "h:mm:ss" from an hour up.
std::string format_duration(double seconds);

class Progress {
public:
    // wanted: false for --quiet. Shown only when wanted, stderr is a terminal and total > 1.
    Progress(int total, bool wanted, std::string unit = "images");
    ~Progress();
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;

    void step();    // one more item done; redraws at most a few times a second (and on the last item)
    void finish();  // clears the line (also done by the destructor)

    // Clears the line of the meter now showing, if any (the next step redraws it).
    static void clear_showing();

private:
    void draw();
    int total_, done_ = 0;
    bool enabled_;
    std::string unit_;
    std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace fetalhc_cli
