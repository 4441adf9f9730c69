// HTTP service over real sockets: a server in this process on a free loopback port with a
// temporary database, exercised with httplib's client. These keep the transport honest (what only
// the wire shows: the body size limit, the bearer token, multipart and JSON bodies, URL decoding,
// content types and headers, the request log and metrics, the model loading in the background),
// plus the server's options and the SQLite store on its own. The handlers themselves are tested
// without sockets in test_routes.cpp. Only ServerWithModel runs the network (skips without the model).
#include "server_test_util.h"

#include "fetalhc/ellipse.h"
#include "fetalhc/growth.h"
#include "fetalhc/server.h"
#include "fetalhc/store.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace fetalhc;
using namespace fetalhc::test;

namespace {

httplib::MultipartFormDataItems measure_form(const std::string& image, const std::string& pixel = "0.15") {
    return {{"image", image, "scan.png", "image/png"}, {"pixel_size_mm", pixel, "", ""}};
}

json body_json(const httplib::Result& r) { return json::parse(r->body, nullptr, false); }

// Error responses: the status, JSON {"error": {"code", "message"}} with the expected code and a
// non-empty message holding `contains`.
void expect_error(const httplib::Result& r, int status, const std::string& code, const std::string& contains = "") {
    ASSERT_TRUE(r) << "no response";
    EXPECT_EQ(r->status, status) << r->body;
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
    const json j = body_json(r);
    ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_object()) << r->body;
    ASSERT_TRUE(j["error"]["code"].is_string() && j["error"]["message"].is_string()) << r->body;
    EXPECT_EQ(j["error"]["code"], code) << r->body;
    const std::string message = j["error"]["message"];
    EXPECT_FALSE(message.empty());
    if (!contains.empty()) EXPECT_NE(message.find(contains), std::string::npos) << message;
}

// Log lines written by the server (spdlog's default logger is redirected here for the whole program).
class CaptureSink : public spdlog::sinks::base_sink<std::mutex> {
public:
    std::string text() {
        std::lock_guard<std::mutex> lock(mutex_);
        return text_;
    }

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t buf;
        formatter_->format(msg, buf);
        text_.append(buf.data(), buf.size());
    }
    void flush_() override {}

private:
    std::string text_;
};
std::shared_ptr<CaptureSink> g_logs;

// A started server and its temporary folder (removed with it).
struct Instance {
    fs::path dir;
    std::unique_ptr<Server> server;
    Instance() = default;
    Instance(Instance&&) = default;
    ~Instance() {
        if (server) server->stop();
        std::error_code ec;
        if (!dir.empty()) fs::remove_all(dir, ec);
    }
    std::unique_ptr<httplib::Client> client() const {
        auto c = std::make_unique<httplib::Client>("127.0.0.1", server->port());
        c->set_read_timeout(60, 0);
        // As the web page does: multipart writes carry the header a cross-site form cannot send.
        c->set_default_headers({{"X-Fetalhc-Request", "1"}});
        return c;
    }
};

Instance start(ServerOptions o, const std::string& tag) {
    Instance in;
    in.dir = temp_dir(tag);
    o.port = 0;
    if (o.db_path == ServerOptions{}.db_path) o.db_path = (in.dir / "fetalhc.db").string();
    auto s = Server::create(o);
    if (!s) throw std::runtime_error(s.error());
    in.server = std::move(*s);
    in.server->start();
    return in;
}

// A server whose "model" is a placeholder file: it fails to load, so no test here runs the network.
class ServerSocket : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        placeholder_ = temp_dir("placeholder");
        std::ofstream(placeholder_ / "placeholder.pt") << "not a model";
        ServerOptions o;
        o.model_path = (placeholder_ / "placeholder.pt").string();
        o.max_upload_bytes = 4u << 20;
        o.log_requests = false;
        inst_ = new Instance(start(o, "socket"));
        inst_->server->wait_ready(60);
    }
    static void TearDownTestSuite() {
        delete inst_;
        inst_ = nullptr;
        fs::remove_all(placeholder_);
    }
    void SetUp() override { cli_ = inst_->client(); }
    static Instance* inst_;
    static fs::path placeholder_;
    std::unique_ptr<httplib::Client> cli_;
};
Instance* ServerSocket::inst_ = nullptr;
fs::path ServerSocket::placeholder_;

}  // namespace

TEST_F(ServerSocket, ServesTheEmbeddedPageAndChartJs) {
    auto r = cli_->Get("/");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->get_header_value("Content-Type").rfind("text/html", 0), 0u);
    EXPECT_NE(r->body.find("<html"), std::string::npos);
    auto c = cli_->Get("/static/chart.umd.min.js");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->status, 200);
    EXPECT_EQ(c->get_header_value("Content-Type").rfind("text/javascript", 0), 0u);
    EXPECT_NE(c->body.find("Chart"), std::string::npos);
    auto o = cli_->Get("/openapi.json");
    ASSERT_TRUE(o);
    EXPECT_EQ(o->status, 200);
    EXPECT_EQ(o->get_header_value("Content-Type"), "application/json");
    expect_error(cli_->Get("/static/no-such-file.js"), 404, "not_found");
    expect_error(cli_->Get("/no/such/endpoint"), 404, "not_found", "openapi");
}

// Bodies over the cap are refused by the transport before any route runs, multipart or JSON.
// Sends `text` on a new loopback connection and returns what comes back within `timeout_s`
// (the server answers or closes). No body beyond what `text` holds is ever sent.
std::string raw_exchange(int port, const std::string& text, double timeout_s = 5) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return "";
    }
    timeval tv{long(timeout_s), long((timeout_s - long(timeout_s)) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)!::send(fd, text.data(), text.size(), MSG_NOSIGNAL);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
        out.append(buf, size_t(n));
        const size_t end = out.find("\r\n\r\n");
        if (end == std::string::npos) continue;
        const size_t cl = out.find("Content-Length: ");
        if (cl != std::string::npos && cl < end && out.size() >= end + 4 + std::stoul(out.substr(cl + 16))) break;  // one whole response
    }
    ::close(fd);
    return out;
}

int status_of(const std::string& response) {
    return response.rfind("HTTP/1.1 ", 0) == 0 ? std::atoi(response.c_str() + 9) : 0;
}

// Issue 16 rows 4 and 6: a Content-Length over the limit is answered 413 at once (the body is never
// read, the connection closed), a chunked body 411.
TEST_F(ServerSocket, UploadOverTheLimitIs413) {
    const int port = inst_->server->port();
    const auto t0 = std::chrono::steady_clock::now();
    const std::string big = raw_exchange(port, "POST /v1/measure HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                                                   "\r\nX-Fetalhc-Request: 1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                                                   "Content-Length: 1000000000000\r\n\r\n--x\r\n");
    EXPECT_EQ(status_of(big), 413) << big;
    EXPECT_NE(big.find("payload_too_large"), std::string::npos) << big;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 3.0);
    const std::string json_big = raw_exchange(port, "POST /v1/perimeter HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                                                        "\r\nContent-Type: application/json\r\nContent-Length: 5242880\r\n\r\n{");
    EXPECT_EQ(status_of(json_big), 413) << json_big;
    const std::string chunked = raw_exchange(port, "POST /v1/measure HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                                                       "\r\nX-Fetalhc-Request: 1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                                                       "Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n");
    EXPECT_EQ(status_of(chunked), 411) << chunked;
    EXPECT_NE(chunked.find("length_required"), std::string::npos) << chunked;
    // The server is still usable afterwards.
    auto h = cli_->Get("/v1/growth-curve");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 200);
}

// What the adapter must carry across: multipart text fields and files, JSON bodies, URL-decoded
// path parameters, statuses and error bodies of the routes and of httplib itself.
TEST_F(ServerSocket, RequestsAndErrorsCrossTheWire) {
    expect_error(cli_->Post("/v1/measure", measure_form(synthetic_scan(), "abc")), 400, "invalid_pixel_size", "pixel_size_mm");
    expect_error(cli_->Post("/v1/measure", httplib::MultipartFormDataItems{{"pixel_size_mm", "0.15", "", ""}}), 400, "missing_field",
                 "'image'");
    expect_error(cli_->Post("/v1/measure", measure_form("this is not an image")), 400, "image_unreadable", "scan.png");
    expect_error(cli_->Post("/v1/measure", measure_form(synthetic_scan())), 503, "model_unavailable", "model");
    expect_error(cli_->Post("/v1/perimeter", "[1,2]", "application/json"), 400, "bad_request", "JSON object");
    expect_error(cli_->Get("/v1/pregnancies/bad%20id"), 400, "invalid_pregnancy_id", "pregnancy id");
    expect_error(cli_->Post("/health", "{}", "application/json"), 404, "not_found");
    const json ell{{"center_x", 400}, {"center_y", 270}, {"semi_axis_a", 120}, {"semi_axis_b", 95}, {"angle_rad", 0.3}};
    auto p = cli_->Post("/v1/perimeter", json{{"ellipse_px", ell}, {"pixel_size_mm", kPixelMm}}.dump(), "application/json");
    ASSERT_TRUE(p);
    ASSERT_EQ(p->status, 200) << p->body;
    EXPECT_NEAR(body_json(p)["hc_mm"].get<double>(), ramanujan_perimeter(120 * kPixelMm, 95 * kPixelMm), 1e-9);
    auto h = cli_->Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 503);
    EXPECT_EQ(body_json(h)["status"], "failed");
    EXPECT_EQ(body_json(h)["error"]["code"], "model_unavailable");
    // A method no route has: httplib answers, in the same error shape.
    auto put = cli_->Put("/v1/exams", "{}", "application/json");
    ASSERT_TRUE(put);
    EXPECT_GE(put->status, 400);
    EXPECT_LT(put->status, 500);
    EXPECT_TRUE(body_json(put)["error"]["code"].is_string()) << put->body;
}

// ---- with the network ---------------------------------------------------------------------------

namespace {

class ServerWithModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        g_logs = std::make_shared<CaptureSink>();
        spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", g_logs));
        if (!fs::exists(kModel)) return;
        ServerOptions o;
        o.model_path = kModel;
        o.threads = 2;
        o.max_upload_bytes = 4u << 20;
        inst_ = new Instance(start(o, "api"));
        ASSERT_TRUE(inst_->server->wait_ready(120)) << "the model did not load";
        scan_ = synthetic_scan();
    }
    static void TearDownTestSuite() {
        delete inst_;
        inst_ = nullptr;
    }
    void SetUp() override {
        if (!inst_) GTEST_SKIP() << "model '" << kModel << "' is absent; these tests run the network over a socket";
        cli_ = inst_->client();
    }
    json measure_ok(const httplib::MultipartFormDataItems& form) {
        auto r = cli_->Post("/v1/measure", form);
        EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
        return r ? body_json(r) : json();
    }
    static Instance* inst_;
    static std::string scan_;
    std::unique_ptr<httplib::Client> cli_;
};
Instance* ServerWithModel::inst_ = nullptr;
std::string ServerWithModel::scan_;

}  // namespace

// A whole measurement through the socket: multipart upload in, JSON out, the stored image back,
// and a stage's PNG body with its headers.
TEST_F(ServerWithModel, MeasurementRoundTrip) {
    auto form = measure_form(scan_);
    form.push_back({"ga_weeks", "22", "", ""});
    form.push_back({"pregnancy_id", "test-P1", "", ""});
    const json m = measure_ok(form);
    ASSERT_TRUE(m.contains("hc_mm")) << m.dump();
    EXPECT_NEAR(m["ellipse_px"]["center_x"].get<double>(), kHead.cx, 5);
    EXPECT_NEAR(m["ellipse_px"]["semi_axis_a"].get<double>(), kHead.a, 9);
    EXPECT_EQ(m["ga_weeks_given"], 22.0);
    EXPECT_EQ(m["pregnancy_id"], "test-P1");
    EXPECT_EQ(m["image_sha256"], sha256_hex(scan_));
    auto img = cli_->Get(m["image_url"].get<std::string>());
    ASSERT_TRUE(img);
    EXPECT_EQ(img->status, 200);
    EXPECT_EQ(img->get_header_value("Content-Type"), "image/png");
    EXPECT_EQ(img->body, scan_);
    auto seg = cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", scan_, "scan.png", "image/png"}});
    ASSERT_TRUE(seg);
    ASSERT_EQ(seg->status, 200) << seg->body;
    EXPECT_EQ(seg->get_header_value("Content-Type"), "image/png");
    EXPECT_FALSE(seg->get_header_value("X-Detection-Score").empty());
    expect_error(cli_->Post("/v1/measure", measure_form(blank_scan())), 422, "no_head_found");
}

TEST_F(ServerWithModel, MetricsCountRequestsWithoutPatientData) {
    const std::string id = "metrics-secret-id";
    auto f = measure_form(scan_);
    f.push_back({"pregnancy_id", id, "", ""});
    measure_ok(f);
    expect_error(cli_->Get("/v1/pregnancies/" + id), 404, "pregnancy_not_found");
    const std::vector<std::string> wanted{
        "fetalhc_http_requests_total{method=\"POST\",route=\"/v1/measure\",status=\"200\"}",
        "fetalhc_http_requests_total{method=\"GET\",route=\"/v1/pregnancies/{id}\",status=\"404\"}",
        "fetalhc_http_request_duration_seconds_bucket{route=\"/v1/measure\",le=\"+Inf\"}",
        "fetalhc_http_errors_total{route=\"/v1/pregnancies/{id}\"}"};
    // A request is counted just after its response is sent: poll briefly for the last one.
    std::string t;
    for (int i = 0; i < 100; ++i) {
        auto r = cli_->Get("/metrics");
        ASSERT_TRUE(r);
        ASSERT_EQ(r->status, 200);
        EXPECT_EQ(r->get_header_value("Content-Type").rfind("text/plain", 0), 0u);
        t = r->body;
        if (std::all_of(wanted.begin(), wanted.end(), [&](const std::string& w) { return t.find(w) != std::string::npos; })) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    for (const auto& w : wanted) EXPECT_NE(t.find(w), std::string::npos) << w;
    EXPECT_NE(t.find("fetalhc_model_ready 1"), std::string::npos);
    EXPECT_EQ(t.find(id), std::string::npos);
    // The request log names routes, never the id or the image hash.
    const std::string logs = g_logs->text();
    EXPECT_NE(logs.find("POST /v1/measure 200"), std::string::npos);
    EXPECT_NE(logs.find("GET /v1/pregnancies/{id} 404"), std::string::npos);
    EXPECT_EQ(logs.find(id), std::string::npos);
    EXPECT_EQ(logs.find(sha256_hex(scan_)), std::string::npos);
}

// ---- token rule, model loading, options -------------------------------------------------------

TEST(ServerAuth, OffLoopbackEveryPostNeedsTheToken) {
    const fs::path dir = temp_dir("auth");
    const std::string token = "0123456789abcdef0123456789abcdef";
    std::ofstream(dir / "token") << token << "\n";
    ServerOptions o;
    o.host = "0.0.0.0";
    o.model_path = (dir / "token").string();  // a placeholder: the POSTs below need no model
    o.db_path = (dir / "db.sqlite").string();
    o.log_requests = false;

    auto refused = Server::create(o);  // no token file
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().find("--token-file"), std::string::npos) << refused.error();

    o.token_file = (dir / "token").string();
    Instance in = start(o, "auth");
    auto c = in.client();
    const std::string body =
        json{{"ellipse_px", {{"center_x", 50}, {"center_y", 40}, {"semi_axis_a", 30}, {"semi_axis_b", 20}, {"angle_rad", 0}}},
             {"pixel_size_mm", 0.2}}
            .dump();
    expect_error(c->Post("/v1/perimeter", body, "application/json"), 401, "unauthorized", "Authorization");
    c->set_bearer_token_auth("wrong-token-wrong-token");
    expect_error(c->Post("/v1/perimeter", body, "application/json"), 401, "unauthorized", "wrong");
    expect_error(c->Post("/v1/measure", measure_form("x")), 401, "unauthorized");
    auto r401 = c->Post("/v1/exams", "{}", "application/json");
    expect_error(r401, 401, "unauthorized");
    EXPECT_EQ(r401->get_header_value("WWW-Authenticate"), "Bearer");
    // An unknown path is a 404 with or without the token; GETs need none.
    expect_error(c->Post("/v1/nothing-here", "{}", "application/json"), 404, "not_found");
    c->set_bearer_token_auth(token);
    auto ok = c->Post("/v1/perimeter", body, "application/json");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200) << ok->body;
    // Issue 16 row 5: reads need the token too (header, or the page's cookie); /health does not.
    expect_error(in.client()->Get("/v1/pregnancies/P-001"), 401, "unauthorized");
    expect_error(in.client()->Get("/v1/pregnancies/P-001/export.csv"), 401, "unauthorized");
    expect_error(in.client()->Get("/v1/images/" + std::string(64, 'a')), 401, "unauthorized");
    expect_error(in.client()->Get("/metrics"), 401, "unauthorized");
    auto health = in.client()->Get("/health");
    ASSERT_TRUE(health);
    EXPECT_NE(health->status, 401);
    auto g = c->Get("/v1/growth-curve");
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, 200);
    auto cookie = in.client()->Get("/v1/growth-curve", {{"Cookie", "theme=x; fetalhc_token=" + token}});
    ASSERT_TRUE(cookie);
    EXPECT_EQ(cookie->status, 200);
    // A cookie is not enough for a write.
    expect_error(in.client()->Post("/v1/perimeter", {{"Cookie", "fetalhc_token=" + token}}, body, "application/json"), 401,
                 "unauthorized");
    // Row 4: with a token the 401 comes before the body is read (it is never sent here).
    const int port = in.server->port();
    const std::string early = raw_exchange(port, "POST /v1/measure HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                                                     "\r\nX-Fetalhc-Request: 1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                                                     "Content-Length: 10000000\r\n\r\n");
    EXPECT_EQ(status_of(early), 401) << early;
    in.server->stop();
    fs::remove_all(dir);
}

TEST(ServerAuth, ShortTokenFileIsRefused) {
    const fs::path dir = temp_dir("short");
    std::ofstream(dir / "token") << "abc\n";
    ServerOptions o;
    o.host = "0.0.0.0";
    o.port = 0;
    o.model_path = (dir / "token").string();
    o.db_path = (dir / "db.sqlite").string();
    o.token_file = (dir / "token").string();
    auto s = Server::create(o);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("16 characters"), std::string::npos) << s.error();
    fs::remove_all(dir);
}

// The model is read from a named pipe, so loading stays blocked until the test writes to it: a
// deterministic window in which the server answers but the model is not ready.
TEST(ServerModel, HealthIs503WhileTheModelLoads) {
    const fs::path dir = temp_dir("loading");
    const fs::path pipe = dir / "model.pt";
    ASSERT_EQ(::mkfifo(pipe.c_str(), 0600), 0) << "mkfifo failed";
    ServerOptions o;
    o.model_path = pipe.string();
    o.log_requests = false;
    Instance in = start(o, "loading");
    auto c = in.client();
    auto h = c->Get("/health");
    auto m = c->Post("/v1/measure", measure_form(synthetic_scan()));
    EXPECT_FALSE(in.server->ready());
    // Release the loader before any assertion can end the test (it would otherwise wait forever):
    // feed the pipe whenever the loader has it open for reading (LibTorch may open it more than
    // once) until loading has ended.
    std::string status = "loading";
    for (int tries = 0; tries < 2000; ++tries) {
        const int fd = ::open(pipe.c_str(), O_WRONLY | O_NONBLOCK);  // fails while no reader waits
        if (fd >= 0) {
            const char junk[] = "not a model";
            // The loader may give up on the pipe (it cannot seek) between our open and write: the
            // write then fails with EPIPE (SIGPIPE is ignored by httplib), which is fine.
            const ssize_t n = ::write(fd, junk, sizeof junk);
            EXPECT_TRUE(n > 0 || errno == EPIPE) << std::strerror(errno);
            ::close(fd);
        }
        if (auto now = c->Get("/health"); now && (status = body_json(now)["status"]) != "loading") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 503);
    EXPECT_EQ(body_json(h)["status"], "loading");
    expect_error(m, 503, "model_loading", "still loading");
    EXPECT_FALSE(in.server->ready());
    EXPECT_EQ(status, "failed");
    auto after = c->Get("/health");
    ASSERT_TRUE(after);
    EXPECT_EQ(after->status, 503);
    fs::remove_all(dir);
}

TEST(ServerOptionsCheck, MissingModelAndBusyPortAreClearErrors) {
    const fs::path dir = temp_dir("opts");
    ServerOptions o;
    o.model_path = (dir / "missing.pt").string();
    o.db_path = (dir / "db.sqlite").string();
    auto s = Server::create(o);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("missing.pt"), std::string::npos) << s.error();

    std::ofstream(dir / "m.pt") << "x";
    o.model_path = (dir / "m.pt").string();
    o.port = 0;
    auto first = Server::create(o);
    ASSERT_TRUE(first) << first.error();
    o.port = (*first)->port();
    auto second = Server::create(o);
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().find(std::to_string(o.port)), std::string::npos) << second.error();
    fs::remove_all(dir);
}

// The DICOM node's options are checked when the server is created, with messages naming the flag.
TEST(ServerOptionsCheck, DicomNodeOptionsAreClearErrors) {
    const fs::path dir = temp_dir("dicomopts");
    std::ofstream(dir / "m.pt") << "x";
    ServerOptions o;
    o.model_path = (dir / "m.pt").string();
    o.db_path = (dir / "db.sqlite").string();
    o.port = 0;
    o.dicom_port = 70000;
    auto s = Server::create(o);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("--dicom-port"), std::string::npos) << s.error();
    o.dicom_port = 11112;
    o.dicom_forward = "PACS@host";
    s = Server::create(o);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("AET@HOST:PORT"), std::string::npos) << s.error();
    o.dicom_forward = "";
    o.dicom_aet = "AN AE TITLE LONGER THAN 16";
    s = Server::create(o);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("--dicom-aet"), std::string::npos) << s.error();
    o.dicom_aet = "FETALHC";
    o.dicom_allow = {"OK", "BAD\\AE"};
    s = Server::create(o);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("--dicom-allow"), std::string::npos) << s.error();
    fs::remove_all(dir);
}

// ---- the store on its own -------------------------------------------------------------------------

// A database written before the DICOM node existed (no dicom_instances table) opens with its exams
// intact and gains the table.
TEST(ServerStore, OlderDatabaseKeepsItsExamsAndGainsTheDicomTable) {
    const fs::path dir = temp_dir("migrate");
    const std::string db = (dir / "old.db").string();
    {
        auto s = Store::open(db);
        ASSERT_TRUE(s) << s.error();
        Exam e;
        e.pregnancy_id = "P1";
        e.exam_date = "2026-01-10";
        e.image_sha256 = *(*s)->put_image("img");
        e.pixel_size_mm = 0.1;
        e.ellipse_px = {10, 20, 30, 25, 0.5};
        e.quality = "ok";
        ASSERT_TRUE((*s)->add_exam(e));
    }
    {
        sqlite3* h = nullptr;
        ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(h, "DROP TABLE dicom_instances", nullptr, nullptr, nullptr), SQLITE_OK);
        sqlite3_close(h);
    }
    auto s = Store::open(db);
    ASSERT_TRUE(s) << s.error();
    auto h = (*s)->history("P1");
    ASSERT_TRUE(h && h->found);
    EXPECT_EQ(h->exams.size(), 1u);
    auto none = (*s)->dicom_instances(10);
    ASSERT_TRUE(none) << none.error();
    EXPECT_TRUE(none->empty());
    DicomInstance d;
    d.sop_instance_uid = "1.2.3";
    ASSERT_TRUE((*s)->add_dicom_instance(d));
    EXPECT_EQ((*s)->dicom_instances(10)->size(), 1u);
    fs::remove_all(dir);
}

// A database written before exams kept the SOP Instance UID: its exams stay readable (no UID) and
// new exams keep theirs.
TEST(ServerStore, OlderDatabaseKeepsItsExamsAndGainsTheSopInstanceUid) {
    const fs::path dir = temp_dir("migrate_uid");
    const std::string db = (dir / "old.db").string();
    Exam e;
    e.pregnancy_id = "P1";
    e.exam_date = "2026-01-10";
    e.pixel_size_mm = 0.1;
    e.ellipse_px = {10, 20, 30, 25, 0.5};
    e.hc_mm = 17.3;
    e.quality = "ok";
    {
        auto s = Store::open(db);
        ASSERT_TRUE(s) << s.error();
        e.image_sha256 = *(*s)->put_image("img");
        ASSERT_TRUE((*s)->add_exam(e));
    }
    {
        // The exams table as older versions created it: without the column.
        sqlite3* h = nullptr;
        ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(h, "ALTER TABLE exams DROP COLUMN sop_instance_uid", nullptr, nullptr, nullptr), SQLITE_OK)
            << sqlite3_errmsg(h);
        sqlite3_close(h);
    }
    for (int reopen = 0; reopen < 2; ++reopen) {  // the second open finds the column already there
        auto s = Store::open(db);
        ASSERT_TRUE(s) << s.error();
        if (reopen == 0) {
            Exam d = e;
            d.exam_date = "2026-02-10";
            d.sop_instance_uid = "1.2.826.0.1.3680043.8.498.1";
            auto saved = (*s)->add_exam(d);
            ASSERT_TRUE(saved) << saved.error();
            EXPECT_EQ(saved->sop_instance_uid, d.sop_instance_uid);
        }
        auto h = (*s)->history("P1");
        ASSERT_TRUE(h && h->found);
        ASSERT_EQ(h->exams.size(), 2u);
        EXPECT_EQ(h->exams[0].exam_date, "2026-01-10");
        EXPECT_NEAR(h->exams[0].hc_mm, 17.3, 1e-12);
        EXPECT_FALSE(h->exams[0].sop_instance_uid);
        EXPECT_EQ(h->exams[1].sop_instance_uid, std::optional<std::string>("1.2.826.0.1.3680043.8.498.1"));
    }
    fs::remove_all(dir);
}

TEST(ServerStore, DicomUidsAreDigitsAndDots) {
    for (const char* ok : {"1", "1.2.840.10008.5.1.4.1.1.6.1", "2.25.329800735698586629295641978511506172918"})
        EXPECT_TRUE(valid_dicom_uid(ok)) << ok;
    for (const std::string bad : {std::string(), std::string("1..2"), std::string(".1"), std::string("1."), std::string("1.2a"),
                                  std::string("1 2"), std::string(65, '1')})
        EXPECT_FALSE(valid_dicom_uid(bad)) << bad;
    EXPECT_TRUE(valid_dicom_uid(std::string(64, '1')));
}

TEST(ServerStore, KeepsExamsAndImagesAcrossReopen) {
    const fs::path dir = temp_dir("store");
    const std::string db = (dir / "sub" / "h.db").string();
    Exam e;
    {
        auto s = Store::open(db);
        ASSERT_TRUE(s) << s.error();
        auto sha = (*s)->put_image("image bytes");
        ASSERT_TRUE(sha);
        EXPECT_EQ(*sha, sha256_hex("image bytes"));
        EXPECT_EQ(*(*s)->put_image("image bytes"), *sha);  // idempotent
        ASSERT_TRUE((*s)->image_path(*sha));
        EXPECT_FALSE((*s)->image_path(std::string(64, 'f')));
        EXPECT_FALSE((*s)->image_path("../h.db"));
        e.pregnancy_id = "P.1_a-b";
        e.exam_date = "2026-01-10";
        e.image_sha256 = *sha;
        e.pixel_size_mm = 0.1;
        e.ellipse_px = {10, 20, 30, 25, 0.5};
        e.hc_mm = 17.3;
        e.ga_hadlock_weeks = 19.5;
        e.quality = "review";
        e.reasons = {"poor ellipse fit", "with, a comma"};
        e.corrected = true;
        auto saved = (*s)->add_exam(e);
        ASSERT_TRUE(saved) << saved.error();
        EXPECT_GT(saved->id, 0);
        EXPECT_EQ(saved->created_at.size(), 20u);
        Exam earlier = e;
        earlier.exam_date = "2025-12-01";
        ASSERT_TRUE((*s)->add_exam(earlier));
    }
    auto s = Store::open(db);
    ASSERT_TRUE(s) << s.error();
    auto h = (*s)->history("P.1_a-b");
    ASSERT_TRUE(h) << h.error();
    ASSERT_TRUE(h->found);
    ASSERT_EQ(h->exams.size(), 2u);
    EXPECT_EQ(h->exams[0].exam_date, "2025-12-01");
    const Exam& back = h->exams[1];
    EXPECT_EQ(back.ellipse_px.cx, 10);
    EXPECT_EQ(back.ellipse_px.angle, 0.5);
    EXPECT_EQ(back.hc_mm, 17.3);
    EXPECT_EQ(back.ga_hadlock_weeks, std::optional<double>(19.5));
    EXPECT_FALSE(back.centile.has_value());
    EXPECT_EQ(back.reasons, e.reasons);
    EXPECT_TRUE(back.corrected);
    EXPECT_TRUE(back.accepted);
    auto none = (*s)->history("nobody");
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->found);
    fs::remove_all(dir);
}

TEST(ServerStore, ValidatesIdsDatesAndHashes) {
    EXPECT_TRUE(valid_pregnancy_id("A-1.b_2"));
    EXPECT_FALSE(valid_pregnancy_id(""));
    EXPECT_FALSE(valid_pregnancy_id("a/b"));
    EXPECT_FALSE(valid_pregnancy_id(std::string(65, 'a')));
    EXPECT_TRUE(valid_date("2024-02-29"));
    EXPECT_FALSE(valid_date("2023-02-29"));
    EXPECT_FALSE(valid_date("2024-13-01"));
    EXPECT_FALSE(valid_date("2024-1-01"));
    EXPECT_TRUE(valid_sha256(sha256_hex("")));
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");  // FIPS 180-2 empty-message digest
    EXPECT_FALSE(valid_sha256(std::string(64, 'A')));
    EXPECT_TRUE(is_loopback_host("127.0.0.1"));
    EXPECT_TRUE(is_loopback_host("localhost"));
    EXPECT_FALSE(is_loopback_host("0.0.0.0"));
}

namespace {

// Issue 16 row 1 over the socket: DNS rebinding (a foreign Host) is refused for reads too, a
// foreign Origin and a text/plain "simple" write are refused and store nothing; --allow-origin
// lets a named site in.
TEST_F(ServerSocket, ForeignHostOriginAndSimpleWritesAreRefused) {
    expect_error(cli_->Get("/v1/growth-curve", {{"Host", "evil.example:" + std::to_string(inst_->server->port())}}), 403, "forbidden",
                 "Host");
    const std::string exam = R"({"pregnancy_id": "csrf-1", "exam_date": "2026-01-02", "image_sha256": ")" + std::string(64, 'a') +
                             R"(", "pixel_size_mm": 0.15, "corrected": false,
        "ellipse_px": {"center_x": 400, "center_y": 270, "semi_axis_a": 170, "semi_axis_b": 130, "angle_rad": 0}})";
    httplib::Client plain("127.0.0.1", inst_->server->port());
    expect_error(plain.Post("/v1/exams", exam, "text/plain"), 403, "forbidden", "application/json");
    expect_error(plain.Post("/v1/exams", {{"Origin", "http://127.0.0.1:1"}}, exam, "application/json"), 403, "forbidden",
                 "--allow-origin");
    expect_error(plain.Post("/v1/measure", measure_form(synthetic_scan())), 403, "forbidden");
    // The server's own origin passes the guard (the exam then fails on its unknown image).
    expect_error(plain.Post("/v1/exams", {{"Origin", "http://127.0.0.1:" + std::to_string(inst_->server->port())}}, exam,
                            "application/json"),
                 400, "unknown_image");
    expect_error(plain.Get("/v1/pregnancies/csrf-1"), 404, "pregnancy_not_found");
}

TEST(ServerOrigin, AllowOriginListAndItsFormat) {
    const fs::path dir = temp_dir("origin");
    std::ofstream(dir / "m.pt") << "x";
    ServerOptions o;
    o.model_path = (dir / "m.pt").string();
    o.log_requests = false;
    o.allow_origins = {"not-an-origin"};
    o.db_path = (dir / "a.db").string();
    auto bad = Server::create(o);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().find("--allow-origin"), std::string::npos) << bad.error();
    o.allow_origins = {"https://viewer.example.org"};
    Instance in = start(o, "origin");
    auto g = in.client()->Get("/v1/growth-curve", {{"Origin", "https://viewer.example.org"}});
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, 200);
    expect_error(in.client()->Get("/v1/growth-curve", {{"Origin", "https://other.example.org"}}), 403, "forbidden");
    fs::remove_all(dir);
}

// Row 15: the loopback check resolves the name; a name merely starting with "127." is not loopback.
TEST(ServerAuth, LoopbackCheckResolvesTheAddress) {
    EXPECT_TRUE(is_loopback_host("127.0.0.1"));
    EXPECT_TRUE(is_loopback_host("127.0.0.2"));
    EXPECT_TRUE(is_loopback_host("::1"));
    EXPECT_TRUE(is_loopback_host("localhost"));
    EXPECT_FALSE(is_loopback_host("127.0.0.1.nip.io"));  // resolves to 127.0.0.1 only via outside DNS; never trusted by prefix
    EXPECT_FALSE(is_loopback_host("0.0.0.0"));
    EXPECT_FALSE(is_loopback_host("10.1.2.3"));
    EXPECT_FALSE(is_loopback_host(""));
}

// Row 10: a foreign SQLite file is refused before anything is written to it or next to it.
TEST(ServerStore, ForeignDatabaseIsRefusedUntouched) {
    const fs::path dir = temp_dir("foreign");
    const std::string db = (dir / "other.db").string();
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(h, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(h);
    const auto before = fs::file_size(db);
    auto s = Store::open(db);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("another program"), std::string::npos) << s.error();
    EXPECT_FALSE(fs::exists(db + ".images"));
    EXPECT_FALSE(fs::exists(db + "-wal"));
    EXPECT_EQ(fs::file_size(db), before);
    ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(h, "SELECT count(*) FROM sqlite_master WHERE type = 'table'", -1, &st, nullptr);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_EQ(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, nullptr);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "delete");
    sqlite3_finalize(st);
    sqlite3_close(h);
    // A file that is not SQLite at all is refused too; a new file becomes a fetalhc database.
    std::ofstream(dir / "text.db") << "hello, not a database at all, long enough to be a header............................";
    EXPECT_FALSE(Store::open((dir / "text.db").string()));
    EXPECT_FALSE(fs::exists(dir / "text.db.images"));
    EXPECT_TRUE(Store::open((dir / "new.db").string()));
    EXPECT_TRUE(Store::open((dir / "new.db").string()));  // and is recognised when opened again
    fs::remove_all(dir);
}

// Row 11: a database or image folder that cannot be written is found when the store opens.
// Runs the permission checks in a child process. As root (CI), the child drops to the unprivileged uid/gid 65534
// ("nobody") before touching anything, since permissions do not stop root: the check stays a real one.
std::string readonly_checks_as_unprivileged(const fs::path& dir) {
    const std::string db = (dir / "hc.db").string();
    std::string err;
    auto fail = [&](const std::string& m) { err += m + "\n"; };
    if (!Store::open(db)) { fail("fresh database did not open"); return err; }
    fs::permissions(db + ".images", fs::perms::owner_read | fs::perms::owner_exec);
    auto s = Store::open(db);
    if (s) fail("read-only image folder was accepted");
    else if (s.error().find("not writable") == std::string::npos) fail("image folder error: " + s.error());
    fs::permissions(db + ".images", fs::perms::owner_all);
    fs::permissions(db, fs::perms::owner_read);
    s = Store::open(db);
    if (s) fail("read-only database was accepted");
    else if (s.error().find("read-only") == std::string::npos) fail("database error: " + s.error());
    fs::permissions(db, fs::perms::owner_all);
    return err;
}

TEST(ServerStore, ReadOnlyDatabaseOrImageFolderIsRefusedAtStart) {
    const fs::path dir = temp_dir("readonly");
    constexpr uid_t kNobody = 65534;
    if (::geteuid() == 0) {
        ASSERT_EQ(::chown(dir.c_str(), kNobody, kNobody), 0) << std::strerror(errno);
        ::chmod(dir.c_str(), 0700);
    }
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(fds[0]);
        std::string err;
        if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0))
            err = std::string("cannot drop to uid 65534: ") + std::strerror(errno) + "\n";
        else if (::geteuid() == 0)
            err = "still root after setuid\n";
        else
            err = readonly_checks_as_unprivileged(dir);
        if (::write(fds[1], err.data(), err.size()) < 0) {}
        ::_exit(err.empty() ? 0 : 1);
    }
    ::close(fds[1]);
    std::string out;
    char buf[512];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
    EXPECT_EQ(out, "");
    fs::remove_all(dir);
}

}  // namespace
