// `fetalhc serve`: the HTTP service (JSON API, web page, per-pregnancy history) until Ctrl-C.
#include "cli.h"

#include "fetalhc/server.h"

#include <csignal>
#include <malloc.h>
#include <string>
#include <vector>
#include <cstdio>
#include <pthread.h>
#include <thread>

namespace fetalhc_cli {
namespace {

struct ServeArgs {
    fetalhc::ServerOptions server;
    double max_upload_mb = 20;
    double max_store_mb = 2048;
    std::string dicom_allow;  // comma-separated AE titles
    std::string allow_origin;  // comma-separated web origins
};

std::vector<std::string> split_commas(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t comma = s.find(',', start);
        std::string part = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        while (!part.empty() && part.front() == ' ') part.erase(part.begin());
        while (!part.empty() && part.back() == ' ') part.pop_back();
        if (!part.empty()) out.push_back(part);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

// Requests run on many connection threads, each with its own malloc arena; by default glibc gives
// a request's large buffers (images, tensors) back to the system and faults them in again on the
// next one. Keeping them (buffers under 32 MiB from the heap, up to 256 MiB of free heap kept)
// measured 17-18 ms of server CPU per /v1/measure instead of 19-20 and 10-15% more requests/s
// under load (bench/load_measure, 8 clients, 2 shared cores), for ~15 MiB more peak RSS.
void keep_request_buffers() {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

int run_serve(ServeArgs a) {
    if (!(a.max_upload_mb > 0 && a.max_upload_mb <= 1024)) {
        error("--max-upload-mb must be in (0, 1024]");
        return kExitUsage;
    }
    if (!bound_thread_count(a.server.threads, "--threads")) return kExitUsage;
    if (!check_model_file(a.server.model_path)) return kExitUsage;
    // A check asked for by name must load before the server says it started (the default one
    // beside the model is optional: the engine warns when it is absent).
    if (const std::string& c = a.server.head_check; !c.empty() && c != "none") {
        std::optional<fetalhc::HeadCheck> check;
        if (!load_head_check(c, a.server.model_path, check)) return kExitUsage;
    }
    a.server.max_upload_bytes = size_t(a.max_upload_mb * (1 << 20));
    if (!(a.server.max_queue_ms >= 0 && a.server.max_queue_ms <= 3600e3)) {
        error("--max-queue-ms must be in 0..3600000 (0 = no limit)");
        return kExitUsage;
    }
    if (!(a.max_store_mb >= 0 && a.max_store_mb <= 1e9)) {
        error("--max-store-mb must be 0 (no quota) or a positive size in MB");
        return kExitUsage;
    }
    a.server.max_store_bytes = static_cast<unsigned long long>(a.max_store_mb * (1 << 20));
    if (a.server.dicom_port < 0 || a.server.dicom_port > 65535) {
        error("--dicom-port must be in 1..65535 (0 = no DICOM node)");
        return kExitUsage;
    }
    a.server.dicom_allow = split_commas(a.dicom_allow);
    a.server.allow_origins = split_commas(a.allow_origin);
    if (a.server.dicom_port == 0 && !a.server.dicom_allow.empty()) {
        error("--dicom-allow needs --dicom-port");
        return kExitUsage;
    }
    if (a.server.dicom_port == 0 && !a.server.dicomweb && !a.server.dicom_forward.empty()) {
        error("--dicom-forward needs --dicom-port or --dicomweb");
        return kExitUsage;
    }
    if (a.server.dicom_port == 0 && !a.server.dicomweb && !a.server.dicomweb_forward.empty()) {
        error("--dicomweb-forward needs --dicom-port or --dicomweb");
        return kExitUsage;
    }
    // Ctrl-C / SIGTERM are taken by one waiting thread (blocked everywhere else, so the server's
    // threads inherit the mask): it stops the server, which finishes the requests in flight.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    keep_request_buffers();
    auto server = fetalhc::Server::create(a.server);
    if (!server) {
        error(cli_message(server.error_value()));
        return kExitUsage;  // the server's options (a store, a port, a model) cannot be used
    }
    fetalhc::Server* s = server->get();
    std::thread([s, stop_signals] {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        s->stop();
    }).detach();
    std::printf("fetalhc: open %s  (the model loads in the background; GET /health says when ready)\n", s->url().c_str());
    if (a.server.dicom_port)
        std::printf("fetalhc: DICOM node %s listening on port %d\n", a.server.dicom_aet.c_str(), a.server.dicom_port);
    std::fflush(stdout);
    s->run();
    return kExitOk;
}

}  // namespace

void add_serve_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<ServeArgs>();
    fetalhc::ServerOptions& so = a->server;
    auto* cmd = app.add_subcommand("serve", "HTTP service: JSON API (see /openapi.json), web page, per-pregnancy history");
    cmd->add_option("--host", so.host, "address to listen on; off loopback (checked by resolving it) every API request needs the bearer token")->capture_default_str();
    cmd->add_option("--port", so.port, "TCP port (0 = any free port)")->capture_default_str();
    cmd->add_option("--db", so.db_path,
                    "SQLite database file (created if missing; images go to <db>.images/), or a PostgreSQL URI "
                    "postgresql://user@host:port/dbname (images in the database; several servers may share it)")
        ->capture_default_str();
    cmd->add_option("--threads", so.threads, "requests running the network at once (0 = CPU cores; at most the core count)")
        ->capture_default_str();
    add_mirror_flag(cmd, so.mirror_average);
    add_int8_flag(cmd, so.int8);
    add_head_check_option(cmd, so.head_check);
    cmd->add_option("--token-file", so.token_file, "file whose first line is the bearer token (required off loopback)");
    cmd->add_option("--allow-origin", a->allow_origin,
                    "web origins (comma-separated, e.g. https://viewer.example.org) whose pages may call this API; "
                    "requests with any other Origin header are refused (403)");
    cmd->add_option("--max-upload-mb", a->max_upload_mb, "request body cap in MB; larger uploads get 413")->capture_default_str();
    cmd->add_option("--request-timeout", so.request_timeout_s,
                    "seconds a request (headers and body) may take to arrive from its first byte; a slower client's "
                    "connection is closed")
        ->capture_default_str();
    cmd->add_option("--max-connections-per-client", so.max_connections_per_client,
                    "connections served at once per client address; more are closed at once (0 = no cap; behind a "
                    "reverse proxy all clients share its address: raise it)")
        ->capture_default_str();
    cmd->add_option("--header-timeout", so.header_timeout_s,
                    "seconds a request's line and headers may take to arrive; its body then gets its size at 64 KB/s, "
                    "the whole request at most --request-timeout")
        ->capture_default_str();
    cmd->add_option("--max-queue-ms", so.max_queue_ms,
                    "longest wait of a measure request for a network slot; one that would wait longer gets 503 "
                    "overloaded with Retry-After at once (0 = no limit)")
        ->capture_default_str();
    cmd->add_option("--max-store-mb", a->max_store_mb,
                    "image store quota in MB (0 = none): the oldest images no exam references go first, then 507")
        ->capture_default_str();
    cmd->add_option("--retain-images", so.retain_image_days,
                    "days to keep images that no exam or DICOM instance references (removed at start, then hourly); "
                    "0 = forever")
        ->capture_default_str()
        ->check(CLI::Range(0, 36500));
    cmd->add_option("--dicom-port", so.dicom_port,
                    "also run a DICOM C-STORE node on this port: received ultrasound images are measured and listed "
                    "(GET /v1/dicom/instances); 0 = off")
        ->capture_default_str();
    cmd->add_flag("--dicomweb", so.dicomweb,
                  "take DICOMweb STOW-RS uploads (POST /dicomweb/studies) without a DICOM port (with --dicom-port they are "
                  "taken anyway)");
    cmd->add_option("--dicom-aet", so.dicom_aet, "the node's AE title")->capture_default_str();
    cmd->add_option("--dicom-forward", so.dicom_forward,
                    "send each result's DICOM SR and key image by C-STORE to AET@HOST:PORT (a PACS)");
    cmd->add_option("--trusted-proxy-header", so.trusted_proxy_header,
                    "sign-in by a trusted reverse proxy: the user named in this header (e.g. X-Forwarded-User), believed "
                    "only with the proxy's secret in X-Fetalhc-Proxy-Secret (see deploy/nginx/)");
    cmd->add_option("--trusted-proxy-secret", so.trusted_proxy_secret_file,
                    "file whose first line is the proxy's shared secret (at least 16 characters)");
    cmd->add_option("--dicom-user", so.dicom_user,
                    "who the DICOM node's received objects are audited as: a user of the store with the sonographer or "
                    "admin role (default: the built-in dicom-node, a sonographer)")
        ->capture_default_str();
    cmd->add_option("--dicomweb-forward", so.dicomweb_forward,
                    "or send them by DICOMweb STOW-RS to this DICOMweb root URL (http[s]://HOST[:PORT]/PATH, e.g. Orthanc's "
                    "http://pacs:8042/dicom-web)");
    cmd->add_option("--dicom-forward-attempts", so.dicom_forward_attempts,
                    "tries per SR before it is listed failed (waits 1, 2, 4 .. 60 s between tries)")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    cmd->add_option("--dicom-allow", a->dicom_allow,
                    "calling AE titles accepted, comma-separated (any host); default: any AE title from loopback peers only");
    cmd->add_option("--dicom-max-pending", so.dicom_max_pending,
                    "received instances waiting to be measured; past this a C-STORE is refused with A700 (out of resources)")
        ->capture_default_str()
        ->check(CLI::Range(1, 100000));
    cmd->add_option("--dicom-associations", so.dicom_max_associations, "DICOM associations served at once")
        ->capture_default_str()
        ->check(CLI::Range(1, 64));
    cmd->add_option("--dicom-idle-timeout", so.dicom_idle_timeout_s,
                    "seconds a DICOM peer may go without sending 1 KiB or being answered (a trickle does not reset it)")
        ->capture_default_str()
        ->check(CLI::Range(0.1, 3600.0));
    cmd->add_option("--dicom-association-timeout", so.dicom_association_timeout_s,
                    "seconds a whole DICOM association may last, from its connection")
        ->capture_default_str()
        ->check(CLI::Range(1.0, 86400.0));
    add_model_option(cmd, so.model_path);
    commands.push_back({cmd, [a] { return run_serve(*a); }});
}

}  // namespace fetalhc_cli
