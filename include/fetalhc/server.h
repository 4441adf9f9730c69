// fetalhc/server.h - the HTTP service behind `fetalhc serve`: JSON API, web page, history (SQLite or PostgreSQL).
//
//   fetalhc::ServerOptions o; o.port = 0; o.db_path = "/tmp/x.db"; o.model_path = "models/fetalhc_unet.pt";
//   auto s = fetalhc::Server::create(o);       // opens the DB, reads the token, binds the port
//   if (!s) { std::cerr << s.error(); return; }
//   (*s)->start();                              // serves on a background thread, loads the model
//   std::cout << (*s)->url();                   // e.g. http://127.0.0.1:41234/
//   ...; (*s)->stop();
//
// Endpoints (the OpenAPI 3 document is served at /openapi.json; README "HTTP service"):
//   GET  /  /static/<file>  /openapi.json  /health  /metrics  /v1/growth-curve
//   POST /v1/measure /v1/segment /v1/fit-ellipse /v1/perimeter /v1/exams
//   GET  /v1/images/<sha256>  /v1/pregnancies/<id>  /v1/pregnancies/<id>/export.csv  /v1/dicom/instances
// With dicom_port set, a DICOM C-STORE node runs beside it (src/server/dicom_node.h): what it
// receives is measured like an HTTP upload and listed by GET /v1/dicom/instances.
// Errors are JSON {"error": {"code": "...", "message": "..."}} with 400, 401, 404, 413, 422, 500 or
// 503; the stable codes and their meaning are listed in the document's Error schema.
// Layout (src/server/): server.cpp is this class (checks the options, reads the token, wires the
// store, engine, transport and DICOM node together, starts and stops them); transport.cpp is the
// HTTP transport and the only file that sees cpp-httplib (sockets, threads, framing, body limit,
// origin, token, request log); routes*.cpp are the handlers, plain functions from a request value
// to a response value; queue.h is the admission queue (network slots), engine.h the model and its
// slots, service.h the measure-and-store work without HTTP that the DICOM node (dicom_node.h)
// reuses.
// Security: when a token file is given (required when the host is not a loopback address) every
// route but /, /static/*, /health and /openapi.json needs "Authorization: Bearer <first line of the
// token file>" (GETs may carry it as the cookie fetalhc_token instead). Before routing and before
// any body is read: a loopback server answers only Host headers naming itself (DNS rebinding),
// a foreign Origin is refused, a POST must be JSON or carry X-Fetalhc-Request / Authorization
// (no cross-site "simple" writes), chunked bodies get 411 and a Content-Length over the limit 413. Logs name the method, the
// route pattern, the status and the time; never a pregnancy id, a hash or image bytes.
// Concurrency: HTTP connections are served by a thread pool; at most `threads` requests run the
// network at once (the others wait for a slot in one first-come-first-served queue: POST
// /v1/measure and /v1/segment at most max_queue_ms, the DICOM node's instances as long as it
// takes). The model is loaded once and shared read-only.
#pragma once

#include "fetalhc/expected.h"

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace fetalhc {

struct ServerOptions {
    std::string host = "127.0.0.1";
    int port = 8080;                       // 0 = any free port (see Server::port)
    // An SQLite file (images go to <db_path>.images/) or a postgresql:// URI (images in the
    // database; several servers may share it). See store.h.
    std::string db_path = "fetalhc.db";
    std::string model_path;
    int threads = 0;                       // requests running the network at once; 0 = CPU cores
    int torch_threads = 0;                 // LibTorch threads per request; 0 = cores / threads (>= 1)
    bool mirror_average = false;           // SegmenterOptions::mirror_average (serve --mirror)
    bool int8 = false;                     // SegmenterOptions::int8 (serve --int8)
    // The head check (fetalhc/head_check.h; serve --head-check): "" = fetalhc_head_check.pt beside
    // model_path when present, "none" = without, else that file (the model then fails to load
    // when the check cannot be loaded).
    std::string head_check;
    int connection_threads = 64;           // HTTP connections served at once (keep-alive clients)
    // Slow clients: a request (request line, headers and body) must arrive whole within
    // request_timeout_s of its first byte, or its connection is closed unanswered (a request that
    // arrived is always answered whole, however long it runs). At most max_connections_per_client
    // connections per client address are served at once; further ones are closed at once (0 = no
    // cap). Behind a reverse proxy every client has the proxy's address: raise the cap there.
    double request_timeout_s = 60;
    int max_connections_per_client = 16;
    // A request's line and headers must arrive within this; its body then at 64 KB/s at least (the
    // whole request never past request_timeout_s).
    double header_timeout_s = 10;
    // Overload: a POST /v1/measure or /v1/segment request (a DICOM upload too) that would wait
    // longer than this for a network slot (estimated from the queue ahead of it and a running
    // average of the time a request holds a slot), or that does, gets 503 `overloaded` with
    // Retry-After at once instead. 0 = wait as long as it takes.
    double max_queue_ms = 5000;
    std::string token_file;                // first line is the bearer token
    // A trusted reverse proxy's sign-in: the user named in this header (e.g. X-Forwarded-User) is
    // believed on requests carrying the first line of trusted_proxy_secret_file in
    // X-Fetalhc-Proxy-Secret. Both or neither.
    std::string trusted_proxy_header, trusted_proxy_secret_file;
    size_t max_upload_bytes = 20u << 20;   // larger request bodies get 413
    // Quota of the image folder: the oldest images no exam references are removed to make room;
    // when that is not enough, 507 store_full. 0 = none.
    unsigned long long max_store_bytes = 2048ull << 20;
    // Images no exam or DICOM instance references are removed once older than this many days,
    // at start and then hourly. 0 = kept forever.
    int retain_image_days = 0;
    bool log_requests = true;              // one spdlog line per request
    // DICOM node (C-STORE SCP) beside the HTTP server: 0 = off. Received objects larger than
    // max_upload_bytes abort their association.
    int dicom_port = 0;
    // The DICOMweb receiver (STOW-RS, POST /dicomweb/studies) without a DIMSE port: the node runs
    // without listening and takes uploads over HTTP only. With dicom_port it is there anyway.
    bool dicomweb = false;
    std::string dicom_aet = "FETALHC";     // our AE title
    std::string dicom_forward;             // "AET@HOST:PORT": each SR (and key image) is sent there; empty = kept only
    std::string dicomweb_forward;          // or a DICOMweb root ("http://host:8042/dicom-web"): STOW-RS there
    std::string dicom_user = "dicom-node"; // who the node's received objects are audited as (a sonographer or admin user)
    int dicom_forward_attempts = 8;        // tries per SR before it is listed "failed" (waits 1, 2, 4 .. 60 s between)
    std::vector<std::string> dicom_allow;  // calling AE titles accepted; empty = any, loopback peers only
    int dicom_max_pending = 64;            // instances waiting to be measured; more are refused with A700
    int dicom_max_associations = 4;        // associations served at once
    double dicom_idle_timeout_s = 20;      // a peer must send 1 KiB (or be answered) this often
    double dicom_association_timeout_s = 300;  // a whole association, from its connection
    // Web origins (e.g. "https://pacs.example.org") whose pages may call the API, beside the
    // server's own http://host:port. A request with any other Origin header gets 403.
    std::vector<std::string> allow_origins;
};

// Whether `host` (a name or an address) resolves to loopback addresses only (127.0.0.0/8, ::1);
// a name that does not resolve is not loopback.
bool is_loopback_host(const std::string& host);

// C-ECHO (DICOM verification) to `target`, "AET@HOST:PORT" as --dicom-forward takes it, calling
// as `our_aet`: the round trip in ms, or an error saying what failed (the target's form, the
// connection, the association or the answer). Tests a PACS or modality link before serving.
Expected<double> dicom_echo(const std::string& target, const std::string& our_aet = "FETALHC", double timeout_s = 10);

class Server {
public:
    // Validates the options, opens the store, reads the token and binds the port. The model is
    // not loaded yet: start() or run() load it on a background thread (/health answers 503 until
    // it is ready).
    static Expected<std::unique_ptr<Server>> create(const ServerOptions& options);
    ~Server();  // stops and joins
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    int port() const;
    std::string url() const;   // http://host:port/
    void start();              // serve on a background thread
    void run();                // serve on this thread until stop()
    void stop();
    bool ready() const;        // the model is loaded
    // Blocks until the model is loaded or failed to load (or the timeout passes); true when ready.
    bool wait_ready(double timeout_s) const;

    struct Impl;

private:
    explicit Server(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace fetalhc
