#include "http_metrics.h"

#include "queue.h"

#include <sstream>

namespace fetalhc::server {
namespace {

// Upper bounds (seconds) of the latency buckets; +Inf is implied.
const std::vector<double> kBounds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

}  // namespace

void HttpMetrics::observe(const std::string& method, const std::string& route, int status, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_[{method, route, status}];
    if (status >= 400) ++errors_[route];
    if (seconds < 0) return;
    Histogram& h = latency_[route];
    if (h.buckets.empty()) h.buckets.assign(kBounds.size(), 0);
    for (size_t i = 0; i < kBounds.size(); ++i)
        if (seconds <= kBounds[i]) {
            ++h.buckets[i];
            break;
        }
    ++h.count;
    h.sum += seconds;
}

std::string HttpMetrics::text(const std::string& extra) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::ostringstream o;
    o << "# HELP fetalhc_http_requests_total HTTP requests by method, route and status.\n"
         "# TYPE fetalhc_http_requests_total counter\n";
    for (const auto& [k, n] : requests_)
        o << "fetalhc_http_requests_total{method=\"" << std::get<0>(k) << "\",route=\"" << std::get<1>(k) << "\",status=\""
          << std::get<2>(k) << "\"} " << n << "\n";
    o << "# HELP fetalhc_http_errors_total HTTP responses with status >= 400, by route.\n"
         "# TYPE fetalhc_http_errors_total counter\n";
    for (const auto& [route, n] : errors_) o << "fetalhc_http_errors_total{route=\"" << route << "\"} " << n << "\n";
    o << "# HELP fetalhc_http_request_duration_seconds Time from routing to the response, by route.\n"
         "# TYPE fetalhc_http_request_duration_seconds histogram\n";
    for (const auto& [route, h] : latency_) {
        unsigned long long cum = 0;
        for (size_t i = 0; i < kBounds.size(); ++i) {
            cum += h.buckets[i];
            o << "fetalhc_http_request_duration_seconds_bucket{route=\"" << route << "\",le=\"" << kBounds[i] << "\"} " << cum
              << "\n";
        }
        o << "fetalhc_http_request_duration_seconds_bucket{route=\"" << route << "\",le=\"+Inf\"} " << h.count << "\n";
        o << "fetalhc_http_request_duration_seconds_sum{route=\"" << route << "\"} " << h.sum << "\n";
        o << "fetalhc_http_request_duration_seconds_count{route=\"" << route << "\"} " << h.count << "\n";
    }
    o << extra;
    return o.str();
}

std::string slot_metrics_text(const SlotsSnapshot& s) {
    std::ostringstream o;
    const auto metric = [&o](const char* name, const char* type, const char* help, auto value) {
        o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << value << "\n";
    };
    metric("fetalhc_inference_slots_in_use", "gauge", "Requests running the network now.", s.in_use);
    metric("fetalhc_inference_slots", "gauge", "Requests that may run the network at once.", s.total);
    metric("fetalhc_inference_queue_depth", "gauge", "Requests waiting for a network slot now.", s.waiting);
    metric("fetalhc_inference_shed_total", "counter",
           "Requests refused with 503 overloaded: their wait for a network slot would have passed --max-queue-ms, or did.", s.shed);
    metric("fetalhc_inference_service_seconds", "gauge",
           "Running estimate (moving average) of the time a measure request holds a network slot; 0 before the first.",
           s.service_ms / 1000);
    metric("fetalhc_inference_service_deviation_seconds", "gauge",
           "Running mean absolute deviation of that time (the wait estimate adds two per sqrt of the queue ahead).",
           s.deviation_ms / 1000);
    metric("fetalhc_inference_max_queue_seconds", "gauge", "Longest wait for a network slot (--max-queue-ms); 0 = no limit.",
           s.max_wait_ms / 1000);
    return o.str();
}

}  // namespace fetalhc::server
