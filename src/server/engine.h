// The model engine (the "server-context" part): the network, loaded once on a background thread
// and shared read-only, its loading state, and the slots (queue.h) that bound how many callers run
// it, and how many decode request bytes, at once.
//
//   Engine engine(/*slots=*/2);
//   std::thread([&] { engine.load("models/fetalhc_unet.pt", /*torch_threads=*/1); }).detach();
//   auto model = engine.measurer();   // model_loading until load() ends, model_unavailable if it failed
//
// Thread safety: every member may be called from many threads at once.
#pragma once

#include "errors.h"
#include "queue.h"

#include "fetalhc/measure.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

namespace fetalhc::server {

// The model and its loading state (Loading until load() ends, then Ready or Failed), and the
// slots that bound how many callers run the network at once.
class Engine {
public:
    enum class State { Loading, Ready, Failed };

    // max_queue_ms: how long measure_and_store may wait for a network slot (0 = as long as it takes).
    explicit Engine(int slots, double max_queue_ms = kDefaultMaxQueueMs);
    static constexpr double kDefaultMaxQueueMs = 5000;
    // Loads the model (blocking: call it on a background thread). torch_threads: LibTorch threads
    // per request; 0 = cores / slots (at least 1). mirror_average: SegmenterOptions::mirror_average.
    // head_check: as ServerOptions::head_check; a check that cannot be loaded fails the load.
    // int8: SegmenterOptions::int8.
    void load(const std::string& model_path, int torch_threads, bool mirror_average = false,
              const std::string& head_check = "", bool int8 = false);

    State state() const;
    std::string load_error() const;     // why loading failed ("" otherwise)
    bool ready() const { return state() == State::Ready; }
    // Blocks until loading ends (or the timeout passes); true when ready.
    bool wait_ready(double timeout_s) const;
    // The loaded model, or model_loading / model_unavailable.
    Result<std::shared_ptr<const Measurer>> measurer() const;
    Slots& slots() { return slots_; }
    // Decode slots: every decode of request bytes (image, mask, DICOM) runs holding one, so at most
    // this many decodes (each capped at kMaxImagePixels from the header) allocate at once. Same count
    // as the network slots.
    Slots& decode_slots() { return decode_slots_; }

private:
    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    State state_ = State::Loading;
    std::string error_;
    std::shared_ptr<const Measurer> measurer_;
    Slots slots_;
    Slots decode_slots_;
};

// Decodes image bytes (PNG, JPEG, BMP, TIFF; any depth) to 8-bit gray; image_unreadable on failure.
// `name` is used in the message.
// Runs on one of `decode_slots` (Engine::decode_slots()); the pixel budget (kMaxImagePixels) is
// checked from the header by the library before any pixel is allocated.
Result<cv::Mat> decode_image(Slots& decode_slots, const std::string& bytes, const std::string& name);

}  // namespace fetalhc::server
