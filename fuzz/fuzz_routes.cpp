// libFuzzer target: the HTTP route handlers (server::handle, routes*.cpp) and the browser-origin
// check, without sockets, on a temporary SQLite store and an engine whose model is never loaded
// (routes that need the network answer 503; the JSON routes, mask fitting, DICOM and image
// decoding, exams, pregnancies and images run in full).
//
// Input layout: the first byte picks a route from kRoutes; the rest is
//   - a JSON route: the body, sent as application/json;
//   - a multipart route: parts separated by "\r\n--\r\n", each "NAME\n" or "NAME;FILENAME\n" then
//     its bytes (a part with a file name goes to `files`, one without to `form`, as the transport
//     fills them);
//   - a GET route: the rest of the path after the route's prefix.
// Whatever comes back must be a well-formed response: a status 200..599 and, for an error, the
// JSON {"error": {"code", "message"}} of errors.h. A crash, sanitizer report or a response that
// breaks this stops the fuzzer.
#include "http_metrics.h"
#include "openapi.h"
#include "routes.h"
#include "service.h"

#include "fetalhc/store.h"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

namespace {

using namespace fetalhc;
using namespace fetalhc::server;

enum class Kind { Json, Multipart, Get };
struct FuzzRoute {
    const char* method;
    const char* path;  // for Get: the prefix the fuzzed rest is appended to
    Kind kind;
};
const FuzzRoute kRoutes[] = {
    {"POST", "/v1/perimeter", Kind::Json},          {"POST", "/v1/exams", Kind::Json},
    {"POST", "/v1/fit-ellipse", Kind::Json},        {"POST", "/v1/fit-ellipse", Kind::Multipart},
    {"POST", "/v1/measure", Kind::Multipart},       {"POST", "/v1/segment", Kind::Multipart},
    {"POST", "/v1/measure", Kind::Json},            {"GET", "/v1/pregnancies/", Kind::Get},
    {"GET", "/v1/images/", Kind::Get},              {"GET", "/static/", Kind::Get},
    {"GET", "/v1/dicom/instances", Kind::Get},      {"GET", "/v1/growth-curve", Kind::Get},
};

// The services of one fuzzing process: a store in a fresh temporary folder (removed at exit).
struct World {
    std::filesystem::path dir;
    std::unique_ptr<Store> store;
    Engine engine{1};
    HttpMetrics metrics;
    std::unique_ptr<Services> services;
    World() {
        char tmpl[] = "/tmp/fetalhc_fuzz_routes_XXXXXX";
        if (!mkdtemp(tmpl)) std::abort();
        dir = tmpl;
        auto s = Store::open((dir / "fuzz.db").string());
        if (!s) {
            std::fprintf(stderr, "fuzz_routes: cannot open the store: %s\n", s.error().c_str());
            std::abort();
        }
        store = std::move(*s);
        services = std::make_unique<Services>(Services{*store, engine, metrics, openapi_json("fuzz", 4u << 20)});
    }
    ~World() {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

World& world() {
    static World w;
    return w;
}

void add_parts(HttpRequest& req, const std::string& rest) {
    const std::string sep = "\r\n--\r\n";
    size_t start = 0;
    while (start <= rest.size()) {
        size_t end = rest.find(sep, start);
        if (end == std::string::npos) end = rest.size();
        const std::string part = rest.substr(start, end - start);
        const size_t nl = part.find('\n');
        const std::string head = part.substr(0, nl);
        const std::string bytes = nl == std::string::npos ? "" : part.substr(nl + 1);
        const size_t semi = head.find(';');
        const std::string name = head.substr(0, semi);
        if (semi == std::string::npos) req.form.emplace(name, bytes);
        else req.files.emplace(name, UploadedFile{name, head.substr(semi + 1), "application/octet-stream", bytes});
        start = end + sep.size();
    }
}

HttpRequest request_from(const uint8_t* data, size_t size) {
    const FuzzRoute& r = kRoutes[data[0] % (sizeof kRoutes / sizeof kRoutes[0])];
    const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
    HttpRequest req;
    req.method = r.method;
    req.path = r.path;
    switch (r.kind) {
        case Kind::Json:
            req.headers["content-type"] = "application/json";
            req.body = rest;
            break;
        case Kind::Multipart:
            req.headers["content-type"] = "multipart/form-data; boundary=x";
            req.headers["x-fetalhc-request"] = "1";
            req.multipart = true;
            add_parts(req, rest);
            break;
        case Kind::Get:
            req.path += rest;
            break;
    }
    req.headers["host"] = "127.0.0.1:8080";
    return req;
}

void check_response(const HttpRequest& req, const HttpResponse& res) {
    bool ok = res.status >= 200 && res.status <= 599;
    if (ok && res.status >= 400) {
        const auto j = nlohmann::json::parse(res.body, nullptr, false);
        ok = j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].contains("code") &&
             j["error"]["code"].is_string() && j["error"].contains("message") && j["error"]["message"].is_string() &&
             !j["error"]["message"].get<std::string>().empty();
    }
    if (!ok) {
        std::fprintf(stderr, "%s %s answered %d with a malformed body: %.300s\n", req.method.c_str(), req.path.c_str(),
                     res.status, res.body.c_str());
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    World& w = world();
    HttpRequest req = request_from(data, size);
    // The origin check sees the same headers the handler gets (it runs first in the transport).
    if (check_request_origin(req.method, req.headers, origin_policy("127.0.0.1", 8080, {}, true))) return 0;
    const HttpResponse res = handle(req, *w.services);
    check_response(req, res);
    return 0;
}
