#include "fetalhc/server.h"

#include "assets.h"
#include "http_metrics.h"
#include "openapi.h"

#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "fetalhc/store.h"

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using httplib::Request;
using httplib::Response;

constexpr size_t kMaxFitPoints = 20000;  // a head boundary needs hundreds; bounds the RANSAC cost

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// A failed request: thrown by the validation helpers, turned into {"error": message} by the route wrapper.
struct HttpError {
    int status;
    std::string message;
};

void send_json(Response& res, int status, const json& j) {
    res.status = status;
    res.set_content(j.dump(), "application/json");
}

void send_error(Response& res, int status, const std::string& message) { send_json(res, status, {{"error", message}}); }

// How many requests may run the network at once. Waiting requests are admitted first come, first
// served (tickets), so that under load no request waits much longer than the others.
class Slots {
public:
    explicit Slots(int n) : total_(n) {}
    void acquire() {
        std::unique_lock<std::mutex> lock(mu_);
        const unsigned long long ticket = next_++;
        cv_.wait(lock, [&] { return ticket < released_ + total_; });
    }
    void release() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            ++released_;
        }
        cv_.notify_all();
    }
    int in_use() const {
        std::lock_guard<std::mutex> lock(mu_);
        return int(std::min<unsigned long long>(next_ - released_, total_));
    }
    int total() const { return int(total_); }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    unsigned long long next_ = 0, released_ = 0;
    const unsigned long long total_;
};

struct SlotGuard {
    explicit SlotGuard(Slots& s) : slots(s) { slots.acquire(); }
    ~SlotGuard() { slots.release(); }
    Slots& slots;
};

// ---- input validation -------------------------------------------------------------------------

std::optional<double> parse_number(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    if (i == s.size()) return std::nullopt;
    char* end = nullptr;
    const double v = std::strtod(s.c_str() + i, &end);
    if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
    return v;
}

// A multipart field's text, when the field is present.
std::optional<std::string> form_field(const Request& req, const std::string& name) {
    if (!req.has_file(name)) return std::nullopt;
    return req.get_file_value(name).content;
}

void check_pixel(double mm, const std::string& field) {
    const std::string e = check_pixel_size(mm, "'" + field + "'");
    if (!e.empty()) throw HttpError{400, e};
}

double form_pixel_size(const Request& req) {
    auto v = form_field(req, "pixel_size_mm");
    if (!v) throw HttpError{400, "the form field 'pixel_size_mm' is missing; send the pixel size in mm per pixel (e.g. 0.13)"};
    auto x = parse_number(*v);
    if (!x) throw HttpError{400, "the form field 'pixel_size_mm' is not a number; send mm per pixel, e.g. 0.13"};
    check_pixel(*x, "pixel_size_mm");
    return *x;
}

double check_ga(double w, const std::string& field) {
    if (!(w > 0 && w < 45))
        throw HttpError{400, "'" + field + "' must be a gestational age in weeks between 0 and 45 (e.g. 20.5)"};
    return w;
}

std::optional<double> form_ga(const Request& req) {
    auto v = form_field(req, "ga_weeks");
    if (!v || v->empty()) return std::nullopt;
    auto x = parse_number(*v);
    if (!x) throw HttpError{400, "the form field 'ga_weeks' is not a number; send weeks, e.g. 20.5, or leave it out"};
    return check_ga(*x, "ga_weeks");
}

void check_pregnancy_id(const std::string& id, const std::string& field) {
    if (!valid_pregnancy_id(id))
        throw HttpError{400, "'" + field + "' must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' or '-' (a pseudonymous id, "
                             "never a name or a hospital number)"};
}

void check_date(const std::string& d, const std::string& field) {
    if (!valid_date(d)) throw HttpError{400, "'" + field + "' must be a calendar date as YYYY-MM-DD (e.g. 2026-03-14)"};
}

const httplib::MultipartFormData& require_upload(const Request& req, const std::string& field) {
    if (!req.is_multipart_form_data())
        throw HttpError{400, "send the image as multipart/form-data with a file field '" + field + "'"};
    auto it = req.files.find(field);  // a reference into the request, not a copy of the upload
    if (it == req.files.end())
        throw HttpError{400, "the form has no file field '" + field + "'; attach the image as '" + field + "'"};
    const auto& f = it->second;
    if (f.content.empty()) throw HttpError{400, "the file field '" + field + "' is empty (0 bytes); attach an image file"};
    return f;
}

std::string upload_name(const httplib::MultipartFormData& f) { return f.filename.empty() ? f.name : f.filename; }

cv::Mat decode_upload(const httplib::MultipartFormData& f) {
    auto img = decode_grayscale(std::vector<unsigned char>(f.content.begin(), f.content.end()), upload_name(f));
    if (!img) throw HttpError{400, img.error()};
    return *img;
}

json parse_json_body(const Request& req) {
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        throw HttpError{400, "the request body must be a JSON object (Content-Type: application/json); see /openapi.json"};
    return j;
}

double json_number(const json& j, const std::string& key, const std::string& where = "") {
    const std::string name = where.empty() ? key : where + "." + key;
    if (!j.contains(key)) throw HttpError{400, "'" + name + "' is missing"};
    if (!j[key].is_number() || !std::isfinite(j[key].get<double>())) throw HttpError{400, "'" + name + "' must be a finite number"};
    return j[key].get<double>();
}

std::string json_string(const json& j, const std::string& key) {
    if (!j.contains(key)) throw HttpError{400, "'" + key + "' is missing"};
    if (!j[key].is_string()) throw HttpError{400, "'" + key + "' must be a string"};
    return j[key].get<std::string>();
}

std::optional<double> json_ga(const json& j) {
    if (!j.contains("ga_weeks") || j["ga_weeks"].is_null()) return std::nullopt;
    return check_ga(json_number(j, "ga_weeks"), "ga_weeks");
}

Ellipse json_ellipse(const json& j, const std::string& key) {
    if (!j.contains(key) || !j[key].is_object())
        throw HttpError{400, "'" + key + "' must be an object {center_x, center_y, semi_axis_a, semi_axis_b, angle_rad} in pixels"};
    const json& e = j[key];
    Ellipse el{json_number(e, "center_x", key), json_number(e, "center_y", key), json_number(e, "semi_axis_a", key),
               json_number(e, "semi_axis_b", key), json_number(e, "angle_rad", key)};
    if (!(el.a > 0 && el.b > 0)) throw HttpError{400, "'" + key + "' semi-axes must be positive (pixels)"};
    return el.normalized();
}

json ellipse_json(const Ellipse& e) {
    return {{"center_x", e.cx}, {"center_y", e.cy}, {"semi_axis_a", e.a}, {"semi_axis_b", e.b}, {"angle_rad", e.angle}};
}

json opt_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

json exam_json(const Exam& e) {
    return {{"id", e.id},
            {"pregnancy_id", e.pregnancy_id},
            {"exam_date", e.exam_date},
            {"image_sha256", e.image_sha256},
            {"image_url", "/v1/images/" + e.image_sha256},
            {"pixel_size_mm", e.pixel_size_mm},
            {"ellipse_px", ellipse_json(e.ellipse_px)},
            {"hc_mm", e.hc_mm},
            {"bpd_mm", e.bpd_mm},
            {"ofd_mm", e.ofd_mm},
            {"ga_hadlock_weeks", opt_json(e.ga_hadlock_weeks)},
            {"ga_intergrowth_weeks", opt_json(e.ga_intergrowth_weeks)},
            {"ga_weeks_given", opt_json(e.ga_weeks_given)},
            {"centile", opt_json(e.centile)},
            {"quality", e.quality},
            {"reasons", e.reasons},
            {"corrected", e.corrected},
            {"accepted", e.accepted},
            {"created_at", e.created_at}};
}

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
}

std::string csv_number(const std::optional<double>& v, int digits) {
    if (!v || !std::isfinite(*v)) return "";
    std::ostringstream s;
    s.setf(std::ios::fixed);
    s.precision(digits);
    s << *v;
    return s.str();
}

std::string history_csv(const History& h) {
    std::string out =
        "exam_id,pregnancy_id,exam_date,image_sha256,pixel_size_mm,center_x_px,center_y_px,semi_axis_a_px,semi_axis_b_px,"
        "angle_rad,hc_mm,bpd_mm,ofd_mm,ga_hadlock_weeks,ga_intergrowth_weeks,ga_weeks_given,centile,quality,reasons,corrected,"
        "accepted,created_at\n";
    for (const Exam& e : h.exams) {
        std::string reasons;
        for (size_t i = 0; i < e.reasons.size(); ++i) reasons += (i ? "; " : "") + e.reasons[i];
        const Ellipse& el = e.ellipse_px;
        const std::vector<std::string> f{std::to_string(e.id), e.pregnancy_id, e.exam_date, e.image_sha256,
                                         csv_number(e.pixel_size_mm, 6), csv_number(el.cx, 3), csv_number(el.cy, 3),
                                         csv_number(el.a, 3), csv_number(el.b, 3), csv_number(el.angle, 6), csv_number(e.hc_mm, 2),
                                         csv_number(e.bpd_mm, 2), csv_number(e.ofd_mm, 2), csv_number(e.ga_hadlock_weeks, 2),
                                         csv_number(e.ga_intergrowth_weeks, 2), csv_number(e.ga_weeks_given, 2),
                                         csv_number(e.centile, 1), e.quality, reasons, e.corrected ? "true" : "false",
                                         e.accepted ? "true" : "false", e.created_at};
        for (size_t i = 0; i < f.size(); ++i) out += (i ? "," : "") + csv_field(f[i]);
        out += "\n";
    }
    return out;
}

std::string content_type_for(const std::string& name) {
    static const std::map<std::string, std::string> types{
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".json", "application/json"},         {".svg", "image/svg+xml"},
        {".png", "image/png"},                 {".ico", "image/x-icon"},
        {".woff2", "font/woff2"},              {".txt", "text/plain; charset=utf-8"}};
    auto it = types.find(fs::path(name).extension().string());
    return it == types.end() ? "application/octet-stream" : it->second;
}

// Image type from its first bytes (stored images keep no extension).
std::string sniff_image_type(const std::string& b) {
    auto starts = [&](const std::string& magic) { return b.compare(0, magic.size(), magic) == 0; };
    if (starts("\x89PNG")) return "image/png";
    if (starts("\xFF\xD8")) return "image/jpeg";
    if (starts("BM")) return "image/bmp";
    if (starts(std::string("II*\0", 4)) || starts(std::string("MM\0*", 4))) return "image/tiff";
    return "application/octet-stream";
}

bool same_token(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(1, b.size())];
    return diff == 0;
}

// Boundary points of a binary mask image (white = head) with the library's sub-pixel extraction:
// the mask is treated as a probability map in an identity frame.
Boundary mask_boundary(const cv::Mat& gray8) {
    Segmentation s;
    cv::Mat bin = gray8 >= 128;
    bin.convertTo(s.net_probability, CV_32F, 1.0 / 255);
    s.letterbox = Letterbox::fit(gray8.size(), gray8.size());
    return extract_boundary(s, cv::Mat());
}

thread_local Clock::time_point t_request_start;
thread_local bool t_request_timed = false;

}  // namespace

bool is_loopback_host(const std::string& host) {
    return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

struct Server::Impl {
    ServerOptions opt;
    std::string token;  // empty: no token required
    std::unique_ptr<Store> store;
    httplib::Server http;
    int port = 0;
    server::HttpMetrics metrics;
    std::unique_ptr<Slots> slots;
    std::string openapi;

    struct Route {
        std::string method;
        std::regex pattern;
        std::string label;
    };
    std::vector<Route> routes;

    enum class ModelState { Loading, Ready, Failed };
    mutable std::mutex model_mu;
    mutable std::condition_variable model_cv;
    ModelState state = ModelState::Loading;
    std::string model_error;
    std::shared_ptr<const Measurer> measurer;
    std::thread loader, listener;
    std::mutex stop_mu;  // start/run/stop
    bool started = false;
    std::atomic<bool> listen_returned{false};

    // ---- plumbing ---------------------------------------------------------------------------------

    using Handler = std::function<void(const Request&, Response&)>;

    void route(const std::string& method, const std::string& pattern, const std::string& label, Handler fn) {
        routes.push_back({method, std::regex(pattern), label});
        // The token is checked here, after httplib has read the body, so that a rejected request
        // leaves the keep-alive connection in a clean state.
        const bool needs_token = method != "GET";
        auto wrapped = [this, fn, needs_token](const Request& req, Response& res) {
            try {
                if (needs_token) check_token(req, res);
                fn(req, res);
            } catch (const HttpError& e) {
                send_error(res, e.status, e.message);
            } catch (const std::exception& e) {
                spdlog::error("{} handler failed: {}", req.method, e.what());
                send_error(res, 500, std::string("internal error: ") + e.what() + "; please report it with the server log");
            }
        };
        if (method == "GET") http.Get(pattern, httplib::Server::Handler(wrapped));
        else http.Post(pattern, httplib::Server::Handler(wrapped));
    }

    void check_token(const Request& req, Response& res) const {
        if (token.empty()) return;
        const std::string auth = req.get_header_value("Authorization");
        const std::string prefix = "Bearer ";
        if (auth.rfind(prefix, 0) == 0 && same_token(auth.substr(prefix.size()), token)) return;
        res.set_header("WWW-Authenticate", "Bearer");
        throw HttpError{401, auth.empty() ? "this server requires 'Authorization: Bearer <token>' on every POST; the token is the "
                                            "first line of the server's --token-file"
                                          : "the bearer token is wrong; use the first line of the server's --token-file"};
    }

    std::string route_label(const Request& req) const {
        for (const auto& r : routes)
            if (r.method == req.method && std::regex_match(req.path, r.pattern)) return r.label;
        return "unmatched";
    }

    std::shared_ptr<const Measurer> require_model() const {
        std::lock_guard<std::mutex> lock(model_mu);
        if (state == ModelState::Loading) throw HttpError{503, "the model is still loading; retry in a few seconds (GET /health says when ready)"};
        if (state == ModelState::Failed) throw HttpError{503, "the model could not be loaded: " + model_error};
        return measurer;
    }

    void load_model() {
        const auto t0 = Clock::now();
        const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
        const int torch_threads = opt.torch_threads > 0 ? opt.torch_threads : std::max(1, hw / slots->total());
        auto seg = Segmenter::load(opt.model_path, {torch_threads});
        {
            std::lock_guard<std::mutex> lock(model_mu);
            if (seg) {
                measurer = std::make_shared<const Measurer>(*seg);
                state = ModelState::Ready;
            } else {
                model_error = seg.error();
                state = ModelState::Failed;
            }
        }
        model_cv.notify_all();
        if (seg)
            spdlog::info("model loaded in {:.1f} s ({} requests at once, {} LibTorch threads each)", ms_since(t0) / 1000,
                         slots->total(), torch_threads);
        else
            spdlog::error("{}", seg.error());
    }

    void install() {
        const size_t threads = size_t(std::max(1, opt.connection_threads));
        http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
        http.set_payload_max_length(opt.max_upload_bytes);
        http.set_keep_alive_max_count(1000);
        // Generous socket timeouts: uploads over slow links, and a machine busy with other work.
        http.set_read_timeout(30, 0);
        http.set_write_timeout(30, 0);
        http.set_tcp_nodelay(true);
        // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server
        // bind the same port silently and share its connections.
        http.set_socket_options([](socket_t sock) {
            int yes = 1;
            setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
        });
        http.set_pre_routing_handler([](const Request&, Response&) {
            t_request_start = Clock::now();
            t_request_timed = true;
            return httplib::Server::HandlerResponse::Unhandled;
        });
        http.set_error_handler(httplib::Server::HandlerWithResponse([this](const Request& req, Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            std::string msg;
            switch (res.status) {
                case 404: msg = "no endpoint " + req.method + " " + req.path + "; the API is described at /openapi.json"; break;
                case 413:
                    msg = "the request body is larger than this server's upload limit of " +
                          std::to_string(opt.max_upload_bytes / (1 << 20)) + " MB (" + std::to_string(opt.max_upload_bytes) +
                          " bytes); send a smaller image (PNG or JPEG) or start serve with a larger --max-upload-mb";
                    break;
                case 400: msg = "malformed HTTP request; check the multipart/form-data or JSON encoding"; break;
                default: msg = "HTTP error " + std::to_string(res.status);
            }
            send_error(res, res.status, msg);
            return httplib::Server::HandlerResponse::Handled;
        }));
        http.set_logger([this](const Request& req, const Response& res) {
            double seconds = -1;
            if (t_request_timed) seconds = ms_since(t_request_start) / 1000;
            t_request_timed = false;
            const std::string label = route_label(req);
            // Route pattern only: the path may hold a pregnancy id or an image hash.
            if (opt.log_requests) spdlog::info("{} {} {} {:.1f} ms", req.method, label, res.status, seconds < 0 ? 0.0 : seconds * 1000);
            metrics.observe(req.method, label, res.status, seconds);
        });

        route("GET", "/", "/", [](const Request&, Response& res) { serve_asset("index.html", res); });
        route("GET", R"(/static/(.+))", "/static/{file}", [](const Request& req, Response& res) { serve_asset(req.matches[1].str(), res); });
        route("GET", "/openapi.json", "/openapi.json", [this](const Request&, Response& res) { res.set_content(openapi, "application/json"); });
        route("GET", "/health", "/health", [this](const Request&, Response& res) { health(res); });
        route("GET", "/metrics", "/metrics", [this](const Request&, Response& res) {
            std::ostringstream g;
            g << "# HELP fetalhc_model_ready 1 when the model is loaded.\n# TYPE fetalhc_model_ready gauge\nfetalhc_model_ready "
              << (ready() ? 1 : 0) << "\n# HELP fetalhc_inference_slots_in_use Requests running the network now.\n"
              << "# TYPE fetalhc_inference_slots_in_use gauge\nfetalhc_inference_slots_in_use " << slots->in_use() << "\n"
              << "# HELP fetalhc_inference_slots Requests that may run the network at once.\n"
              << "# TYPE fetalhc_inference_slots gauge\nfetalhc_inference_slots " << slots->total() << "\n";
            res.set_content(metrics.text(g.str()), "text/plain; version=0.0.4; charset=utf-8");
        });
        route("GET", "/v1/growth-curve", "/v1/growth-curve", [](const Request&, Response& res) { growth_curve(res); });
        route("POST", "/v1/measure", "/v1/measure", [this](const Request& req, Response& res) { measure(req, res); });
        route("POST", "/v1/segment", "/v1/segment", [this](const Request& req, Response& res) { segment(req, res); });
        route("POST", "/v1/fit-ellipse", "/v1/fit-ellipse", [](const Request& req, Response& res) { fit(req, res); });
        route("POST", "/v1/perimeter", "/v1/perimeter", [](const Request& req, Response& res) { perimeter(req, res); });
        route("POST", "/v1/exams", "/v1/exams", [this](const Request& req, Response& res) { add_exam(req, res); });
        route("GET", R"(/v1/images/([^/]+))", "/v1/images/{sha256}", [this](const Request& req, Response& res) { image(req, res); });
        route("GET", R"(/v1/pregnancies/([^/]+))", "/v1/pregnancies/{id}",
              [this](const Request& req, Response& res) { pregnancy(req, res, false); });
        route("GET", R"(/v1/pregnancies/([^/]+)/export\.csv)", "/v1/pregnancies/{id}/export.csv",
              [this](const Request& req, Response& res) { pregnancy(req, res, true); });
    }

    bool ready() const {
        std::lock_guard<std::mutex> lock(model_mu);
        return state == ModelState::Ready;
    }

    // ---- handlers ---------------------------------------------------------------------------------

    static void serve_asset(const std::string& name, Response& res) {
        for (const auto& a : server::embedded_assets())
            if (name == a.name) {
                res.set_content(reinterpret_cast<const char*>(a.data), a.size, content_type_for(name).c_str());
                return;
            }
        throw HttpError{404, "no file '" + name + "' in the web page built into this server"};
    }

    void health(Response& res) const {
        std::lock_guard<std::mutex> lock(model_mu);
        if (state == ModelState::Ready) {
            const auto& info = measurer->segmenter().info();
            send_json(res, 200, {{"status", "ready"}, {"model", fs::path(info.path).filename().string()}, {"parameters", info.parameters},
                                 {"inference_slots", slots->total()}});
        } else if (state == ModelState::Loading) {
            send_json(res, 503, {{"status", "loading"}, {"error", "the model is still loading"}});
        } else {
            send_json(res, 503, {{"status", "failed"}, {"error", "the model could not be loaded: " + model_error}});
        }
    }

    static void growth_curve(Response& res) {
        json ga = json::array(), p3 = json::array(), p50 = json::array(), p97 = json::array();
        for (int k = 0; k <= 52; ++k) {
            const double w = 14.0 + 0.5 * k;
            ga.push_back(w);
            p3.push_back(intergrowth_hc_at_centile(w, 3));
            p50.push_back(intergrowth_hc_at_centile(w, 50));
            p97.push_back(intergrowth_hc_at_centile(w, 97));
        }
        send_json(res, 200, {{"ga_weeks", ga}, {"p3", p3}, {"p50", p50}, {"p97", p97}, {"source", "INTERGROWTH-21st HC standard (Papageorghiou 2014)"}});
    }

    void measure(const Request& req, Response& res) {
        auto model = require_model();
        const auto& up = require_upload(req, "image");
        MeasureOptions o;
        o.pixel_size_mm = form_pixel_size(req);
        o.ga_weeks = form_ga(req);
        auto pid = form_field(req, "pregnancy_id");
        if (pid) check_pregnancy_id(*pid, "pregnancy_id");
        auto date = form_field(req, "exam_date");
        if (date) check_date(*date, "exam_date");
        const auto t0 = Clock::now();
        cv::Mat gray = decode_upload(up);
        const double decode_ms = ms_since(t0);
        Expected<Measurement> m = make_error("");
        double queue_ms = 0;
        {
            const auto tq = Clock::now();
            SlotGuard slot(*slots);
            queue_ms = ms_since(tq);
            m = model->measure(gray, o, upload_name(up));
        }
        if (!m) throw HttpError{422, m.error()};
        m->timings.decode_ms = decode_ms;
        m->timings.total_ms += decode_ms;
        auto sha = store->put_image(up.content);
        if (!sha) throw HttpError{500, sha.error()};
        json j = json::parse(to_json(*m));
        j["timings_ms"]["queue"] = queue_ms;  // waiting for a network slot (not part of total)
        j["image_sha256"] = *sha;
        j["image_url"] = "/v1/images/" + *sha;
        if (pid) j["pregnancy_id"] = *pid;
        if (date) j["exam_date"] = *date;
        send_json(res, 200, j);
    }

    void segment(const Request& req, Response& res) {
        auto model = require_model();
        const auto& up = require_upload(req, "image");
        const std::string format = form_field(req, "format").value_or("png");
        if (format != "png" && format != "json") throw HttpError{400, "'format' must be 'png' (mask image) or 'json' (contour)"};
        cv::Mat gray = decode_upload(up);
        Segmentation seg;
        {
            SlotGuard slot(*slots);
            seg = model->segmenter().segment(gray);
        }
        const Boundary b = extract_boundary(seg, gray);
        if (!b.found)
            throw HttpError{422, "no fetal head found in '" + upload_name(up) + "' (detection score " + std::to_string(seg.presence) +
                                     "); check that the image is a head in the standard HC plane"};
        cv::Mat mask = seg.probability_full() >= 0.5f;
        if (format == "png") {
            std::vector<unsigned char> png;
            cv::imencode(".png", mask, png);
            res.set_header("X-Detection-Score", std::to_string(seg.presence));
            res.set_header("X-Confidence", std::to_string(b.mean_confidence));
            res.set_content(std::string(png.begin(), png.end()), "image/png");
            return;
        }
        std::vector<std::vector<cv::Point>> contours;
        cv::findContours(mask, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
        size_t best = 0;
        for (size_t i = 1; i < contours.size(); ++i)
            if (cv::contourArea(contours[i]) > cv::contourArea(contours[best])) best = i;
        json pts = json::array();
        if (!contours.empty())
            for (const auto& p : contours[best]) pts.push_back({p.x, p.y});
        send_json(res, 200, {{"contour", pts}, {"confidence", b.mean_confidence}, {"detection_score", seg.presence},
                             {"area_px", b.area_px}});
    }

    static void fit(const Request& req, Response& res) {
        std::vector<cv::Point2d> pts;
        std::string what;
        if (req.is_multipart_form_data()) {
            const auto& up = require_upload(req, req.has_file("mask") ? "mask" : "image");
            const Boundary b = mask_boundary(decode_upload(up));
            if (!b.found)
                throw HttpError{422, "the mask '" + upload_name(up) + "' has no white region to fit; send a mask with the head in white (255)"};
            pts = b.points;
            what = "the mask '" + upload_name(up) + "'";
        } else {
            const json body = parse_json_body(req);
            if (!body.contains("points") || !body["points"].is_array())
                throw HttpError{400, "'points' must be an array of [x, y] pixel coordinates (or send a mask image as multipart)"};
            if (body["points"].size() > kMaxFitPoints)
                throw HttpError{400, "'points' has " + std::to_string(body["points"].size()) + " entries; send at most " +
                                         std::to_string(kMaxFitPoints) + " boundary points"};
            for (const auto& p : body["points"]) {
                if (!p.is_array() || p.size() != 2 || !p[0].is_number() || !p[1].is_number() ||
                    !std::isfinite(p[0].get<double>()) || !std::isfinite(p[1].get<double>()))
                    throw HttpError{400, "every entry of 'points' must be [x, y] with two finite numbers (pixels)"};
                pts.emplace_back(p[0].get<double>(), p[1].get<double>());
            }
            what = std::to_string(pts.size()) + " points";
        }
        const EllipseFit f = fit_ellipse(pts);
        if (!f.ok) throw HttpError{422, "cannot fit an ellipse to " + what + ": " + f.message};
        send_json(res, 200, {{"ellipse_px", ellipse_json(f.ellipse)}, {"rms_px", f.rms_px}, {"inliers", f.inliers}, {"points", f.points}});
    }

    static Measurement numbers(const Ellipse& e, double pixel_size_mm, std::optional<double> ga) {
        Measurement m = measurement_from_ellipse(e, pixel_size_mm, ga);
        m.quality = m.reasons.empty() ? "ok" : "review";
        return m;
    }

    static void perimeter(const Request& req, Response& res) {
        const json body = parse_json_body(req);
        const Ellipse e = json_ellipse(body, "ellipse_px");
        const double px = json_number(body, "pixel_size_mm");
        check_pixel(px, "pixel_size_mm");
        const json all = json::parse(to_json(numbers(e, px, json_ga(body))));
        json out;
        for (const char* k : {"pixel_size_mm", "hc_mm", "bpd_mm", "ofd_mm", "cephalic_index", "ellipse_px", "ellipse_mm", "ga_hadlock",
                              "ga_intergrowth", "ga_weeks_given", "centile", "quality", "reasons"})
            if (all.contains(k)) out[k] = all[k];
        send_json(res, 200, out);
    }

    void add_exam(const Request& req, Response& res) {
        const json body = parse_json_body(req);
        Exam ex;
        ex.pregnancy_id = json_string(body, "pregnancy_id");
        check_pregnancy_id(ex.pregnancy_id, "pregnancy_id");
        ex.exam_date = json_string(body, "exam_date");
        check_date(ex.exam_date, "exam_date");
        ex.image_sha256 = json_string(body, "image_sha256");
        if (!valid_sha256(ex.image_sha256))
            throw HttpError{400, "'image_sha256' must be the 64 lower-case hex digits returned by POST /v1/measure"};
        if (!store->image_path(ex.image_sha256))
            throw HttpError{400, "'image_sha256' names no stored image; upload the image with POST /v1/measure first"};
        ex.pixel_size_mm = json_number(body, "pixel_size_mm");
        check_pixel(ex.pixel_size_mm, "pixel_size_mm");
        ex.ellipse_px = json_ellipse(body, "ellipse_px");
        if (!body.contains("corrected") || !body["corrected"].is_boolean())
            throw HttpError{400, "'corrected' must be true (the clinician moved the ellipse) or false"};
        ex.corrected = body["corrected"].get<bool>();
        const auto ga = json_ga(body);
        const Measurement m = numbers(ex.ellipse_px, ex.pixel_size_mm, ga);
        ex.hc_mm = m.hc_mm;
        ex.bpd_mm = m.bpd_mm;
        ex.ofd_mm = m.ofd_mm;
        if (m.ga_hadlock.in_range) ex.ga_hadlock_weeks = m.ga_hadlock.weeks;
        if (m.ga_intergrowth.in_range) ex.ga_intergrowth_weeks = m.ga_intergrowth.weeks;
        ex.ga_weeks_given = ga;
        if (m.centile && m.centile->in_range) ex.centile = m.centile->centile;
        ex.quality = m.quality;
        ex.reasons = m.reasons;
        if (body.contains("quality") && !body["quality"].is_null()) {
            if (!body["quality"].is_string() || (body["quality"] != "ok" && body["quality"] != "review"))
                throw HttpError{400, "'quality' must be \"ok\" or \"review\" (as returned by /v1/measure)"};
            ex.quality = body["quality"].get<std::string>();
        }
        if (body.contains("reasons") && !body["reasons"].is_null()) {
            const json& r = body["reasons"];
            if (!r.is_array() || r.size() > 50) throw HttpError{400, "'reasons' must be an array of at most 50 strings"};
            ex.reasons.clear();
            for (const auto& s : r) {
                if (!s.is_string() || s.get<std::string>().size() > 500)
                    throw HttpError{400, "'reasons' must be an array of strings of at most 500 characters"};
                ex.reasons.push_back(s.get<std::string>());
            }
        }
        ex.accepted = true;
        auto saved = store->add_exam(ex);
        if (!saved) throw HttpError{500, saved.error()};
        send_json(res, 201, exam_json(*saved));
    }

    void image(const Request& req, Response& res) {
        std::string sha = req.matches[1].str();
        std::transform(sha.begin(), sha.end(), sha.begin(), [](unsigned char c) { return char(std::tolower(c)); });
        if (!valid_sha256(sha)) throw HttpError{400, "an image is named by its SHA-256: 64 hex digits, as in 'image_url'"};
        auto path = store->image_path(sha);
        if (!path) throw HttpError{404, "no stored image with this SHA-256; upload it with POST /v1/measure"};
        std::ifstream in(*path, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (!in.good() && !in.eof()) throw HttpError{500, "cannot read the stored image; check the image folder next to the database"};
        res.set_header("Cache-Control", "private, max-age=31536000, immutable");
        res.set_content(bytes, sniff_image_type(bytes).c_str());
    }

    void pregnancy(const Request& req, Response& res, bool csv) {
        const std::string id = req.matches[1].str();
        check_pregnancy_id(id, "pregnancy id");
        auto h = store->history(id);
        if (!h) throw HttpError{500, h.error()};
        if (!h->found) throw HttpError{404, "no pregnancy with this id; exams are saved with POST /v1/exams"};
        if (csv) {
            res.set_header("Content-Disposition", "attachment; filename=\"pregnancy-" + id + ".csv\"");
            res.set_content(history_csv(*h), "text/csv; charset=utf-8");
            return;
        }
        json exams = json::array();
        for (const auto& e : h->exams) exams.push_back(exam_json(e));
        send_json(res, 200, {{"pregnancy_id", id}, {"exams", exams}});
    }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(); }

Expected<std::unique_ptr<Server>> Server::create(const ServerOptions& o) {
    if (o.port < 0 || o.port > 65535) return make_error("--port must be 0..65535 (0 picks a free port), got " + std::to_string(o.port));
    if (o.threads < 0) return make_error("--threads must be >= 0 (0 = one per CPU core)");
    if (o.max_upload_bytes == 0) return make_error("--max-upload-mb must be positive");
    std::error_code ec;
    // Any file but a folder: a named pipe is fine too (read when the model loads).
    if (o.model_path.empty() || !fs::exists(o.model_path, ec) || fs::is_directory(o.model_path, ec))
        return make_error("model file '" + o.model_path + "' not found; pass --model PATH (e.g. models/fetalhc_unet.pt)");
    auto impl = std::make_unique<Impl>();
    impl->opt = o;
    if (!o.token_file.empty()) {
        std::ifstream in(o.token_file);
        if (!in) return make_error("cannot read --token-file '" + o.token_file + "'; check the path and its permissions");
        std::string line;
        std::getline(in, line);
        while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
        size_t i = 0;
        while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
        impl->token = line.substr(i);
        if (impl->token.size() < 16)
            return make_error("the first line of --token-file '" + o.token_file +
                              "' must hold a token of at least 16 characters (e.g. from `openssl rand -hex 32`)");
    } else if (!is_loopback_host(o.host)) {
        return make_error("refusing to listen on '" + o.host + "' without --token-file: off the loopback interface every POST "
                          "must carry a bearer token (or use --host 127.0.0.1)");
    }
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    impl->slots = std::make_unique<Slots>(o.threads > 0 ? o.threads : cores);
    auto store = Store::open(o.db_path);
    if (!store) return make_error(store.error());
    impl->store = std::move(*store);
    impl->openapi = server::openapi_json(FETALHC_VERSION, o.max_upload_bytes);
    impl->install();
    if (o.port == 0) impl->port = impl->http.bind_to_any_port(o.host);
    else impl->port = impl->http.bind_to_port(o.host, o.port) ? o.port : -1;
    if (impl->port <= 0)
        return make_error("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                          "; is the port in use or the address not on this machine? (try another --port)");
    return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }

std::string Server::url() const {
    const std::string& h = impl_->opt.host;
    return "http://" + (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + std::to_string(impl_->port) + "/";
}

void Server::start() {
    std::lock_guard<std::mutex> lock(impl_->stop_mu);
    if (impl_->started) return;
    impl_->started = true;
    impl_->listener = std::thread([this] {
        impl_->http.listen_after_bind();
        impl_->listen_returned = true;
    });
    impl_->loader = std::thread([this] { impl_->load_model(); });
}

void Server::run() {
    {
        std::lock_guard<std::mutex> lock(impl_->stop_mu);
        if (impl_->started) return;
        impl_->started = true;
        impl_->loader = std::thread([this] { impl_->load_model(); });
    }
    impl_->http.listen_after_bind();
    impl_->listen_returned = true;
}

void Server::stop() {
    std::lock_guard<std::mutex> lock(impl_->stop_mu);
    // httplib's stop() only acts once the accept loop runs: wait for it (or for its end).
    if (impl_->started)
        while (!impl_->http.is_running() && !impl_->listen_returned) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    impl_->http.stop();
    if (impl_->listener.joinable()) impl_->listener.join();
    if (impl_->loader.joinable()) impl_->loader.join();
}

bool Server::ready() const { return impl_->ready(); }

bool Server::wait_ready(double timeout_s) const {
    std::unique_lock<std::mutex> lock(impl_->model_mu);
    impl_->model_cv.wait_for(lock, std::chrono::duration<double>(timeout_s),
                             [&] { return impl_->state != Impl::ModelState::Loading; });
    return impl_->state == Impl::ModelState::Ready;
}

}  // namespace fetalhc
