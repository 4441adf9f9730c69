// `fetalhc bench`: median ms per image and frames/s of the whole pipeline on the machine at hand.
#pragma once

#include <string>

namespace fetalhc_cli {

struct BenchArgs {
    std::string image;          // PNG/JPEG on disk; empty = a synthetic 800x540 scan (fixed seed)
    std::string model;
    double pixel_size = 0.15;   // mm per pixel (only scales the numbers, not the work)
    int threads = 2;
    int runs = 30;              // timed end-to-end runs (after 3 warm-up runs)
    int video_frames = 60;      // frames of the synthetic cine loop (0 = skip the video part)
    int workers = 0;            // video: frames measured at once (0 = one per core)
    bool json = false;
};

int run_bench(const BenchArgs& a);  // exit code: 0 ok, 1 failed, 2 usage

}  // namespace fetalhc_cli
