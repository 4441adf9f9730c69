// The server wired together (fetalhc/server.h): the options checked, the token read, the store
// opened, the engine (engine.h) and its measure-and-store services (service.h) built, the HTTP
// transport (transport.h) bound with the routes (routes.h), and the DICOM node (dicom_node.h)
// beside it. start() and run() share one start-up (Impl::begin): the model load on a background
// thread, the DICOM node, and the transport's accept loop.
#include "fetalhc/server.h"

#include "dicom_node.h"
#include "engine.h"
#include "http_metrics.h"
#include "openapi.h"
#include "routes.h"
#include "transport.h"

#include "fetalhc/image_io.h"
#include "fetalhc/store.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <malloc.h>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

// malloc arenas: glibc's default (8 per core) lets each connection thread keep its own, and the
// freed memory of one arena serves no other; a few are enough for the slots that decode.
constexpr int kMallocArenas = 4;

// The first line of a secret's file (`option` names it in messages: --token-file, --trusted-proxy-secret).
Expected<std::string> read_token(const std::string& token_file, const std::string& option = "--token-file") {
    // A FIFO or a device would block or never end: a token file is a regular file.
    if (auto p = regular_file_problem(token_file, "a secret's file (" + option + ")", false); !p.empty()) return make_error(p);
    std::ifstream in(token_file);
    if (!in) return make_error("cannot read " + option + " '" + token_file + "'; check the path and its permissions");
    std::string line;
    std::getline(in, line);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t i = 0;
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    std::string token = line.substr(i);
    if (token.size() < 16)
        return make_error("the first line of " + option + " '" + token_file +
                          "' must hold a token of at least 16 characters (e.g. from `openssl rand -hex 32`)");
    return token;
}

Expected<bool> check_options(const ServerOptions& o) {
    if (o.port < 0 || o.port > 65535) return make_error("--port must be 0..65535 (0 picks a free port), got " + std::to_string(o.port));
    if (o.threads < 0) return make_error("--threads must be >= 0 (0 = one per CPU core)");
    if (!(o.max_queue_ms >= 0 && o.max_queue_ms <= 3600e3))
        return make_error("--max-queue-ms must be in 0..3600000 ms (0 = requests wait for a network slot as long as it takes)");
    if (o.max_upload_bytes == 0) return make_error("--max-upload-mb must be positive");
    if (o.retain_image_days < 0 || o.retain_image_days > 36500)
        return make_error("--retain-images must be 0 (keep images forever) or a number of days up to 36500");
    if (!(o.header_timeout_s > 0 && o.header_timeout_s <= 3600))
        return make_error("--header-timeout must be in (0, 3600] seconds: the time a request's line and headers may take to arrive");
    if (!(o.request_timeout_s > 0 && o.request_timeout_s <= 86400))
        return make_error("--request-timeout must be in (0, 86400] seconds: the time a request may take to arrive whole");
    if (o.max_connections_per_client < 0)
        return make_error("--max-connections-per-client must be >= 0 (0 = no cap; behind a reverse proxy every client "
                          "has the proxy's address)");
    std::error_code ec;
    // Any file but a folder: a named pipe is fine too (read when the model loads).
    if (o.model_path.empty() || !fs::exists(o.model_path, ec) || fs::is_directory(o.model_path, ec))
        return make_error("model file '" + o.model_path + "' not found; pass --model PATH (e.g. models/fetalhc_unet.pt)");
    if (o.token_file.empty() && !is_loopback_host(o.host))
        return make_error("refusing to listen on '" + o.host + "' without --token-file: off the loopback interface every POST "
                          "must carry a bearer token (or use --host 127.0.0.1)");
    for (const auto& origin : o.allow_origins)
        if (origin.rfind("http://", 0) != 0 && origin.rfind("https://", 0) != 0)
            return make_error("--allow-origin '" + origin + "' must be an origin such as https://host or http://host:port");
    return true;
}

Expected<std::unique_ptr<Store>> open_store(const ServerOptions& o) {
    auto store = Store::open(o.db_path);
    if (!store) return store.error_value();
    (*store)->set_quota_bytes(o.max_store_bytes);
    (*store)->set_image_retention(o.retain_image_days);
    return std::move(*store);
}

server::DicomNodeOptions dicom_node_options(const ServerOptions& o) {
    server::DicomNodeOptions d;
    d.port = o.dicom_port;
    d.listen = o.dicom_port != 0;  // --dicomweb alone: STOW-RS only
    d.host = o.host;
    d.aet = o.dicom_aet;
    d.forward = o.dicom_forward;
    d.dicomweb_forward = o.dicomweb_forward;
    d.user = o.dicom_user;
    d.forward_attempts = o.dicom_forward_attempts;
    d.allow = o.dicom_allow;
    d.max_object_bytes = o.max_upload_bytes;
    d.max_pending = o.dicom_max_pending;
    d.max_associations = o.dicom_max_associations;
    d.idle_timeout_s = o.dicom_idle_timeout_s;
    d.association_timeout_s = o.dicom_association_timeout_s;
    return d;
}

}  // namespace

struct Server::Impl {
    ServerOptions opt;
    std::unique_ptr<Store> store;
    std::unique_ptr<server::Engine> engine;
    server::HttpMetrics metrics;
    std::unique_ptr<server::Services> services;
    std::unique_ptr<server::DicomNode> dicom;  // the C-STORE node, when dicom_port (or dicomweb) is set
    std::unique_ptr<server::HttpTransport> http;
    std::thread loader, listener;
    std::mutex stop_mu;  // start/run/stop
    bool started = false;

    // The start-up of start() and run(), once: the model loads on a background thread, the DICOM
    // node starts, and with `background` the transport listens on a thread of its own. False when
    // the server was started already.
    bool begin(bool background) {
        std::lock_guard<std::mutex> lock(stop_mu);
        if (started) return false;
        started = true;
        if (background) listener = std::thread([this] { http->listen(); });
        loader = std::thread([this] { engine->load(opt.model_path, opt.torch_threads, opt.mirror_average, opt.head_check, opt.int8); });
        if (dicom) dicom->start();
        return true;
    }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(); }

Expected<std::unique_ptr<Server>> Server::create(const ServerOptions& o) {
    if (auto ok = check_options(o); !ok) return ok.error_value();
    mallopt(M_ARENA_MAX, kMallocArenas);
    auto impl = std::make_unique<Impl>();
    impl->opt = o;
    std::string token;
    if (!o.token_file.empty()) {
        auto t = read_token(o.token_file);
        if (!t) return t.error_value();
        token = *t;
    }
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    impl->engine = std::make_unique<server::Engine>(o.threads > 0 ? o.threads : cores, o.max_queue_ms);
    auto store = open_store(o);
    if (!store) return store.error_value();
    impl->store = std::move(*store);
    impl->services = std::make_unique<server::Services>(
        server::Services{*impl->store, *impl->engine, impl->metrics, server::openapi_json(FETALHC_VERSION, o.max_upload_bytes)});
    std::string proxy_secret;
    if (o.trusted_proxy_header.empty() != o.trusted_proxy_secret_file.empty())
        return make_error("give --trusted-proxy-header and --trusted-proxy-secret together (the header alone would let anyone "
                          "name themselves)");
    if (!o.trusted_proxy_secret_file.empty()) {
        auto p = read_token(o.trusted_proxy_secret_file, "--trusted-proxy-secret");
        if (!p) return p.error_value();
        proxy_secret = *p;
    }
    auto http = server::HttpTransport::bind(o, token, proxy_secret, *impl->services);
    if (!http) return http.error_value();
    impl->http = std::move(*http);
    if (o.dicom_port != 0 || o.dicomweb) {
        auto node = server::DicomNode::create(dicom_node_options(o), *impl->engine, *impl->store);
        if (!node) return node.error_value();
        impl->dicom = std::move(*node);
        impl->services->dicom = impl->dicom.get();
    }
    return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->http->port(); }

std::string Server::url() const {
    const std::string& h = impl_->opt.host;
    return "http://" + (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + std::to_string(port()) + "/";
}

void Server::start() { impl_->begin(/*background=*/true); }

void Server::run() {
    if (impl_->begin(/*background=*/false)) impl_->http->listen();
}

void Server::stop() {
    std::lock_guard<std::mutex> lock(impl_->stop_mu);
    impl_->http->stop(/*listen_begun=*/impl_->started);
    if (impl_->dicom) impl_->dicom->stop();
    if (impl_->listener.joinable()) impl_->listener.join();
    if (impl_->loader.joinable()) impl_->loader.join();
}

bool Server::ready() const { return impl_->engine->ready(); }

bool Server::wait_ready(double timeout_s) const { return impl_->engine->wait_ready(timeout_s); }

}  // namespace fetalhc
