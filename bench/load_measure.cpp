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

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"load benchmark of POST /v1/measure"};
    std::string fetalhc = FETALHC_CLI_PATH, model = FETALHC_DEFAULT_MODEL, image, url;
    int clients = 50, threads = 0;
    double duration = 60, pixel_size = 0.15;
    app.add_option("--clients", clients, "concurrent keep-alive clients")->capture_default_str();
    app.add_option("--duration", duration, "seconds of load")->capture_default_str();
    app.add_option("--image", image, "image to send (default: a synthetic head scan)");
    app.add_option("--pixel-size", pixel_size, "pixel_size_mm sent with each request")->capture_default_str();
    app.add_option("--threads", threads, "serve --threads (requests running the network at once; 0 = cores)")->capture_default_str();
    app.add_option("--fetalhc", fetalhc, "fetalhc binary to start")->capture_default_str();
    app.add_option("--model", model, "model for the server")->capture_default_str();
    app.add_option("--url", url, "use this running server (host:port) instead of starting one; no RSS then");
    CLI11_PARSE(app, argc, argv);
    if (clients < 1 || !(duration > 0)) {
        std::fprintf(stderr, "error: --clients and --duration must be positive\n");
        return 2;
    }

    std::string bytes;
    if (image.empty()) {
        bytes = synthetic_scan();
    } else {
        std::ifstream in(image, std::ios::binary);
        if (!in) return std::fprintf(stderr, "error: cannot read --image '%s'\n", image.c_str()), 2;
        bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }

    std::string host = "127.0.0.1";
    int port = 0;
    pid_t child = -1;
    fs::path dir;
    if (url.empty()) {
        port = free_port();
        dir = fs::temp_directory_path() / ("fetalhc_load_" + std::to_string(getpid()));
        fs::create_directories(dir);
        const std::string db = (dir / "bench.db").string(), log = (dir / "serve.log").string();
        child = fork();
        if (child == 0) {
            int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            const std::string p = std::to_string(port), t = std::to_string(threads);
            execl(fetalhc.c_str(), fetalhc.c_str(), "serve", "--port", p.c_str(), "--db", db.c_str(), "--threads", t.c_str(),
                  "--model", model.c_str(), static_cast<char*>(nullptr));
            _exit(127);
        }
        std::printf("server: %s serve --port %d --threads %d (pid %d, log %s)\n", fetalhc.c_str(), port, threads, int(child),
                    log.c_str());
    } else {
        const auto colon = url.rfind(':');
        host = url.substr(0, colon);
        port = std::stoi(url.substr(colon + 1));
    }

    // Wait for /health 200 (the model loads after the port opens).
    httplib::Client probe(host, port);
    const auto t_wait = Clock::now();
    while (true) {
        auto r = probe.Get("/health");
        if (r && r->status == 200) break;
        int status = 0;
        if ((child > 0 && waitpid(child, &status, WNOHANG) == child) || Clock::now() - t_wait > std::chrono::seconds(120)) {
            std::fprintf(stderr, "error: the server did not become ready (see its log)\n");
            return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const httplib::MultipartFormDataItems form{{"image", bytes, image.empty() ? "synthetic.png" : fs::path(image).filename().string(), ""},
                                               {"pixel_size_mm", std::to_string(pixel_size), "", ""}};
    {
        auto r = probe.Post("/v1/measure", form);  // warm-up, and a check that the image measures
        if (!r || r->status != 200) {
            std::fprintf(stderr, "error: warm-up request failed: %s\n", r ? r->body.c_str() : httplib::to_string(r.error()).c_str());
            if (child > 0) kill(child, SIGTERM), waitpid(child, nullptr, 0);
            return 1;
        }
    }

    std::mutex mu;
    std::vector<double> latencies_ms;
    std::map<std::string, int> error_kinds;  // what went wrong, with counts
    std::atomic<long> ok{0}, errors{0}, ok_in_time{0};
    const double cpu0 = child > 0 ? cpu_seconds(child) : -1;
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(duration));
    std::vector<std::thread> pool;
    for (int c = 0; c < clients; ++c)
        pool.emplace_back([&] {
            httplib::Client cli(host, port);
            cli.set_keep_alive(true);
            cli.set_read_timeout(120, 0);
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
                    ++error_kinds[kind];
                }
                if (good && done <= deadline) ++ok_in_time;
            }
            std::lock_guard<std::mutex> lock(mu);
            latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
        });
    for (auto& t : pool) t.join();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();

    const double rss = child > 0 ? peak_rss_mib(child) : -1;
    const double cpu = child > 0 ? cpu_seconds(child) - cpu0 : -1;
    if (child > 0) {
        kill(child, SIGTERM);
        waitpid(child, nullptr, 0);
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    std::printf("clients %d, %.0f s of load (+%.1f s for the last responses), image %s (%zu bytes), pixel size %.4f mm\n",
                clients, duration, elapsed - duration,
                image.empty() ? "synthetic 800x540" : image.c_str(), bytes.size(), pixel_size);
    std::printf("requests %ld ok, %ld errors\n", ok.load(), errors.load());
    for (const auto& [kind, n] : error_kinds) std::printf("  error x%d: %s\n", n, kind.c_str());
    std::printf("throughput %.1f req/s (responses completed within the %.0f s)\n", ok_in_time.load() / duration, duration);
    std::printf("latency ms: p50 %.0f  p90 %.0f  p99 %.0f  max %.0f\n", percentile(latencies_ms, 50), percentile(latencies_ms, 90),
                percentile(latencies_ms, 99), percentile(latencies_ms, 100));
    if (rss >= 0) std::printf("server peak RSS %.0f MiB\n", rss);
    if (cpu >= 0 && ok + errors > 0)
        std::printf("server CPU %.1f s over %.1f s (%.2f cores busy), %.0f ms CPU per request\n", cpu, elapsed, cpu / elapsed,
                    1000 * cpu / double(ok + errors));
    return errors.load() == 0 ? 0 : 1;
}
