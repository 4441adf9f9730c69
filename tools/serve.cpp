// `fetalhc serve`: the HTTP service (JSON API, web page, per-pregnancy history) until Ctrl-C.
#include "cli.h"

#include "fetalhc/server.h"

#include <csignal>
#include <cstdio>
#include <pthread.h>
#include <thread>

namespace fetalhc_cli {
namespace {

struct ServeArgs {
    fetalhc::ServerOptions server;
    double max_upload_mb = 20;
};

int run_serve(ServeArgs a) {
    if (!(a.max_upload_mb > 0 && a.max_upload_mb <= 1024)) {
        error("--max-upload-mb must be in (0, 1024]");
        return kExitUsage;
    }
    if (!bound_thread_count(a.server.threads, "--threads")) return kExitUsage;
    if (!check_model_file(a.server.model_path)) return kExitUsage;
    a.server.max_upload_bytes = size_t(a.max_upload_mb * (1 << 20));
    // Ctrl-C / SIGTERM are taken by one waiting thread (blocked everywhere else, so the server's
    // threads inherit the mask): it stops the server, which finishes the requests in flight.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    auto server = fetalhc::Server::create(a.server);
    if (!server) {
        error(server.error());
        return kExitUsage;
    }
    fetalhc::Server* s = server->get();
    std::thread([s, stop_signals] {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        s->stop();
    }).detach();
    std::printf("fetalhc: open %s  (the model loads in the background; GET /health says when ready)\n", s->url().c_str());
    std::fflush(stdout);
    s->run();
    return kExitOk;
}

}  // namespace

void add_serve_command(CLI::App& app, Commands& commands) {
    auto a = std::make_shared<ServeArgs>();
    fetalhc::ServerOptions& so = a->server;
    auto* cmd = app.add_subcommand("serve", "HTTP service: JSON API (see /openapi.json), web page, per-pregnancy history");
    cmd->add_option("--host", so.host, "address to listen on; off loopback every POST needs the bearer token")->capture_default_str();
    cmd->add_option("--port", so.port, "TCP port (0 = any free port)")->capture_default_str();
    cmd->add_option("--db", so.db_path, "SQLite database (created if missing); images go to <db>.images/")->capture_default_str();
    cmd->add_option("--threads", so.threads, "requests running the network at once (0 = CPU cores; at most the core count)")
        ->capture_default_str();
    cmd->add_option("--token-file", so.token_file, "file whose first line is the bearer token (required off loopback)");
    cmd->add_option("--max-upload-mb", a->max_upload_mb, "request body cap in MB; larger uploads get 413")->capture_default_str();
    add_model_option(cmd, so.model_path);
    commands.push_back({cmd, [a] { return run_serve(*a); }});
}

}  // namespace fetalhc_cli
