#include "routes.h"

#include "errors.h"

#include "fetalhc/measure.h"

#include <spdlog/spdlog.h>

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

bool route_needs_token(const Route& r) { return r.method != "GET" || r.pattern.rfind("/v1/dicom/", 0) == 0; }

HttpResponse handle(HttpRequest req, Services& services) {
    auto match = match_route(req.method, req.path);
    if (!match)
        return error_response({ErrorCode::NotFound, "no endpoint " + req.method + " " + req.path + "; the API is described at /openapi.json"});
    req.path_params = std::move(match->params);
    try {
        return match->route->handler(req, services);
    } catch (const ApiError& e) {
        return error_response(e);
    } catch (const std::exception& e) {
        spdlog::error("{} {} handler failed: {}", req.method, match->route->pattern, e.what());
        return error_response({ErrorCode::Internal, std::string("internal error: ") + e.what() + "; please report it with the server log"});
    }
}

nlohmann::json ellipse_json(const Ellipse& e) {
    return {{"center_x", e.cx}, {"center_y", e.cy}, {"semi_axis_a", e.a}, {"semi_axis_b", e.b}, {"angle_rad", e.angle}};
}

Measurement ellipse_numbers(const Ellipse& e, double pixel_size_mm, std::optional<double> ga_weeks) {
    return measurement_from_ellipse(e, pixel_size_mm, ga_weeks);  // decides the quality too
}

}  // namespace fetalhc::server
