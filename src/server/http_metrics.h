// Request counters and latency histograms for GET /metrics (Prometheus text format 0.0.4).
// Thread safety: observe() and text() may be called concurrently.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace fetalhc::server {

struct SlotsSnapshot;  // queue.h

class HttpMetrics {
public:
    // route is the route pattern (e.g. "/v1/pregnancies/{id}"), never the raw path. A negative
    // latency means it was not measured (a request rejected before routing): counted only.
    void observe(const std::string& method, const std::string& route, int status, double seconds);
    // extra: more metric lines (gauges of the server) appended as they are.
    std::string text(const std::string& extra) const;

private:
    struct Histogram {
        std::vector<unsigned long long> buckets;  // cumulative counts are formed in text()
        unsigned long long count = 0;
        double sum = 0;
    };
    mutable std::mutex mu_;
    std::map<std::tuple<std::string, std::string, int>, unsigned long long> requests_;  // method, route, status
    std::map<std::string, unsigned long long> errors_;                                 // route -> 4xx/5xx count
    std::map<std::string, Histogram> latency_;                                         // route
};

// The network slots and their queue as Prometheus gauges and a counter: slots in use and in all,
// requests waiting for one (queue depth), requests shed for overload, the running estimate of the
// time a request holds a slot, and the wait limit (--max-queue-ms; 0 = none).
std::string slot_metrics_text(const SlotsSnapshot& s);

}  // namespace fetalhc::server
