#include "engine.h"

#include "fetalhc/image_io.h"

#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace fetalhc::server {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

Engine::Engine(int slots, double max_queue_ms) : slots_(slots, max_queue_ms), decode_slots_(slots) {}

void Engine::load(const std::string& model_path, int torch_threads, bool mirror_average, const std::string& head_check,
                  bool int8) {
    const auto t0 = Clock::now();
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    const int threads = torch_threads > 0 ? torch_threads : std::max(1, hw / slots_.total());
    if (int8 && !cpu_has_vnni()) spdlog::warn("--int8 on a CPU without 8-bit dot products (VNNI): it may be no faster here");
    auto seg = Segmenter::load(model_path, {threads, mirror_average, int8});
    std::string missing;
    auto check = seg ? head_check_for_model(head_check, model_path, &missing) : std::optional<HeadCheck>();
    if (seg && !check) seg = check.error_value();
    std::shared_ptr<const Measurer> measurer;
    if (seg) {
        if (!missing.empty()) spdlog::warn("no head check at '{}': every outline is measured as a head (--head-check)", missing);
        measurer = std::make_shared<const Measurer>(*seg, std::move(*check));
        // One measurement of a synthetic scan before saying ready: the first inference sets up the
        // kernels (seconds on a cold machine), and a replica that says ready must not spend its
        // first requests' queue time on that (they would be shed).
        MeasureOptions warm;
        warm.pixel_size_mm = 0.15;
        cv::Mat ring(540, 800, CV_8UC1, cv::Scalar(40));  // a skull-like ring: both passes run
        cv::ellipse(ring, {400, 270}, {170, 130}, 20, 0, 360, cv::Scalar(220), 10);
        (void)measurer->measure(ring, warm);
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (seg) {
            measurer_ = std::move(measurer);
            state_ = State::Ready;
        } else {
            error_ = seg.error();
            state_ = State::Failed;
        }
    }
    cv_.notify_all();
    if (seg)
        spdlog::info("model loaded in {:.1f} s ({} requests at once, {} LibTorch threads each{}{})", ms_since(t0) / 1000,
                     slots_.total(), threads, mirror_average ? ", mirror averaging on" : "", int8 ? ", int8" : "");
    else
        spdlog::error("{}", seg.error());
}

Engine::State Engine::state() const {
    std::lock_guard<std::mutex> lock(mu_);
    return state_;
}

std::string Engine::load_error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
}

bool Engine::wait_ready(double timeout_s) const {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return state_ != State::Loading; });
    return state_ == State::Ready;
}

Result<std::shared_ptr<const Measurer>> Engine::measurer() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::Loading)
        return ApiError{ErrorCode::ModelLoading, "the model is still loading; retry in a few seconds (GET /health says when ready)"};
    if (state_ == State::Failed) return ApiError{ErrorCode::ModelUnavailable, "the model could not be loaded: " + error_};
    return measurer_;
}

Result<cv::Mat> decode_image(Slots& decode_slots, const std::string& bytes, const std::string& name) {
    SlotGuard slot(decode_slots);
    auto img = decode_grayscale(std::vector<unsigned char>(bytes.begin(), bytes.end()), name);
    if (!img) return api_error(img.error_value());
    return *img;
}

}  // namespace fetalhc::server
