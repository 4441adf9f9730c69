// Load benchmark of POST /v1/measure: starts `fetalhc serve` as a child process on a free port with
// a temporary database (or targets a running server with --url), runs N keep-alive clients for a
// fixed time, and prints requests/s, latency percentiles, errors and the server's peak RSS (VmHWM).
//
//   build/bench/load_measure --clients 50 --duration 60                       # synthetic scan
//   build/bench/load_measure --image ../shared/hc18/training_set/001_HC.png --pixel-size 0.0897
//
// Latency is measured by the client from sending the request to reading the whole response, for
// every request; throughput counts the successful responses completed within --duration. The
// server's CPU time per request shows what the cores can give when the machine is shared.
#include <CLI/CLI.hpp>
#include <httplib.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
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
using Clock = std::chrono::steady_clock;

namespace {

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
    const size_t k = std::min(v.size() - 1, size_t(std::ceil(p / 100.0 * v.size())) - (p > 0 ? 1 : 0));
    return v[k];
}

struct Options {
    std::string fetalhc = FETALHC_CLI_PATH, model = FETALHC_DEFAULT_MODEL, image, url;
    int clients = 50, threads = 0;
    double duration = 60, pixel_size = 0.15;
};

// Reads the command line into o; the exit code when the program stops here (--help, a usage error).
std::optional<int> parse_options(int argc, char** argv, Options& o) {
    CLI::App app{"load benchmark of POST /v1/measure"};
    app.add_option("--clients", o.clients, "concurrent keep-alive clients")->capture_default_str();
    app.add_option("--duration", o.duration, "seconds of load")->capture_default_str();
    app.add_option("--image", o.image, "image to send (default: a synthetic head scan)");
    app.add_option("--pixel-size", o.pixel_size, "pixel_size_mm sent with each request")->capture_default_str();
    app.add_option("--threads", o.threads, "serve --threads (requests running the network at once; 0 = cores)")
        ->capture_default_str();
    app.add_option("--fetalhc", o.fetalhc, "fetalhc binary to start")->capture_default_str();
    app.add_option("--model", o.model, "model for the server")->capture_default_str();
    app.add_option("--url", o.url, "use this running server (host:port) instead of starting one; no RSS then");
    CLI11_PARSE(app, argc, argv);
    if (o.clients < 1 || !(o.duration > 0)) {
        std::fprintf(stderr, "error: --clients and --duration must be positive\n");
        return 2;
    }
    return std::nullopt;
}

// The server under load: a child process this program started (child > 0) or one given by --url.
struct Server {
    std::string host = "127.0.0.1";
    int port = 0;
    pid_t child = -1;
    fs::path dir;  // the child's temporary database and log
};

// Starts `fetalhc serve` on a free port with a temporary database, or parses --url.
Server start_server(const Options& o) {
    Server srv;
    if (!o.url.empty()) {
        const auto colon = o.url.rfind(':');
        srv.host = o.url.substr(0, colon);
        srv.port = std::stoi(o.url.substr(colon + 1));
        return srv;
    }
    srv.port = free_port();
    srv.dir = fs::temp_directory_path() / ("fetalhc_load_" + std::to_string(getpid()));
    fs::create_directories(srv.dir);
    const std::string db = (srv.dir / "bench.db").string(), log = (srv.dir / "serve.log").string();
    srv.child = fork();
    if (srv.child == 0) {
        int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        const std::string p = std::to_string(srv.port), t = std::to_string(o.threads);
        execl(o.fetalhc.c_str(), o.fetalhc.c_str(), "serve", "--port", p.c_str(), "--db", db.c_str(), "--threads",
              t.c_str(), "--model", o.model.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    std::printf("server: %s serve --port %d --threads %d (pid %d, log %s)\n", o.fetalhc.c_str(), srv.port, o.threads,
                int(srv.child), log.c_str());
    return srv;
}

// Waits for /health 200 (the model loads after the port opens); false when the child exits or 120 s pass.
bool wait_ready(httplib::Client& probe, pid_t child) {
    const auto t_wait = Clock::now();
    while (true) {
        auto r = probe.Get("/health");
        if (r && r->status == 200) return true;
        int status = 0;
        if ((child > 0 && waitpid(child, &status, WNOHANG) == child) || Clock::now() - t_wait > std::chrono::seconds(120))
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

struct LoadStats {
    std::vector<double> latencies_ms;    // every request's
    std::map<std::string, int> error_kinds;  // what went wrong, with counts
    long ok = 0, errors = 0, ok_in_time = 0;
    double elapsed = 0;  // seconds from the start until the last client finished
};

// Runs o.clients keep-alive clients posting `form` until o.duration has passed.
LoadStats run_clients(const Options& o, const Server& srv, const httplib::MultipartFormDataItems& form) {
    std::mutex mu;
    LoadStats st;
    std::atomic<long> ok{0}, errors{0}, ok_in_time{0};
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration));
    std::vector<std::thread> pool;
    for (int c = 0; c < o.clients; ++c)
        pool.emplace_back([&] {
            httplib::Client cli(srv.host, srv.port);
            cli.set_keep_alive(true);
            cli.set_read_timeout(120, 0);
            cli.set_default_headers({{"X-Fetalhc-Request", "1"}});  // the server refuses simple cross-site writes
            std::vector<double> mine;
            while (Clock::now() < deadline) {
                const auto t = Clock::now();
                auto r = cli.Post("/v1/measure", form);
                const auto done = Clock::now();
                mine.push_back(std::chrono::duration<double, std::milli>(done - t).count());
                const bool good = r && r->status == 200;
                (good ? ok : errors)++;
                if (!good) {
                    const std::string kind = r ? "HTTP " + std::to_string(r->status) + " " + r->body.substr(0, 120)
                                               : "no response: " + httplib::to_string(r.error());
                    std::lock_guard<std::mutex> lock(mu);
                    ++st.error_kinds[kind];
                }
                if (good && done <= deadline) ++ok_in_time;
            }
            std::lock_guard<std::mutex> lock(mu);
            st.latencies_ms.insert(st.latencies_ms.end(), mine.begin(), mine.end());
        });
    for (auto& t : pool) t.join();
    st.elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    st.ok = ok.load(), st.errors = errors.load(), st.ok_in_time = ok_in_time.load();
    return st;
}

// Prints the load, throughput, latency and server figures (rss, cpu: -1 when unknown).
void print_report(const Options& o, size_t image_bytes, const LoadStats& st, double rss, double cpu) {
    const double duration = o.duration, elapsed = st.elapsed;
    std::printf("clients %d, %.0f s of load (+%.1f s for the last responses), image %s (%zu bytes), pixel size %.4f mm\n",
                o.clients, duration, elapsed - duration,
                o.image.empty() ? "synthetic 800x540" : o.image.c_str(), image_bytes, o.pixel_size);
    std::printf("requests %ld ok, %ld errors\n", st.ok, st.errors);
    for (const auto& [kind, n] : st.error_kinds) std::printf("  error x%d: %s\n", n, kind.c_str());
    std::printf("throughput %.1f req/s (responses completed within the %.0f s)\n", st.ok_in_time / duration, duration);
    const auto& lat = st.latencies_ms;
    std::printf("latency ms: p50 %.0f  p90 %.0f  p99 %.0f  max %.0f\n", percentile(lat, 50), percentile(lat, 90),
                percentile(lat, 99), percentile(lat, 100));
    if (rss >= 0) std::printf("server peak RSS %.0f MiB\n", rss);
    if (cpu >= 0 && st.ok + st.errors > 0)
        std::printf("server CPU %.1f s over %.1f s (%.2f cores busy), %.0f ms CPU per request\n", cpu, elapsed, cpu / elapsed,
                    1000 * cpu / double(st.ok + st.errors));
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    if (auto code = parse_options(argc, argv, o)) return *code;

    std::string bytes;
    if (o.image.empty()) {
        bytes = synthetic_scan();
    } else {
        std::ifstream in(o.image, std::ios::binary);
        if (!in) return std::fprintf(stderr, "error: cannot read --image '%s'\n", o.image.c_str()), 2;
        bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }

    const Server srv = start_server(o);
    httplib::Client probe(srv.host, srv.port);
    if (!wait_ready(probe, srv.child)) {
        std::fprintf(stderr, "error: the server did not become ready (see its log)\n");
        return 1;
    }
    const std::string filename = o.image.empty() ? "synthetic.png" : fs::path(o.image).filename().string();
    const httplib::MultipartFormDataItems form{{"image", bytes, filename, ""},
                                               {"pixel_size_mm", std::to_string(o.pixel_size), "", ""}};
    {
        probe.set_default_headers({{"X-Fetalhc-Request", "1"}});
        auto r = probe.Post("/v1/measure", form);  // warm-up, and a check that the image measures
        if (!r || r->status != 200) {
            std::fprintf(stderr, "error: warm-up request failed: %s\n",
                         r ? r->body.c_str() : httplib::to_string(r.error()).c_str());
            if (srv.child > 0) kill(srv.child, SIGTERM), waitpid(srv.child, nullptr, 0);
            return 1;
        }
    }

    const double cpu0 = srv.child > 0 ? cpu_seconds(srv.child) : -1;
    const LoadStats st = run_clients(o, srv, form);
    const double rss = srv.child > 0 ? peak_rss_mib(srv.child) : -1;
    const double cpu = srv.child > 0 ? cpu_seconds(srv.child) - cpu0 : -1;
    if (srv.child > 0) {
        kill(srv.child, SIGTERM);
        waitpid(srv.child, nullptr, 0);
        std::error_code ec;
        fs::remove_all(srv.dir, ec);
    }
    print_report(o, bytes.size(), st, rss, cpu);
    return st.errors == 0 ? 0 : 1;
}
