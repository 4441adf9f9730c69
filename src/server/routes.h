// The HTTP API as plain functions: the route table and the one entry point, handle(), that turns
// a request value into a response value. No sockets: the transport (transport.cpp) calls handle()
// for every request, tests call it directly.
//
//   Engine engine(2); auto store = Store::open(db); HttpMetrics metrics;
//   Services s{**store, engine, metrics, openapi_json("0.1.0", 20u << 20)};
//   HttpRequest req; req.path = "/v1/growth-curve";
//   HttpResponse res = handle(req, s);   // 200, application/json
//
// handle() never throws: validation failures (ApiError) become their error response, any other
// exception a 500 "internal" response (logged). Unknown paths get 404 not_found. The bearer token
// is the transport's business (route_needs_token says which routes it guards).
// Thread safety: handle() may be called from many threads at once (Services' members are).
#pragma once

#include "http_metrics.h"
#include "http_types.h"
#include "service.h"

#include "fetalhc/ellipse.h"
#include "fetalhc/store.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc::server {

class DicomNode;  // dicom_node.h

// What the handlers work with (owned by the server, or by a test).
struct Services {
    Store& store;
    Engine& engine;
    HttpMetrics& metrics;     // fed by the transport, read by GET /metrics
    std::string openapi;      // the document served at /openapi.json
    DicomNode* dicom = nullptr;  // the DICOM node (--dicom-port or --dicomweb): STOW-RS stores through it; null: off
};

using Handler = HttpResponse (*)(const HttpRequest&, Services&);

struct Route {
    std::string method;   // GET or POST
    std::string pattern;  // e.g. "/v1/pregnancies/{id}"; "{name*}" as the last segment takes the rest of the path
    Handler handler;
};

// Every route, in matching order.
const std::vector<Route>& route_table();

struct RouteMatch {
    const Route* route;
    std::map<std::string, std::string> params;  // the {name} segments of the pattern
};
// The route for a method (HEAD = GET) and a path, with its path parameters.
std::optional<RouteMatch> match_route(const std::string& method, const std::string& path);

// A server with a token or users requires one on every route except the page (/ and /static/*),
// /health and /openapi.json (no patient data in them): writes, and reads of exams, images, CSV,
// metrics, DICOM. The role each route needs: auth.h.
bool route_needs_token(const Route& r);

// Browser-origin protection, checked before routing and before the body is read (the transport
// calls it; tests call it directly). Refuses with 403 `forbidden`:
// - a Host header that names none of `hosts` (when check_host: a loopback server, DNS rebinding);
// - an Origin header (when present) that is none of `origins`;
// - a POST a cross-site page could send without a CORS preflight: it needs Content-Type
//   application/json or multipart/related (STOW-RS), or (multipart/form-data) an
//   `X-Fetalhc-Request` or `Authorization` header.
struct OriginPolicy {
    bool check_host = true;
    std::vector<std::string> hosts;    // lower case, "name" or "name:port" as a Host header carries it
    std::vector<std::string> origins;  // lower case, "scheme://host[:port]" without a trailing slash
};
// The policy of a server bound to `host`:`port` with extra allowed origins (`--allow-origin`).
OriginPolicy origin_policy(const std::string& host, int port, const std::vector<std::string>& allow_origins, bool loopback);
std::optional<HttpResponse> check_request_origin(const std::string& method, const std::map<std::string, std::string>& headers_lower,
                                                 const OriginPolicy& policy);

// The audit entry of a request to `route` (auth.h route_is_audited): who (user "anonymous" on an
// open server), the action ("METHOD pattern"), the client, the request id and the ids in its path.
AuditEntry audit_entry_for(const HttpRequest& req, const Route& route);

// Routes `req` (its path_params are set from the pattern) and runs the handler. A route that
// touches patient data (route_is_audited) appends its audit entry once the answer is built, before
// it is sent; when that append fails the answer is a 500 (the entry is never skipped).
HttpResponse handle(HttpRequest req, Services& services);

// ---- pieces shared by the route files -----------------------------------------------------------
std::vector<Route> site_routes();     // routes_site.cpp: page, static files, openapi, health, metrics, growth curve
std::vector<Route> measure_routes();  // routes_measure.cpp: measure and the stages
std::vector<Route> exam_routes();     // routes_exams.cpp: exams, pregnancies, images
std::vector<Route> dicom_routes();    // routes_dicom.cpp: what the DICOM node received, and STOW-RS into it

// One part of a multipart/related body (DICOMweb STOW-RS): its Content-Type and its bytes.
struct RelatedPart {
    std::string content_type;
    std::string body;
};
// The parts of a multipart/related body whose Content-Type header is `content_type` (its boundary
// parameter, quoted or not); at most `max_parts`. Throws ApiError (bad_request) naming what is
// wrong: no boundary, a missing delimiter, a part without its blank line, too many parts.
std::vector<RelatedPart> split_multipart_related(const std::string& content_type, const std::string& body, size_t max_parts);

nlohmann::json ellipse_json(const Ellipse& e);

}  // namespace fetalhc::server
