// Load benchmark of POST /v1/measure: starts `fetalhc serve` as a child process on a free port with
// a temporary database (or targets a running server, e.g. nginx in front of replicas, with --url),
// and prints requests/s, latency percentiles, 503 sheds apart from other errors, and the server's
// peak RSS (VmHWM) and CPU time per request.
//
//   build/bench/load_measure --clients 50 --duration 60                       # closed loop, synthetic scan
//   build/bench/load_measure --image ../shared/hc18/training_set/001_HC.png --pixel-size 0.0897
//   build/bench/load_measure --image scans/ --rate 40 --duration 30           # open loop, 40 arrivals/s
//   build/bench/load_measure --max-queue-ms 200 --clients 50 --json-out r.json
//   build/bench/load_measure --url 127.0.0.1:8080 --exam-writes 0.2 --acked acked.csv
//
// Two ways to load:
// - closed loop (default): --clients keep-alive clients, each sending its next request when the last
//   one is answered; on a 503 with Retry-After a client waits that long first (--on-503 wait), as a
//   well-behaved client does, or sends again at once (--on-503 retry). Latency is from sending the
//   request to reading the whole response.
// - open loop (--rate R): arrivals at R per second (Poisson, or evenly spaced with --arrivals
//   uniform; fixed seed), independent of the responses, sent over up to --clients connections.
//   Latency is measured from each request's scheduled time, so a server (or a connection pool) that
//   falls behind shows up as latency instead of as fewer requests (no coordinated omission).
// Served percentiles are over the 200 responses; 503 `overloaded` responses (shed) are counted apart
// from other errors. --exam-writes F also saves an exam (POST /v1/exams with an Idempotency-Key) after
// that share of served measurements; every acknowledged exam's key and id go to --acked FILE, so a
// later check can find each exactly once. A write that fails to connect or gets 502/503 is retried
// with the same key.
#include <CLI/CLI.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

Clock::duration seconds(double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); }

// A head-like scan: dark speckle, a bright speckled skull ring, a textured brain inside.
std::string synthetic_scan() {
    cv::Mat img(540, 800, CV_8U);
    cv::RNG rng(7);
    rng.fill(img, cv::RNG::UNIFORM, 0, 30);
    cv::Mat inside = cv::Mat::zeros(img.size(), CV_8U), ring = inside.clone(), tex(img.size(), CV_8U);
    cv::ellipse(inside, {402, 268}, {170, 130}, 25.8, 0, 360, 255, cv::FILLED);
    cv::ellipse(ring, {402, 268}, {170, 130}, 25.8, 0, 360, 255, 9);
    rng.fill(tex, cv::RNG::UNIFORM, 30, 80);
    tex.copyTo(img, inside);
    rng.fill(tex, cv::RNG::UNIFORM, 170, 255);
    tex.copyTo(img, ring);
    std::vector<unsigned char> b;
    cv::imencode(".png", img, b);
    return std::string(b.begin(), b.end());
}

int free_port() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 && getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    close(s);
    return port;
}

// Peak resident set size of a process in MiB (VmHWM in /proc/<pid>/status), -1 when unknown.
double peak_rss_mib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
    return -1;
}

// CPU time (user + system, seconds) a process has used so far, from /proc/<pid>/stat; -1 when unknown.
double cpu_seconds(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) return -1;
    std::istringstream fields(stat.substr(close_paren + 2));
    std::string f;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && fields >> f; ++i) {  // field 3 is the state; 14 utime, 15 stime
        if (i == 14) utime = std::stoull(f);
        if (i == 15) stime = std::stoull(f);
    }
    return double(utime + stime) / double(sysconf(_SC_CLK_TCK));
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t k = std::min(v.size() - 1, size_t(std::ceil(p / 100.0 * double(v.size()))) - (p > 0 ? 1 : 0));
    return v[k];
}

// ---- options ------------------------------------------------------------------------------------

struct Options {
    std::string fetalhc = FETALHC_CLI_PATH, model = FETALHC_DEFAULT_MODEL, image, url, acked, json_out, save_synthetic, token_file;
    std::string arrivals = "poisson", on_503 = "wait";
    std::vector<std::string> serve_args;  // more options for `fetalhc serve`
    int clients = 50, threads = 0;
    double duration = 60, pixel_size = 0.15, rate = 0, exam_writes = 0, max_queue_ms = -1;
    unsigned seed = 1;
};

// Headers of every request: the marker the server wants on multipart writes, and the bearer token
// (--token-file: a user's token or the server's service token) when given.
httplib::Headers g_headers{{"X-Fetalhc-Request", "1"}};

// Where requests go: host, port and a path prefix (a proxy may serve the API under one).
struct Target {
    std::string host = "127.0.0.1", prefix;
    int port = 0;
};

// "host:port", "http://host:port" or "http://host:port/prefix" ("[::1]:port" for IPv6); an error
// message naming the value when it is none of these.
std::optional<Target> parse_url(std::string url, std::string& error) {
    error = "--url '" + url + "' must be host:port or http://host:port[/prefix] (https is not supported)";
    if (url.rfind("https://", 0) == 0) return std::nullopt;
    if (url.rfind("http://", 0) == 0) url = url.substr(7);
    Target t;
    const size_t slash = url.find('/');
    if (slash != std::string::npos) {
        t.prefix = url.substr(slash);
        while (!t.prefix.empty() && t.prefix.back() == '/') t.prefix.pop_back();
        url = url.substr(0, slash);
    }
    const size_t colon = url.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == url.size()) return std::nullopt;
    t.host = url.substr(0, colon);
    if (t.host.front() == '[' && t.host.back() == ']') t.host = t.host.substr(1, t.host.size() - 2);
    const std::string port = url.substr(colon + 1);
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    t.port = std::stoi(port);
    if (t.port < 1 || t.port > 65535) return std::nullopt;
    return t;
}

// Checks the values that CLI11 cannot; the message says which option and what it takes.
std::optional<std::string> option_problem(const Options& o) {
    if (o.clients < 1 || !(o.duration > 0)) return "--clients and --duration must be positive";
    if (!(o.rate >= 0) || !std::isfinite(o.rate)) return "--rate must be a number of arrivals per second (0 = closed loop)";
    if (!(o.exam_writes >= 0 && o.exam_writes <= 1)) return "--exam-writes must be a share in [0, 1], e.g. 0.2";
    if (o.exam_writes > 0 && o.acked.empty()) return "--exam-writes needs --acked FILE (the acknowledged exams' keys and ids)";
    if (!(o.pixel_size > 0 && o.pixel_size <= 2)) return "--pixel-size must be in (0, 2] mm";
    if ((o.max_queue_ms >= 0 || !o.serve_args.empty()) && !o.url.empty())
        return "--max-queue-ms and --serve-arg set the server this program starts; not with --url";
    return std::nullopt;
}

// Reads the command line into o; the exit code when the program stops here (--help, a usage error).
std::optional<int> parse_options(int argc, char** argv, Options& o) {
    CLI::App app{"load benchmark of POST /v1/measure (closed loop, or open loop with --rate)"};
    app.add_option("--clients", o.clients, "closed loop: concurrent keep-alive clients; open loop: connections at most")
        ->capture_default_str();
    app.add_option("--duration", o.duration, "seconds of load (open loop: of arrivals)")->capture_default_str();
    app.add_option("--rate", o.rate, "open loop: arrivals per second, independent of the responses (0 = closed loop)")
        ->capture_default_str();
    app.add_option("--arrivals", o.arrivals, "open loop: poisson (exponential gaps) or uniform (evenly spaced)")
        ->check(CLI::IsMember({"poisson", "uniform"}))
        ->capture_default_str();
    app.add_option("--seed", o.seed, "seed of the Poisson arrivals and of the exam-write draws")->capture_default_str();
    app.add_option("--on-503", o.on_503, "closed loop, after a 503: wait its Retry-After, or retry at once")
        ->check(CLI::IsMember({"wait", "retry"}))
        ->capture_default_str();
    app.add_option("--image", o.image, "image to send, or a folder of them sent in turn (default: a synthetic head scan)");
    app.add_option("--pixel-size", o.pixel_size, "pixel_size_mm sent with each request")->capture_default_str();
    app.add_option("--threads", o.threads, "serve --threads (requests running the network at once; 0 = cores)")
        ->capture_default_str();
    app.add_option("--max-queue-ms", o.max_queue_ms, "serve --max-queue-ms (default: the server's own)");
    app.add_option("--serve-arg", o.serve_args, "one more argument for `fetalhc serve` (repeat it, e.g. --serve-arg=--threads)")
        ->allow_extra_args(false);
    app.add_option("--fetalhc", o.fetalhc, "fetalhc binary to start")->capture_default_str();
    app.add_option("--model", o.model, "model for the server")->capture_default_str();
    app.add_option("--token-file", o.token_file, "send 'Authorization: Bearer' with the first line of this file (a user's token)");
    app.add_option("--url,--base-url", o.url,
                   "use this running server (host:port or http://host:port[/prefix]) instead of starting one; no RSS/CPU then");
    app.add_option("--exam-writes", o.exam_writes, "share of served measurements followed by POST /v1/exams (0..1)")
        ->capture_default_str();
    app.add_option("--acked", o.acked, "with --exam-writes: file of `idempotency_key,exam_id` for every acknowledged exam");
    app.add_option("--json-out", o.json_out, "also write the figures as JSON to this file");
    app.add_option("--save-synthetic", o.save_synthetic, "write the synthetic scan (PNG) to this file and exit");
    CLI11_PARSE(app, argc, argv);
    if (!o.save_synthetic.empty()) {
        std::ofstream out(o.save_synthetic, std::ios::binary);
        out << synthetic_scan();
        if (out) return 0;
        std::fprintf(stderr, "error: cannot write --save-synthetic '%s'\n", o.save_synthetic.c_str());
        return 2;
    }
    if (auto p = option_problem(o)) {
        std::fprintf(stderr, "error: %s\n", p->c_str());
        return 2;
    }
    if (!o.token_file.empty()) {
        std::ifstream in(o.token_file);
        std::string token;
        if (!std::getline(in, token) || token.empty()) {
            std::fprintf(stderr, "error: cannot read a token from --token-file '%s'\n", o.token_file.c_str());
            return 2;
        }
        g_headers.emplace("Authorization", "Bearer " + token);
    }
    return std::nullopt;
}

// ---- the images sent ----------------------------------------------------------------------------

struct Upload {
    std::string filename, bytes;
};

bool is_image_name(const fs::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    const std::string stem = p.stem().string();
    const bool mask = stem.size() >= 5 && stem.compare(stem.size() - 5, 5, "_Mask") == 0;  // HC18 labels
    return !mask && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff");
}

// The synthetic scan, one file, or every image of a folder (name order); an error names the path.
std::optional<std::vector<Upload>> load_uploads(const std::string& path, std::string& error) {
    if (path.empty()) return std::vector<Upload>{{"synthetic.png", synthetic_scan()}};
    std::vector<fs::path> files;
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
        for (const auto& e : fs::directory_iterator(path, ec))
            if (is_image_name(e.path())) files.push_back(e.path());
        std::sort(files.begin(), files.end());
    } else {
        files.push_back(path);
    }
    std::vector<Upload> out;
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) {
            error = "cannot read --image '" + f.string() + "'; check the path";
            return std::nullopt;
        }
        out.push_back({f.filename().string(), std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>())});
    }
    if (out.empty()) error = "--image folder '" + path + "' holds no PNG, JPEG, BMP or TIFF file";
    if (out.empty()) return std::nullopt;
    return out;
}

// ---- the server ---------------------------------------------------------------------------------

// The server under load: a child process this program started (child > 0) or one given by --url.
struct Server {
    Target target;
    pid_t child = -1;
    fs::path dir;  // the child's temporary database and log
};

// Starts `fetalhc serve` on a free port with a temporary database, or uses --url.
Server start_server(const Options& o, const Target& url) {
    Server srv;
    if (!o.url.empty()) {
        srv.target = url;
        return srv;
    }
    srv.target.port = free_port();
    srv.dir = fs::temp_directory_path() / ("fetalhc_load_" + std::to_string(getpid()));
    fs::create_directories(srv.dir);
    const std::string db = (srv.dir / "bench.db").string(), log = (srv.dir / "serve.log").string();
    std::vector<std::string> args{o.fetalhc, "serve", "--port", std::to_string(srv.target.port), "--db", db, "--threads",
                                  std::to_string(o.threads), "--model", o.model};
    if (o.max_queue_ms >= 0) args.insert(args.end(), {"--max-queue-ms", std::to_string(int(std::lround(o.max_queue_ms)))});
    // Every client of this program comes from one address: lift the server's per-address cap.
    args.insert(args.end(), {"--max-connections-per-client", "0"});
    args.insert(args.end(), o.serve_args.begin(), o.serve_args.end());
    srv.child = fork();
    if (srv.child == 0) {
        int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(o.fetalhc.c_str(), argv.data());
        _exit(127);
    }
    std::string line;
    for (size_t i = 1; i < args.size(); ++i) line += " " + args[i];
    std::printf("server: %s%s (pid %d, log %s)\n", o.fetalhc.c_str(), line.c_str(), int(srv.child), log.c_str());
    return srv;
}

void stop_server(const Server& srv) {
    if (srv.child <= 0) return;
    kill(srv.child, SIGTERM);
    waitpid(srv.child, nullptr, 0);
    std::error_code ec;
    fs::remove_all(srv.dir, ec);
}

std::unique_ptr<httplib::Client> make_client(const Target& t) {
    auto c = std::make_unique<httplib::Client>(t.host, t.port);
    c->set_keep_alive(true);
    c->set_connection_timeout(10, 0);
    c->set_read_timeout(120, 0);
    c->set_write_timeout(60, 0);
    c->set_default_headers(g_headers);  // the server refuses simple cross-site writes
    return c;
}

// The clients' connections, opened one after another before the load starts: the server's listen
// backlog is small, and 50 connections opened at once would put 1 s SYN retransmissions (and resets)
// into the first requests' latency. A connection that cannot be opened is left to open on first use.
std::vector<std::unique_ptr<httplib::Client>> connect_clients(const Target& t, int n) {
    std::vector<std::unique_ptr<httplib::Client>> clients;
    for (int c = 0; c < n; ++c) {
        clients.push_back(make_client(t));
        for (int attempt = 0; attempt < 3; ++attempt)
            if (auto r = clients.back()->Get(t.prefix + "/health"); r && r->status == 200) break;
    }
    return clients;
}

// Waits for /health 200 (the model loads after the port opens); false when the child exits or 120 s pass.
bool wait_ready(httplib::Client& probe, const Target& t, pid_t child) {
    const auto t_wait = Clock::now();
    while (true) {
        auto r = probe.Get(t.prefix + "/health");
        if (r && r->status == 200) return true;
        int status = 0;
        if ((child > 0 && waitpid(child, &status, WNOHANG) == child) || Clock::now() - t_wait > std::chrono::seconds(120))
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

// ---- what the clients record --------------------------------------------------------------------

struct LoadStats {
    std::vector<double> served_ms, shed_ms, all_ms;  // latencies of the 200s, of the 503 sheds, of every request
    std::map<std::string, long> error_kinds;         // other errors: what went wrong, with counts
    long ok = 0, shed = 0, errors = 0, ok_in_time = 0, late_sends = 0;
    long exams_acked = 0, exam_retries = 0, exam_failures = 0;
    double elapsed = 0;  // seconds from the start until the last response
};

// Shared by the clients of one run: the stats, the acknowledged-exam log, the options.
struct Run {
    const Options& o;
    const Target& target;
    const std::vector<Upload>& uploads;
    Clock::time_point deadline;
    std::mutex mu;
    LoadStats st;
    std::ofstream acked;
    std::vector<std::unique_ptr<httplib::Client>> clients;  // one per client thread, connected
};

// One client's figures, merged into the run's when it ends (no lock per request).
struct ClientStats {
    std::vector<double> served_ms, shed_ms, all_ms;
    std::map<std::string, long> error_kinds;
    long ok = 0, shed = 0, errors = 0, ok_in_time = 0, late_sends = 0, exams_acked = 0, exam_retries = 0, exam_failures = 0;
};

void merge(Run& run, const ClientStats& c) {
    std::lock_guard<std::mutex> lock(run.mu);
    LoadStats& s = run.st;
    s.served_ms.insert(s.served_ms.end(), c.served_ms.begin(), c.served_ms.end());
    s.shed_ms.insert(s.shed_ms.end(), c.shed_ms.begin(), c.shed_ms.end());
    s.all_ms.insert(s.all_ms.end(), c.all_ms.begin(), c.all_ms.end());
    for (const auto& [k, n] : c.error_kinds) s.error_kinds[k] += n;
    s.ok += c.ok, s.shed += c.shed, s.errors += c.errors, s.ok_in_time += c.ok_in_time, s.late_sends += c.late_sends;
    s.exams_acked += c.exams_acked, s.exam_retries += c.exam_retries, s.exam_failures += c.exam_failures;
}

std::string error_kind(const httplib::Result& r) {
    return r ? "HTTP " + std::to_string(r->status) + " " + r->body.substr(0, 120) : "no response: " + httplib::to_string(r.error());
}

bool is_shed(const httplib::Result& r) { return r && r->status == 503 && r->body.find("\"overloaded\"") != std::string::npos; }

// The Retry-After of a response in seconds (1 when absent or unreadable).
double retry_after_s(const httplib::Result& r) {
    const std::string v = r ? r->get_header_value("Retry-After") : "";
    if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos) return 1;
    return std::max(1, std::stoi(v));
}

// ---- exam writes --------------------------------------------------------------------------------

// The exam of a served measurement, as the web page's "Accept" sends it.
std::string exam_body(const json& m, const std::string& pregnancy_id) {
    json e{{"pregnancy_id", pregnancy_id}, {"exam_date", "2024-03-01"},   {"image_sha256", m.at("image_sha256")},
           {"pixel_size_mm", m.at("pixel_size_mm")}, {"ellipse_px", m.at("ellipse_px")}, {"corrected", false},
           {"quality", m.value("quality", "ok")},    {"reasons", m.value("reasons", json::array())}};
    return e.dump();
}

// POSTs the exam under `key`; a failed connection, 502 or 503 is retried with the same key (up to 6
// tries, waiting Retry-After or 0.2 s x try). An acknowledged exam (201) goes to the --acked file.
void write_exam(Run& run, httplib::Client& cli, const std::string& key, const std::string& body, ClientStats& cs) {
    for (int attempt = 1; attempt <= 6; ++attempt) {
        auto r = cli.Post(run.target.prefix + "/v1/exams", {{"Idempotency-Key", key}}, body, "application/json");
        if (r && r->status == 201) {
            const json e = json::parse(r->body, nullptr, false);
            const std::string id = e.is_object() && e.contains("id") ? e["id"].dump() : "?";
            std::lock_guard<std::mutex> lock(run.mu);
            run.acked << key << "," << id << "\n" << std::flush;
            ++cs.exams_acked;
            return;
        }
        const bool retry = !r || r->status == 502 || r->status == 503;
        if (!retry || attempt == 6) {
            ++cs.exam_failures;
            ++cs.error_kinds["exam write: " + error_kind(r)];
            return;
        }
        ++cs.exam_retries;
        const double wait = r && r->status == 503 ? retry_after_s(r) : 0.2 * attempt;
        std::this_thread::sleep_for(seconds(wait));
    }
}

// ---- one request ----------------------------------------------------------------------------------

// Sends the measure request and records it against `since` (the send time, or the scheduled time
// in open loop); a served one may be followed by an exam write. The response, for the caller.
httplib::Result measure_once(Run& run, httplib::Client& cli, size_t n, Clock::time_point since, ClientStats& cs,
                             std::mt19937_64& rng, const std::string& key_prefix) {
    const Upload& up = run.uploads[n % run.uploads.size()];
    const httplib::MultipartFormDataItems form{{"image", up.bytes, up.filename, ""},
                                               {"pixel_size_mm", std::to_string(run.o.pixel_size), "", ""}};
    auto r = cli.Post(run.target.prefix + "/v1/measure", form);
    const auto done = Clock::now();
    const double ms = ms_between(since, done);
    cs.all_ms.push_back(ms);
    if (r && r->status == 200) {
        ++cs.ok;
        cs.served_ms.push_back(ms);
        if (done <= run.deadline) ++cs.ok_in_time;
        if (run.o.exam_writes > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < run.o.exam_writes) {
            const json m = json::parse(r->body, nullptr, false);
            if (m.is_object() && m.contains("image_sha256"))
                write_exam(run, cli, key_prefix + std::to_string(n), exam_body(m, key_prefix + "P"), cs);
        }
    } else if (is_shed(r)) {
        ++cs.shed;
        cs.shed_ms.push_back(ms);
    } else {
        ++cs.errors;
        ++cs.error_kinds[error_kind(r)];
    }
    return r;
}

std::string key_prefix(int client) { return "lm-" + std::to_string(getpid()) + "-" + std::to_string(client) + "-"; }

// ---- closed and open loop ------------------------------------------------------------------------

// o.clients keep-alive clients, each sending its next request when the last one is answered.
void closed_loop(Run& run) {
    std::vector<std::thread> pool;
    for (int c = 0; c < run.o.clients; ++c)
        pool.emplace_back([&run, c] {
            httplib::Client* cli = run.clients[size_t(c)].get();
            ClientStats cs;
            std::mt19937_64 rng(run.o.seed * 7919 + unsigned(c));
            for (size_t n = size_t(c); Clock::now() < run.deadline; n += size_t(run.o.clients)) {
                auto r = measure_once(run, *cli, n, Clock::now(), cs, rng, key_prefix(c));
                if (is_shed(r) && run.o.on_503 == "wait")
                    std::this_thread::sleep_until(std::min(run.deadline, Clock::now() + seconds(retry_after_s(r))));
            }
            merge(run, cs);
        });
    for (auto& t : pool) t.join();
}

// The arrival times of the open loop: o.rate per second over o.duration.
std::vector<Clock::time_point> arrival_schedule(const Options& o, Clock::time_point t0) {
    std::vector<Clock::time_point> at;
    std::mt19937_64 rng(o.seed);
    std::exponential_distribution<double> gap(o.rate);
    double t = o.arrivals == "uniform" ? 0.5 / o.rate : gap(rng);
    while (t < o.duration) {
        at.push_back(t0 + seconds(t));
        t += o.arrivals == "uniform" ? 1.0 / o.rate : gap(rng);
    }
    return at;
}

// Arrivals on schedule whatever the responses: each connection takes the next arrival, waits for its
// time and sends; when every connection is busy the arrival is sent late and its latency, measured
// from the scheduled time, includes the delay.
void open_loop(Run& run, Clock::time_point t0) {
    const std::vector<Clock::time_point> at = arrival_schedule(run.o, t0);
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    for (int c = 0; c < run.o.clients; ++c)
        pool.emplace_back([&run, &at, &next, c] {
            httplib::Client* cli = run.clients[size_t(c)].get();
            ClientStats cs;
            std::mt19937_64 rng(run.o.seed * 7919 + unsigned(c));
            for (size_t n; (n = next++) < at.size();) {
                std::this_thread::sleep_until(at[n]);
                if (Clock::now() - at[n] > std::chrono::milliseconds(10)) ++cs.late_sends;
                measure_once(run, *cli, n, at[n], cs, rng, key_prefix(c));
            }
            merge(run, cs);
        });
    for (auto& t : pool) t.join();
}

// ---- the report -----------------------------------------------------------------------------------

json figures(const Options& o, size_t image_bytes, const LoadStats& st, double rss, double cpu) {
    auto pct = [](const std::vector<double>& v) {
        return json{{"p50", percentile(v, 50)}, {"p90", percentile(v, 90)}, {"p99", percentile(v, 99)}, {"max", percentile(v, 100)}};
    };
    const bool open = o.rate > 0;
    json j{{"mode", open ? "open" : "closed"},
           {"clients", o.clients},
           {"duration_s", o.duration},
           {"elapsed_s", st.elapsed},
           {"image", o.image.empty() ? "synthetic 800x540" : o.image},
           {"image_bytes", image_bytes},
           {"served", st.ok},
           {"shed", st.shed},
           {"errors", st.errors},
           {"error_kinds", st.error_kinds},
           // open loop: every arrival falls within the duration, so served / duration; closed loop:
           // the responses completed within it.
           {"served_per_s", double(open ? st.ok : st.ok_in_time) / o.duration},
           {"served_ms", pct(st.served_ms)},
           {"shed_ms", pct(st.shed_ms)},
           {"all_ms", pct(st.all_ms)}};
    if (open) j["rate_per_s"] = o.rate, j["arrivals"] = o.arrivals, j["late_sends"] = st.late_sends;
    else j["on_503"] = o.on_503;
    if (o.exam_writes > 0)
        j["exams"] = {{"share", o.exam_writes}, {"acked", st.exams_acked}, {"retries", st.exam_retries}, {"failed", st.exam_failures}};
    if (rss >= 0) j["server_peak_rss_mib"] = rss;
    if (cpu >= 0) j["server_cpu_s"] = cpu, j["server_cores_busy"] = cpu / std::max(1e-9, st.elapsed);
    return j;
}

void print_report(const json& j) {
    const bool open = j["mode"] == "open";
    std::printf("%s loop, %d %s, %.0f s of %s (+%.1f s for the last responses), image %s (%ld bytes)\n", open ? "open" : "closed",
                j["clients"].get<int>(), open ? "connections at most" : "clients", j["duration_s"].get<double>(),
                open ? "arrivals" : "load", j["elapsed_s"].get<double>() - j["duration_s"].get<double>(),
                j["image"].get<std::string>().c_str(), j["image_bytes"].get<long>());
    if (open)
        std::printf("offered %.1f req/s (%s arrivals), %ld sent over 10 ms late (all connections busy)\n", j["rate_per_s"].get<double>(),
                    j["arrivals"].get<std::string>().c_str(), j["late_sends"].get<long>());
    std::printf("requests %ld served (200), %ld shed (503 overloaded), %ld other errors\n", j["served"].get<long>(),
                j["shed"].get<long>(), j["errors"].get<long>());
    for (const auto& [kind, n] : j["error_kinds"].items()) std::printf("  error x%ld: %s\n", n.get<long>(), kind.c_str());
    std::printf("throughput %.1f served req/s\n", j["served_per_s"].get<double>());
    auto line = [&](const char* what, const json& p) {
        std::printf("%s ms: p50 %.0f  p90 %.0f  p99 %.0f  max %.0f\n", what, p["p50"].get<double>(), p["p90"].get<double>(),
                    p["p99"].get<double>(), p["max"].get<double>());
    };
    line("latency of served requests", j["served_ms"]);
    if (j["shed"].get<long>() > 0) line("latency of shed requests (503)", j["shed_ms"]);
    if (j.contains("exams"))
        std::printf("exam writes: %ld acknowledged, %ld retried, %ld failed\n", j["exams"]["acked"].get<long>(),
                    j["exams"]["retries"].get<long>(), j["exams"]["failed"].get<long>());
    if (j.contains("server_peak_rss_mib")) std::printf("server peak RSS %.0f MiB\n", j["server_peak_rss_mib"].get<double>());
    const long requests = j["served"].get<long>() + j["shed"].get<long>() + j["errors"].get<long>();
    if (j.contains("server_cpu_s") && requests > 0)
        std::printf("server CPU %.1f s over %.1f s (%.2f cores busy), %.0f ms CPU per request\n", j["server_cpu_s"].get<double>(),
                    j["elapsed_s"].get<double>(), j["server_cores_busy"].get<double>(),
                    1000 * j["server_cpu_s"].get<double>() / double(requests));
}

// The warm-up request (the first image must measure) and the --acked file; false with a message.
bool prepare(Run& run, httplib::Client& probe) {
    const Upload& up = run.uploads.front();
    probe.set_default_headers(g_headers);
    auto r = probe.Post(run.target.prefix + "/v1/measure",
                        httplib::MultipartFormDataItems{{"image", up.bytes, up.filename, ""},
                                                        {"pixel_size_mm", std::to_string(run.o.pixel_size), "", ""}});
    if (!r || r->status != 200) {
        std::fprintf(stderr, "error: warm-up request failed: %s\n", r ? r->body.c_str() : httplib::to_string(r.error()).c_str());
        return false;
    }
    if (!run.o.acked.empty()) {
        run.acked.open(run.o.acked, std::ios::app);
        if (!run.acked) {
            std::fprintf(stderr, "error: cannot write --acked '%s'\n", run.o.acked.c_str());
            return false;
        }
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);  // a connection the server closed is an error to count, not the end of the run
    Options o;
    if (auto code = parse_options(argc, argv, o)) return *code;
    std::string problem;
    Target url;
    if (!o.url.empty()) {
        auto t = parse_url(o.url, problem);
        if (!t) return std::fprintf(stderr, "error: %s\n", problem.c_str()), 2;
        url = *t;
    }
    const auto uploads = load_uploads(o.image, problem);
    if (!uploads) return std::fprintf(stderr, "error: %s\n", problem.c_str()), 2;

    const Server srv = start_server(o, url);
    Run run{o, srv.target, *uploads, {}, {}, {}, {}, {}};
    httplib::Client probe(srv.target.host, srv.target.port);
    if (!wait_ready(probe, srv.target, srv.child)) {
        std::fprintf(stderr, "error: the server did not become ready (see its log)\n");
        stop_server(srv);
        return 1;
    }
    if (!prepare(run, probe)) {
        stop_server(srv);
        return 1;
    }
    run.clients = connect_clients(srv.target, o.clients);
    const double cpu0 = srv.child > 0 ? cpu_seconds(srv.child) : -1;
    const auto t0 = Clock::now();
    run.deadline = t0 + seconds(o.duration);
    if (o.rate > 0) open_loop(run, t0);
    else closed_loop(run);
    run.st.elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const double rss = srv.child > 0 ? peak_rss_mib(srv.child) : -1;
    const double cpu = srv.child > 0 ? cpu_seconds(srv.child) - cpu0 : -1;
    stop_server(srv);
    size_t bytes = 0;
    for (const auto& u : *uploads) bytes += u.bytes.size();
    const json j = figures(o, bytes / uploads->size(), run.st, rss, cpu);
    print_report(j);
    if (!o.json_out.empty()) std::ofstream(o.json_out) << j.dump(2) << "\n";
    return run.st.errors == 0 ? 0 : 1;
}
