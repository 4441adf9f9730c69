// The admission queue in front of the network (the "server-queue" part): a bounded number of
// slots, handed out first come, first served, with an optional wait limit. Every caller that runs
// the network holds one: HTTP requests (measure, segment, DICOM uploads) through acquire_within,
// which refuses a request whose estimated wait exceeds the limit (overloaded, 503 with
// Retry-After) and one that still waits past it, never serving it late; the DICOM node's workers
// through acquire (no limit: the node bounds its own backlog, DicomNodeOptions::max_pending).
// The Engine (engine.h) owns the network slots and the decode slots.
//
//   Slots slots(/*n=*/2, /*max_wait_ms=*/5000);
//   Admission a;
//   SlotGuard slot(slots, a);
//   if (!a.admitted) return overloaded_error(a, slots);
//   ... run the network ...
//
// Thread safety: every member may be called from many threads at once.
#pragma once

#include "errors.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

namespace fetalhc::server {

// The wait a request arriving now should not exceed for a slot, in ms: 0 when one of the `slots`
// slots is free; else the request is served at the k-th release (k = waiting + 1), and with every
// slot busy k releases take about k service times over `slots` slots. Service times vary (the
// machine is shared): k of them sum to k * service_ms with a spread growing like sqrt(k), so the
// estimate adds two spreads, 2 * sqrt(k) * deviation_ms (deviation_ms: the mean absolute deviation
// of the service time; as TCP bounds a round trip by its mean plus deviations). Erring long sheds a
// little earlier; erring short admits requests that are then shed after waiting the whole limit.
double estimated_wait_ms(int in_use, int waiting, int slots, double service_ms, double deviation_ms = 0);

// What Slots::acquire_within decided for one request.
struct Admission {
    bool admitted = false;          // a slot is held (release it)
    double waited_ms = 0;           // time spent in the queue
    double estimated_wait_ms = 0;   // the estimate at arrival
    int retry_after_s = 0;          // refused: seconds until the queue ahead should have drained (>= 1)
};

// The slots' state for /metrics.
struct SlotsSnapshot {
    int total = 0, in_use = 0, waiting = 0;
    unsigned long long shed = 0;   // requests refused (at once or after waiting max_wait_ms)
    double service_ms = 0;         // running estimate of the time a request holds a slot (0: none yet)
    double deviation_ms = 0;       // running mean absolute deviation of that time
    double max_wait_ms = 0;        // 0 = no limit
};

// How many requests may run the network at once. Waiting requests are served first come, first
// served (a FIFO queue; a released slot is handed to the oldest waiter), so that under load no
// request waits much longer than the others. acquire() waits as long as it takes; acquire_within()
// waits at most max_wait_ms (see the file comment) and feeds the service-time estimate through
// release(held_ms).
class Slots {
public:
    // max_wait_ms: the bound of acquire_within; 0 = none (it waits as long as it takes).
    explicit Slots(int n, double max_wait_ms = 0);
    void acquire();
    // Refused at once when no slot is free and estimated_wait_ms(...) > max_wait_ms, or after
    // waiting max_wait_ms without getting a slot; both count as shed.
    Admission acquire_within();
    void release();
    // Also records `held_ms` in the service-time estimate (exponentially weighted moving averages of
    // the time and of its absolute deviation).
    void release(double held_ms);
    void record_service_ms(double held_ms);
    int total() const { return total_; }
    void set_max_wait_ms(double ms);
    // The state (in use, waiting, shed, estimates) at one instant, for /metrics and tests.
    SlotsSnapshot snapshot() const;

private:
    struct Waiter;
    int retry_after_locked() const;
    void hand_over_locked();
    void record_locked(double held_ms);
    mutable std::mutex mu_;
    std::deque<Waiter*> queue_;   // waiting requests, oldest first (they live on their own stacks)
    int in_use_ = 0;              // invariant: queue_ is empty unless in_use_ == total_
    const int total_;
    double max_wait_ms_;
    double service_ms_ = 0, deviation_ms_ = 0;
    bool have_estimate_ = false;
    unsigned long long shed_ = 0;
};

// Holds a slot for its lifetime. SlotGuard(s) waits as long as it takes; SlotGuard(s, admission)
// waits through acquire_within and holds a slot only when admission.admitted (then its held time
// feeds the service-time estimate).
class SlotGuard {
public:
    explicit SlotGuard(Slots& s) : slots_(s), held_(true) { slots_.acquire(); }
    SlotGuard(Slots& s, Admission& admission);
    ~SlotGuard();
    SlotGuard(const SlotGuard&) = delete;
    SlotGuard& operator=(const SlotGuard&) = delete;

private:
    Slots& slots_;
    bool held_ = false, timed_ = false;
    std::chrono::steady_clock::time_point since_;
};

// The overloaded error (503 with Retry-After: admission.retry_after_s) of a refused admission.
ApiError overloaded_error(const Admission& a, const Slots& slots);

}  // namespace fetalhc::server
