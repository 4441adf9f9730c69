// Users, roles and tokens of the HTTP API (auth.h).
#include "auth.h"

#include "errors.h"

#include <algorithm>
#include <cctype>
#include <map>

namespace fetalhc::server {
namespace {

// Each route's least role, by "METHOD pattern". Reads of patient data: viewer; measuring, saving
// and exporting: sonographer; nullopt: open.
const std::map<std::string, std::optional<Role>>& rules() {
    static const std::map<std::string, std::optional<Role>> table = {
        {"GET /", std::nullopt},
        {"GET /static/{file*}", std::nullopt},
        {"GET /openapi.json", std::nullopt},
        {"GET /health", std::nullopt},
        {"GET /metrics", Role::Viewer},
        {"GET /v1/growth-curve", Role::Viewer},
        {"GET /v1/me", Role::Viewer},
        {"POST /v1/measure", Role::Sonographer},
        {"POST /v1/segment", Role::Sonographer},
        {"POST /v1/fit-ellipse", Role::Sonographer},
        {"POST /v1/perimeter", Role::Sonographer},
        {"POST /v1/head-check", Role::Sonographer},
        {"POST /v1/exams", Role::Sonographer},
        {"GET /v1/images/{sha256}", Role::Viewer},
        {"GET /v1/images/{sha256}/preview.png", Role::Viewer},
        {"GET /v1/pregnancies/{id}", Role::Viewer},
        {"GET /v1/pregnancies/{id}/export.csv", Role::Sonographer},
        {"GET /v1/dicom/instances", Role::Viewer},
        {"GET /v1/audit", Role::Admin},
        {"POST /dicomweb/studies", Role::Sonographer},
        {"POST /dicomweb/studies/{study}", Role::Sonographer},
    };
    return table;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return s;
}

HttpResponse unauthorized(const std::string& message) {
    HttpResponse r = error_response({ErrorCode::Unauthorized, message});
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
}

}  // namespace

bool route_has_rule(const Route& r) { return rules().count(r.method + " " + r.pattern) > 0; }

bool route_is_audited(const Route& r) {
    if (!route_role(r)) return false;
    return !(r.method == "GET" && (r.pattern == "/metrics" || r.pattern == "/v1/growth-curve" || r.pattern == "/v1/me"));
}

std::optional<Role> route_role(const Route& r) {
    auto it = rules().find(r.method + " " + r.pattern);
    return it == rules().end() ? std::optional<Role>(Role::Admin) : it->second;
}

bool same_secret(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(1, b.size())];
    return diff == 0;
}

std::string presented_token(const std::string& method, const std::string& auth, const std::string& cookies) {
    // The scheme is case-insensitive (RFC 9110 11.1); one or more spaces before the token.
    const size_t space = auth.find(' ');
    if (space != std::string::npos && lower(auth.substr(0, space)) == "bearer") {
        const size_t at = auth.find_first_not_of(' ', space);
        return at == std::string::npos ? std::string() : auth.substr(at);
    }
    if (!auth.empty() || !(method == "GET" || method == "HEAD")) return "";
    // Reads may carry the token as a cookie (images and CSV links of the page); writes may not.
    const std::string key = "fetalhc_token=";
    for (size_t at = 0; (at = cookies.find(key, at)) != std::string::npos; at += key.size())
        if (at == 0 || cookies[at - 1] == ' ' || cookies[at - 1] == ';') {
            const size_t start = at + key.size(), end = cookies.find(';', start);
            return cookies.substr(start, end == std::string::npos ? std::string::npos : end - start);
        }
    return "";
}

Authorization authorize_request(const std::string& method, const std::string& path, const std::string& token, Store& store,
                                const std::string& service_token) {
    return authorize_request(method, path, Credentials{token, "", ""}, store, service_token);
}

Authorization authorize_request(const std::string& method, const std::string& path, const Credentials& presented, Store& store,
                                const std::string& service_token, const TrustedProxy& proxy) {
    const std::string& token = presented.token;
    auto m = match_route(method, path);
    if (!m) return {};
    const std::optional<Role> needs = route_role(*m->route);
    if (!needs) return {};
    auto has_users = store.has_users();
    if (!has_users) return {std::nullopt, error_response({ErrorCode::StorageFailed, "cannot read the users: " + has_users.error()})};
    // The proxy's user, on requests that carry its secret (a user header without it is ignored).
    const bool from_proxy = !proxy.user_header.empty() && !proxy.secret.empty() && !presented.proxy_secret.empty() &&
                            same_secret(presented.proxy_secret, proxy.secret) && !presented.proxy_user.empty();
    if (!from_proxy && service_token.empty() && !*has_users) return {Identity{}, std::nullopt};  // an open server, as before users
    const std::string how = *has_users ? "a user's token (`fetalhc user add NAME --role ROLE`)" : "the first line of the server's --token-file";
    Identity who;
    if (from_proxy) {
        auto u = store.user(presented.proxy_user);
        if (!u) return {std::nullopt, error_response({ErrorCode::StorageFailed, "cannot read the users: " + u.error()})};
        if (!*u || (*u)->revoked_at)
            return {std::nullopt, unauthorized("the signed-in user '" + presented.proxy_user.substr(0, 64) +
                                               "' (from the trusted proxy) is no user of this server, or was revoked: add it "
                                               "with `fetalhc user add`")};
        who = {(*u)->name, (*u)->role};
    } else if (token.empty()) {
        return {std::nullopt, unauthorized("this server requires 'Authorization: Bearer <token>' on every API request: " + how)};
    } else if (!service_token.empty() && same_secret(token, service_token)) {
        who = {"service", Role::Admin};
    } else if (*has_users) {
        auto u = store.authenticate(token);
        if (!u) return {std::nullopt, error_response({ErrorCode::StorageFailed, "cannot check the token: " + u.error()})};
        if (!*u) return {std::nullopt, unauthorized("the bearer token is unknown or was revoked; ask an admin for " + how)};
        who = {(*u)->name, (*u)->role};
    } else {
        return {std::nullopt, unauthorized("the bearer token is wrong; use " + how)};
    }
    if (int(who.role) < int(*needs))
        return {who,
                error_response({ErrorCode::Forbidden, "user '" + who.user + "' (" + role_name(who.role) + ") may not " + method + " " +
                                                          m->route->pattern + ": it needs the " + role_name(*needs) + " role"})};
    return {who, std::nullopt};
}

}  // namespace fetalhc::server
