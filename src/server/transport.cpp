// The HTTP transport: the only file that sees cpp-httplib. It owns the listening socket, the
// connection threads, the body size limit, the bearer token, the request log and the request
// metrics; it turns each httplib request into an HttpRequest, lets routes::handle answer it, and
// writes the HttpResponse back.
#include "fetalhc/server.h"

#include "errors.h"
#include "http_metrics.h"
#include "openapi.h"
#include "routes.h"
#include "service.h"
#include "dicom_node.h"

#include "fetalhc/store.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <thread>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

using Clock = std::chrono::steady_clock;
using server::ApiError;
using server::ErrorCode;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

thread_local Clock::time_point t_request_start;
thread_local bool t_request_timed = false;

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return s;
}

// httplib's request as a plain value. Every multipart part goes to `files` (as httplib keeps
// them); the parts sent without a file name go to `form` as well. Of repeated names the first wins.
server::HttpRequest to_request(const httplib::Request& req) {
    server::HttpRequest r;
    r.method = req.method;
    r.path = req.path;
    for (const auto& [k, v] : req.params) r.query.emplace(k, v);
    for (const auto& [k, v] : req.headers) r.headers.emplace(lower(k), v);
    r.multipart = req.is_multipart_form_data();
    for (const auto& [name, part] : req.files) {
        r.files.emplace(name, server::UploadedFile{part.name, part.filename, part.content_type, part.content});
        if (part.filename.empty()) r.form.emplace(name, part.content);
    }
    if (!r.multipart) r.body = req.body;
    return r;
}

void write_response(const server::HttpResponse& from, httplib::Response& to) {
    to.status = from.status;
    for (const auto& [k, v] : from.headers) to.set_header(k, v);
    to.set_content(from.body, from.content_type.c_str());
}

// Constant-time comparison of a presented token with the expected one.
bool same_token(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(1, b.size())];
    return diff == 0;
}

// The route pattern for logs and metrics (never the path: it may hold an id or an image hash).
std::string route_label(const std::string& method, const std::string& path) {
    auto m = server::match_route(method, path);
    if (!m) return "unmatched";
    std::string label = m->route->pattern;
    label.erase(std::remove(label.begin(), label.end(), '*'), label.end());
    return label;
}

Expected<std::string> read_token(const std::string& token_file) {
    std::ifstream in(token_file);
    if (!in) return make_error("cannot read --token-file '" + token_file + "'; check the path and its permissions");
    std::string line;
    std::getline(in, line);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t i = 0;
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    std::string token = line.substr(i);
    if (token.size() < 16)
        return make_error("the first line of --token-file '" + token_file +
                          "' must hold a token of at least 16 characters (e.g. from `openssl rand -hex 32`)");
    return token;
}

Expected<bool> check_options(const ServerOptions& o) {
    if (o.port < 0 || o.port > 65535) return make_error("--port must be 0..65535 (0 picks a free port), got " + std::to_string(o.port));
    if (o.threads < 0) return make_error("--threads must be >= 0 (0 = one per CPU core)");
    if (o.max_upload_bytes == 0) return make_error("--max-upload-mb must be positive");
    std::error_code ec;
    // Any file but a folder: a named pipe is fine too (read when the model loads).
    if (o.model_path.empty() || !fs::exists(o.model_path, ec) || fs::is_directory(o.model_path, ec))
        return make_error("model file '" + o.model_path + "' not found; pass --model PATH (e.g. models/fetalhc_unet.pt)");
    if (o.token_file.empty() && !is_loopback_host(o.host))
        return make_error("refusing to listen on '" + o.host + "' without --token-file: off the loopback interface every POST "
                          "must carry a bearer token (or use --host 127.0.0.1)");
    return true;
}

}  // namespace

bool is_loopback_host(const std::string& host) {
    if (host.empty()) return false;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) return false;
    bool all_loopback = true;
    for (addrinfo* a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            const auto* in = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
            if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) all_loopback = false;
        } else if (a->ai_family == AF_INET6) {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
            if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) all_loopback = false;
        } else {
            all_loopback = false;
        }
    }
    freeaddrinfo(res);
    return all_loopback;
}

struct Server::Impl {
    ServerOptions opt;
    std::string token;  // empty: no token required
    std::unique_ptr<Store> store;
    std::unique_ptr<server::Engine> engine;
    server::HttpMetrics metrics;
    std::unique_ptr<server::Services> services;
    std::unique_ptr<server::DicomNode> dicom;  // the C-STORE node, when dicom_port is set
    httplib::Server http;
    int port = 0;
    std::thread loader, listener;
    std::mutex stop_mu;  // start/run/stop
    bool started = false;
    std::atomic<bool> listen_returned{false};
    server::OriginPolicy origin;

    static std::string cookie_token(const httplib::Request& req) {
        const std::string cookies = req.get_header_value("Cookie");
        const std::string key = "fetalhc_token=";
        size_t at = 0;
        while ((at = cookies.find(key, at)) != std::string::npos) {
            if (at == 0 || cookies[at - 1] == ' ' || cookies[at - 1] == ';') {
                const size_t start = at + key.size();
                const size_t end = cookies.find(';', start);
                return cookies.substr(start, end == std::string::npos ? std::string::npos : end - start);
            }
            at += key.size();
        }
        return "";
    }

    // Everything decided from the request line and headers alone, before the body is read:
    // origin policy, token, body framing and size. A refusal closes the connection (the body,
    // if any, is never read).
    httplib::Server::HandlerResponse before_body(const httplib::Request& req, httplib::Response& res) {
        std::map<std::string, std::string> headers;
        for (const auto& [k, v] : req.headers) headers.emplace(lower(k), v);
        std::optional<server::HttpResponse> refused = server::check_request_origin(req.method, headers, origin);
        if (!refused) refused = reject_token(req);
        if (!refused && req.method != "GET" && req.method != "HEAD") {
            if (req.has_header("Transfer-Encoding"))
                refused = server::error_response({ErrorCode::LengthRequired, "send the request body with a Content-Length header; "
                                                                             "chunked uploads are not accepted"});
            else if (req.has_header("Content-Length")) {
                const std::string cl = req.get_header_value("Content-Length");
                const bool digits = !cl.empty() && cl.size() <= 19 &&
                                    std::all_of(cl.begin(), cl.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
                if (!digits || std::stoull(cl) > opt.max_upload_bytes)
                    refused = server::error_response(
                        {ErrorCode::PayloadTooLarge, "the request body is larger than this server's upload limit of " +
                                                         std::to_string(opt.max_upload_bytes) + " bytes; send a smaller image or "
                                                         "start serve with a larger --max-upload-mb"});
            }
        }
        if (!refused) return httplib::Server::HandlerResponse::Unhandled;
        write_response(*refused, res);
        res.set_header("Connection", "close");
        return httplib::Server::HandlerResponse::Handled;
    }

    // The token is checked here, after httplib has read the body, so that a rejected request
    // leaves the keep-alive connection in a clean state. Only routes that exist need it: an
    // unknown path is a 404 either way.
    std::optional<server::HttpResponse> reject_token(const httplib::Request& req) const {
        if (token.empty()) return std::nullopt;
        auto m = server::match_route(req.method, req.path);
        if (!m || !server::route_needs_token(*m->route)) return std::nullopt;
        const std::string auth = req.get_header_value("Authorization");
        const std::string prefix = "Bearer ";
        if (auth.rfind(prefix, 0) == 0 && same_token(auth.substr(prefix.size()), token)) return std::nullopt;
        // Reads may carry the token as a cookie (images and CSV links of the page); writes may not.
        if (auth.empty() && (req.method == "GET" || req.method == "HEAD")) {
            const std::string c = cookie_token(req);
            if (!c.empty() && same_token(c, token)) return std::nullopt;
        }
        server::HttpResponse r = server::error_response(
            {ErrorCode::Unauthorized, auth.empty() ? "this server requires 'Authorization: Bearer <token>' on every API request; the "
                                                     "token is the first line of the server's --token-file"
                                                   : "the bearer token is wrong; use the first line of the server's --token-file"});
        r.headers.emplace_back("WWW-Authenticate", "Bearer");
        return r;
    }

    void serve(const httplib::Request& req, httplib::Response& res) {
        write_response(server::handle(to_request(req), *services), res);
    }

    // Errors httplib answers itself (before any route runs): body too large, malformed request,
    // no handler for the method.
    httplib::Server::HandlerResponse transport_error(const httplib::Request& req, httplib::Response& res) const {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e{res.status >= 500 ? ErrorCode::Internal : ErrorCode::BadRequest, "HTTP error " + std::to_string(res.status)};
        switch (res.status) {
            case 404:
                e = {ErrorCode::NotFound, "no endpoint " + req.method + " " + req.path + "; the API is described at /openapi.json"};
                break;
            case 413:
                e = {ErrorCode::PayloadTooLarge, "the request body is larger than this server's upload limit of " +
                                                     std::to_string(opt.max_upload_bytes / (1 << 20)) + " MB (" +
                                                     std::to_string(opt.max_upload_bytes) +
                                                     " bytes); send a smaller image (PNG or JPEG) or start serve with a larger "
                                                     "--max-upload-mb"};
                break;
            case 400: e = {ErrorCode::BadRequest, "malformed HTTP request; check the multipart/form-data or JSON encoding"}; break;
            default: break;
        }
        const int status = res.status;
        write_response(server::error_response(e), res);
        res.status = status;  // keep httplib's status where the code's own differs (e.g. 405, 501)
        return httplib::Server::HandlerResponse::Handled;
    }

    void log_request(const httplib::Request& req, const httplib::Response& res) {
        double seconds = -1;
        if (t_request_timed) seconds = ms_since(t_request_start) / 1000;
        t_request_timed = false;
        const std::string label = route_label(req.method, req.path);
        // Route pattern only: the path may hold a pregnancy id or an image hash.
        if (opt.log_requests) spdlog::info("{} {} {} {:.1f} ms", req.method, label, res.status, seconds < 0 ? 0.0 : seconds * 1000);
        metrics.observe(req.method, label, res.status, seconds);
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
        http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            t_request_start = Clock::now();
            t_request_timed = true;
            return before_body(req, res);
        });
        http.set_error_handler(httplib::Server::HandlerWithResponse(
            [this](const httplib::Request& req, httplib::Response& res) { return transport_error(req, res); }));
        http.set_logger([this](const httplib::Request& req, const httplib::Response& res) { log_request(req, res); });
        // Every GET and POST goes to the router, which answers unknown paths itself.
        const auto all = [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); };
        http.Get(".*", all);
        http.Post(".*", all);
    }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(); }

Expected<std::unique_ptr<Server>> Server::create(const ServerOptions& o) {
    if (auto ok = check_options(o); !ok) return make_error(ok.error());
    auto impl = std::make_unique<Impl>();
    impl->opt = o;
    if (!o.token_file.empty()) {
        auto token = read_token(o.token_file);
        if (!token) return make_error(token.error());
        impl->token = *token;
    }
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    impl->engine = std::make_unique<server::Engine>(o.threads > 0 ? o.threads : cores);
    auto store = Store::open(o.db_path);
    if (store) (*store)->set_quota_bytes(o.max_store_bytes);
    if (!store) return make_error(store.error());
    impl->store = std::move(*store);
    impl->services = std::make_unique<server::Services>(
        server::Services{*impl->store, *impl->engine, impl->metrics, server::openapi_json(FETALHC_VERSION, o.max_upload_bytes)});
    impl->install();
    for (const auto& origin : o.allow_origins)
        if (origin.rfind("http://", 0) != 0 && origin.rfind("https://", 0) != 0)
            return make_error("--allow-origin '" + origin + "' must be an origin such as https://host or http://host:port");
    if (o.port == 0) impl->port = impl->http.bind_to_any_port(o.host);
    else impl->port = impl->http.bind_to_port(o.host, o.port) ? o.port : -1;
    if (impl->port <= 0)
        return make_error("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                          "; is the port in use or the address not on this machine? (try another --port)");
    impl->origin = server::origin_policy(o.host, impl->port, o.allow_origins, is_loopback_host(o.host));
    if (o.dicom_port != 0) {
        server::DicomNodeOptions d;
        d.port = o.dicom_port;
        d.aet = o.dicom_aet;
        d.forward = o.dicom_forward;
        d.allow = o.dicom_allow;
        d.max_object_bytes = o.max_upload_bytes;
        auto node = server::DicomNode::create(d, *impl->engine, *impl->store);
        if (!node) return make_error(node.error());
        impl->dicom = std::move(*node);
    }
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
    impl_->loader = std::thread([this] { impl_->engine->load(impl_->opt.model_path, impl_->opt.torch_threads); });
    if (impl_->dicom) impl_->dicom->start();
}

void Server::run() {
    {
        std::lock_guard<std::mutex> lock(impl_->stop_mu);
        if (impl_->started) return;
        impl_->started = true;
        impl_->loader = std::thread([this] { impl_->engine->load(impl_->opt.model_path, impl_->opt.torch_threads); });
        if (impl_->dicom) impl_->dicom->start();
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
    if (impl_->dicom) impl_->dicom->stop();
    if (impl_->listener.joinable()) impl_->listener.join();
    if (impl_->loader.joinable()) impl_->loader.join();
}

bool Server::ready() const { return impl_->engine->ready(); }

bool Server::wait_ready(double timeout_s) const { return impl_->engine->wait_ready(timeout_s); }

}  // namespace fetalhc
