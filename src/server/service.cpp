#include "service.h"

#include "validation.h"

#include "fetalhc/image_io.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>

namespace fetalhc::server {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

// ---- Slots ------------------------------------------------------------------------------------

Slots::Slots(int n) : total_(static_cast<unsigned long long>(std::max(1, n))) {}

void Slots::acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    const unsigned long long ticket = next_++;
    cv_.wait(lock, [&] { return ticket < released_ + total_; });
}

void Slots::release() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        ++released_;
    }
    cv_.notify_all();
}

int Slots::in_use() const {
    std::lock_guard<std::mutex> lock(mu_);
    return int(std::min<unsigned long long>(next_ - released_, total_));
}

// ---- Engine -----------------------------------------------------------------------------------

Engine::Engine(int slots) : slots_(slots) {}

void Engine::load(const std::string& model_path, int torch_threads) {
    const auto t0 = Clock::now();
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    const int threads = torch_threads > 0 ? torch_threads : std::max(1, hw / slots_.total());
    auto seg = Segmenter::load(model_path, {threads});
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (seg) {
            measurer_ = std::make_shared<const Measurer>(*seg);
            state_ = State::Ready;
        } else {
            error_ = seg.error();
            state_ = State::Failed;
        }
    }
    cv_.notify_all();
    if (seg)
        spdlog::info("model loaded in {:.1f} s ({} requests at once, {} LibTorch threads each)", ms_since(t0) / 1000,
                     slots_.total(), threads);
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

// ---- measure and store ------------------------------------------------------------------------

Result<cv::Mat> decode_image(const std::string& bytes, const std::string& name) {
    auto img = decode_grayscale(std::vector<unsigned char>(bytes.begin(), bytes.end()), name);
    if (!img) return ApiError{ErrorCode::ImageUnreadable, img.error()};
    return *img;
}

Result<StoredMeasurement> measure_and_store(Engine& engine, Store& store, const std::string& image_bytes,
                                            const std::string& name, const MeasureOptions& options) {
    if (auto p = pixel_size_problem(options.pixel_size_mm, "pixel_size_mm")) return *p;
    if (options.ga_weeks)
        if (auto p = ga_problem(*options.ga_weeks, "ga_weeks")) return *p;
    const auto t0 = Clock::now();
    auto gray = decode_image(image_bytes, name);
    if (!gray) return gray.error();
    const double decode_ms = ms_since(t0);
    auto model = engine.measurer();
    if (!model) return model.error();

    StoredMeasurement out;
    Expected<Measurement> m = make_error("");
    {
        const auto tq = Clock::now();
        SlotGuard slot(engine.slots());
        out.queue_ms = ms_since(tq);
        m = (*model)->measure(*gray, options, name);
    }
    if (!m) return ApiError{ErrorCode::NoHeadFound, m.error()};
    out.measurement = std::move(*m);
    out.measurement.timings.decode_ms = decode_ms;
    out.measurement.timings.total_ms += decode_ms;
    auto sha = store.put_image(image_bytes);
    if (!sha) return ApiError{ErrorCode::StorageFailed, sha.error()};
    out.image_sha256 = *sha;
    return out;
}

}  // namespace fetalhc::server
