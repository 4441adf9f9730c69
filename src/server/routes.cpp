#include "routes.h"

#include "auth.h"
#include "errors.h"

#include "fetalhc/measure.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>

namespace fetalhc::server {
namespace {

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    size_t start = 1;  // paths start with '/'
    while (true) {
        const size_t slash = path.find('/', start);
        parts.push_back(path.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
        if (slash == std::string::npos) return parts;
        start = slash + 1;
    }
}

// Matches one pattern segment by segment: literals exactly, "{name}" one non-empty segment,
// "{name*}" (last) the non-empty rest of the path.
bool match_pattern(const std::string& pattern, const std::string& path, std::map<std::string, std::string>& params) {
    if (path.empty() || path[0] != '/') return false;
    if (pattern == "/") return path == "/";
    const std::vector<std::string> want = split_path(pattern);
    const std::vector<std::string> got = split_path(path);
    for (size_t i = 0; i < want.size(); ++i) {
        const std::string& w = want[i];
        const bool param = w.size() > 2 && w.front() == '{' && w.back() == '}';
        if (param && w[w.size() - 2] == '*') {
            if (i >= got.size()) return false;
            std::string rest = got[i];
            for (size_t k = i + 1; k < got.size(); ++k) rest += "/" + got[k];
            if (rest.empty()) return false;
            params[w.substr(1, w.size() - 3)] = rest;
            return true;
        }
        if (i >= got.size()) return false;
        if (param) {
            if (got[i].empty()) return false;
            params[w.substr(1, w.size() - 2)] = got[i];
        } else if (w != got[i]) {
            return false;
        }
    }
    return want.size() == got.size();
}

}  // namespace

const std::vector<Route>& route_table() {
    static const std::vector<Route> table = [] {
        std::vector<Route> all;
        for (auto part : {site_routes(), measure_routes(), exam_routes(), dicom_routes()}) all.insert(all.end(), part.begin(), part.end());
        return all;
    }();
    return table;
}

std::optional<RouteMatch> match_route(const std::string& method, const std::string& path) {
    const std::string m = method == "HEAD" ? "GET" : method;
    for (const Route& r : route_table()) {
        if (r.method != m) continue;
        std::map<std::string, std::string> params;
        if (match_pattern(r.pattern, path, params)) return RouteMatch{&r, std::move(params)};
    }
    return std::nullopt;
}

bool route_needs_token(const Route& r) { return route_role(r).has_value(); }

namespace {

std::string lower_copy(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return s;
}

std::string trim_slashes(std::string s) {
    while (!s.empty() && s.back() == '/') s.pop_back();
    return s;
}

const std::string& header_of(const std::map<std::string, std::string>& h, const std::string& name) {
    static const std::string none;
    auto it = h.find(name);
    return it == h.end() ? none : it->second;
}

}  // namespace

OriginPolicy origin_policy(const std::string& host, int port, const std::vector<std::string>& allow_origins, bool loopback) {
    OriginPolicy p;
    p.check_host = loopback;
    std::vector<std::string> names;
    const std::string h = lower_copy(host);
    names.push_back(h.find(':') != std::string::npos && h.front() != '[' ? "[" + h + "]" : h);
    if (loopback)
        for (const char* n : {"localhost", "127.0.0.1", "[::1]"}) names.push_back(n);
    const std::string ps = std::to_string(port);
    for (const auto& n : names) {
        p.hosts.push_back(n + ":" + ps);
        if (port == 80) p.hosts.push_back(n);
        p.origins.push_back("http://" + n + ":" + ps);
        if (port == 80) p.origins.push_back("http://" + n);
    }
    for (const auto& o : allow_origins) {
        const std::string lo = trim_slashes(lower_copy(o));
        p.origins.push_back(lo);
        const size_t scheme = lo.find("://");
        if (scheme != std::string::npos) p.hosts.push_back(lo.substr(scheme + 3));  // a proxy in front forwards its Host
    }
    return p;
}

std::optional<HttpResponse> check_request_origin(const std::string& method, const std::map<std::string, std::string>& headers,
                                                 const OriginPolicy& policy) {
    auto refuse = [](const std::string& why) { return error_response({ErrorCode::Forbidden, why}); };
    if (policy.check_host) {
        const std::string host = lower_copy(header_of(headers, "host"));
        if (std::find(policy.hosts.begin(), policy.hosts.end(), host) == policy.hosts.end())
            return refuse("the Host header '" + host.substr(0, 100) + "' is not this server's address; open the page at the URL "
                          "`fetalhc serve` printed (a loopback server answers only to its own names, against DNS rebinding)");
    }
    if (auto it = headers.find("origin"); it != headers.end()) {
        const std::string origin = trim_slashes(lower_copy(it->second));
        // Same origin: the page was loaded from the Host this request names (checked above when
        // check_host; off loopback the token guards the API).
        const std::string host = lower_copy(header_of(headers, "host"));
        const bool same = !host.empty() && (origin == "http://" + host || origin == "https://" + host);
        if (!same && std::find(policy.origins.begin(), policy.origins.end(), origin) == policy.origins.end())
            return refuse("requests from the web origin '" + origin.substr(0, 100) + "' are not allowed; start serve with "
                          "--allow-origin " + origin.substr(0, 100) + " to allow that site");
    }
    if (method == "POST") {
        const std::string type = lower_copy(header_of(headers, "content-type"));
        // JSON and DICOMweb's multipart/related are not types a page may send across sites without
        // a CORS preflight (which this server does not grant); multipart/form-data is.
        const bool preflighted = type.rfind("application/json", 0) == 0 || type.rfind("multipart/related", 0) == 0;
        const bool marked = headers.count("x-fetalhc-request") || headers.count("authorization");
        if (!preflighted && !marked)
            return refuse("a POST must have Content-Type: application/json or multipart/related, or (multipart/form-data) the header 'X-Fetalhc-Request: 1' "
                          "or an Authorization header: requests a page on another site could send are refused");
    }
    return std::nullopt;
}

AuditEntry audit_entry_for(const HttpRequest& req, const Route& route) {
    AuditEntry e;
    e.user = req.user.empty() ? "anonymous" : req.user;
    e.role = req.role.empty() ? "admin" : req.role;
    e.action = route.method + " " + route.pattern;
    e.client = req.client;
    e.request_id = req.request_id;
    auto param = [&](const char* name) {
        auto it = req.path_params.find(name);
        return it == req.path_params.end() ? std::string() : it->second.substr(0, 128);
    };
    e.pregnancy_id = param("id");
    e.image_sha256 = param("sha256");
    return e;
}

namespace {

// An id for a failure whose details go to the log only.
std::string new_error_id() {
    static std::atomic<unsigned long long> next_id{1};
    return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) +
           "-" + std::to_string(next_id++);
}

HttpResponse run_handler(const HttpRequest& req, const Route& route, Services& services) {
    try {
        return route.handler(req, services);
    } catch (const ApiError& e) {
        return error_response(e);
    } catch (const std::exception& e) {
        // The message may name a path or a database detail: it goes to the log only, under an id.
        const std::string id = new_error_id();
        spdlog::error("{} {} handler failed (error id {}): {}", req.method, route.pattern, id, e.what());
        return error_response({ErrorCode::Internal, "internal error (id " + id + "); the server log has the details"});
    }
}

}  // namespace

HttpResponse handle(HttpRequest req, Services& services) {
    auto match = match_route(req.method, req.path);
    if (!match)
        return error_response({ErrorCode::NotFound, "no endpoint " + req.method + " " + req.path + "; the API is described at /openapi.json"});
    req.path_params = std::move(match->params);
    HttpResponse res = run_handler(req, *match->route, services);
    if (!route_is_audited(*match->route) || res.audit.written) return res;
    AuditEntry e = audit_entry_for(req, *match->route);
    const HttpResponse::Audit& touched = res.audit;
    if (!touched.pregnancy_id.empty()) e.pregnancy_id = touched.pregnancy_id;
    if (!touched.image_sha256.empty()) e.image_sha256 = touched.image_sha256;
    if (!touched.sop_instance_uid.empty()) e.sop_instance_uid = touched.sop_instance_uid;
    e.exam_id = touched.exam_id;
    e.outcome = res.status;
    if (auto a = services.store.append_audit(e); !a) {
        const std::string id = new_error_id();
        spdlog::error("{} {}: the audit entry could not be written (error id {}): {}", req.method, match->route->pattern, id, a.error());
        return error_response({ErrorCode::StorageFailed, "the audit trail could not be written, so the answer is withheld (error id " +
                                                             id + "); the server log has the details"});
    }
    return res;
}

nlohmann::json ellipse_json(const Ellipse& e) {
    return {{"center_x", e.cx}, {"center_y", e.cy}, {"semi_axis_a", e.a}, {"semi_axis_b", e.b}, {"angle_rad", e.angle}};
}

}  // namespace fetalhc::server
