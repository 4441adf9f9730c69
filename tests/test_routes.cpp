// The HTTP API without sockets: request values handed to server::handle, response values checked.
// Every route, its error paths (status, stable code, message), the route table, the error catalog
// and the OpenAPI document, the measure-and-store service. Only the tests that run the network
// (RouteModel) need the model file; they skip with a message when it is absent.
#include "auth.h"
#include "dicom_node.h"
#include "dicomweb_client.h"
#include "dicom_wrap.h"
#include "errors.h"
#include "http_metrics.h"
#include "openapi.h"
#include "pg_cluster.h"
#include "routes.h"
#include "server_test_util.h"
#include "service.h"

#include "fetalhc/dicom.h"
#include "fetalhc/ellipse.h"
#include "fetalhc/growth.h"
#include "fetalhc/dicom_store.h"
#include "fetalhc/store.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace fetalhc;
using namespace fetalhc::server;
using namespace fetalhc::test;

namespace {

// ---- request builders -------------------------------------------------------------------------

struct Part {
    std::string name, bytes, filename;
};

HttpRequest get(const std::string& path) {
    HttpRequest r;
    r.path = path;
    return r;
}

HttpRequest post_json(const std::string& path, const std::string& body) {
    HttpRequest r;
    r.method = "POST";
    r.path = path;
    r.headers["content-type"] = "application/json";
    r.body = body;
    return r;
}

// As the transport builds it: every part in `files`, the ones without a file name in `form` too.
HttpRequest post_form(const std::string& path, const std::vector<Part>& parts) {
    HttpRequest r;
    r.method = "POST";
    r.path = path;
    r.multipart = true;
    r.headers["content-type"] = "multipart/form-data; boundary=x";
    for (const Part& p : parts) {
        r.files[p.name] = UploadedFile{p.name, p.filename, p.filename.empty() ? "" : "image/png", p.bytes};
        if (p.filename.empty()) r.form[p.name] = p.bytes;
    }
    return r;
}

std::vector<Part> measure_form(const std::string& image, const std::string& pixel = "0.15") {
    return {{"image", image, "scan.png"}, {"pixel_size_mm", pixel, ""}};
}

json body_json(const HttpResponse& r) { return json::parse(r.body, nullptr, false); }

#ifndef FETALHC_DICOM_DIR
#define FETALHC_DICOM_DIR ""
#endif

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// A PNG image's pixels as an Ultrasound (Multi-frame) Image Storage file whose one region covers
// the whole image at `mm` per pixel (the same frame `frames` times).
std::string wrap_in_dicom(const std::string& png_bytes, double mm, int frames = 1) {
    const cv::Mat img = cv::imdecode(std::vector<unsigned char>(png_bytes.begin(), png_bytes.end()), cv::IMREAD_GRAYSCALE);
    DcmFileFormat file;
    build_wrapped_dicom(file, img, mm, frames);
    const fs::path tmp = fs::temp_directory_path() / ("fetalhc_routes_wrap_" + std::to_string(std::random_device{}()) + ".dcm");
    if (file.saveFile(tmp.string().c_str(), EXS_LittleEndianExplicit).bad()) throw std::runtime_error("cannot write DICOM");
    std::string bytes = read_bytes(tmp);
    fs::remove(tmp);
    return bytes;
}

std::vector<Part> dicom_form(const std::string& dicom, std::vector<Part> extra = {}) {
    extra.insert(extra.begin(), Part{"image", dicom, "scan.dcm"});
    return extra;
}

// Error responses: the status, JSON {"error": {"code", "message"}} with the expected code (whose
// catalog status is the response's) and a non-empty message holding `contains`.
void expect_error(const HttpResponse& r, int status, const std::string& code, const std::string& contains = "") {
    EXPECT_EQ(r.status, status) << r.body;
    EXPECT_EQ(r.content_type, "application/json");
    const json j = body_json(r);
    ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_object()) << r.body;
    ASSERT_TRUE(j["error"]["code"].is_string() && j["error"]["message"].is_string()) << r.body;
    EXPECT_EQ(j["error"]["code"], code) << r.body;
    const std::string message = j["error"]["message"];
    EXPECT_FALSE(message.empty());
    if (!contains.empty()) EXPECT_NE(message.find(contains), std::string::npos) << message;
}

// A service set with its own temporary database. The engine stays "loading" unless a test loads
// a model into it.
struct Api {
    // `target`: a store to open (a PostgreSQL URI); "" = a fresh SQLite file in a temporary folder.
    explicit Api(const std::string& tag = "routes", const std::string& target = "") : dir(temp_dir(tag)) {
        auto s = Store::open(target.empty() ? (dir / "fetalhc.db").string() : target);
        if (!s) throw std::runtime_error(s.error());
        store = std::move(*s);
        services = std::make_unique<Services>(Services{*store, engine, metrics, openapi_json("test", 4u << 20)});
    }
    ~Api() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    HttpResponse operator()(HttpRequest r) const { return handle(std::move(r), *services); }

    fs::path dir;
    std::unique_ptr<Store> store;
    Engine engine{2};
    HttpMetrics metrics;
    std::unique_ptr<Services> services;
};

class RouteApi : public ::testing::Test {
protected:
    Api api;
};

}  // namespace

// ---- the route table and the error catalog -----------------------------------------------------

TEST(RouteTable, MatchesPatternsAndFillsPathParameters) {
    auto m = match_route("GET", "/v1/pregnancies/P-1");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->route->pattern, "/v1/pregnancies/{id}");
    EXPECT_EQ(m->params.at("id"), "P-1");
    m = match_route("GET", "/v1/pregnancies/P-1/export.csv");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->route->pattern, "/v1/pregnancies/{id}/export.csv");
    EXPECT_EQ(m->params.at("id"), "P-1");
    m = match_route("GET", "/static/js/app.js");
    ASSERT_TRUE(m);
    EXPECT_EQ(m->params.at("file"), "js/app.js");
    m = match_route("HEAD", "/health");  // HEAD is served as GET
    ASSERT_TRUE(m);
    EXPECT_EQ(m->route->pattern, "/health");
    EXPECT_TRUE(match_route("GET", "/"));
    EXPECT_FALSE(match_route("POST", "/"));
    EXPECT_FALSE(match_route("GET", "/static/"));
    EXPECT_FALSE(match_route("GET", "/v1/pregnancies/"));
    EXPECT_FALSE(match_route("GET", "/v1/pregnancies/a/b"));
    EXPECT_FALSE(match_route("POST", "/health"));
    EXPECT_FALSE(match_route("GET", "/v1/measure"));
    EXPECT_FALSE(match_route("DELETE", "/v1/exams"));
}

// Issue 16 row 5: every route but the page, /health and /openapi.json needs the token, reads too.
// The route table as the OpenAPI document names its paths ("/static/{file*}" is "/static/{file}").
std::string openapi_path(const Route& r) {
    std::string p = r.pattern;
    if (const size_t star = p.find("*}"); star != std::string::npos) p.erase(star, 1);
    return p;
}

// Which routes need the token is derived from two places that must agree: the transport's rule
// (route_needs_token) and the OpenAPI document (an operation with `security`). A new route without
// a documented rule fails here.
TEST(RouteTable, EveryRouteButThePageHealthAndOpenApiNeedsTheToken) {
    const json doc = json::parse(openapi_json("test", 4u << 20));
    for (const Route& r : route_table()) {
        std::string method = r.method;
        std::transform(method.begin(), method.end(), method.begin(), [](unsigned char c) { return char(std::tolower(c)); });
        ASSERT_TRUE(doc["paths"].contains(openapi_path(r)) && doc["paths"][openapi_path(r)].contains(method))
            << r.method << " " << r.pattern << " is not in the OpenAPI document";
        const json& op = doc["paths"][openapi_path(r)][method];
        const bool documented_secured = op.contains("security") && !op["security"].empty();
        EXPECT_EQ(route_needs_token(r), documented_secured) << r.method << " " << r.pattern;
    }
    for (const char* read : {"/v1/pregnancies/P-001", "/v1/pregnancies/P-001/export.csv", "/v1/images/" 
                             "0000000000000000000000000000000000000000000000000000000000000000", "/metrics"})
        EXPECT_TRUE(route_needs_token(*match_route("GET", read)->route)) << read;
}

TEST(RouteErrors, CatalogCodesAreUniqueSnakeCaseWithOneStatusEach) {
    std::set<std::string> names;
    const std::regex snake("[a-z]+(_[a-z]+)*");
    for (size_t i = 0; i < error_catalog().size(); ++i) {
        const ErrorInfo& e = error_catalog()[i];
        EXPECT_EQ(size_t(e.code), i) << e.name;
        EXPECT_EQ(&error_info(e.code), &e);
        EXPECT_TRUE(std::regex_match(e.name, snake)) << e.name;
        EXPECT_TRUE(names.insert(e.name).second) << "duplicate " << e.name;
        EXPECT_TRUE(std::set<int>({400, 401, 403, 404, 411, 413, 422, 500, 503, 507}).count(e.http_status)) << e.name;
        EXPECT_GT(std::string(e.meaning).size(), 10u) << e.name;
    }
    for (const char* wanted : {"bad_request", "missing_field", "invalid_pixel_size", "image_unreadable", "no_head_found",
                               "payload_too_large", "unauthorized", "not_found", "model_loading", "internal"})
        EXPECT_TRUE(names.count(wanted)) << wanted;
    const HttpResponse r = error_response({ErrorCode::NoHeadFound, "none here"});
    EXPECT_EQ(r.status, 422);
    EXPECT_EQ(body_json(r), json::parse(R"({"error": {"code": "no_head_found", "message": "none here"}})"));
}

TEST_F(RouteApi, UnknownEndpointIsNotFound) {
    expect_error(api(get("/no/such/endpoint")), 404, "not_found", "openapi");
    expect_error(api(post_json("/health", "{}")), 404, "not_found");
}

// ---- site: page, OpenAPI, health, metrics, growth curve -----------------------------------------

TEST_F(RouteApi, OpenApiDocumentsEveryEndpointAndEveryErrorCode) {
    const HttpResponse r = api(get("/openapi.json"));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.content_type, "application/json");
    const json j = body_json(r);
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["openapi"].get<std::string>().substr(0, 2), "3.");
    // Every route of the table is documented with its method, and nothing else is.
    size_t operations = 0;
    for (const auto& [path, item] : j["paths"].items()) operations += item.size();
    EXPECT_EQ(operations, route_table().size());
    for (const Route& rt : route_table()) {
        std::string method = rt.method;
        std::transform(method.begin(), method.end(), method.begin(), [](unsigned char c) { return char(std::tolower(c)); });
        EXPECT_TRUE(j["paths"].contains(openapi_path(rt)) && j["paths"][openapi_path(rt)].contains(method))
            << rt.method << " " << rt.pattern;
    }
    // The Error schema lists every code of the catalog, and explains each.
    const json& code = j["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"];
    std::vector<std::string> listed = code["enum"];
    ASSERT_EQ(listed.size(), error_catalog().size());
    for (size_t i = 0; i < listed.size(); ++i) {
        EXPECT_EQ(listed[i], error_catalog()[i].name);
        EXPECT_NE(code["description"].get<std::string>().find(listed[i]), std::string::npos) << listed[i];
    }
    // Every error response of every endpoint has the Error shape.
    for (const auto& [path, item] : j["paths"].items())
        for (const auto& [method, op] : item.items())
            for (const auto& [status, resp] : op["responses"].items()) {
                if (status[0] != '4' && status[0] != '5') continue;
                // STOW-RS's 409 (nothing stored) is PS3.18's DICOM JSON answer, not an error body.
                if (path.rfind("/dicomweb/", 0) == 0 && status == "409") {
                    EXPECT_TRUE(resp["content"].contains("application/dicom+json")) << path;
                    continue;
                }
                const std::string schema = resp["content"]["application/json"]["schema"]["$ref"];
                EXPECT_TRUE(schema == "#/components/schemas/Error" || schema == "#/components/schemas/HealthNotReady")
                    << method << " " << path << " " << status;
            }
    EXPECT_NE(j["paths"]["/v1/measure"]["post"]["responses"]["413"]["description"].get<std::string>().find("payload_too_large"),
              std::string::npos);
}

TEST_F(RouteApi, ServesTheEmbeddedPageAndChartJs) {
    const HttpResponse page = api(get("/"));
    EXPECT_EQ(page.status, 200);
    EXPECT_EQ(page.content_type.rfind("text/html", 0), 0u);
    EXPECT_NE(page.body.find("<html"), std::string::npos);
    const HttpResponse chart = api(get("/static/chart.umd.min.js"));
    EXPECT_EQ(chart.status, 200);
    EXPECT_EQ(chart.content_type.rfind("text/javascript", 0), 0u);
    EXPECT_NE(chart.body.find("Chart"), std::string::npos);
    expect_error(api(get("/static/no-such-file.js")), 404, "not_found", "no-such-file.js");
}

// The engine starts "loading": the network routes answer 503, the others work.
TEST_F(RouteApi, HealthIs503WhileTheModelLoads) {
    const HttpResponse h = api(get("/health"));
    expect_error(h, 503, "model_loading");
    EXPECT_EQ(body_json(h)["status"], "loading");
    expect_error(api(post_form("/v1/measure", measure_form(synthetic_scan()))), 503, "model_loading", "still loading");
    EXPECT_FALSE(api.engine.ready());
    EXPECT_EQ(api(get("/v1/growth-curve")).status, 200);
}

TEST_F(RouteApi, UnloadableModelGives503) {
    std::ofstream(api.dir / "not_a_model.pt") << "not a model";
    api.engine.load((api.dir / "not_a_model.pt").string(), 1);
    EXPECT_FALSE(api.engine.wait_ready(1));
    const HttpResponse h = api(get("/health"));
    expect_error(h, 503, "model_unavailable");
    EXPECT_EQ(body_json(h)["status"], "failed");
    expect_error(api(post_form("/v1/measure", measure_form(synthetic_scan()))), 503, "model_unavailable", "model");
    expect_error(api(post_form("/v1/segment", {{"image", synthetic_scan(), "s.png"}})), 503, "model_unavailable");
    // Stages that need no network still answer.
    EXPECT_EQ(api(get("/v1/growth-curve")).status, 200);
}

TEST_F(RouteApi, MetricsReportTheModelAndSlotGauges) {
    api.metrics.observe("GET", "/health", 503, 0.002);
    const HttpResponse r = api(get("/metrics"));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.content_type.rfind("text/plain", 0), 0u);
    EXPECT_NE(r.body.find("fetalhc_model_ready 0"), std::string::npos);
    EXPECT_NE(r.body.find("fetalhc_inference_slots 2"), std::string::npos);
    EXPECT_NE(r.body.find("fetalhc_http_requests_total{method=\"GET\",route=\"/health\",status=\"503\"} 1"), std::string::npos);
}

TEST_F(RouteApi, GrowthCurveFollowsTheIntergrowthStandard) {
    const HttpResponse r = api(get("/v1/growth-curve"));
    ASSERT_EQ(r.status, 200);
    const json g = body_json(r);
    ASSERT_EQ(g["ga_weeks"].size(), 53u);
    EXPECT_EQ(g["ga_weeks"][0], 14.0);
    EXPECT_EQ(g["ga_weeks"][52], 40.0);
    for (size_t i = 0; i < g["ga_weeks"].size(); ++i) {
        const double w = g["ga_weeks"][i].get<double>();
        EXPECT_NEAR(g["p50"][i].get<double>(), intergrowth_hc_median(w), 1e-9);
        EXPECT_NEAR(g["p3"][i].get<double>(), intergrowth_hc_at_centile(w, 3), 1e-9);
        EXPECT_NEAR(g["p97"][i].get<double>(), intergrowth_hc_at_centile(w, 97), 1e-9);
        EXPECT_LT(g["p3"][i].get<double>(), g["p50"][i].get<double>());
        EXPECT_LT(g["p50"][i].get<double>(), g["p97"][i].get<double>());
    }
}

// ---- measure and the stages, up to the network ---------------------------------------------------

// Every field is checked before the model is needed: these answer the same with no model.
TEST_F(RouteApi, MeasureRejectsBadInputWithClearMessages) {
    const std::string scan = synthetic_scan();
    expect_error(api(post_form("/v1/measure", {{"pixel_size_mm", "0.15", ""}})), 400, "missing_field", "'image'");
    expect_error(api(post_form("/v1/measure", {{"image", "", "empty.png"}, {"pixel_size_mm", "0.15", ""}})), 400,
                 "image_unreadable", "empty");
    expect_error(api(post_form("/v1/measure", measure_form("this is not an image"))), 400, "image_unreadable",
                 "not a readable image");
    expect_error(api(post_form("/v1/measure", {{"image", scan, "scan.png"}})), 400, "missing_field", "pixel_size_mm");
    for (const char* bad : {"abc", "0", "-0.1", "5", "nan", ""})
        expect_error(api(post_form("/v1/measure", measure_form(scan, bad))), 400, "invalid_pixel_size", "pixel");
    auto with = [&](const char* key, const char* value) {
        auto f = measure_form(scan);
        f.push_back({key, value, ""});
        return api(post_form("/v1/measure", f));
    };
    expect_error(with("ga_weeks", "sixty"), 400, "invalid_ga", "ga_weeks");
    expect_error(with("ga_weeks", "60"), 400, "invalid_ga", "ga_weeks");
    expect_error(with("pregnancy_id", "Jane Doe"), 400, "invalid_pregnancy_id", "pregnancy_id");
    expect_error(with("exam_date", "2026-02-30"), 400, "invalid_date", "exam_date");
    expect_error(api(post_json("/v1/measure", "{}")), 400, "bad_request", "multipart");
    // A valid request reaches the model, which is still loading here.
    expect_error(api(post_form("/v1/measure", measure_form(scan))), 503, "model_loading");
}

TEST_F(RouteApi, SegmentRejectsBadInput) {
    const std::string scan = synthetic_scan();
    expect_error(api(post_form("/v1/segment", {{"image", scan, "scan.png"}, {"format", "svg", ""}})), 400, "invalid_field",
                 "format");
    expect_error(api(post_form("/v1/segment", {{"format", "json", ""}})), 400, "missing_field", "'image'");
    expect_error(api(post_form("/v1/segment", {{"image", "GIF89a", "x.gif"}})), 400, "image_unreadable");
    expect_error(api(post_json("/v1/segment", "{}")), 400, "bad_request", "multipart");
}

TEST_F(RouteApi, FitEllipseFromPointsAndFromAMask) {
    const Ellipse e{300.5, 210.25, 150, 110, 2.2};
    json pts = json::array();
    for (int k = 0; k < 90; ++k) {
        const cv::Point2d p = ellipse_point(e, 2 * CV_PI * k / 90);
        pts.push_back({p.x, p.y});
    }
    HttpResponse r = api(post_json("/v1/fit-ellipse", json{{"points", pts}}.dump()));
    ASSERT_EQ(r.status, 200) << r.body;
    json f = body_json(r);
    EXPECT_NEAR(f["ellipse_px"]["center_x"].get<double>(), e.cx, 1e-6);
    EXPECT_NEAR(f["ellipse_px"]["center_y"].get<double>(), e.cy, 1e-6);
    EXPECT_NEAR(f["ellipse_px"]["semi_axis_a"].get<double>(), e.a, 1e-6);
    EXPECT_NEAR(f["ellipse_px"]["semi_axis_b"].get<double>(), e.b, 1e-6);
    EXPECT_NEAR(f["ellipse_px"]["angle_rad"].get<double>(), e.angle, 1e-6);
    EXPECT_EQ(f["points"], 90);
    EXPECT_EQ(f["inliers"], 90);
    EXPECT_LT(f["rms_px"].get<double>(), 1e-6);

    // A filled mask: the half-pixel boundary of a rasterized ellipse is within a fraction of a pixel.
    r = api(post_form("/v1/fit-ellipse", {{"mask", png(rasterize(e, {640, 480})), "mask.png"}}));
    ASSERT_EQ(r.status, 200) << r.body;
    f = body_json(r);
    EXPECT_NEAR(f["ellipse_px"]["center_x"].get<double>(), e.cx, 0.3);
    EXPECT_NEAR(f["ellipse_px"]["semi_axis_a"].get<double>(), e.a, 0.5);
    EXPECT_NEAR(f["ellipse_px"]["semi_axis_b"].get<double>(), e.b, 0.5);

    expect_error(api(post_json("/v1/fit-ellipse", R"({"points": [[1,2],[3,4],[5,6]]})")), 422, "no_ellipse_fit", "cannot fit");
    expect_error(api(post_json("/v1/fit-ellipse", R"({"points": [[1,2],[3]]})")), 400, "invalid_points", "points");
    expect_error(api(post_json("/v1/fit-ellipse", R"({"pts": []})")), 400, "missing_field", "points");
    json many = json::array();
    for (int k = 0; k < 20001; ++k) many.push_back({k % 640, k % 480});
    expect_error(api(post_json("/v1/fit-ellipse", json{{"points", many}}.dump())), 400, "invalid_points", "at most");
    expect_error(api(post_json("/v1/fit-ellipse", "{not json")), 400, "bad_request", "JSON");
    expect_error(api(post_form("/v1/fit-ellipse", {{"mask", png(cv::Mat::zeros(100, 100, CV_8U)), "m.png"}})), 422, "empty_mask",
                 "white");
}

namespace {
uint32_t png_crc(const std::string& b) {
    uint32_t c = 0xFFFFFFFFu;
    for (unsigned char ch : b) {
        c ^= ch;
        for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}
void put_be32(std::string& s, uint32_t v) {
    for (int sh = 24; sh >= 0; sh -= 8) s.push_back(char((v >> sh) & 0xFF));
}
void png_chunk(std::string& out, const std::string& type, const std::string& data) {
    put_be32(out, uint32_t(data.size()));
    const std::string td = type + data;
    out += td;
    put_be32(out, png_crc(td));
}
// The issue's row 3 bomb: a tiny PNG whose IHDR claims w x h (8-bit gray) with a 2-byte IDAT.
std::string forged_png(uint32_t w, uint32_t h) {
    std::string out("\x89PNG\r\n\x1a\n", 8);
    std::string ihdr;
    put_be32(ihdr, w);
    put_be32(ihdr, h);
    ihdr += std::string("\x08\x00\x00\x00\x00", 5);
    png_chunk(out, "IHDR", ihdr);
    png_chunk(out, "IDAT", std::string("\x78\x9c", 2));
    png_chunk(out, "IEND", "");
    return out;
}
}  // namespace

// Issue 16 row 2/3: a mask or image whose header claims more than kMaxImagePixels is refused before
// any pixel is allocated, and every decode waits for a decode slot, so N bombs at once cannot decode
// more than the slot count at a time.
TEST_F(RouteApi, DecodesAreBudgetedFromTheHeaderAndRunInDecodeSlots) {
    for (uint32_t side : {32768u, 16384u}) {
        const std::string bomb = forged_png(side, side);
        expect_error(api(post_form("/v1/fit-ellipse", {{"mask", bomb, "mask.png"}})), 400, "image_unreadable", "megapixels");
        expect_error(api(post_form("/v1/measure", {{"image", bomb, "scan.png"}, {"pixel_size_mm", "0.1", ""}})), 400,
                     "image_unreadable", "megapixels");
    }
    Slots& decode = api.engine.decode_slots();
    ASSERT_EQ(decode.total(), 2);
    decode.acquire();
    decode.acquire();
    std::atomic<int> done{0};
    std::vector<HttpResponse> got(3);
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i)
        ts.emplace_back([&, i] {
            got[size_t(i)] = api(post_form("/v1/fit-ellipse", {{"mask", png(cv::Mat::zeros(100, 100, CV_8U)), "m.png"}}));
            ++done;
        });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(done.load(), 0) << "a decode ran without a decode slot";
    decode.release();
    decode.release();
    for (auto& t : ts) t.join();
    EXPECT_EQ(done.load(), 3);
    for (const auto& r : got) expect_error(r, 422, "empty_mask");
    EXPECT_EQ(decode.snapshot().in_use, 0);
}

TEST_F(RouteApi, PerimeterGivesTheNumbersOfAnEllipse) {
    const json ell{{"center_x", 400}, {"center_y", 270}, {"semi_axis_a", 120}, {"semi_axis_b", 95}, {"angle_rad", 0.3}};
    const HttpResponse r = api(post_json("/v1/perimeter", json{{"ellipse_px", ell}, {"pixel_size_mm", kPixelMm}, {"ga_weeks", 21}}.dump()));
    ASSERT_EQ(r.status, 200) << r.body;
    const json p = body_json(r);
    EXPECT_NEAR(p["hc_mm"].get<double>(), ramanujan_perimeter(120 * kPixelMm, 95 * kPixelMm), 1e-9);
    EXPECT_NEAR(p["bpd_mm"].get<double>(), 2 * 95 * kPixelMm, 1e-9);
    EXPECT_NEAR(p["ofd_mm"].get<double>(), 2 * 120 * kPixelMm, 1e-9);
    EXPECT_NEAR(p["cephalic_index"].get<double>(), 100.0 * 95 / 120, 1e-9);
    EXPECT_NEAR(p["ellipse_mm"]["semi_axis_a"].get<double>(), 120 * kPixelMm, 1e-9);
    const Centile c = intergrowth_hc_centile(p["hc_mm"].get<double>(), 21);
    EXPECT_NEAR(p["centile"]["centile"].get<double>(), c.centile, 1e-9);
    const GaEstimate h = hadlock_ga(p["hc_mm"].get<double>());
    EXPECT_EQ(p["ga_hadlock"]["in_range"].get<bool>(), h.in_range);
    if (h.in_range) EXPECT_NEAR(p["ga_hadlock"]["weeks"].get<double>(), h.weeks, 1e-9);

    expect_error(api(post_json("/v1/perimeter", json{{"ellipse_px", ell}}.dump())), 400, "missing_field", "pixel_size_mm");
    expect_error(api(post_json("/v1/perimeter", json{{"ellipse_px", ell}, {"pixel_size_mm", 3}}.dump())), 400, "invalid_pixel_size",
                 "pixel");
    json neg = ell;
    neg["semi_axis_b"] = -4;
    expect_error(api(post_json("/v1/perimeter", json{{"ellipse_px", neg}, {"pixel_size_mm", 0.1}}.dump())), 400, "invalid_ellipse",
                 "semi-axes");
    json missing = ell;
    missing.erase("angle_rad");
    expect_error(api(post_json("/v1/perimeter", json{{"ellipse_px", missing}, {"pixel_size_mm", 0.1}}.dump())), 400,
                 "invalid_ellipse", "angle_rad");
    expect_error(api(post_json("/v1/perimeter", json{{"pixel_size_mm", 0.1}}.dump())), 400, "missing_field", "ellipse_px");
    expect_error(api(post_json("/v1/perimeter", json{{"ellipse_px", ell}, {"pixel_size_mm", 0.1}, {"ga_weeks", "x"}}.dump())), 400,
                 "invalid_ga", "ga_weeks");
    expect_error(api(post_json("/v1/perimeter", "[1,2]")), 400, "bad_request", "JSON object");
}

// ---- exams, pregnancies, images -------------------------------------------------------------------

TEST_F(RouteApi, ExamsBuildAPregnancyHistoryAndCsv) {
    const std::string id = "hist-" + std::to_string(std::random_device{}() % 100000);
    // The image as POST /v1/measure would have kept it, and the numbers of its ellipse.
    auto sha = api.store->put_image(synthetic_scan());
    ASSERT_TRUE(sha) << sha.error();
    const json measured = ellipse_json(kHead);
    const json m = body_json(api(post_json("/v1/perimeter", json{{"ellipse_px", measured}, {"pixel_size_mm", kPixelMm}}.dump())));
    json ell = measured;
    ell["semi_axis_a"] = ell["semi_axis_a"].get<double>() + 4;  // the clinician's correction
    json exam{{"pregnancy_id", id}, {"exam_date", "2026-05-02"}, {"image_sha256", *sha},
              {"pixel_size_mm", kPixelMm}, {"ellipse_px", ell}, {"corrected", true}, {"ga_weeks", 24},
              {"quality", m["quality"]}, {"reasons", m["reasons"]}};
    HttpResponse r = api(post_json("/v1/exams", exam.dump()));
    ASSERT_EQ(r.status, 201) << r.body;
    const json saved = body_json(r);
    EXPECT_GT(saved["id"].get<long long>(), 0);
    EXPECT_TRUE(saved["accepted"].get<bool>());
    EXPECT_TRUE(saved["corrected"].get<bool>());
    // The server recomputes the numbers from the corrected ellipse.
    const double a = ell["semi_axis_a"].get<double>(), b = ell["semi_axis_b"].get<double>();
    EXPECT_NEAR(saved["hc_mm"].get<double>(), ramanujan_perimeter(std::max(a, b) * kPixelMm, std::min(a, b) * kPixelMm), 1e-9);
    EXPECT_NEAR(saved["centile"].get<double>(), intergrowth_hc_centile(saved["hc_mm"].get<double>(), 24).centile, 1e-9);
    EXPECT_EQ(saved["ga_weeks_given"], 24.0);

    // An earlier exam without GA: no centile; the history is sorted by exam date.
    exam["exam_date"] = "2026-03-01";
    exam["corrected"] = false;
    exam["ellipse_px"] = measured;
    exam.erase("ga_weeks");
    HttpRequest by_sam = post_json("/v1/exams", exam.dump());
    by_sam.user = "sam";
    by_sam.role = "sonographer";
    r = api(by_sam);
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_TRUE(body_json(r)["centile"].is_null());

    const HttpResponse h = api(get("/v1/pregnancies/" + id));
    ASSERT_EQ(h.status, 200) << h.body;
    const json hist = body_json(h);
    EXPECT_EQ(hist["pregnancy_id"], id);
    ASSERT_EQ(hist["exams"].size(), 2u);
    EXPECT_EQ(hist["exams"][0]["exam_date"], "2026-03-01");
    EXPECT_EQ(hist["exams"][1]["exam_date"], "2026-05-02");
    EXPECT_FALSE(hist["exams"][0]["corrected"].get<bool>());
    // Who saved each exam, from the audit trail (the first saved without a user: an open server).
    EXPECT_EQ(hist["exams"][0]["saved_by"], "sam");
    EXPECT_EQ(hist["exams"][1]["saved_by"], "anonymous");
    EXPECT_NEAR(hist["exams"][1]["hc_mm"].get<double>(), saved["hc_mm"].get<double>(), 1e-9);
    for (const char* k : {"id", "exam_date", "image_sha256", "pixel_size_mm", "ellipse_px", "hc_mm", "bpd_mm", "ofd_mm",
                          "ga_hadlock_weeks", "ga_intergrowth_weeks", "ga_weeks_given", "centile", "quality", "corrected",
                          "accepted", "created_at"})
        EXPECT_TRUE(hist["exams"][0].contains(k)) << k;

    const HttpResponse csv = api(get("/v1/pregnancies/" + id + "/export.csv"));
    EXPECT_EQ(csv.status, 200);
    EXPECT_EQ(csv.content_type.rfind("text/csv", 0), 0u);
    EXPECT_NE(csv.header("Content-Disposition").find("pregnancy-" + id + ".csv"), std::string::npos);
    std::istringstream lines(csv.body);
    std::string header, row1, row2, extra;
    std::getline(lines, header);
    std::getline(lines, row1);
    std::getline(lines, row2);
    EXPECT_EQ(header.rfind("exam_id,pregnancy_id,exam_date,", 0), 0u);
    EXPECT_NE(row1.find(",2026-03-01,"), std::string::npos);
    EXPECT_NE(row2.find(",2026-05-02,"), std::string::npos);
    EXPECT_FALSE(std::getline(lines, extra));

}

TEST_F(RouteApi, ExamsAndPregnanciesRejectBadInputWithClearMessages) {
    expect_error(api(get("/v1/pregnancies/never-seen")), 404, "pregnancy_not_found");
    expect_error(api(get("/v1/pregnancies/never-seen/export.csv")), 404, "pregnancy_not_found");
    expect_error(api(get("/v1/pregnancies/bad id")), 400, "invalid_pregnancy_id", "pregnancy id");

    auto sha = api.store->put_image(synthetic_scan());
    ASSERT_TRUE(sha) << sha.error();
    const json exam{{"pregnancy_id", "P-1"}, {"exam_date", "2026-05-02"}, {"image_sha256", *sha},
                    {"pixel_size_mm", kPixelMm}, {"ellipse_px", ellipse_json(kHead)}, {"corrected", true}, {"ga_weeks", 24}};
    ASSERT_EQ(api(post_json("/v1/exams", exam.dump())).status, 201);  // the exam below is valid but for one field
    auto bad = [&](const char* key, const json& value, const std::string& code, const std::string& contains) {
        json e = exam;
        if (value.is_null()) e.erase(key);
        else e[key] = value;
        expect_error(api(post_json("/v1/exams", e.dump())), 400, code, contains);
    };
    bad("pregnancy_id", "has space", "invalid_pregnancy_id", "pregnancy_id");
    bad("pregnancy_id", std::string(65, 'x'), "invalid_pregnancy_id", "pregnancy_id");
    bad("pregnancy_id", nullptr, "missing_field", "pregnancy_id");
    bad("exam_date", "14/03/2026", "invalid_date", "exam_date");
    bad("image_sha256", "abc", "invalid_image_id", "image_sha256");
    bad("image_sha256", std::string(64, '0'), "unknown_image", "no stored image");
    bad("pixel_size_mm", -1, "invalid_pixel_size", "pixel");
    bad("corrected", nullptr, "missing_field", "corrected");
    bad("corrected", "yes", "invalid_field", "corrected");
    bad("ellipse_px", "round", "invalid_ellipse", "ellipse_px");
    bad("quality", "great", "invalid_field", "quality");
    bad("reasons", "not a list", "invalid_field", "reasons");
    bad("ga_weeks", 80, "invalid_ga", "ga_weeks");
    expect_error(api(post_json("/v1/exams", "not json")), 400, "bad_request", "JSON");
}

// Reasons and ids are chosen by clients: in the CSV they must not run as spreadsheet formulas,
// and commas, quotes and line breaks must stay inside their cell.
TEST_F(RouteApi, ExportCsvNeutralisesFormulasAndQuotesText) {
    auto sha = api.store->put_image("image bytes");
    ASSERT_TRUE(sha);
    const std::string id = "-12";  // a valid pseudonym that a spreadsheet would read as a formula
    const json exam{{"pregnancy_id", id},
                    {"exam_date", "2026-01-10"},
                    {"image_sha256", *sha},
                    {"pixel_size_mm", kPixelMm},
                    {"ellipse_px", ellipse_json(kHead)},
                    {"corrected", false},
                    {"quality", "review"},
                    {"reasons", {"=HYPERLINK(\"http://x\")", "cut, by the border", "line\nbreak"}}};
    ASSERT_EQ(api(post_json("/v1/exams", exam.dump())).status, 201);
    const HttpResponse csv = api(get("/v1/pregnancies/" + id + "/export.csv"));
    ASSERT_EQ(csv.status, 200) << csv.body;
    // The id cell gets an apostrophe; the reasons cell too, quoted, its quotes doubled, its comma
    // and line break kept inside the quotes.
    EXPECT_NE(csv.body.find(",'-12,2026-01-10,"), std::string::npos) << csv.body;
    EXPECT_NE(csv.body.find(",review,\"'=HYPERLINK(\"\"http://x\"\"); cut, by the border; line\nbreak\",false,true,"),
              std::string::npos)
        << csv.body;
    // Numbers stay numbers: the semi-axis a of the ellipse, unquoted with 3 decimals.
    EXPECT_NE(csv.body.find(",170.000,130.000,"), std::string::npos) << csv.body;
    // One header line and one record (two physical lines, the break being inside the quotes).
    EXPECT_EQ(std::count(csv.body.begin(), csv.body.end(), '\n'), 3);
}

// Issue 16 row 7: bytes after a PNG's IEND or a JPEG's EOI are not stored (the image is kept up to
// its end, its hash is the hash of those bytes).
TEST_F(RouteApi, BytesAfterTheImageEndAreNotStored) {
    std::mt19937 rng(7);
    std::string junk(5000, '\0');
    for (char& c : junk) c = char(rng());
    const std::string scan = synthetic_scan();
    std::vector<unsigned char> jpg;
    ASSERT_TRUE(cv::imencode(".jpg", cv::Mat(64, 80, CV_8U, cv::Scalar(90)), jpg));
    for (const std::string& image : {scan, std::string(jpg.begin(), jpg.end())}) {
        EXPECT_EQ(image_data_end(image), image.size());
        auto sha = api.store->put_image(image + junk);
        ASSERT_TRUE(sha) << sha.error();
        EXPECT_EQ(*sha, sha256_hex(image));
        HttpResponse r = api(get("/v1/images/" + *sha));
        ASSERT_EQ(r.status, 200);
        EXPECT_EQ(r.body, image) << "trailing bytes were stored and served";
    }
    EXPECT_EQ(*api.store->stored_image_bytes(), scan.size() + jpg.size());
    EXPECT_EQ(image_data_end("not an image"), 12u);
}

// Issue 16 row 7: with a quota, the oldest images no exam references go first; when every image is
// referenced, 507 store_full with a clear message.
TEST_F(RouteApi, StoreQuotaRemovesOldUnreferencedImagesThenRefusesWith507) {
    std::vector<std::string> imgs;
    for (int k = 0; k < 4; ++k) {
        cv::Mat m(64, 64, CV_8U);
        cv::randu(m, 0, 255);
        std::vector<unsigned char> b;
        ASSERT_TRUE(cv::imencode(".png", m, b, {cv::IMWRITE_PNG_COMPRESSION, 0}));
        imgs.emplace_back(b.begin(), b.end());
    }
    const size_t size = imgs[0].size();
    for (const auto& i : imgs) ASSERT_EQ(i.size(), size);  // stored uncompressed: the same size
    api.store->set_quota_bytes(3 * size);
    std::vector<std::string> shas;
    for (int k = 0; k < 3; ++k) {
        auto sha = api.store->put_image(imgs[size_t(k)]);
        ASSERT_TRUE(sha) << sha.error();
        shas.push_back(*sha);
        fs::last_write_time(api.dir / "fetalhc.db.images" / *sha,
                            fs::file_time_type::clock::now() - std::chrono::hours(10 - k));  // 0 oldest
    }
    // Image 0, the oldest, is referenced by an exam: image 1 goes to make room for image 3.
    json exam{{"pregnancy_id", "quota-1"}, {"exam_date", "2026-05-02"}, {"image_sha256", shas[0]},
              {"pixel_size_mm", kPixelMm}, {"ellipse_px", ellipse_json(kHead)}, {"corrected", false}};
    ASSERT_EQ(api(post_json("/v1/exams", exam.dump())).status, 201);
    auto sha3 = api.store->put_image(imgs[3]);
    ASSERT_TRUE(sha3) << sha3.error();
    EXPECT_TRUE(*api.store->has_image(shas[0]));
    EXPECT_FALSE(*api.store->has_image(shas[1]));
    EXPECT_TRUE(*api.store->has_image(shas[2]));
    EXPECT_TRUE(*api.store->has_image(*sha3));
    EXPECT_EQ(*api.store->stored_image_bytes(), 3 * size);
    // Every image referenced: nothing can go.
    for (const std::string& sha : {shas[2], *sha3}) {
        exam["image_sha256"] = sha;
        ASSERT_EQ(api(post_json("/v1/exams", exam.dump())).status, 201);
    }
    auto full = api.store->put_image(imgs[1]);
    ASSERT_FALSE(full);
    EXPECT_EQ(full.error_kind(), ErrorKind::StoreFull) << full.error();
    const HttpResponse r = error_response(api_error(full.error_value()));
    expect_error(r, 507, "store_full", "raise the store's quota");
    EXPECT_TRUE(*api.store->has_image(shas[0]));
}

// Issue 16 (scale-out): POST /v1/exams with an Idempotency-Key saves once; a retry with the same
// body answers 201 with the same exam (Idempotent-Replayed: true) and saves nothing; the same key
// with another body is 422 idempotency_key_reused; a malformed key is 400.
TEST_F(RouteApi, IdempotencyKeyMakesExamWritesSafeToRetry) {
    auto sha = api.store->put_image(synthetic_scan());
    ASSERT_TRUE(sha) << sha.error();
    const json exam{{"pregnancy_id", "idem-1"}, {"exam_date", "2026-05-02"}, {"image_sha256", *sha},
                    {"pixel_size_mm", kPixelMm}, {"ellipse_px", ellipse_json(kHead)}, {"corrected", false}};
    const auto with_key = [](const std::string& body, const std::string& key) {
        HttpRequest r = post_json("/v1/exams", body);
        r.headers["idempotency-key"] = key;
        return r;
    };
    const HttpResponse first = api(with_key(exam.dump(), "retry-me-1"));
    ASSERT_EQ(first.status, 201) << first.body;
    EXPECT_EQ(first.header("Idempotent-Replayed"), "");
    const HttpResponse again = api(with_key(exam.dump(2), "retry-me-1"));  // the same body, laid out differently
    ASSERT_EQ(again.status, 201) << again.body;
    EXPECT_EQ(again.header("Idempotent-Replayed"), "true");
    EXPECT_EQ(body_json(again)["id"], body_json(first)["id"]);
    EXPECT_EQ(body_json(again)["created_at"], body_json(first)["created_at"]);
    json other = exam;
    other["pixel_size_mm"] = 0.16;
    expect_error(api(with_key(other.dump(), "retry-me-1")), 422, "idempotency_key_reused", "retry-me-1");
    expect_error(api(with_key(exam.dump(), "")), 400, "invalid_field", "Idempotency-Key");
    expect_error(api(with_key(exam.dump(), std::string(129, 'k'))), 400, "invalid_field", "Idempotency-Key");
    expect_error(api(with_key(exam.dump(), "caf\xc3\xa9")), 400, "invalid_field", "Idempotency-Key");
    const HttpResponse h = api(get("/v1/pregnancies/idem-1"));
    ASSERT_EQ(h.status, 200);
    EXPECT_EQ(body_json(h)["exams"].size(), 1u);  // one exam for all those requests
    ASSERT_EQ(api(with_key(other.dump(), "retry-me-2")).status, 201);  // a new key: a new exam
    EXPECT_EQ(body_json(api(get("/v1/pregnancies/idem-1")))["exams"].size(), 2u);
}

TEST_F(RouteApi, ImagesAreValidatedAndLookedUp) {
    expect_error(api(get("/v1/images/not-a-hash")), 400, "invalid_image_id", "64 hex");
    expect_error(api(get("/v1/images/" + std::string(64, 'a'))), 404, "image_not_found");
    const std::string scan = synthetic_scan();
    auto sha = api.store->put_image(scan);
    ASSERT_TRUE(sha);
    std::string upper = *sha;
    std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return char(std::toupper(c)); });
    const HttpResponse img = api(get("/v1/images/" + upper));
    EXPECT_EQ(img.status, 200);
    EXPECT_EQ(img.content_type, "image/png");
    EXPECT_EQ(img.body, scan);
    EXPECT_NE(img.header("Cache-Control").find("immutable"), std::string::npos);
}

// A DICOM upload's frames as PNGs a browser can show (GET /v1/images/<sha>/preview.png[?frame=N]),
// in the pixel coordinates of the measurement; any other stored image decoded to 8-bit gray.
TEST_F(RouteApi, ImagePreviewIsTheDecodedFrameAsPng) {
    const std::string scan = synthetic_scan();
    const cv::Mat want = cv::imdecode(std::vector<unsigned char>(scan.begin(), scan.end()), cv::IMREAD_GRAYSCALE);
    auto decode = [](const HttpResponse& r) {
        return cv::imdecode(std::vector<unsigned char>(r.body.begin(), r.body.end()), cv::IMREAD_UNCHANGED);
    };
    auto dcm = api.store->put_image(wrap_in_dicom(scan, kPixelMm, 3));
    ASSERT_TRUE(dcm) << dcm.error();
    for (const std::string query : {"", "0", "2"}) {
        HttpRequest req = get("/v1/images/" + *dcm + "/preview.png");
        if (!query.empty()) req.query["frame"] = query;
        const HttpResponse r = api(req);
        ASSERT_EQ(r.status, 200) << r.body;
        EXPECT_EQ(r.content_type, "image/png");
        const cv::Mat got = decode(r);
        ASSERT_EQ(got.type(), CV_8UC1);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(cv::countNonZero(got != want), 0) << "frame " << query;
    }
    for (const char* bad : {"3", "-1", "x", "1.5"}) {
        HttpRequest req = get("/v1/images/" + *dcm + "/preview.png");
        req.query["frame"] = bad;
        expect_error(api(req), 400, "invalid_field", "frame");
    }
    auto png = api.store->put_image(scan);
    ASSERT_TRUE(png);
    const HttpResponse p = api(get("/v1/images/" + *png + "/preview.png"));
    ASSERT_EQ(p.status, 200) << p.body;
    EXPECT_EQ(cv::countNonZero(decode(p) != want), 0);
    HttpRequest second = get("/v1/images/" + *png + "/preview.png");
    second.query["frame"] = "1";
    expect_error(api(second), 400, "invalid_field", "frame");
    auto junk = api.store->put_image("not an image");
    ASSERT_TRUE(junk);
    expect_error(api(get("/v1/images/" + *junk + "/preview.png")), 400, "image_unreadable");
    expect_error(api(get("/v1/images/" + std::string(64, 'a') + "/preview.png")), 404, "image_not_found");
    expect_error(api(get("/v1/images/nope/preview.png")), 400, "invalid_image_id");
}

// An exam of a DICOM image keeps its SOP Instance UID: sent by the client or taken from the stored
// file; it comes back in the history and the CSV, and exams of other images have none.
TEST_F(RouteApi, ExamsKeepTheSopInstanceUidOfADicomImage) {
    const std::string dcm = wrap_in_dicom(synthetic_scan(), kPixelMm);
    auto header = read_dicom_header(std::vector<unsigned char>(dcm.begin(), dcm.end()), "scan.dcm");
    ASSERT_TRUE(header) << header.error();
    const std::string uid = header->sop_instance_uid;
    ASSERT_TRUE(valid_dicom_uid(uid)) << uid;
    auto dsha = api.store->put_image(dcm);
    auto psha = api.store->put_image(synthetic_scan());
    ASSERT_TRUE(dsha && psha);
    const std::string id = "uid-" + std::to_string(std::random_device{}() % 100000);
    json exam{{"pregnancy_id", id},         {"exam_date", "2026-05-02"}, {"image_sha256", *dsha},
              {"pixel_size_mm", kPixelMm}, {"ellipse_px", ellipse_json(kHead)}, {"corrected", false},
              {"sop_instance_uid", uid}};
    HttpResponse r = api(post_json("/v1/exams", exam.dump()));
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(body_json(r)["sop_instance_uid"], uid);
    // Left out: taken from the stored DICOM file.
    exam.erase("sop_instance_uid");
    exam["exam_date"] = "2026-05-03";
    r = api(post_json("/v1/exams", exam.dump()));
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(body_json(r)["sop_instance_uid"], uid);
    // A PNG: none (null), unless the client names the DICOM it was exported from.
    exam["image_sha256"] = *psha;
    exam["exam_date"] = "2026-05-04";
    r = api(post_json("/v1/exams", exam.dump()));
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_TRUE(body_json(r)["sop_instance_uid"].is_null());

    const json hist = body_json(api(get("/v1/pregnancies/" + id)));
    ASSERT_EQ(hist["exams"].size(), 3u) << hist.dump();
    EXPECT_EQ(hist["exams"][0]["sop_instance_uid"], uid);
    EXPECT_EQ(hist["exams"][1]["sop_instance_uid"], uid);
    EXPECT_TRUE(hist["exams"][2].contains("sop_instance_uid"));
    EXPECT_TRUE(hist["exams"][2]["sop_instance_uid"].is_null());
    const HttpResponse csv = api(get("/v1/pregnancies/" + id + "/export.csv"));
    ASSERT_EQ(csv.status, 200);
    std::istringstream lines(csv.body);
    std::string header_row, row1, row2, row3;
    std::getline(lines, header_row);
    std::getline(lines, row1);
    std::getline(lines, row2);
    std::getline(lines, row3);
    EXPECT_EQ(header_row.substr(header_row.size() - std::string(",created_at,sop_instance_uid").size()), ",created_at,sop_instance_uid");
    EXPECT_EQ(row1.substr(row1.size() - uid.size() - 1), "," + uid) << row1;
    EXPECT_EQ(row3.back(), ',') << row3;  // empty cell

    // Checked: a DICOM UID, and the stored file's own.
    exam["image_sha256"] = *dsha;
    for (const json& bad : {json("1.2.abc"), json("1..2"), json(".1.2"), json("1.2."), json(""), json(std::string(65, '1')),
                            json(12345), json("1.2 3")}) {
        exam["sop_instance_uid"] = bad;
        expect_error(api(post_json("/v1/exams", exam.dump())), 400, "invalid_field", "sop_instance_uid");
    }
    exam["sop_instance_uid"] = std::string(64, '1');  // 64 characters: a valid UID, but not the file's
    expect_error(api(post_json("/v1/exams", exam.dump())), 400, "invalid_field", "not the SOP Instance UID");
    exam["sop_instance_uid"] = nullptr;  // null = none sent
    EXPECT_EQ(api(post_json("/v1/exams", exam.dump())).status, 201);
}

// ---- the service the transports share -----------------------------------------------------------

TEST_F(RouteApi, MeasureAndStoreChecksItsInputBeforeTheModel) {
    MeasureOptions o;
    o.pixel_size_mm = 3;
    auto r = measure_and_store(api.engine, *api.store, synthetic_scan(), "scan.png", o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::InvalidPixelSize);
    o.pixel_size_mm = 0.15;
    o.ga_weeks = 60;
    r = measure_and_store(api.engine, *api.store, synthetic_scan(), "scan.png", o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::InvalidGa);
    o.ga_weeks.reset();
    r = measure_and_store(api.engine, *api.store, "not an image", "scan.png", o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::ImageUnreadable);
    EXPECT_NE(r.error().message.find("scan.png"), std::string::npos) << r.error().message;
    r = measure_and_store(api.engine, *api.store, synthetic_scan(), "scan.png", o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::ModelLoading);
    // Nothing measured, nothing kept.
    EXPECT_FALSE(*api.store->has_image(sha256_hex(synthetic_scan())));
}

// ---- DICOM without the network ---------------------------------------------------------------------

// Checked before the model is needed: the format, an unreadable DICOM, a file without calibration.
TEST_F(RouteApi, MeasureDicomRefusesBadFilesAndFormatsBeforeTheModel) {
    const std::string dcm = wrap_in_dicom(synthetic_scan(), kPixelMm);
    expect_error(api(post_form("/v1/measure", dicom_form(dcm, {{"format", "xml", ""}}))), 400, "invalid_field", "'format'");
    // DICM magic, then garbage: a clear 400 that names the file.
    std::string bad(128, '\0');
    bad += "DICM";
    bad += std::string(64, '\x7f');
    expect_error(api(post_form("/v1/measure", dicom_form(bad))), 400, "image_unreadable", "scan.dcm");
    expect_error(api(post_form("/v1/measure", dicom_form(dcm.substr(0, dcm.size() / 2)))), 400, "image_unreadable");
    expect_error(api(post_form("/v1/measure", dicom_form(dcm, {{"pixel_size_mm", "3", ""}}))), 400, "invalid_pixel_size");
    // Without a pixel size a DICOM file needs none; the model is still loading here.
    expect_error(api(post_form("/v1/measure", dicom_form(dcm))), 503, "model_loading");
    const fs::path uncalibrated = fs::path(FETALHC_DICOM_DIR) / "US1_UNCR.dcm";
    if (!fs::exists(uncalibrated)) GTEST_SKIP() << "sample DICOM files absent (" << FETALHC_DICOM_DIR << ")";
    expect_error(api(post_form("/v1/measure", dicom_form(read_bytes(uncalibrated)))), 422, "invalid_calibration", "pixel_size_mm");
}

// Issue 22 row 1: 6000 nested sequences crashed the process inside DCMTK, at the upload and at
// every preview of the stored file. Both are a clear 400 now, and the server goes on.
TEST_F(RouteApi, DeeplyNestedDicomIsRefusedAtUploadAndAtPreview) {
    const std::string nested = nested_sequences_dicom(6000);
    expect_error(api(post_form("/v1/measure", dicom_form(nested))), 400, "image_unreadable", "nested more than");
    auto sha = api.store->put_image(nested);  // as the DICOM node stores what it receives
    ASSERT_TRUE(sha) << sha.error();
    expect_error(api(get("/v1/images/" + *sha + "/preview.png")), 400, "image_unreadable", "nested more than");
    HttpRequest frame = get("/v1/images/" + *sha + "/preview.png");
    frame.query["frame"] = "1";
    expect_error(api(frame), 400, "image_unreadable", "nested more than");
    EXPECT_EQ(api(get("/v1/growth-curve")).status, 200);
}

// --dicomweb-forward's URL: the origin and the DICOMweb root's path apart; what is refused says why.
TEST(DicomwebForward, ParsesTheRootUrlAndRefusesWhatItCannotReach) {
    auto t = parse_dicomweb_target("http://10.0.0.5:8042/dicom-web/");
    ASSERT_TRUE(t) << t.error();
    EXPECT_EQ(t->origin, "http://10.0.0.5:8042");
    EXPECT_EQ(t->path, "/dicom-web");
    t = parse_dicomweb_target("https://[::1]/");
    ASSERT_TRUE(t) << t.error();
    EXPECT_EQ(t->origin, "https://[::1]");
    EXPECT_EQ(t->path, "");
    for (const char* bad : {"ftp://pacs/dicom-web", "http://", "http://user:pw@pacs/dicom-web", "http://pacs:99999/x",
                            "http://pacs/dicom-web?x=1", "http://pacs/a b", "pacs:8042"}) {
        auto r = parse_dicomweb_target(bad);
        ASSERT_FALSE(r) << bad;
        EXPECT_NE(r.error().find("--dicomweb-forward"), std::string::npos) << r.error();
        EXPECT_NE(r.error().find(bad), std::string::npos) << r.error();
    }
    // Nothing listens on port 1: a failure that says where it tried, not a crash or a hang.
    auto closed = parse_dicomweb_target("http://127.0.0.1:1/dicom-web");
    ASSERT_TRUE(closed);
    const std::string r = stow_rs(*closed, {"not sent"}, 2);
    EXPECT_EQ(r.rfind("failed: cannot POST to http://127.0.0.1:1/dicom-web/studies", 0), 0u) << r;
}

// A path that matches the route's pattern: each {name} filled with a plausible value.
std::string concrete_path(const Route& r) {
    std::string p = r.pattern;
    for (auto [param, value] : {std::pair<std::string, std::string>{"{file*}", "app.js"}, {"{sha256}", std::string(64, '0')},
                                {"{id}", "P-001"}, {"{study}", "1.2.3"}}) {
        const size_t at = p.find(param);
        if (at != std::string::npos) p.replace(at, param.size(), value);
    }
    return p;
}

// Issue 26: every route of the table has a role rule, and each role gets exactly the routes its
// rule allows (derived from the route table: a new route without a rule fails here). Run on SQLite
// and on PostgreSQL (RoutePostgres below).
void role_matrix(const Api& api) {
    Store& store = *api.store;
    auto viewer = store.add_user("vera", Role::Viewer), sono = store.add_user("sam", Role::Sonographer),
         admin = store.add_user("ada", Role::Admin);
    ASSERT_TRUE(viewer && sono && admin);
    const std::map<Role, std::string> tokens{{Role::Viewer, *viewer}, {Role::Sonographer, *sono}, {Role::Admin, *admin}};
    int open_routes = 0;
    for (const Route& r : route_table()) {
        const std::string path = concrete_path(r), label = r.method + " " + r.pattern;
        ASSERT_TRUE(route_has_rule(r)) << label << " has no role rule in auth.cpp";
        ASSERT_EQ(match_route(r.method, path)->route, &r) << label;
        const std::optional<Role> needs = route_role(r);
        Authorization none = authorize_request(r.method, path, "", store, "");
        if (!needs) {
            ++open_routes;
            EXPECT_FALSE(none.refused) << label << " is open to anyone";
            continue;
        }
        ASSERT_TRUE(none.refused) << label;
        EXPECT_EQ(none.refused->status, 401) << label;
        for (const auto& [role, token] : tokens) {
            Authorization a = authorize_request(r.method, path, token, store, "");
            if (int(role) >= int(*needs)) {
                EXPECT_FALSE(a.refused) << label << " refused to " << role_name(role);
                ASSERT_TRUE(a.who);
                EXPECT_EQ(a.who->role, role);
            } else {
                ASSERT_TRUE(a.refused) << label << " let " << role_name(role) << " in";
                EXPECT_EQ(a.refused->status, 403) << label;
                EXPECT_NE(a.refused->body.find(role_name(*needs)), std::string::npos) << a.refused->body;
            }
        }
        // The service token (--token-file) is an admin; a wrong token is 401 and is not echoed.
        EXPECT_FALSE(authorize_request(r.method, path, "service-token-of-32-characters!!", store, "service-token-of-32-characters!!").refused);
        Authorization wrong = authorize_request(r.method, path, "fhc_not-a-token", store, "");
        ASSERT_TRUE(wrong.refused);
        EXPECT_EQ(wrong.refused->status, 401);
        EXPECT_EQ(wrong.refused->body.find("fhc_not-a-token"), std::string::npos);
    }
    EXPECT_EQ(open_routes, 4);  // the page, its files, /health, /openapi.json
    // What the issue names: viewers read and export nothing; sonographers measure, save and export.
    auto role_of = [](const char* method, const char* path) { return route_role(*match_route(method, path)->route); };
    EXPECT_EQ(role_of("GET", "/v1/pregnancies/P-001"), Role::Viewer);
    EXPECT_EQ(role_of("GET", "/v1/pregnancies/P-001/export.csv"), Role::Sonographer);
    EXPECT_EQ(role_of("POST", "/v1/exams"), Role::Sonographer);
    EXPECT_EQ(role_of("POST", "/v1/measure"), Role::Sonographer);
}
TEST_F(RouteApi, RoleMatrixOverEveryRoute) { role_matrix(api); }

// Audit completeness (derived from the route table): every request to a route that touches patient
// data leaves exactly one entry naming the route, whatever its outcome; the other routes none.
void audit_completeness(const Api& api) {
    Store& store = *api.store;
    int audited = 0;
    for (const Route& r : route_table()) {
        const size_t before = store.audit_entries({})->size();
        HttpRequest req;
        req.method = r.method;
        req.path = concrete_path(r);
        req.user = "sam";
        req.role = "sonographer";
        req.client = "192.0.2.7";
        req.request_id = "req-" + std::to_string(audited);
        const HttpResponse res = api(req);
        auto entries = store.audit_entries({});
        ASSERT_TRUE(entries);
        if (!route_is_audited(r)) {
            EXPECT_EQ(entries->size(), before) << r.method << " " << r.pattern << " is audited but should not be";
            continue;
        }
        ++audited;
        ASSERT_EQ(entries->size(), before + 1) << r.method << " " << r.pattern << " left no audit entry";
        const AuditEntry& e = entries->front();
        EXPECT_EQ(e.action, r.method + " " + r.pattern);
        EXPECT_EQ(e.outcome, res.status) << e.action;
        EXPECT_EQ(e.user, "sam");
        EXPECT_EQ(e.client, "192.0.2.7");
        EXPECT_EQ(e.request_id, req.request_id);
        if (r.pattern.find("{id}") != std::string::npos) EXPECT_EQ(e.pregnancy_id, "P-001") << e.action;
    }
    EXPECT_GE(audited, 14);
    // The trail itself, for an admin: newest first, filtered.
    HttpRequest q = get("/v1/audit");
    q.query = {{"user", "sam"}, {"limit", "2"}};
    const json j = body_json(api(q));
    ASSERT_EQ(j["entries"].size(), 2u) << j.dump();
    EXPECT_EQ(j["entries"][0]["user"], "sam");
    EXPECT_TRUE(j["next_before"].is_number());
    q.query = {{"since", "yesterday"}};
    expect_error(api(q), 400, "invalid_field", "since");
}
TEST_F(RouteApi, EveryPatientDataRouteLeavesOneAuditEntry) { audit_completeness(api); }

// The same two on PostgreSQL (a throw-away server; skipped without the server binaries).
TEST(RoutePostgres, RoleMatrixAndAuditCompletenessHoldOnPostgresql) {
    std::string why;
    PgCluster* pg = PgCluster::get(&why);
    if (!pg) GTEST_SKIP() << why;
    for (auto check : {role_matrix, audit_completeness}) {
        const std::string uri = pg->create_database(&why);
        ASSERT_FALSE(uri.empty()) << why;
        {
            Api api("routes_pg", uri);
            ASSERT_EQ(api.store->engine(), "postgresql");
            check(api);
        }
        pg->drop_database(uri);
    }
}

// Revocation takes effect at the next request; a store without users and a server without a
// token stay open, as before users existed.
TEST_F(RouteApi, RevokedTokensAreRefusedAtTheNextRequestAndAnOpenServerStaysOpen) {
    Store& store = *api.store;
    Authorization open = authorize_request("POST", "/v1/exams", "", store, "");
    EXPECT_FALSE(open.refused);
    auto token = store.add_user("sam", Role::Sonographer);
    ASSERT_TRUE(token);
    EXPECT_EQ(authorize_request("POST", "/v1/exams", "", store, "").refused->status, 401);
    Authorization ok = authorize_request("POST", "/v1/exams", *token, store, "");
    ASSERT_FALSE(ok.refused);
    EXPECT_EQ(ok.who->user, "sam");
    ASSERT_TRUE(store.revoke_user("sam"));
    Authorization after = authorize_request("POST", "/v1/exams", *token, store, "");
    ASSERT_TRUE(after.refused);
    EXPECT_EQ(after.refused->status, 401);
    EXPECT_NE(after.refused->body.find("revoked"), std::string::npos) << after.refused->body;
    // A trusted proxy's user: believed with the proxy's secret only; the user's own role applies.
    const TrustedProxy proxy{"x-forwarded-user", "proxy-secret-of-24-chars"};
    auto viewer = store.add_user("vic", Role::Viewer);
    ASSERT_TRUE(viewer);
    Authorization p = authorize_request("GET", "/v1/dicom/instances", Credentials{"", "vic", "proxy-secret-of-24-chars"}, store, "", proxy);
    ASSERT_FALSE(p.refused) << p.refused->body;
    EXPECT_EQ(p.who->user, "vic");
    EXPECT_EQ(p.who->role, Role::Viewer);
    EXPECT_EQ(authorize_request("POST", "/v1/exams", Credentials{"", "vic", "proxy-secret-of-24-chars"}, store, "", proxy).refused->status, 403);
    EXPECT_EQ(authorize_request("GET", "/v1/dicom/instances", Credentials{"", "vic", "wrong-secret-of-24-chars"}, store, "", proxy).refused->status,
              401);  // the header without the secret is ignored: no token
    EXPECT_EQ(authorize_request("GET", "/v1/dicom/instances", Credentials{"", "mallory", "proxy-secret-of-24-chars"}, store, "", proxy).refused->status,
              401);  // the proxy's user must be a user of the store
    EXPECT_EQ(authorize_request("GET", "/v1/dicom/instances", Credentials{"", "vic", "proxy-secret-of-24-chars"}, store, "", TrustedProxy{})
                  .refused->status,
              401);  // no proxy configured: the header means nothing

    // Bearer in any case, or a cookie for reads only.
    auto t2 = store.add_user("vera", Role::Viewer);
    EXPECT_EQ(presented_token("GET", "bEaReR  " + *t2, ""), *t2);
    EXPECT_EQ(presented_token("GET", "", "a=1; fetalhc_token=" + *t2), *t2);
    EXPECT_EQ(presented_token("POST", "", "fetalhc_token=" + *t2), "");
    EXPECT_EQ(presented_token("GET", "Basic abc", "fetalhc_token=" + *t2), "");
}

TEST_F(RouteApi, DicomInstancesAreListedNewestFirst) {
    DicomInstance a;
    a.sop_instance_uid = "1.2.3";
    a.sop_class_uid = "1.2.840.10008.5.1.4.1.1.6.1";
    a.calling_aet = "US1";
    a.image_sha256 = sha256_hex("a");
    auto added = api.store->add_dicom_instance(a);
    ASSERT_TRUE(added) << added.error();
    DicomInstance m = *added;
    m.status = "measured";
    m.hc_mm = 170.5;
    m.quality = "ok";
    m.forward_status = "sent";
    ASSERT_TRUE(api.store->update_dicom_instance(m));
    DicomInstance b = a;
    b.sop_instance_uid = "1.2.4";
    b.status = "failed";
    b.error = "no fetal head found";
    ASSERT_TRUE(api.store->add_dicom_instance(b));
    const HttpResponse r = api(get("/v1/dicom/instances"));
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = body_json(r);
    ASSERT_EQ(j["instances"].size(), 2u);
    EXPECT_EQ(j["instances"][0]["sop_instance_uid"], "1.2.4");
    EXPECT_EQ(j["instances"][0]["error"], "no fetal head found");
    EXPECT_TRUE(j["instances"][0]["hc_mm"].is_null());
    EXPECT_EQ(j["instances"][1]["status"], "measured");
    EXPECT_EQ(j["instances"][1]["hc_mm"], 170.5);
    EXPECT_EQ(j["instances"][1]["forward_status"], "sent");
    EXPECT_EQ(j["instances"][1]["calling_aet"], "US1");
    EXPECT_FALSE(j["instances"][1]["received_at"].get<std::string>().empty());
    HttpRequest one = get("/v1/dicom/instances");
    one.query["limit"] = "1";
    EXPECT_EQ(body_json(api(one))["instances"].size(), 1u);
    one.query["limit"] = "0";
    expect_error(api(one), 400, "invalid_field", "limit");
}

// ---- with the network (needs the model file) -------------------------------------------------------

namespace {

class RouteModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        if (!fs::exists(kModel)) return;
        api_ = new Api("model");
        api_->engine.load(kModel, 0);
        scan_ = synthetic_scan();
    }
    static void TearDownTestSuite() {
        delete api_;
        api_ = nullptr;
    }
    void SetUp() override {
        if (!api_) GTEST_SKIP() << "model '" << kModel << "' is absent; the tests that run the network need it";
        ASSERT_TRUE(api_->engine.ready()) << api_->engine.load_error();
    }
    static Api* api_;
    static std::string scan_;
};
Api* RouteModel::api_ = nullptr;
std::string RouteModel::scan_;

}  // namespace

TEST_F(RouteModel, HealthIsReadyAndNamesTheModel) {
    const HttpResponse r = (*api_)(get("/health"));
    EXPECT_EQ(r.status, 200);
    const json j = body_json(r);
    EXPECT_EQ(j["status"], "ready");
    EXPECT_EQ(j["model"], fs::path(kModel).filename().string());
    EXPECT_EQ(j["inference_slots"], 2);
    // The head check beside the model is loaded by default, and /health says so with its thresholds.
    if (fs::exists(fs::path(kModel).parent_path() / kHeadCheckFileName)) {
        ASSERT_TRUE(j["head_check"].is_object()) << j.dump();
        EXPECT_LT(j["head_check"]["refuse_below"].get<double>(), j["head_check"]["review_below"].get<double>());
    }
}

TEST_F(RouteModel, MeasureReturnsTheNumbersAndStoresTheImage) {
    auto form = measure_form(scan_);
    form.push_back({"ga_weeks", "22", ""});
    form.push_back({"pregnancy_id", "test-P1", ""});
    form.push_back({"exam_date", "2026-03-14", ""});
    const HttpResponse r = (*api_)(post_form("/v1/measure", form));
    ASSERT_EQ(r.status, 200) << r.body;
    const json m = body_json(r);
    ASSERT_TRUE(m.contains("hc_mm")) << m.dump();
    // HC is the Ramanujan perimeter of the returned ellipse in mm; BPD and OFD its axes.
    const json& e = m["ellipse_mm"];
    const double hc = ramanujan_perimeter(e["semi_axis_a"].get<double>(), e["semi_axis_b"].get<double>());
    EXPECT_NEAR(m["hc_mm"].get<double>(), hc, 1e-9);
    EXPECT_NEAR(m["bpd_mm"].get<double>(), 2 * e["semi_axis_b"].get<double>(), 1e-9);
    EXPECT_NEAR(m["ofd_mm"].get<double>(), 2 * e["semi_axis_a"].get<double>(), 1e-9);
    EXPECT_NEAR(m["ellipse_px"]["semi_axis_a"].get<double>() * kPixelMm, e["semi_axis_a"].get<double>(), 1e-9);
    // The drawn head: the skull ring is 9 px wide, so allow its width on the axes and a few px on the centre.
    EXPECT_NEAR(m["ellipse_px"]["center_x"].get<double>(), kHead.cx, 5);
    EXPECT_NEAR(m["ellipse_px"]["center_y"].get<double>(), kHead.cy, 5);
    EXPECT_NEAR(m["ellipse_px"]["semi_axis_a"].get<double>(), kHead.a, 9);
    EXPECT_NEAR(m["ellipse_px"]["semi_axis_b"].get<double>(), kHead.b, 9);
    EXPECT_TRUE(m["ga_hadlock"].contains("in_range"));
    EXPECT_TRUE(m["ga_intergrowth"].contains("in_range"));
    EXPECT_EQ(m["ga_weeks_given"], 22.0);
    EXPECT_TRUE(m["centile"]["in_range"].get<bool>());
    EXPECT_TRUE(m["quality"] == "ok" || m["quality"] == "review");
    EXPECT_TRUE(m["reasons"].is_array());
    EXPECT_GT(m["timings_ms"]["total"].get<double>(), 0);
    EXPECT_GT(m["timings_ms"]["decode"].get<double>(), 0);
    EXPECT_GE(m["timings_ms"]["queue"].get<double>(), 0);
    EXPECT_EQ(m["source"], "scan.png");
    EXPECT_EQ(m["pregnancy_id"], "test-P1");
    EXPECT_EQ(m["exam_date"], "2026-03-14");
    EXPECT_EQ(m["image_sha256"], sha256_hex(scan_));
    EXPECT_EQ(m["image_url"], "/v1/images/" + sha256_hex(scan_));

    const HttpResponse img = (*api_)(get(m["image_url"].get<std::string>()));
    EXPECT_EQ(img.status, 200);
    EXPECT_EQ(img.content_type, "image/png");
    EXPECT_EQ(img.body, scan_);
    // Measuring creates no exam.
    expect_error((*api_)(get("/v1/pregnancies/test-P1")), 404, "pregnancy_not_found");
}

// No head in a blank scan: 422, never a made-up ellipse.
TEST_F(RouteModel, BlankScanHasNoHead) {
    expect_error((*api_)(post_form("/v1/measure", measure_form(blank_scan()))), 422, "no_head_found");
    expect_error((*api_)(post_form("/v1/segment", {{"image", blank_scan(), "b.png"}})), 422, "no_head_found", "b.png");
}

// Issue 24: a plane that is not a head (a held-back femur of ../shared/planes) is refused by
// /v1/measure with 422 not_a_head_plane; /v1/head-check scores an outline alone, with the
// thresholds and the verdict they give; a head passes both.
TEST_F(RouteModel, AnotherPlaneIsRefusedAndTheHeadCheckStageAnswers) {
    const json m = body_json((*api_)(post_form("/v1/measure", measure_form(scan_))));
    ASSERT_TRUE(m.contains("signals")) << m.dump();
    const double score = m["signals"]["head_check"].get<double>();
    EXPECT_GE(score, 0.0);
    const HttpResponse c = (*api_)(post_form("/v1/head-check", {{"image", scan_, "scan.png"}, {"ellipse_px", m["ellipse_px"].dump(), ""}}));
    ASSERT_EQ(c.status, 200) << c.body;
    const json cj = body_json(c);
    EXPECT_NEAR(cj["head_check"].get<double>(), score, 1e-6) << "the stage scores what /v1/measure scored";
    EXPECT_LT(cj["refuse_below"].get<double>(), cj["review_below"].get<double>());
    EXPECT_NE(cj["verdict"], "not_a_head_plane") << "a measured scan cannot have been refused";
    EXPECT_EQ(cj["plane_probabilities"].size(), size_t(kHeadCheckPlaneCount));
    expect_error((*api_)(post_form("/v1/head-check", {{"image", scan_, "scan.png"}})), 400, "missing_field", "ellipse_px");
    expect_error((*api_)(post_form("/v1/head-check", {{"image", scan_, "scan.png"}, {"ellipse_px", "{not json", ""}})), 400,
                 "invalid_ellipse");
    // An outline far larger than the image, or far outside it: scored, not a crash.
    for (const char* hostile : {R"({"center_x": 1e12, "center_y": -1e12, "semi_axis_a": 50, "semi_axis_b": 40, "angle_rad": 0})",
                                R"({"center_x": 100, "center_y": 100, "semi_axis_a": 1e300, "semi_axis_b": 1e299, "angle_rad": 0})"}) {
        const HttpResponse h = (*api_)(post_form("/v1/head-check", {{"image", scan_, "scan.png"}, {"ellipse_px", hostile, ""}}));
        EXPECT_EQ(h.status, 200) << hostile << ": " << h.body;
    }

    const fs::path femur = fs::path(FETALHC_PLANES_DIR) / "images" / "Patient01682_Plane5_2_of_2.png";
    if (!fs::exists(femur)) GTEST_SKIP() << "planes image not found at " << femur << "; the refusal is not checked";
    std::ifstream in(femur, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    expect_error((*api_)(post_form("/v1/measure", measure_form(bytes, "0.2"))), 422, "not_a_head_plane",
                 "is not a fetal head in the HC plane");
}

TEST_F(RouteModel, SegmentReturnsAMaskOrAContour) {
    const HttpResponse r = (*api_)(post_form("/v1/segment", {{"image", scan_, "scan.png"}}));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.content_type, "image/png");
    EXPECT_FALSE(r.header("X-Detection-Score").empty());
    EXPECT_FALSE(r.header("X-Confidence").empty());
    const cv::Mat mask = cv::imdecode(std::vector<unsigned char>(r.body.begin(), r.body.end()), cv::IMREAD_GRAYSCALE);
    ASSERT_EQ(mask.size(), cv::Size(800, 540));
    const cv::Mat truth = rasterize(kHead, mask.size());
    const double inter = cv::countNonZero(mask & truth), uni = cv::countNonZero(mask | truth);
    EXPECT_GT(inter / uni, 0.85) << "IoU of the mask with the drawn head";

    const HttpResponse j = (*api_)(post_form("/v1/segment", {{"image", scan_, "scan.png"}, {"format", "json", ""}}));
    ASSERT_EQ(j.status, 200) << j.body;
    const json c = body_json(j);
    ASSERT_TRUE(c["contour"].is_array());
    EXPECT_GT(c["contour"].size(), 8u);
    for (const auto& p : c["contour"]) EXPECT_NEAR(distance_to_ellipse(kHead, {p[0].get<double>(), p[1].get<double>()}), 0, 12);
    EXPECT_GT(c["confidence"].get<double>(), 0);
    EXPECT_LE(c["confidence"].get<double>(), 1);
    EXPECT_GT(c["detection_score"].get<double>(), 0.5);
}

TEST_F(RouteModel, ConcurrentMeasuresAllSucceedAndAgree) {
    constexpr int kThreads = 8, kEach = 5;
    std::vector<std::vector<double>> hc(kThreads);
    std::atomic<int> failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; ++t)
        pool.emplace_back([&, t] {
            for (int i = 0; i < kEach; ++i) {
                const HttpResponse r = (*api_)(post_form("/v1/measure", measure_form(scan_)));
                if (r.status != 200) {
                    ++failures;
                    continue;
                }
                hc[t].push_back(json::parse(r.body)["hc_mm"].get<double>());
            }
        });
    for (auto& th : pool) th.join();
    EXPECT_EQ(failures.load(), 0);
    std::set<double> distinct;
    size_t n = 0;
    for (const auto& v : hc) {
        n += v.size();
        distinct.insert(v.begin(), v.end());
    }
    EXPECT_EQ(n, size_t(kThreads * kEach));
    EXPECT_EQ(distinct.size(), 1u) << "the same image must give the same HC under concurrency";
    EXPECT_EQ(api_->engine.slots().snapshot().in_use, 0);
}

// A DICOM file is measured with its own calibration and gives the PNG path's numbers at the same
// pixel size (the region covers the whole image, so nothing is masked: equal to rounding).
TEST_F(RouteModel, MeasureDicomUsesTheFileCalibration) {
    const HttpResponse png = (*api_)(post_form("/v1/measure", measure_form(scan_)));
    ASSERT_EQ(png.status, 200) << png.body;
    EXPECT_EQ(body_json(png)["calibration"]["source"], "pixel_size_mm");
    const std::string dcm = wrap_in_dicom(scan_, kPixelMm);
    const HttpResponse r = (*api_)(post_form("/v1/measure", dicom_form(dcm)));
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = body_json(r);
    EXPECT_EQ(j["calibration"]["source"], "ultrasound region 0");
    EXPECT_NEAR(j["calibration"]["mm_per_px_x"].get<double>(), kPixelMm, 1e-12);
    EXPECT_TRUE(j["warnings"].empty());
    EXPECT_NEAR(j["hc_mm"].get<double>(), body_json(png)["hc_mm"].get<double>(), 1e-6);
    EXPECT_EQ(j["image_sha256"], sha256_hex(dcm));
    EXPECT_FALSE(j["dicom"]["sop_instance_uid"].get<std::string>().empty());
    // The page cannot show the .dcm bytes: preview_url gives the measured frame as a PNG.
    EXPECT_EQ(j["preview_url"], "/v1/images/" + sha256_hex(dcm) + "/preview.png");
    const HttpResponse preview = (*api_)(get(j["preview_url"].get<std::string>()));
    ASSERT_EQ(preview.status, 200) << preview.body;
    EXPECT_EQ(preview.content_type, "image/png");
    const cv::Mat shown = cv::imdecode(std::vector<unsigned char>(preview.body.begin(), preview.body.end()), cv::IMREAD_UNCHANGED);
    EXPECT_EQ(shown.cols, j["image_width"].get<int>());
    EXPECT_EQ(shown.rows, j["image_height"].get<int>());
    EXPECT_FALSE(body_json(png).contains("preview_url"));
    // A pixel size that disagrees by more than 1%: it is used, with a warning.
    const HttpResponse o = (*api_)(post_form("/v1/measure", dicom_form(dcm, {{"pixel_size_mm", "0.16", ""}})));
    ASSERT_EQ(o.status, 200) << o.body;
    const json oj = body_json(o);
    EXPECT_EQ(oj["calibration"]["source"], "pixel_size_mm");
    EXPECT_EQ(oj["pixel_size_mm"], 0.16);
    ASSERT_EQ(oj["warnings"].size(), 1u) << oj.dump();
    EXPECT_NE(oj["warnings"][0].get<std::string>().find("the pixel size given"), std::string::npos) << oj["warnings"];
    EXPECT_EQ(oj["warnings"][0].get<std::string>().find("--"), std::string::npos) << oj["warnings"];
    EXPECT_NEAR(oj["hc_mm"].get<double>(), j["hc_mm"].get<double>() * 0.16 / kPixelMm, 1e-6);
}

TEST_F(RouteModel, MeasureDicomReturnsTheSrOrTheFhirBundle) {
    const std::string dcm = wrap_in_dicom(scan_, kPixelMm);
    const HttpResponse sr = (*api_)(post_form("/v1/measure", dicom_form(dcm, {{"format", "sr", ""}})));
    ASSERT_EQ(sr.status, 200) << sr.body;
    EXPECT_EQ(sr.content_type, "application/dicom");
    ASSERT_GT(sr.body.size(), 132u);
    EXPECT_EQ(sr.body.substr(128, 4), "DICM");
    const HttpResponse fhir = (*api_)(post_form("/v1/measure", dicom_form(dcm, {{"format", "fhir", ""}})));
    ASSERT_EQ(fhir.status, 200) << fhir.body;
    const json b = body_json(fhir);
    EXPECT_EQ(b["resourceType"], "Bundle");
    EXPECT_EQ(b["entry"].size(), 3u);
    // A PNG can have its SR too (no source image: a new study).
    auto form = measure_form(scan_);
    form.push_back({"format", "sr", ""});
    const HttpResponse png_sr = (*api_)(post_form("/v1/measure", form));
    ASSERT_EQ(png_sr.status, 200) << png_sr.body;
    EXPECT_EQ(png_sr.content_type, "application/dicom");
}

// format=key-image: a Secondary Capture in the scan's study, the scan's size, for a still DICOM, a
// cine (the frame its summary's ellipse comes from) and a PNG (a new study).
TEST_F(RouteModel, MeasureReturnsTheKeyImageInTheScansStudy) {
    for (int frames : {1, 3}) {
        SCOPED_TRACE(std::to_string(frames) + " frame(s)");
        const std::string dcm = wrap_in_dicom(scan_, kPixelMm, frames);
        const HttpResponse key = (*api_)(post_form("/v1/measure", dicom_form(dcm, {{"format", "key-image", ""}})));
        ASSERT_EQ(key.status, 200) << key.body;
        EXPECT_EQ(key.content_type, "application/dicom");
        auto h = read_dicom_header(std::vector<unsigned char>(key.body.begin(), key.body.end()), "key.dcm");
        auto src = read_dicom_header(std::vector<unsigned char>(dcm.begin(), dcm.end()), "scan.dcm");
        ASSERT_TRUE(h) << h.error();
        ASSERT_TRUE(src) << src.error();
        EXPECT_EQ(h->sop_class_uid, "1.2.840.10008.5.1.4.1.1.7");
        EXPECT_EQ(h->study_instance_uid, src->study_instance_uid);
        EXPECT_NE(h->series_instance_uid, src->series_instance_uid);
        EXPECT_EQ(h->photometric_interpretation, "RGB");
        EXPECT_EQ(h->columns, src->columns);
        EXPECT_EQ(h->rows, src->rows);
        EXPECT_EQ(h->frames, 1);
    }
    auto form = measure_form(scan_);
    form.push_back({"format", "key-image", ""});
    const HttpResponse png_key = (*api_)(post_form("/v1/measure", form));
    ASSERT_EQ(png_key.status, 200) << png_key.body;
    auto h = read_dicom_header(std::vector<unsigned char>(png_key.body.begin(), png_key.body.end()), "key.dcm");
    ASSERT_TRUE(h) << h.error();
    EXPECT_EQ(h->columns, cv::imdecode(std::vector<unsigned char>(scan_.begin(), scan_.end()), cv::IMREAD_GRAYSCALE).cols);
    EXPECT_FALSE(h->study_instance_uid.empty());
    form.back() = {"format", "key_image", ""};
    expect_error((*api_)(post_form("/v1/measure", form)), 400, "invalid_field", "key-image");
}

// Issue 22 row 5: a cine over the server's frame limit is measured on that many frames, evenly
// spaced from the first to the last (fetalhc::frames_to_measure, tested in test_dicom), named by
// their number in the file, and a warning says so.
TEST_F(RouteModel, CineOverTheFrameLimitIsMeasuredOnEvenlySpacedFrames) {
    DicomMeasureRequest request;
    request.max_frames = 3;
    auto r = measure_dicom(api_->engine, wrap_in_dicom(scan_, kPixelMm, 5), "cine.dcm", request);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->frames.size(), 3u);
    EXPECT_EQ(r->frames[0].index, 0);
    EXPECT_EQ(r->frames[1].index, 2);
    EXPECT_EQ(r->frames[2].index, 4);
    ASSERT_TRUE(r->summary);
    EXPECT_TRUE(r->summary->estimate_frame == 0 || r->summary->estimate_frame == 2 || r->summary->estimate_frame == 4)
        << r->summary->estimate_frame;
    ASSERT_FALSE(r->notes.empty());
    EXPECT_NE(r->notes.back().find("3 evenly spaced frames were measured"), std::string::npos) << r->notes.back();
}

// Issue 22 row 5: a 6300 x 6300 line-pattern mask gave 19 M boundary points (34 s, 4.1 GB). A mask
// whose boundary is longer than any head's is refused before it is traced.
TEST_F(RouteApi, MaskWithMoreBoundaryThanAHeadIsRefusedBeforeTracing) {
    cv::Mat lines(2000, 2000, CV_8UC1, cv::Scalar(0));
    for (int y = 0; y < lines.rows; y += 2) lines.row(y).setTo(255);
    std::vector<unsigned char> png;
    ASSERT_TRUE(cv::imencode(".png", lines, png));
    std::vector<Part> form{{"mask", std::string(png.begin(), png.end()), "lines.png"}};
    expect_error(api(post_form("/v1/fit-ellipse", form)), 422, "mask_too_complex", "boundary pixels");
}

// Multi-frame: per-frame results and the median summary, as the CLI's video path.
TEST_F(RouteModel, MeasureMultiFrameDicomGivesFramesAndSummary) {
    const HttpResponse r = (*api_)(post_form("/v1/measure", dicom_form(wrap_in_dicom(scan_, kPixelMm, 3))));
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = body_json(r);
    ASSERT_EQ(j["frames"].size(), 3u);
    EXPECT_EQ(j["frames"][2]["frame"], 2);
    EXPECT_EQ(j["summary"]["frames"], 3);
    EXPECT_EQ(j["summary"]["ok_frames"], 3);
    EXPECT_NEAR(j["hc_mm"].get<double>(), j["summary"]["hc_median_mm"].get<double>(), 1e-9);
    EXPECT_EQ(j["dicom"]["frames"], 3);
    // The preview is the frame whose ellipse is returned (the summary's estimate).
    const int shown = j["summary"]["estimate_frame"].get<int>();
    EXPECT_EQ(j["preview_frame"], shown);
    const std::string url = j["preview_url"].get<std::string>();
    EXPECT_EQ(url.find("?frame=") != std::string::npos, shown > 0) << url;
    HttpRequest preview = get(url.substr(0, url.find('?')));
    if (shown > 0) preview.query["frame"] = std::to_string(shown);
    EXPECT_EQ((*api_)(preview).status, 200);
}

// One result per file whatever the transport and the worker count (issue 23): 214_HC wrapped as
// a 4-frame cine gives the same frames and the same summary through POST /v1/measure (one frame at
// a time on one network slot) as through fetalhc::measure_dicom with the CLI's workers (one per
// core, here 1 and 3), and the summary's GA is Hadlock of its median HC.
TEST_F(RouteModel, MultiFrameDicomGivesTheCliSummary) {
    const fs::path png = fs::path(FETALHC_DATA_DIR) / "test_set" / "214_HC.png";
    if (!fs::exists(png)) GTEST_SKIP() << "HC18 not found at " << FETALHC_DATA_DIR;
    const std::string dcm = wrap_in_dicom(read_bytes(png), 0.133007356995, 4);  // its test_set_pixel_size.csv row
    const HttpResponse r = (*api_)(post_form("/v1/measure", dicom_form(dcm)));
    ASSERT_EQ(r.status, 200) << r.body;
    const json http = body_json(r);
    ASSERT_EQ(http["frames"].size(), 4u);
    const json& hs = http["summary"];
    EXPECT_DOUBLE_EQ(hs["estimate"]["ga_hadlock"]["weeks"].get<double>(), hadlock_ga(hs["hc_median_mm"].get<double>()).weeks);
    EXPECT_EQ(http["hc_mm"], hs["hc_median_mm"]);
    const auto measurer = api_->engine.measurer();
    ASSERT_TRUE(measurer);
    for (int workers : {1, 3}) {
        auto reader = DicomFrameReader::open(reinterpret_cast<const unsigned char*>(dcm.data()), dcm.size(), "scan.dcm");
        ASSERT_TRUE(reader) << reader.error();
        DicomRequest request;
        request.workers = workers;
        auto cli = fetalhc::measure_dicom(**measurer, **reader, request);
        ASSERT_TRUE(cli) << cli.error();
        const json j = to_json(*cli, "--pixel-size");
        for (size_t k = 0; k < 4; ++k) {
            EXPECT_EQ(j["frames"][k]["hc_mm"], http["frames"][k]["hc_mm"]) << workers << " workers, frame " << k;
            EXPECT_EQ(j["frames"][k]["tracked"], http["frames"][k]["tracked"]) << workers << " workers, frame " << k;
        }
        for (const char* key : {"hc_median_mm", "bpd_median_mm", "ofd_median_mm", "hc_iqr_mm", "estimate_frame", "ok_frames"})
            EXPECT_EQ(j["summary"][key], hs[key]) << workers << " workers: " << key;
        for (const char* key : {"hc_mm", "ga_hadlock", "ga_intergrowth", "quality", "reasons", "ellipse_px"})
            EXPECT_EQ(j["summary"]["estimate"][key], hs["estimate"][key]) << workers << " workers: " << key;
        EXPECT_EQ(j.value("hc_low_mm", -1.0), http.value("hc_low_mm", -1.0)) << workers << " workers";
    }
}

// A real file without a head: 422 with a message, and nothing is kept.
TEST_F(RouteModel, RealDicomWithoutAHeadIs422) {
    const fs::path f = fs::path(FETALHC_DICOM_DIR) / "OBXXXX1A.dcm";
    if (!fs::exists(f)) GTEST_SKIP() << "sample DICOM files absent (" << FETALHC_DICOM_DIR << ")";
    const std::string bytes = read_bytes(f);
    expect_error((*api_)(post_form("/v1/measure", dicom_form(bytes))), 422, "no_head_found", "no fetal head");
    EXPECT_FALSE(*api_->store->has_image(sha256_hex(bytes)));
}


// ---- issue 16: browser-origin protection and impossible exams -------------------------------------

namespace {
std::map<std::string, std::string> hdrs(std::initializer_list<std::pair<const std::string, std::string>> l) { return {l}; }
}  // namespace

// Row 1: a loopback server answers only its own Host names (DNS rebinding), refuses a foreign
// Origin, and refuses a POST a cross-site page could send without a preflight.
TEST(RouteOrigin, ForeignHostOriginAndSimpleWritesAreRefused) {
    const OriginPolicy p = origin_policy("127.0.0.1", 8080, {"https://viewer.example.org"}, true);
    const auto status = [&](const std::string& method, std::map<std::string, std::string> h) {
        auto r = check_request_origin(method, h, p);
        return r ? r->status : 0;
    };
    EXPECT_EQ(status("GET", hdrs({{"host", "127.0.0.1:8080"}})), 0);
    EXPECT_EQ(status("GET", hdrs({{"host", "localhost:8080"}})), 0);
    EXPECT_EQ(status("GET", hdrs({{"host", "evil.example:8080"}})), 403);  // reads too
    EXPECT_EQ(status("GET", hdrs({{"host", "127.0.0.1:9999"}})), 403);
    EXPECT_EQ(status("GET", hdrs({})), 403);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"content-type", "application/json"}})), 0);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"content-type", "text/plain"}})), 403);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"content-type", "multipart/form-data; boundary=x"}})), 403);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"content-type", "multipart/form-data; boundary=x"},
                                   {"x-fetalhc-request", "1"}})), 0);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"content-type", "multipart/form-data; boundary=x"},
                                   {"authorization", "Bearer x"}})), 0);
    // DICOMweb STOW-RS: multipart/related needs a preflight, like JSON.
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"content-type", "multipart/related; type=\"application/dicom\"; boundary=x"}})), 0);
    // Origins: the server's own, the allowed list; any other is refused, JSON or not.
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"origin", "http://127.0.0.1:8080"}, {"content-type", "application/json"}})), 0);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"origin", "https://viewer.example.org"}, {"content-type", "application/json"}})), 0);
    EXPECT_EQ(status("POST", hdrs({{"host", "127.0.0.1:8080"}, {"origin", "http://127.0.0.1:8081"}, {"content-type", "application/json"}})), 403);
    EXPECT_EQ(status("GET", hdrs({{"host", "127.0.0.1:8080"}, {"origin", "null"}})), 403);
    auto r = check_request_origin("POST", hdrs({{"host", "127.0.0.1:8080"}, {"origin", "http://evil.example"}}), p);
    ASSERT_TRUE(r);
    EXPECT_EQ(body_json(*r)["error"]["code"], "forbidden");
    EXPECT_NE(body_json(*r)["error"]["message"].get<std::string>().find("--allow-origin"), std::string::npos);
    // Off loopback the Host is not checked (the token guards the API); same-origin pages work.
    const OriginPolicy pub = origin_policy("0.0.0.0", 8080, {}, false);
    EXPECT_FALSE(check_request_origin("POST", hdrs({{"host", "scanner.lan:8080"}, {"origin", "http://scanner.lan:8080"},
                                                    {"content-type", "application/json"}}), pub));
    EXPECT_TRUE(check_request_origin("POST", hdrs({{"host", "scanner.lan:8080"}, {"origin", "http://evil.example"},
                                                   {"content-type", "application/json"}}), pub));
}

// Row 8: impossible numbers are refused, a submitted "ok" is recomputed, no 500 names a path.
TEST_F(RouteApi, ImpossibleExamsAreRefusedAndQualityIsRecomputed) {
    auto sha = api.store->put_image(synthetic_scan(11));
    ASSERT_TRUE(sha) << sha.error();
    auto exam = [&](double px, double a, double b, const std::string& date) {
        return json{{"pregnancy_id", "imp-1"}, {"exam_date", date}, {"image_sha256", *sha}, {"pixel_size_mm", px},
                    {"ellipse_px", {{"center_x", 400}, {"center_y", 270}, {"semi_axis_a", a}, {"semi_axis_b", b}, {"angle_rad", 0}}},
                    {"corrected", false}, {"quality", "ok"}, {"reasons", json::array()}};
    };
    HttpResponse r = api(post_json("/v1/exams", exam(2, 2000, 100, "2026-01-02").dump()));
    EXPECT_EQ(r.status, 400) << r.body;
    r = api(post_json("/v1/exams", exam(0.15, 1e300, 1e300, "2026-01-02").dump()));
    EXPECT_EQ(r.status, 400) << r.body;
    r = api(post_json("/v1/exams", exam(0.15, 170, 130, "9999-12-31").dump()));
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_EQ(body_json(r)["error"]["code"], "invalid_date");
    r = api(post_json("/v1/exams", exam(0.15, 170, 130, "1899-12-31").dump()));
    EXPECT_EQ(r.status, 400) << r.body;
    r = api(post_json("/v1/exams", exam(3, 10, 8, "2026-01-02").dump()));
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_EQ(body_json(r)["error"]["code"], "invalid_pixel_size");
    // Plausible but far from round: the server's quality says review whatever the client claimed.
    r = api(post_json("/v1/exams", exam(0.15, 300, 100, "2026-01-02").dump()));
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(body_json(r)["quality"], "review") << r.body;
    EXPECT_FALSE(body_json(r)["reasons"].empty());
    // A 500 says "internal error" with an id, never a path.
    const HttpResponse e = error_response({ErrorCode::StorageFailed, "cannot write in '/secret/path/hc.db': disk I/O error"});
    EXPECT_EQ(e.status, 500);
    EXPECT_EQ(e.body.find("/secret"), std::string::npos) << e.body;
    EXPECT_NE(e.body.find("(id "), std::string::npos) << e.body;
}

// ---- overload: the bounded queue in front of the network slots (issue 16 "Overload") ---------------

namespace {

// Polls `done` (a state another thread reaches) for up to 5 s; false when it never held.
bool eventually(const std::function<bool()>& done) {
    for (int i = 0; i < 500; ++i) {
        if (done()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done();
}

// The value of an unlabelled metric line "name value" in a /metrics body; NaN when absent.
double metric_value(const std::string& text, const std::string& name) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
    return std::nan("");
}

}  // namespace

// Exact arithmetic: with every slot busy, the request is served at the k-th release (k = waiting +
// 1), releases come every service_ms / slots, and the spread of k service times adds
// 2 sqrt(k) deviation_ms / slots.
TEST(SlotsAdmission, EstimatedWaitIsTheQueueAheadOverTheSlots) {
    EXPECT_DOUBLE_EQ(estimated_wait_ms(0, 0, 2, 40), 0);    // a free slot: no wait
    EXPECT_DOUBLE_EQ(estimated_wait_ms(1, 0, 2, 40), 0);
    EXPECT_DOUBLE_EQ(estimated_wait_ms(2, 0, 2, 40), 20);   // both busy, nobody ahead: the next release
    EXPECT_DOUBLE_EQ(estimated_wait_ms(2, 9, 2, 40), 200);  // 10 releases at 20 ms each
    EXPECT_DOUBLE_EQ(estimated_wait_ms(1, 3, 1, 50), 200);
    EXPECT_DOUBLE_EQ(estimated_wait_ms(1, 0, 1, 0), 0);     // no estimate yet: admitted, the wait itself is bounded
    EXPECT_DOUBLE_EQ(estimated_wait_ms(2, 3, 2, 40, 10), 100);  // (4 x 40 + 2 x 2 x 10) / 2
    EXPECT_DOUBLE_EQ(estimated_wait_ms(0, 0, 2, 40, 10), 0);    // a free slot: no wait, whatever the spread
}

// The running estimates, as TCP keeps its round-trip time: mean += (x - mean) / 8, deviation +=
// (|x - mean| - deviation) / 4 (with the old mean), starting from the first sample and half of it.
TEST(SlotsAdmission, ServiceTimeIsAMovingAverageOfTheHeldTimes) {
    Slots s(1);
    EXPECT_EQ(s.snapshot().service_ms, 0);
    s.record_service_ms(100);  // the first sample is the estimate
    EXPECT_DOUBLE_EQ(s.snapshot().service_ms, 100);
    EXPECT_DOUBLE_EQ(s.snapshot().deviation_ms, 50);
    s.record_service_ms(200);
    EXPECT_DOUBLE_EQ(s.snapshot().service_ms, 112.5);
    EXPECT_DOUBLE_EQ(s.snapshot().deviation_ms, 62.5);
    s.record_service_ms(std::nan(""));  // ignored
    s.record_service_ms(-5);
    EXPECT_DOUBLE_EQ(s.snapshot().service_ms, 112.5);
    s.acquire();
    s.release(170);  // a timed release feeds it too
    EXPECT_DOUBLE_EQ(s.snapshot().service_ms, 119.6875);
    EXPECT_DOUBLE_EQ(s.snapshot().deviation_ms, 61.25);
}

// A fake service time decides: no sleeping, no clock. The request is refused without queueing, the
// held slot is untouched, and Retry-After covers the queue's drain time (at least 1 s).
TEST(SlotsAdmission, RefusesAtOnceWhenTheEstimatedWaitPassesTheLimit) {
    Slots s(1, /*max_wait_ms=*/100);
    s.record_service_ms(2500);
    s.acquire();
    const Admission a = s.acquire_within();
    EXPECT_FALSE(a.admitted);
    EXPECT_EQ(a.waited_ms, 0);
    EXPECT_DOUBLE_EQ(a.estimated_wait_ms, 5000);  // 2500 + 2 x 1250 (the first deviation is half the sample)
    EXPECT_EQ(a.retry_after_s, 3);  // one request in service at 2.5 s: ceil(2.5)
    EXPECT_EQ(s.snapshot().shed, 1u);
    EXPECT_EQ(s.snapshot().waiting, 0);
    EXPECT_EQ(s.snapshot().in_use, 1);
    const ApiError e = overloaded_error(a, s);
    EXPECT_EQ(e.code, ErrorCode::Overloaded);
    EXPECT_EQ(e.retry_after_s, 3);
    EXPECT_NE(e.message.find("--max-queue-ms"), std::string::npos) << e.message;
    const HttpResponse r = error_response(e);
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(r.header("Retry-After"), "3");
    EXPECT_EQ(body_json(r)["error"]["code"], "overloaded");
    s.release();
    EXPECT_EQ(s.snapshot().in_use, 0);
    // A short service time admits the next one into the queue instead (here: straight to the free slot).
    EXPECT_TRUE(s.acquire_within().admitted);
    s.release();
}

// Admitted on an estimate that proved too short: it leaves the queue at the limit (refused, not
// served late), and the slot released afterwards is not handed to the request that left.
TEST(SlotsAdmission, AnAdmittedRequestThatWaitsPastTheLimitIsShed) {
    Slots s(1, /*max_wait_ms=*/40);
    s.record_service_ms(1);  // the estimate says 2 ms (1 + 2 x 0.5); the slot is held until the end of the test
    s.acquire();
    const Admission a = s.acquire_within();
    EXPECT_FALSE(a.admitted);
    EXPECT_GE(a.waited_ms, 40);
    EXPECT_LT(a.waited_ms, 5000);
    EXPECT_GE(a.retry_after_s, 1);
    EXPECT_EQ(s.snapshot().shed, 1u);
    EXPECT_EQ(s.snapshot().waiting, 0);
    s.release();
    EXPECT_EQ(s.snapshot().in_use, 0);
}

// Waiting requests are served in arrival order, each released slot handed to the oldest; the
// unbounded acquire() and the bounded acquire_within() share the one queue.
TEST(SlotsAdmission, WaitersAreServedFirstComeFirstServed) {
    Slots s(1, /*max_wait_ms=*/60000);
    s.record_service_ms(1);
    s.acquire();
    std::mutex mu;
    std::vector<int> order;
    std::vector<std::thread> ts;
    for (int i = 0; i < 4; ++i) {
        ts.emplace_back([&, i] {
            if (i % 2 == 0) {
                s.acquire();
            } else {
                const Admission a = s.acquire_within();
                if (!a.admitted) return;
            }
            {
                std::lock_guard<std::mutex> lock(mu);
                order.push_back(i);
            }
            s.release();
        });
        ASSERT_TRUE(eventually([&] { return s.snapshot().waiting == i + 1; })) << "waiter " << i << " did not queue";
    }
    s.release();
    for (auto& t : ts) t.join();
    EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
    EXPECT_EQ(s.snapshot().in_use, 0);
    EXPECT_EQ(s.snapshot().shed, 0u);
}

// The route: with every network slot busy and a tiny limit, POST /v1/measure gets 503 overloaded
// with Retry-After at once (no decode, no model needed), and /metrics counts the shed request.
TEST_F(RouteApi, MeasureIsShedWith503AndRetryAfterWhenTheSlotsAreBusy) {
    Slots& slots = api.engine.slots();
    slots.set_max_wait_ms(5);
    slots.record_service_ms(30);
    slots.acquire();
    slots.acquire();
    const auto t0 = std::chrono::steady_clock::now();
    const HttpResponse r = api(post_form("/v1/measure", measure_form(synthetic_scan())));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    expect_error(r, 503, "overloaded", "--max-queue-ms");
    EXPECT_LT(ms, 1000) << "the refusal must come at once, not after a wait";
    ASSERT_FALSE(r.header("Retry-After").empty());
    EXPECT_GE(std::stoi(r.header("Retry-After")), 1);
    const std::string m = api(get("/metrics")).body;
    EXPECT_EQ(metric_value(m, "fetalhc_inference_shed_total"), 1) << m;
    EXPECT_EQ(metric_value(m, "fetalhc_inference_queue_depth"), 0) << m;
    EXPECT_EQ(metric_value(m, "fetalhc_inference_slots_in_use"), 2) << m;
    EXPECT_DOUBLE_EQ(metric_value(m, "fetalhc_inference_service_seconds"), 0.03) << m;
    EXPECT_DOUBLE_EQ(metric_value(m, "fetalhc_inference_max_queue_seconds"), 0.005) << m;
    slots.release();
    slots.release();
    // Slots free again: the same request is no longer shed (here the model is absent: 503 model_loading).
    expect_error(api(post_form("/v1/measure", measure_form(synthetic_scan()))), 503, "model_loading");
    EXPECT_EQ(slots.snapshot().shed, 1u);
}

// A DICOM upload to POST /v1/measure sheds too, before its decode: 503 overloaded with Retry-After.
TEST_F(RouteApi, DicomUploadIsShedWith503WhenTheSlotsAreBusy) {
    const std::string dcm = wrap_in_dicom(synthetic_scan(), kPixelMm);
    Slots& slots = api.engine.slots();
    slots.set_max_wait_ms(5);
    slots.record_service_ms(30);
    slots.acquire();
    slots.acquire();
    const HttpResponse r = api(post_form("/v1/measure", dicom_form(dcm)));
    expect_error(r, 503, "overloaded", "--max-queue-ms");
    ASSERT_FALSE(r.header("Retry-After").empty());
    EXPECT_EQ(slots.snapshot().shed, 1u);
    slots.release();
    slots.release();
    expect_error(api(post_form("/v1/measure", dicom_form(dcm))), 503, "model_loading");
    EXPECT_EQ(slots.snapshot().shed, 1u);
    EXPECT_EQ(slots.snapshot().in_use, 0);
}

// POST /v1/segment sheds the same way (it runs the network like /v1/measure).
TEST_F(RouteApi, SegmentIsShedWith503AndRetryAfterWhenTheSlotsAreBusy) {
    Slots& slots = api.engine.slots();
    slots.set_max_wait_ms(5);
    slots.record_service_ms(30);
    slots.acquire();
    slots.acquire();
    const HttpResponse r = api(post_form("/v1/segment", measure_form(synthetic_scan())));
    expect_error(r, 503, "overloaded", "--max-queue-ms");
    ASSERT_FALSE(r.header("Retry-After").empty());
    EXPECT_EQ(slots.snapshot().shed, 1u);
    slots.release();
    slots.release();
    expect_error(api(post_form("/v1/segment", measure_form(synthetic_scan()))), 503, "model_loading");
    EXPECT_EQ(slots.snapshot().shed, 1u);
    const json doc = json::parse(openapi_json("test", 1u << 20));
    const json& r503 = doc["paths"]["/v1/segment"]["post"]["responses"]["503"];
    EXPECT_NE(r503["description"].get<std::string>().find("overloaded"), std::string::npos) << r503.dump();
    EXPECT_EQ(r503["headers"]["Retry-After"]["schema"]["type"], "integer") << r503.dump();
}

// The OpenAPI document lists the code and the Retry-After header of POST /v1/measure's 503.
TEST(RouteOpenApi, MeasureDocumentsOverloadedAndRetryAfter) {
    const json doc = json::parse(openapi_json("test", 1u << 20));
    const json& r503 = doc["paths"]["/v1/measure"]["post"]["responses"]["503"];
    EXPECT_NE(r503["description"].get<std::string>().find("overloaded"), std::string::npos) << r503.dump();
    EXPECT_EQ(r503["headers"]["Retry-After"]["schema"]["type"], "integer") << r503.dump();
    const json codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"];
    EXPECT_NE(std::find(codes.begin(), codes.end(), "overloaded"), codes.end());
}

// Found by fuzz/fuzz_routes (issue 16): a path that is not UTF-8 (httplib URL-decodes %93 to the
// byte 0x93) quoted in an error message made the JSON writer throw out of handle(), which must
// never throw. Invalid bytes are now written as U+FFFD and the error is answered as JSON.
TEST_F(RouteApi, PathThatIsNotUtf8IsAnsweredAsAJsonError) {
    for (const std::string path : {"/v1/images/aa\x93\x93/preview.png?frame=1", "/v1/pregnancies/P\x93", "/static/\xff.js",
                                   "/no/such/\xc3"}) {
        HttpRequest req;
        req.path = path;
        HttpResponse r;
        ASSERT_NO_THROW(r = api(req)) << path;
        EXPECT_GE(r.status, 400) << path;
        EXPECT_EQ(r.content_type, "application/json") << path;
        const auto j = nlohmann::json::parse(r.body, nullptr, false);
        ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
        EXPECT_TRUE(j["error"]["message"].is_string()) << r.body;
    }
}

// ---- DICOMweb STOW-RS ---------------------------------------------------------------------------

namespace {

std::string related_body(const std::string& boundary, const std::vector<std::pair<std::string, std::string>>& parts) {
    std::string b;
    for (const auto& [type, body] : parts) b += "--" + boundary + "\r\nContent-Type: " + type + "\r\n\r\n" + body + "\r\n";
    return b + "--" + boundary + "--\r\n";
}

ErrorCode split_error(const std::string& type, const std::string& body, size_t max_parts = 10) {
    try {
        split_multipart_related(type, body, max_parts);
    } catch (const ApiError& e) {
        return e.code;
    }
    return ErrorCode::Internal;  // no error: the caller expects one
}

}  // namespace

// The parts of a multipart/related body come back with their Content-Type and their bytes (a part
// may hold CR LF and "--" of its own); a body that breaks the framing is a bad_request.
TEST(RouteStow, MultipartRelatedIsSplitIntoItsParts) {
    const std::string one = std::string("DICM\r\n--not-the-boundary\r\n\0\x01", 25), two = "second";
    const std::string body = related_body("b0und", {{"application/dicom", one}, {"application/dicom; x=1", two}});
    const auto parts = split_multipart_related("multipart/related; type=\"application/dicom\"; boundary=\"b0und\"", body, 10);
    ASSERT_EQ(parts.size(), 2u);
    EXPECT_EQ(parts[0].body, one);
    EXPECT_EQ(parts[0].content_type, "application/dicom");
    EXPECT_EQ(parts[1].body, two);
    EXPECT_EQ(parts[1].content_type, "application/dicom; x=1");
    EXPECT_EQ(split_multipart_related("multipart/related; boundary=b0und", body, 10).size(), 2u);  // unquoted
    EXPECT_EQ(split_error("multipart/related; type=application/dicom", body), ErrorCode::BadRequest);  // no boundary
    EXPECT_EQ(split_error("multipart/related; boundary=other", body), ErrorCode::BadRequest);          // no delimiter
    EXPECT_EQ(split_error("multipart/related; boundary=b0und", body.substr(0, body.size() - 30)), ErrorCode::BadRequest);
    EXPECT_EQ(split_error("multipart/related; boundary=b0und", "--b0und\r\nContent-Type: a\r\nno blank line"), ErrorCode::BadRequest);
    EXPECT_EQ(split_error("multipart/related; boundary=b0und", body, 1), ErrorCode::BadRequest);  // too many parts
    EXPECT_EQ(split_error("multipart/related; boundary=" + std::string(300, 'x'), body), ErrorCode::BadRequest);
}

// Without a DICOM node (no --dicom-port, no --dicomweb) STOW-RS is not there, and says how to turn it on.
TEST_F(RouteApi, StowWithoutADicomNodeSaysHowToTurnItOn) {
    HttpRequest r;
    r.method = "POST";
    r.path = "/dicomweb/studies";
    r.headers["content-type"] = "multipart/related; type=\"application/dicom\"; boundary=b";
    r.body = related_body("b", {{"application/dicom", "x"}});
    expect_error(api(r), 404, "not_found", "--dicomweb");
}

// STOW-RS stores each DICOM part through the node (listed like a C-STORE) and answers PS3.18's
// JSON: the taken instances in ReferencedSOPSequence, the others in FailedSOPSequence with their
// reason; 202 when some failed, 409 when none was taken (e.g. every part of another study than the URL's).
TEST_F(RouteApi, StowStoresThroughTheNodeAndAnswersWhatWasTaken) {
    server::DicomNodeOptions o;
    o.listen = false;
    auto node = server::DicomNode::create(o, api.engine, *api.store);
    ASSERT_TRUE(node) << node.error();
    api.services->dicom = node->get();
    cv::Mat img(120, 160, CV_8UC1, cv::Scalar(40));
    cv::ellipse(img, {80, 60}, {50, 35}, 0, 0, 360, cv::Scalar(220), 3);
    std::vector<unsigned char> png;
    cv::imencode(".png", img, png);
    const std::string dicom = wrap_in_dicom(std::string(png.begin(), png.end()), 0.2);
    auto h = read_dicom_header(std::vector<unsigned char>(dicom.begin(), dicom.end()), "wrapped");
    ASSERT_TRUE(h) << h.error();
    HttpRequest r;
    r.method = "POST";
    r.path = "/dicomweb/studies";
    r.headers["content-type"] = "multipart/related; type=\"application/dicom\"; boundary=stow";
    r.body = related_body("stow", {{"application/dicom", dicom}, {"application/dicom", "not DICOM"}});
    HttpResponse res = api(r);
    ASSERT_EQ(res.status, 202) << res.body;
    EXPECT_EQ(res.content_type, "application/dicom+json");
    const json j = json::parse(res.body);
    ASSERT_EQ(j["00081199"]["Value"].size(), 1u) << res.body;
    EXPECT_EQ(j["00081199"]["Value"][0]["00081155"]["Value"][0], h->sop_instance_uid);
    EXPECT_EQ(j["00081199"]["Value"][0]["00081150"]["Value"][0], h->sop_class_uid);
    ASSERT_EQ(j["00081198"]["Value"].size(), 1u);
    EXPECT_EQ(j["00081198"]["Value"][0]["00081197"]["Value"][0], 0xC000);
    auto listed = api.store->dicom_instances(10);
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].sop_instance_uid, h->sop_instance_uid);
    EXPECT_EQ((*listed)[0].calling_aet, "DICOMWEB");
    // Another study's URL: nothing taken.
    r.path = "/dicomweb/studies/1.2.3.4";
    r.path_params.clear();
    res = api(r);
    EXPECT_EQ(res.status, 409) << res.body;
    EXPECT_FALSE(json::parse(res.body).contains("00081199"));
    // Not multipart/related: a clear 400.
    r.path = "/dicomweb/studies";
    r.headers["content-type"] = "application/dicom";
    expect_error(api(r), 400, "bad_request", "multipart/related");
    api.services->dicom = nullptr;
}
