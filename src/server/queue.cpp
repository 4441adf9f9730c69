#include "queue.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

namespace fetalhc::server {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

double estimated_wait_ms(int in_use, int waiting, int slots, double service_ms, double deviation_ms) {
    slots = std::max(1, slots);
    if (in_use < slots && waiting == 0) return 0;
    const double k = double(std::max(0, waiting) + 1);
    return (k * std::max(0.0, service_ms) + 2 * std::sqrt(k) * std::max(0.0, deviation_ms)) / double(slots);
}

// One request in the queue; lives on the waiting thread's stack, reached through queue_.
struct Slots::Waiter {
    std::condition_variable cv;
    bool granted = false;
};

Slots::Slots(int n, double max_wait_ms) : total_(std::max(1, n)), max_wait_ms_(std::max(0.0, max_wait_ms)) {}

void Slots::acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    if (in_use_ < total_ && queue_.empty()) {
        ++in_use_;
        return;
    }
    Waiter w;
    queue_.push_back(&w);
    w.cv.wait(lock, [&] { return w.granted; });
}

Admission Slots::acquire_within() {
    const auto t0 = Clock::now();
    Admission a;
    std::unique_lock<std::mutex> lock(mu_);
    if (in_use_ < total_ && queue_.empty()) {
        ++in_use_;
        a.admitted = true;
        return a;
    }
    a.estimated_wait_ms = estimated_wait_ms(in_use_, int(queue_.size()), total_, service_ms_, deviation_ms_);
    if (max_wait_ms_ > 0 && a.estimated_wait_ms > max_wait_ms_) {
        ++shed_;
        a.retry_after_s = retry_after_locked();
        return a;
    }
    Waiter w;
    queue_.push_back(&w);
    if (max_wait_ms_ > 0) {
        const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(max_wait_ms_));
        w.cv.wait_until(lock, deadline, [&] { return w.granted; });
    } else {
        w.cv.wait(lock, [&] { return w.granted; });
    }
    a.waited_ms = ms_since(t0);
    if (w.granted) {
        a.admitted = true;
        return a;
    }
    // Waited the whole limit: leave the queue (the slot goes to the next one when it comes).
    queue_.erase(std::find(queue_.begin(), queue_.end(), &w));
    ++shed_;
    a.retry_after_s = retry_after_locked();
    return a;
}

// The slot of the caller goes to the oldest waiter, or back to the pool. Notified under the lock:
// the waiter's condition variable lives on its stack, which it may leave as soon as it sees `granted`.
void Slots::hand_over_locked() {
    if (queue_.empty()) {
        in_use_ = std::max(0, in_use_ - 1);
        return;
    }
    Waiter* next = queue_.front();
    queue_.pop_front();
    next->granted = true;
    next->cv.notify_one();
}

void Slots::release() {
    std::lock_guard<std::mutex> lock(mu_);
    hand_over_locked();
}

void Slots::release(double held_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    hand_over_locked();
    record_locked(held_ms);
}

void Slots::record_service_ms(double held_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    record_locked(held_ms);
}

void Slots::record_locked(double held_ms) {
    if (!(held_ms >= 0) || !std::isfinite(held_ms)) return;
    // Weights of the newest sample (those of TCP's round-trip estimate): the mean follows a change
    // within ~16 requests, the deviation a little faster.
    constexpr double kMeanWeight = 0.125, kDeviationWeight = 0.25;
    if (!have_estimate_) {
        service_ms_ = held_ms;
        deviation_ms_ = held_ms / 2;
        have_estimate_ = true;
        return;
    }
    deviation_ms_ = (1 - kDeviationWeight) * deviation_ms_ + kDeviationWeight * std::abs(held_ms - service_ms_);
    service_ms_ = (1 - kMeanWeight) * service_ms_ + kMeanWeight * held_ms;
}

// Seconds until the requests now in service and waiting should have gone through (at least 1).
int Slots::retry_after_locked() const {
    const double drain_ms = double(in_use_ + int(queue_.size())) * service_ms_ / double(total_);
    return std::max(1, int(std::ceil(drain_ms / 1000)));
}

void Slots::set_max_wait_ms(double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    max_wait_ms_ = std::max(0.0, ms);
}

SlotsSnapshot Slots::snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {total_, in_use_, int(queue_.size()), shed_, service_ms_, deviation_ms_, max_wait_ms_};
}

SlotGuard::SlotGuard(Slots& s, Admission& admission) : slots_(s) {
    admission = slots_.acquire_within();
    held_ = timed_ = admission.admitted;
    since_ = Clock::now();
}

SlotGuard::~SlotGuard() {
    if (!held_) return;
    if (timed_) slots_.release(ms_since(since_));
    else slots_.release();
}

ApiError overloaded_error(const Admission& a, const Slots& slots) {
    const SlotsSnapshot s = slots.snapshot();
    char why[160];
    if (a.waited_ms > 0)
        std::snprintf(why, sizeof why, "waited %.0f ms for one of the %d network slots without getting one", a.waited_ms, s.total);
    else
        std::snprintf(why, sizeof why, "the %d network slots are busy and the queue ahead would take about %.0f ms", s.total,
                      a.estimated_wait_ms);
    return ApiError{ErrorCode::Overloaded,
                    std::string("the server is overloaded: ") + why + ", over its limit of " + std::to_string(int(s.max_wait_ms)) +
                        " ms (serve --max-queue-ms); the request was not run, retry in " + std::to_string(std::max(1, a.retry_after_s)) +
                        " s",
                    std::max(1, a.retry_after_s)};
}

}  // namespace fetalhc::server
