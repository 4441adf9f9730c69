// Pipeline stage benchmarks at 800x540: decode, network, post-process (boundary), fit, the head
// check (its crop, and crop + network), end to end.
// Run: build/bench/bench_pipeline [--benchmark_repetitions=5 --benchmark_report_aggregates_only=true]
// Synthetic image with a fixed seed, so runs are comparable; the shipped model is used.
#include "fetalhc/fetalhc.h"
#include "synthetic_scan.h"

#include <benchmark/benchmark.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>

namespace {

using fetalhc_bench::synthetic_scan;

const fetalhc::Segmenter& segmenter() {
    static auto s = fetalhc::Segmenter::load(FETALHC_DEFAULT_MODEL, {2});
    if (!s) throw std::runtime_error(s.error());
    return *s;
}

std::vector<unsigned char> png_bytes(const cv::Mat& img) {
    std::vector<unsigned char> buf;
    cv::imencode(".png", img, buf);
    return buf;
}

void BM_Decode(benchmark::State& st) {
    auto bytes = png_bytes(synthetic_scan(int(st.range(1)), int(st.range(0))));
    for (auto _ : st) benchmark::DoNotOptimize(fetalhc::decode_grayscale(bytes, "bench.png"));
}

void BM_Network(benchmark::State& st) {
    cv::Mat img = synthetic_scan(int(st.range(1)), int(st.range(0)));
    for (auto _ : st) benchmark::DoNotOptimize(segmenter().segment(img));
}

void BM_Boundary(benchmark::State& st) {
    cv::Mat img = synthetic_scan(int(st.range(1)), int(st.range(0)));
    auto seg = segmenter().segment(img);
    for (auto _ : st) benchmark::DoNotOptimize(fetalhc::extract_boundary(seg, img));
}

void BM_Fit(benchmark::State& st) {
    cv::Mat img = synthetic_scan(int(st.range(1)), int(st.range(0)));
    auto b = fetalhc::extract_boundary(segmenter().segment(img), img);
    if (b.points.size() < 12) {
        st.SkipWithError("no boundary found on the synthetic image");
        return;
    }
    for (auto _ : st) benchmark::DoNotOptimize(fetalhc::fit_ellipse(b.points));
}

const fetalhc::HeadCheck& head_check() {
    static auto c = fetalhc::HeadCheck::load(
        (std::filesystem::path(FETALHC_DEFAULT_MODEL).parent_path() / fetalhc::kHeadCheckFileName).string());
    if (!c) throw std::runtime_error(c.error());
    return *c;
}

const fetalhc::Ellipse kBenchHead{400, 270, 170, 130, 0.35};  // where synthetic_scan draws a head-sized ring

void BM_HeadCheckCrop(benchmark::State& st) {
    cv::Mat img = synthetic_scan(int(st.range(1)), int(st.range(0)));
    for (auto _ : st) benchmark::DoNotOptimize(fetalhc::head_check_crop(img, kBenchHead));
}

void BM_HeadCheck(benchmark::State& st) {
    cv::Mat img = synthetic_scan(int(st.range(1)), int(st.range(0)));
    const auto& c = head_check();
    for (auto _ : st) benchmark::DoNotOptimize(c.score(img, kBenchHead));
}

void BM_EndToEnd(benchmark::State& st) {
    auto bytes = png_bytes(synthetic_scan(int(st.range(1)), int(st.range(0))));
    fetalhc::Measurer m(segmenter());
    fetalhc::MeasureOptions o;
    o.pixel_size_mm = 0.15;
    for (auto _ : st) {
        auto img = fetalhc::decode_grayscale(bytes, "bench.png");
        benchmark::DoNotOptimize(m.measure(*img, o, "bench.png"));
    }
}

}  // namespace

BENCHMARK(BM_Decode)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Network)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Boundary)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Fit)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_HeadCheckCrop)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_HeadCheck)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EndToEnd)->Args({540, 800})->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
