// HTTP service: a server in this process on a free port with a temporary database, exercised with
// httplib's client: every endpoint, the error paths, the token rule, concurrent requests, and the
// SQLite store on its own. Tests that run the network skip when the model file is absent.
#include "fetalhc/ellipse.h"
#include "fetalhc/growth.h"
#include "fetalhc/server.h"
#include "fetalhc/store.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace fetalhc;

namespace {

const std::string kModel = FETALHC_DEFAULT_MODEL;
constexpr double kPixelMm = 0.15;
// The head drawn in the synthetic scan (px).
const Ellipse kHead{402.0, 268.0, 170.0, 130.0, 0.45};

fs::path temp_dir(const std::string& tag) {
    static std::mt19937_64 rng{std::random_device{}()};
    fs::path p = fs::temp_directory_path() / ("fetalhc_server_test_" + tag + "_" + std::to_string(rng()));
    fs::create_directories(p);
    return p;
}

std::string png(const cv::Mat& img) {
    std::vector<unsigned char> b;
    cv::imencode(".png", img, b);
    return std::string(b.begin(), b.end());
}

// A head-like scan: dark speckled background, a bright speckled skull ring along kHead, a faint
// textured brain inside.
std::string synthetic_scan(unsigned seed = 7) {
    cv::Mat img(540, 800, CV_8U);
    cv::RNG rng(seed);
    rng.fill(img, cv::RNG::UNIFORM, 0, 30);
    cv::Mat inside = cv::Mat::zeros(img.size(), CV_8U), ring = inside.clone();
    const cv::Size axes(int(kHead.a), int(kHead.b));
    const double deg = kHead.angle * 180 / CV_PI;
    cv::ellipse(inside, {int(kHead.cx), int(kHead.cy)}, axes, deg, 0, 360, 255, cv::FILLED);
    cv::ellipse(ring, {int(kHead.cx), int(kHead.cy)}, axes, deg, 0, 360, 255, 9);
    cv::Mat tex(img.size(), CV_8U);
    rng.fill(tex, cv::RNG::UNIFORM, 30, 80);
    tex.copyTo(img, inside);
    rng.fill(tex, cv::RNG::UNIFORM, 170, 255);
    tex.copyTo(img, ring);
    cv::GaussianBlur(img, img, {3, 3}, 0.8);
    return png(img);
}

// An all-black frame: nothing the network takes for a head.
std::string blank_scan() { return png(cv::Mat::zeros(540, 800, CV_8U)); }

httplib::MultipartFormDataItems measure_form(const std::string& image, const std::string& pixel = "0.15") {
    return {{"image", image, "scan.png", "image/png"}, {"pixel_size_mm", pixel, "", ""}};
}

json body_json(const httplib::Result& r) { return json::parse(r->body, nullptr, false); }

// Error responses are JSON with a non-empty message.
void expect_error(const httplib::Result& r, int status, const std::string& contains = "") {
    ASSERT_TRUE(r) << "no response";
    EXPECT_EQ(r->status, status) << r->body;
    const json j = body_json(r);
    ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_string()) << r->body;
    EXPECT_FALSE(j["error"].get<std::string>().empty());
    if (!contains.empty()) EXPECT_NE(j["error"].get<std::string>().find(contains), std::string::npos) << j["error"];
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

class ServerApi : public ::testing::Test {
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
        if (!inst_) GTEST_SKIP() << "model '" << kModel << "' is absent; the server tests need it";
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
Instance* ServerApi::inst_ = nullptr;
std::string ServerApi::scan_;

}  // namespace

TEST_F(ServerApi, HealthIsReadyAndNamesTheModel) {
    auto r = cli_->Get("/health");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    const json j = body_json(r);
    EXPECT_EQ(j["status"], "ready");
    EXPECT_EQ(j["model"], fs::path(kModel).filename().string());
}

TEST_F(ServerApi, OpenApiDocumentsEveryEndpoint) {
    auto r = cli_->Get("/openapi.json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
    const json j = body_json(r);
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["openapi"].get<std::string>().substr(0, 2), "3.");
    for (const char* p : {"/health", "/metrics", "/openapi.json", "/", "/static/{file}", "/v1/measure", "/v1/segment",
                          "/v1/fit-ellipse", "/v1/perimeter", "/v1/exams", "/v1/pregnancies/{id}",
                          "/v1/pregnancies/{id}/export.csv", "/v1/images/{sha256}", "/v1/growth-curve"})
        EXPECT_TRUE(j["paths"].contains(p)) << p;
}

TEST_F(ServerApi, ServesTheEmbeddedPageAndChartJs) {
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
    expect_error(cli_->Get("/static/no-such-file.js"), 404);
    expect_error(cli_->Get("/no/such/endpoint"), 404, "openapi");
}

TEST_F(ServerApi, MeasureReturnsTheNumbersAndStoresTheImage) {
    auto form = measure_form(scan_);
    form.push_back({"ga_weeks", "22", "", ""});
    form.push_back({"pregnancy_id", "test-P1", "", ""});
    form.push_back({"exam_date", "2026-03-14", "", ""});
    const json m = measure_ok(form);
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
    EXPECT_GE(m["timings_ms"]["queue"].get<double>(), 0);
    EXPECT_EQ(m["pregnancy_id"], "test-P1");
    EXPECT_EQ(m["exam_date"], "2026-03-14");
    EXPECT_EQ(m["image_sha256"], sha256_hex(scan_));
    EXPECT_EQ(m["image_url"], "/v1/images/" + sha256_hex(scan_));

    auto img = cli_->Get(m["image_url"].get<std::string>());
    ASSERT_TRUE(img);
    EXPECT_EQ(img->status, 200);
    EXPECT_EQ(img->get_header_value("Content-Type"), "image/png");
    EXPECT_EQ(img->body, scan_);
    // Measuring creates no exam.
    expect_error(cli_->Get("/v1/pregnancies/test-P1"), 404);
}

TEST_F(ServerApi, MeasureRejectsBadInputWithClearMessages) {
    expect_error(cli_->Post("/v1/measure", httplib::MultipartFormDataItems{{"pixel_size_mm", "0.15", "", ""}}), 400, "'image'");
    expect_error(cli_->Post("/v1/measure", httplib::MultipartFormDataItems{{"image", "", "empty.png", "image/png"},
                                                                           {"pixel_size_mm", "0.15", "", ""}}),
                 400, "empty");
    expect_error(cli_->Post("/v1/measure", measure_form("this is not an image")), 400, "not a readable image");
    expect_error(cli_->Post("/v1/measure", httplib::MultipartFormDataItems{{"image", scan_, "scan.png", "image/png"}}), 400,
                 "pixel_size_mm");
    for (const char* bad : {"abc", "0", "-0.1", "5", "nan", ""})
        expect_error(cli_->Post("/v1/measure", measure_form(scan_, bad)), 400, "pixel");
    auto with = [&](const char* key, const char* value) {
        auto f = measure_form(scan_);
        f.push_back({key, value, "", ""});
        return cli_->Post("/v1/measure", f);
    };
    expect_error(with("ga_weeks", "sixty"), 400, "ga_weeks");
    expect_error(with("ga_weeks", "60"), 400, "ga_weeks");
    expect_error(with("pregnancy_id", "Jane Doe"), 400, "pregnancy_id");
    expect_error(with("exam_date", "2026-02-30"), 400, "exam_date");
    expect_error(cli_->Post("/v1/measure", "{}", "application/json"), 400, "multipart");
    // Over the 4 MB cap of this instance.
    expect_error(cli_->Post("/v1/measure", measure_form(std::string(5u << 20, 'x'))), 413, "upload limit");
    // No head in a blank scan: 422, never a made-up ellipse.
    expect_error(cli_->Post("/v1/measure", measure_form(blank_scan())), 422);
}

TEST_F(ServerApi, SegmentReturnsAMaskOrAContour) {
    auto r = cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", scan_, "scan.png", "image/png"}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(r->get_header_value("Content-Type"), "image/png");
    EXPECT_FALSE(r->get_header_value("X-Detection-Score").empty());
    const cv::Mat mask = cv::imdecode(std::vector<unsigned char>(r->body.begin(), r->body.end()), cv::IMREAD_GRAYSCALE);
    ASSERT_EQ(mask.size(), cv::Size(800, 540));
    const cv::Mat truth = rasterize(kHead, mask.size());
    const double inter = cv::countNonZero(mask & truth), uni = cv::countNonZero(mask | truth);
    EXPECT_GT(inter / uni, 0.85) << "IoU of the mask with the drawn head";

    auto j = cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", scan_, "scan.png", "image/png"},
                                                                       {"format", "json", "", ""}});
    ASSERT_TRUE(j);
    ASSERT_EQ(j->status, 200) << j->body;
    const json c = body_json(j);
    ASSERT_TRUE(c["contour"].is_array());
    EXPECT_GT(c["contour"].size(), 8u);
    for (const auto& p : c["contour"]) EXPECT_NEAR(distance_to_ellipse(kHead, {p[0].get<double>(), p[1].get<double>()}), 0, 12);
    EXPECT_GT(c["confidence"].get<double>(), 0);
    EXPECT_LE(c["confidence"].get<double>(), 1);
    EXPECT_GT(c["detection_score"].get<double>(), 0.5);

    expect_error(cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", scan_, "scan.png", "image/png"},
                                                                           {"format", "svg", "", ""}}),
                 400, "format");
    expect_error(cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"format", "json", "", ""}}), 400, "'image'");
    expect_error(cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", "GIF89a", "x.gif", "image/gif"}}), 400);
    expect_error(cli_->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", blank_scan(), "b.png", "image/png"}}), 422);
}

TEST_F(ServerApi, FitEllipseFromPointsAndFromAMask) {
    const Ellipse e{300.5, 210.25, 150, 110, 2.2};
    json pts = json::array();
    for (int k = 0; k < 90; ++k) {
        const cv::Point2d p = ellipse_point(e, 2 * CV_PI * k / 90);
        pts.push_back({p.x, p.y});
    }
    auto r = cli_->Post("/v1/fit-ellipse", json{{"points", pts}}.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
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
    const std::string mask = png(rasterize(e, {640, 480}));
    r = cli_->Post("/v1/fit-ellipse", httplib::MultipartFormDataItems{{"mask", mask, "mask.png", "image/png"}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    f = body_json(r);
    EXPECT_NEAR(f["ellipse_px"]["center_x"].get<double>(), e.cx, 0.3);
    EXPECT_NEAR(f["ellipse_px"]["semi_axis_a"].get<double>(), e.a, 0.5);
    EXPECT_NEAR(f["ellipse_px"]["semi_axis_b"].get<double>(), e.b, 0.5);

    expect_error(cli_->Post("/v1/fit-ellipse", R"({"points": [[1,2],[3,4],[5,6]]})", "application/json"), 422, "cannot fit");
    expect_error(cli_->Post("/v1/fit-ellipse", R"({"points": [[1,2],[3]]})", "application/json"), 400, "points");
    expect_error(cli_->Post("/v1/fit-ellipse", R"({"pts": []})", "application/json"), 400, "points");
    json many = json::array();
    for (int k = 0; k < 20001; ++k) many.push_back({k % 640, k % 480});
    expect_error(cli_->Post("/v1/fit-ellipse", json{{"points", many}}.dump(), "application/json"), 400, "at most");
    expect_error(cli_->Post("/v1/fit-ellipse", "{not json", "application/json"), 400, "JSON");
    expect_error(cli_->Post("/v1/fit-ellipse", httplib::MultipartFormDataItems{{"mask", png(cv::Mat::zeros(100, 100, CV_8U)), "m.png", "image/png"}}),
                 422, "white");
}

TEST_F(ServerApi, PerimeterGivesTheNumbersOfAnEllipse) {
    const json ell{{"center_x", 400}, {"center_y", 270}, {"semi_axis_a", 120}, {"semi_axis_b", 95}, {"angle_rad", 0.3}};
    auto r = cli_->Post("/v1/perimeter", json{{"ellipse_px", ell}, {"pixel_size_mm", kPixelMm}, {"ga_weeks", 21}}.dump(),
                        "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
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

    expect_error(cli_->Post("/v1/perimeter", json{{"ellipse_px", ell}}.dump(), "application/json"), 400, "pixel_size_mm");
    expect_error(cli_->Post("/v1/perimeter", json{{"ellipse_px", ell}, {"pixel_size_mm", 3}}.dump(), "application/json"), 400, "pixel");
    json neg = ell;
    neg["semi_axis_b"] = -4;
    expect_error(cli_->Post("/v1/perimeter", json{{"ellipse_px", neg}, {"pixel_size_mm", 0.1}}.dump(), "application/json"), 400,
                 "semi-axes");
    json missing = ell;
    missing.erase("angle_rad");
    expect_error(cli_->Post("/v1/perimeter", json{{"ellipse_px", missing}, {"pixel_size_mm", 0.1}}.dump(), "application/json"), 400,
                 "angle_rad");
    expect_error(cli_->Post("/v1/perimeter", "[1,2]", "application/json"), 400, "JSON object");
}

TEST_F(ServerApi, ExamsBuildAPregnancyHistoryAndCsv) {
    const std::string id = "hist-" + std::to_string(std::random_device{}() % 100000);
    const json m = measure_ok(measure_form(scan_));
    ASSERT_TRUE(m.contains("image_sha256"));
    json ell = m["ellipse_px"];
    ell["semi_axis_a"] = ell["semi_axis_a"].get<double>() + 4;  // the clinician's correction
    json exam{{"pregnancy_id", id}, {"exam_date", "2026-05-02"}, {"image_sha256", m["image_sha256"]},
              {"pixel_size_mm", kPixelMm}, {"ellipse_px", ell}, {"corrected", true}, {"ga_weeks", 24},
              {"quality", m["quality"]}, {"reasons", m["reasons"]}};
    auto r = cli_->Post("/v1/exams", exam.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 201) << r->body;
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
    exam["ellipse_px"] = m["ellipse_px"];
    exam.erase("ga_weeks");
    r = cli_->Post("/v1/exams", exam.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 201) << r->body;
    EXPECT_TRUE(body_json(r)["centile"].is_null());

    auto h = cli_->Get("/v1/pregnancies/" + id);
    ASSERT_TRUE(h);
    ASSERT_EQ(h->status, 200) << h->body;
    const json hist = body_json(h);
    EXPECT_EQ(hist["pregnancy_id"], id);
    ASSERT_EQ(hist["exams"].size(), 2u);
    EXPECT_EQ(hist["exams"][0]["exam_date"], "2026-03-01");
    EXPECT_EQ(hist["exams"][1]["exam_date"], "2026-05-02");
    EXPECT_FALSE(hist["exams"][0]["corrected"].get<bool>());
    EXPECT_NEAR(hist["exams"][1]["hc_mm"].get<double>(), saved["hc_mm"].get<double>(), 1e-9);
    for (const char* k : {"id", "exam_date", "image_sha256", "pixel_size_mm", "ellipse_px", "hc_mm", "bpd_mm", "ofd_mm",
                          "ga_hadlock_weeks", "ga_intergrowth_weeks", "ga_weeks_given", "centile", "quality", "corrected",
                          "accepted", "created_at"})
        EXPECT_TRUE(hist["exams"][0].contains(k)) << k;

    auto csv = cli_->Get("/v1/pregnancies/" + id + "/export.csv");
    ASSERT_TRUE(csv);
    EXPECT_EQ(csv->status, 200);
    EXPECT_EQ(csv->get_header_value("Content-Type").rfind("text/csv", 0), 0u);
    std::istringstream lines(csv->body);
    std::string header, row1, row2, extra;
    std::getline(lines, header);
    std::getline(lines, row1);
    std::getline(lines, row2);
    EXPECT_EQ(header.rfind("exam_id,pregnancy_id,exam_date,", 0), 0u);
    EXPECT_NE(row1.find(",2026-03-01,"), std::string::npos);
    EXPECT_NE(row2.find(",2026-05-02,"), std::string::npos);
    EXPECT_FALSE(std::getline(lines, extra));

    expect_error(cli_->Get("/v1/pregnancies/never-seen"), 404);
    expect_error(cli_->Get("/v1/pregnancies/never-seen/export.csv"), 404);
    expect_error(cli_->Get("/v1/pregnancies/bad%20id"), 400, "pregnancy id");

    auto bad = [&](const char* key, const json& value, const std::string& contains) {
        json e = exam;
        if (value.is_null()) e.erase(key);
        else e[key] = value;
        expect_error(cli_->Post("/v1/exams", e.dump(), "application/json"), 400, contains);
    };
    bad("pregnancy_id", "has space", "pregnancy_id");
    bad("pregnancy_id", std::string(65, 'x'), "pregnancy_id");
    bad("exam_date", "14/03/2026", "exam_date");
    bad("image_sha256", "abc", "image_sha256");
    bad("image_sha256", std::string(64, '0'), "no stored image");
    bad("pixel_size_mm", -1, "pixel");
    bad("corrected", nullptr, "corrected");
    bad("ellipse_px", "round", "ellipse_px");
    bad("quality", "great", "quality");
    bad("ga_weeks", 80, "ga_weeks");
}

TEST_F(ServerApi, ImagesAreValidatedAndLookedUp) {
    expect_error(cli_->Get("/v1/images/not-a-hash"), 400, "64 hex");
    expect_error(cli_->Get("/v1/images/" + std::string(64, 'a')), 404);
}

TEST_F(ServerApi, GrowthCurveFollowsTheIntergrowthStandard) {
    auto r = cli_->Get("/v1/growth-curve");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
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

TEST_F(ServerApi, ConcurrentMeasuresAllSucceedAndAgree) {
    constexpr int kThreads = 8, kEach = 5;
    std::vector<std::vector<double>> hc(kThreads);
    std::atomic<int> failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; ++t)
        pool.emplace_back([&, t] {
            auto c = inst_->client();
            for (int i = 0; i < kEach; ++i) {
                auto r = c->Post("/v1/measure", measure_form(scan_));
                if (!r || r->status != 200) {
                    ++failures;
                    continue;
                }
                hc[t].push_back(json::parse(r->body)["hc_mm"].get<double>());
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
}

TEST_F(ServerApi, MetricsCountRequestsWithoutPatientData) {
    const std::string id = "metrics-secret-id";
    auto f = measure_form(scan_);
    f.push_back({"pregnancy_id", id, "", ""});
    measure_ok(f);
    expect_error(cli_->Get("/v1/pregnancies/" + id), 404);
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
    o.model_path = fs::exists(kModel) ? kModel : (dir / "token").string();  // POSTs below need no model
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
    expect_error(c->Post("/v1/perimeter", body, "application/json"), 401, "Authorization");
    c->set_bearer_token_auth("wrong-token-wrong-token");
    expect_error(c->Post("/v1/perimeter", body, "application/json"), 401, "wrong");
    expect_error(c->Post("/v1/measure", measure_form("x")), 401);
    expect_error(c->Post("/v1/exams", "{}", "application/json"), 401);
    c->set_bearer_token_auth(token);
    auto ok = c->Post("/v1/perimeter", body, "application/json");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200) << ok->body;
    // Reads need no token.
    auto g = in.client()->Get("/v1/growth-curve");
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, 200);
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

TEST(ServerModel, UnloadableModelGives503) {
    const fs::path dir = temp_dir("bad_model");
    std::ofstream(dir / "not_a_model.pt") << "not a model";
    ServerOptions o;
    o.model_path = (dir / "not_a_model.pt").string();
    o.db_path = (dir / "db.sqlite").string();
    o.log_requests = false;
    Instance in = start(o, "bad_model");
    EXPECT_FALSE(in.server->wait_ready(60));
    auto c = in.client();
    auto h = c->Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 503);
    EXPECT_EQ(body_json(h)["status"], "failed");
    expect_error(c->Post("/v1/measure", measure_form(synthetic_scan())), 503, "model");
    expect_error(c->Post("/v1/segment", httplib::MultipartFormDataItems{{"image", synthetic_scan(), "s.png", "image/png"}}), 503);
    // Stages that need no network still answer.
    auto g = c->Get("/v1/growth-curve");
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, 200);
    in.server->stop();
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
            EXPECT_GT(::write(fd, junk, sizeof junk), 0);
            ::close(fd);
        }
        if (auto now = c->Get("/health"); now && (status = body_json(now)["status"]) != "loading") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 503);
    EXPECT_EQ(body_json(h)["status"], "loading");
    expect_error(m, 503, "still loading");
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

// ---- the store on its own -------------------------------------------------------------------------

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
