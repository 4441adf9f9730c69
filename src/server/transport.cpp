// The HTTP transport (transport.h): the only file that sees cpp-httplib's server (its client is in
// dicomweb_client.cpp). It owns the listening socket, the connection threads, the slow-client
// limits, the body framing and size limit, the origin policy, the bearer token, the request log
// and the request metrics; it turns each httplib request into an HttpRequest, lets routes::handle
// answer it, and writes the HttpResponse back.
#include "transport.h"

#include "auth.h"

#include "errors.h"
#include "http_metrics.h"
#include "routes.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <random>

#include <arpa/inet.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <thread>

namespace fetalhc {
namespace {

using Clock = std::chrono::steady_clock;
using server::ApiError;
using server::ErrorCode;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

thread_local Clock::time_point t_request_start;
thread_local bool t_request_timed = false;
// Set when a request was refused before its body was read (or httplib answered an error itself):
// its connection is closed after the answer, so that the unread body is never parsed as the next
// request (a cross-site page could otherwise smuggle a whole request inside a refused one's body).
thread_local bool t_close_connection = false;
thread_local bool t_routed = false;  // the router answered the request (its body was read whole)
thread_local server::Identity t_identity;  // who sent the request being served (set before its body is read)
thread_local std::string t_request_id;     // answered as X-Request-Id, kept in the audit trail

// 16 random hex digits naming one request (in the X-Request-Id answer and the audit trail).
std::string new_request_id() {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static const char hex[] = "0123456789abcdef";
    std::string id;
    uint64_t v = rng();
    for (int i = 0; i < 16; ++i, v >>= 4) id += hex[v & 15];
    return id;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return s;
}

// httplib's request as a plain value. Every multipart part goes to `files` (as httplib keeps
// them); the parts sent without a file name go to `form` as well. Repeated names are refused
// before this (Impl::serve).
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

// The request's body length from its one Content-Length header: 0 without one, nullopt when it is
// repeated or not a number of at most 19 digits.
std::optional<unsigned long long> content_length(const httplib::Request& req) {
    const size_t count = req.get_header_value_count("Content-Length");
    if (count == 0) return 0;
    const std::string cl = req.get_header_value("Content-Length");
    if (count > 1 || cl.empty() || cl.size() > 19 || cl.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    return std::stoull(cl);
}

// Headers every response carries: the content type is the one meant (no sniffing an upload or an
// error into HTML).
void add_common_headers(httplib::Response& res) {
    if (!res.has_header("X-Content-Type-Options")) res.set_header("X-Content-Type-Options", "nosniff");
}

// The route pattern for logs and metrics (never the path: it may hold an id or an image hash).
std::string route_label(const std::string& method, const std::string& path) {
    auto m = server::match_route(method, path);
    if (!m) return "unmatched";
    std::string label = m->route->pattern;
    label.erase(std::remove(label.begin(), label.end(), '*'), label.end());
    return label;
}

// Slow clients (issue 16 row 6). httplib times out each read on its own, so a client sending a
// byte every few seconds holds a connection thread for as long as it likes, and 64 such clients
// hold the whole pool. httplib 0.11 (Debian builds it as a shared library) has no hook on an
// accepted socket, but Server::process_and_close_socket, which serves one connection, is virtual
// and the request parser it calls (process_request) is protected. GuardedServer overrides the
// former with its own keep-alive loop over ConnectionStream: it counts the connections of each
// client address and closes one over the cap before reading a byte, and it gives every request a
// deadline, counted from its first byte, for arriving whole (request line, headers, body): a read
// past it fails, httplib abandons the request and the connection is closed without an answer.
// Writes have no deadline and handlers never read from the socket, so a request that arrived in
// time is answered whole however long it runs. Preferred to a watchdog thread scanning
// /proc/self/fd for our sockets: nothing polls, no descriptor can be closed and reused under a
// scan, and the cap applies before the first byte is read.
class ConnectionStream final : public httplib::Stream {
public:
    ConnectionStream(int fd, time_t read_s, time_t write_s, const std::atomic<socket_t>& listener)
        : fd_(fd), read_timeout_(std::chrono::seconds(read_s)), write_timeout_(std::chrono::seconds(write_s)),
          listener_(listener) {}

    // The next request may take until `deadline` to arrive whole.
    void start_request(Clock::time_point deadline) { deadline_ = deadline; }
    bool expired() const { return expired_; }
    bool has_buffered() const { return begin_ < end_; }

    // What a wait is for: the next request (ends when the server stops), reading a request (also
    // ends at its deadline; either abandons the request), writing an answer (only its timeout).
    enum class Wait { NextRequest, Read, Write };

    // Waits up to `limit` for `events`, in short slices so that a stopping server is noticed.
    // False on timeout, deadline or stop.
    bool wait(short events, Clock::duration limit, Wait why) const {
        const bool reading = why == Wait::Read;
        const Clock::time_point until = Clock::now() + limit;
        for (;;) {
            const Clock::time_point now = Clock::now();
            if (why != Wait::Write && listener_ == INVALID_SOCKET) {
                abandoned_ = abandoned_ || reading;
                return false;
            }
            if (reading && now >= deadline_) {
                expired_ = abandoned_ = true;
                return false;
            }
            if (now >= until) return false;
            Clock::time_point slice = std::min(until, now + std::chrono::milliseconds(200));
            if (reading) slice = std::min(slice, deadline_);
            pollfd p{fd_, events, 0};
            const int ms = int(std::chrono::ceil<std::chrono::milliseconds>(slice - now).count());
            const int r = ::poll(&p, 1, std::max(ms, 1));
            if (r > 0) return true;
            if (r < 0 && errno != EINTR) return false;
        }
    }
    bool is_readable() const override { return has_buffered() || wait(POLLIN, read_timeout_, Wait::Read); }
    bool is_writable() const override { return !abandoned_ && wait(POLLOUT, write_timeout_, Wait::Write); }

    ssize_t read(char* ptr, size_t size) override {
        if (!has_buffered()) {
            if (!wait(POLLIN, read_timeout_, Wait::Read)) return -1;
            if (size >= sizeof buf_) return receive(ptr, size);  // large reads (bodies) skip the buffer
            const ssize_t n = receive(buf_, sizeof buf_);
            if (n <= 0) return n;
            begin_ = 0, end_ = size_t(n);
        }
        const size_t n = std::min(size, end_ - begin_);
        std::memcpy(ptr, buf_ + begin_, n);
        begin_ += n;
        return ssize_t(n);
    }

    // A request abandoned at its deadline (or at a stop) gets no answer (httplib would send a 400).
    ssize_t write(const char* ptr, size_t size) override {
        if (abandoned_ || !wait(POLLOUT, write_timeout_, Wait::Write)) return -1;
        ssize_t n;
        do n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        return n;
    }

    void get_remote_ip_and_port(std::string& ip, int& port) const override { address_of(::getpeername, ip, port); }
    void get_local_ip_and_port(std::string& ip, int& port) const override { address_of(::getsockname, ip, port); }
    socket_t socket() const override { return fd_; }

private:
    ssize_t receive(char* ptr, size_t size) {
        ssize_t n;
        do n = ::recv(fd_, ptr, size, 0);
        while (n < 0 && errno == EINTR);
        return n;
    }
    void address_of(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
        sockaddr_storage a{};
        socklen_t len = sizeof a;
        char host[NI_MAXHOST] = "", serv[NI_MAXSERV] = "";
        if (get(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
            getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof host, serv, sizeof serv,
                        NI_NUMERICHOST | NI_NUMERICSERV) != 0)
            return;
        ip = host;
        port = std::atoi(serv);
    }

    int fd_;
    Clock::duration read_timeout_, write_timeout_;
    const std::atomic<socket_t>& listener_;  // httplib sets it to INVALID_SOCKET when stopping
    Clock::time_point deadline_ = Clock::time_point::max();
    mutable bool expired_ = false;    // a request missed its deadline
    mutable bool abandoned_ = false;  // ... or the server stopped while it was read: no answer
    char buf_[4096];
    size_t begin_ = 0, end_ = 0;
};

// At most one warning per kind every 10 s: a flood of slow or surplus connections must not flood
// the log too.
class WarnEvery10s {
public:
    void warn(const std::string& message) {
        const auto now = Clock::now().time_since_epoch().count();
        auto last = last_.load();
        const auto gap = std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(10)).count();
        if (last != 0 && now - last < gap) {
            ++suppressed_;
            return;
        }
        if (!last_.compare_exchange_strong(last, now)) return;
        const long more = suppressed_.exchange(0);
        if (more > 0) spdlog::warn("{} ({} more like it since the last such line)", message, more);
        else spdlog::warn("{}", message);
    }

private:
    std::atomic<Clock::rep> last_{0};
    std::atomic<long> suppressed_{0};
};

// Bytes per second a request body must arrive at, at least, for its deadline (issue 22 row 8).
constexpr double kMinBodyBytesPerSecond = 64 * 1024;

class GuardedServer final : public httplib::Server {
public:
    void set_client_limits(double request_timeout_s, double header_timeout_s, int max_per_client) {
        request_timeout_s_ = request_timeout_s;
        request_timeout_ = to_duration(request_timeout_s);
        header_timeout_ = std::min(request_timeout_, to_duration(header_timeout_s));
        header_timeout_s_ = std::min(request_timeout_s, header_timeout_s);
        max_per_client_ = max_per_client;
    }

    // Called once a request's headers have arrived (before its body is read): the connection is
    // busy until its answer is written (it is not evicted), and the request's deadline becomes
    // the header deadline plus the body's size at kMinBodyBytesPerSecond, at most --request-timeout.
    void headers_arrived(unsigned long long content_length) {
        Conn* c = t_conn;
        if (!c) return;
        {
            std::lock_guard<std::mutex> lock(mu_);
            c->busy = true;
        }
        const auto body = to_duration(double(content_length) / kMinBodyBytesPerSecond);
        c->stream->start_request(c->request_start + std::min(request_timeout_, header_timeout_ + body));
    }

private:
    static Clock::duration to_duration(double s) {
        return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
    }

    // One open connection, as the per-client cap sees it.
    struct Conn {
        int fd = -1;
        ConnectionStream* stream = nullptr;
        bool busy = false;                   // between its headers and its answer
        Clock::time_point since;             // opened, or its last answer written
        Clock::time_point request_start;
    };
    static thread_local Conn* t_conn;

    bool process_and_close_socket(socket_t sock) override {
        ConnectionStream stream(sock, read_timeout_sec_, write_timeout_sec_, svr_sock_);
        std::string client;
        int client_port = 0;
        stream.get_remote_ip_and_port(client, client_port);
        Conn conn{sock, &stream, false, Clock::now(), Clock::now()};
        bool ok = false;
        if (admit(client, conn)) {
            t_conn = &conn;
            ok = serve_connection(stream, conn);
            t_conn = nullptr;
            release(client, conn);
        }
        ::shutdown(sock, SHUT_RDWR);
        ::close(sock);
        return ok;
    }

    // httplib's keep-alive loop, with the request deadline: up to keep_alive_max_count_ requests,
    // each awaited for keep_alive_timeout_sec_, then given request_timeout_ from its first byte.
    bool serve_connection(ConnectionStream& stream, Conn& conn) {
        bool ok = false;
        for (size_t left = keep_alive_max_count_; left > 0; --left) {
            if (!stream.has_buffered() &&
                !stream.wait(POLLIN, std::chrono::seconds(keep_alive_timeout_sec_), ConnectionStream::Wait::NextRequest))
                break;
            conn.request_start = Clock::now();
            stream.start_request(conn.request_start + header_timeout_);  // headers_arrived extends it
            bool closed = false;
            t_close_connection = t_routed = false;
            ok = process_request(stream, left == 1, closed, nullptr);
            if (t_close_connection) closed = true;
            {
                std::lock_guard<std::mutex> lock(mu_);
                conn.busy = false;
                conn.since = Clock::now();
            }
            if (stream.expired())
                timeouts_.warn("closed a connection whose request did not arrive in time (headers within " +
                               fmt::format("{:g} s", header_timeout_s_) + ", the whole request within --request-timeout " +
                               fmt::format("{:g} s", request_timeout_s_) + ")");
            if (!ok || closed) break;
        }
        return ok;
    }

    // A client at its cap gets its new connection in place of its oldest one that is not being
    // answered (idle, or still sending a request): all loopback users share one address, so
    // connections that trickle must not lock the page out. Only when every one is being answered
    // is the new connection closed.
    bool admit(const std::string& client, Conn& conn) {
        std::lock_guard<std::mutex> lock(mu_);
        auto& open = per_client_[client];
        if (max_per_client_ > 0 && int(open.size()) >= max_per_client_) {
            auto victim = open.end();
            for (auto it = open.begin(); it != open.end(); ++it)
                if (!(*it)->busy && (victim == open.end() || (*it)->since < (*victim)->since)) victim = it;
            if (victim == open.end()) {
                surplus_.warn("closed a new connection at once: its client address already has " + std::to_string(open.size()) +
                              " open, all being answered (--max-connections-per-client)");
                return false;
            }
            ::shutdown((*victim)->fd, SHUT_RDWR);  // its thread sees the end of the stream and leaves
            open.erase(victim);
            evicted_.warn("closed the oldest idle or unfinished connection of a client at its cap (--max-connections-per-client) "
                          "to serve its new one");
        }
        open.push_back(&conn);
        return true;
    }
    void release(const std::string& client, Conn& conn) {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = per_client_.find(client);
        if (it == per_client_.end()) return;
        it->second.remove(&conn);  // absent when it was evicted
        if (it->second.empty()) per_client_.erase(it);
    }

    double request_timeout_s_ = 60, header_timeout_s_ = 10;
    Clock::duration request_timeout_ = std::chrono::seconds(60), header_timeout_ = std::chrono::seconds(10);
    int max_per_client_ = 16;  // 0: no cap
    std::mutex mu_;
    std::map<std::string, std::list<Conn*>> per_client_;  // open connections by client address
    WarnEvery10s timeouts_, surplus_, evicted_;
};

thread_local GuardedServer::Conn* GuardedServer::t_conn = nullptr;

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

}  // namespace fetalhc

namespace fetalhc::server {

namespace {
constexpr int kListenBacklog = 512;  // pending connections the kernel keeps before accept()
constexpr size_t kTrimAfterBytes = 1u << 20;  // requests larger than this return freed memory to the system
}  // namespace

struct HttpTransport::Impl {
    Impl(const ServerOptions& o, const std::string& t, const std::string& proxy_secret, Services& s)
        : opt(o), token(t), services(s) {
        proxy.user_header = lower(o.trusted_proxy_header);
        proxy.secret = proxy_secret;
    }

    ServerOptions opt;
    std::string token;  // empty: no token required
    server::TrustedProxy proxy;  // --trusted-proxy-header / --trusted-proxy-secret
    Services& services;
    GuardedServer http;  // httplib's server with the slow-client limits
    int port = 0;
    int listen_fd = -1;  // httplib's listening socket (set by the socket-options hook)
    std::atomic<bool> listen_returned{false};
    server::OriginPolicy origin;

    // Everything decided from the request line and headers alone, before the body is read:
    // origin policy, token, body framing and size. A refusal closes the connection (the body,
    // if any, is never read).
    httplib::Server::HandlerResponse before_body(const httplib::Request& req, httplib::Response& res) {
        http.headers_arrived(content_length(req).value_or(0));
        std::map<std::string, std::string> headers;
        for (const auto& [k, v] : req.headers) headers.emplace(lower(k), v);
        std::optional<server::HttpResponse> refused = server::check_request_origin(req.method, headers, origin);
        if (!refused) refused = reject_token(req);
        if (!refused) refused = check_framing(req);
        if (!refused) return httplib::Server::HandlerResponse::Unhandled;
        write_response(*refused, res);
        res.set_header("Connection", "close");
        t_close_connection = true;
        return httplib::Server::HandlerResponse::Handled;
    }

    // Body framing, from the headers alone: one Content-Length of digits within the upload limit,
    // no Transfer-Encoding, and no body at all on GET/HEAD (httplib would not read it, and it would
    // be parsed as the next request).
    std::optional<server::HttpResponse> check_framing(const httplib::Request& req) const {
        const auto length = content_length(req);
        if (!length)
            return server::error_response(
                {ErrorCode::BadRequest, "the request has " +
                                            std::string(req.get_header_value_count("Content-Length") > 1
                                                            ? "more than one Content-Length header"
                                                            : "a Content-Length that is not a number") +
                                            "; send exactly one, the body's size in bytes"});
        if (req.has_header("Transfer-Encoding"))
            return server::error_response({ErrorCode::LengthRequired, "send the request body with a Content-Length header; "
                                                                      "chunked uploads are not accepted"});
        if (req.method == "GET" || req.method == "HEAD") {
            if (*length > 0)
                return server::error_response({ErrorCode::BadRequest, req.method + " requests carry no body; send the data with POST"});
            return std::nullopt;
        }
        if (*length > opt.max_upload_bytes)
            return server::error_response(
                {ErrorCode::PayloadTooLarge, "the request body is larger than this server's upload limit of " +
                                                 std::to_string(opt.max_upload_bytes) + " bytes; send a smaller image or "
                                                 "start serve with a larger --max-upload-mb"});
        return std::nullopt;
    }

    // The token and the role are checked from the headers, before the body is read (before_body);
    // a refused request's connection is then closed, so its unread body is never taken for a
    // request. Only routes that exist need them: an unknown path is a 404 either way.
    std::optional<server::HttpResponse> reject_token(const httplib::Request& req) const {
        server::Credentials presented;
        presented.token = server::presented_token(req.method, req.get_header_value("Authorization"), req.get_header_value("Cookie"));
        if (!proxy.user_header.empty()) {
            presented.proxy_user = req.get_header_value(proxy.user_header.c_str());
            presented.proxy_secret = req.get_header_value(server::kProxySecretHeader);
        }
        server::Authorization a = server::authorize_request(req.method, req.path, presented, services.store, token, proxy);
        t_identity = a.who.value_or(server::Identity{});
        t_request_id = new_request_id();
        // A refusal on a route that touches patient data is in the audit trail too (who, if the
        // token named someone, and the status); the refusal stands even when that append fails.
        if (a.refused && (a.refused->status == 401 || a.refused->status == 403)) {
            auto m = server::match_route(req.method, req.path);
            if (m && server::route_is_audited(*m->route)) {
                server::HttpRequest shown;
                shown.path_params = m->params;
                shown.user = a.who ? a.who->user : std::string("unknown");
                shown.role = a.who ? role_name(a.who->role) : "";
                shown.client = req.remote_addr;
                shown.request_id = t_request_id;
                AuditEntry e = server::audit_entry_for(shown, *m->route);
                e.role = shown.role;
                e.outcome = a.refused->status;
                if (auto w = services.store.append_audit(e); !w) spdlog::error("cannot audit a refused request: {}", w.error());
            }
            a.refused->headers.emplace_back("X-Request-Id", t_request_id);
        }
        return a.refused;
    }

    void serve(const httplib::Request& req, httplib::Response& res) {
        t_routed = true;
        // A form field sent twice would be read as its first copy while a proxy or a log may see
        // the second: refused.
        for (auto it = req.files.begin(); it != req.files.end(); it = req.files.upper_bound(it->first))
            if (req.files.count(it->first) > 1) {
                write_response(server::error_response({ErrorCode::BadRequest, "the form field '" + it->first.substr(0, 64) +
                                                                                  "' is sent more than once; send each field once"}),
                               res);
                return;
            }
        server::HttpRequest request = to_request(req);
        request.user = t_identity.user;
        request.role = role_name(t_identity.role);
        request.client = req.remote_addr;
        request.request_id = t_request_id.empty() ? new_request_id() : t_request_id;
        server::HttpResponse answer = server::handle(request, services);
        answer.headers.emplace_back("X-Request-Id", request.request_id);
        write_response(answer, res);
        // A large upload's decoded pixels were freed: give the pages back (RSS otherwise ratchets
        // up to the largest concurrent peak and stays there).
        if (std::max(req.body.size(), req.content_length_) > kTrimAfterBytes) malloc_trim(0);
    }

    // Errors httplib answers itself (before any route runs): body too large, malformed request,
    // no handler for the method.
    httplib::Server::HandlerResponse transport_error(const httplib::Request& req, httplib::Response& res) const {
        // httplib's own refusals (malformed request, body too large, ...) may leave the body unread.
        if (!t_routed) t_close_connection = true;
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
        services.metrics.observe(req.method, label, res.status, seconds);
    }

    void install() {
        const size_t threads = size_t(std::max(1, opt.connection_threads));
        http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
        http.set_payload_max_length(opt.max_upload_bytes);
        http.set_client_limits(opt.request_timeout_s, opt.header_timeout_s, opt.max_connections_per_client);
        http.set_keep_alive_max_count(1000);
        // Generous socket timeouts: uploads over slow links, and a machine busy with other work.
        http.set_read_timeout(30, 0);
        http.set_write_timeout(30, 0);
        http.set_tcp_nodelay(true);
        // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server
        // bind the same port silently and share its connections.
        http.set_socket_options([this](socket_t sock) {
            int yes = 1;
            setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
            listen_fd = sock;  // the listening socket: its backlog is raised once it is bound
        });
        http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
            t_request_start = Clock::now();
            t_request_timed = true;
            return before_body(req, res);
        });
        http.set_error_handler(httplib::Server::HandlerWithResponse(
            [this](const httplib::Request& req, httplib::Response& res) { return transport_error(req, res); }));
        http.set_logger([this](const httplib::Request& req, const httplib::Response& res) { log_request(req, res); });
        http.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) { add_common_headers(res); });
        // Every GET and POST goes to the router, which answers unknown paths itself.
        const auto all = [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); };
        http.Get(".*", all);
        http.Post(".*", all);
    }
};

HttpTransport::HttpTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpTransport::~HttpTransport() = default;

Expected<std::unique_ptr<HttpTransport>> HttpTransport::bind(const ServerOptions& o, const std::string& token,
                                                             const std::string& proxy_secret, Services& services) {
    auto impl = std::make_unique<Impl>(o, token, proxy_secret, services);
    impl->install();
    if (o.port == 0) impl->port = impl->http.bind_to_any_port(o.host);
    else impl->port = impl->http.bind_to_port(o.host, o.port) ? o.port : -1;
    if (impl->port <= 0)
        return make_error("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                          "; is the port in use or the address not on this machine? (try another --port)");
    // httplib listens with a backlog of 5: a burst of new connections (50 clients starting at once)
    // then sees refused SYNs and 1 s retransmits. Listening again on the bound socket raises it.
    if (impl->listen_fd >= 0) ::listen(impl->listen_fd, kListenBacklog);
    impl->origin = server::origin_policy(o.host, impl->port, o.allow_origins, is_loopback_host(o.host));
    return std::unique_ptr<HttpTransport>(new HttpTransport(std::move(impl)));
}

int HttpTransport::port() const { return impl_->port; }

void HttpTransport::listen() {
    impl_->http.listen_after_bind();
    impl_->listen_returned = true;
}

void HttpTransport::stop(bool listen_begun) {
    // httplib's stop() only acts once the accept loop runs: wait for it (or for its end).
    if (listen_begun)
        while (!impl_->http.is_running() && !impl_->listen_returned) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    impl_->http.stop();
}

}  // namespace fetalhc::server
