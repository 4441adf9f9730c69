// Who sends a request and whether the route lets them (issue 26): the bearer token of a user of
// the store (fetalhc user add) or the service token (--token-file, the admin role), each route's
// least role, and the refusals (401 without a valid token, 403 with too little a role). Decided
// from the request line and headers alone, before the body is read (the transport calls
// authorize_request; tests call it directly).
//
// Without users in the store and without a service token, every route is open, as before users
// existed; once either exists, every route but the page, /static/*, /health and /openapi.json
// needs a token, on loopback too.
// Thread safety: the functions may be called from many threads at once (the Store's members are).
#pragma once

#include "http_types.h"
#include "routes.h"

#include "fetalhc/store.h"

#include <optional>
#include <string>

namespace fetalhc::server {

// The least role a route needs; nullopt: open to anyone (the page, its files, /health,
// /openapi.json). A route without a rule in the table needs admin (a test checks that every
// route has one).
std::optional<Role> route_role(const Route& r);
bool route_has_rule(const Route& r);
// Whether a route touches patient data, so that each request to it (and each refusal) leaves an
// audit entry: every route that needs a token but /metrics, /v1/growth-curve and /v1/me.
bool route_is_audited(const Route& r);

// Constant-time comparison of a presented secret with the expected one.
bool same_secret(const std::string& presented, const std::string& expected);

// The token a request carries: "Authorization: Bearer <token>" (scheme in any case), or, for a
// read without an Authorization header, the `fetalhc_token` cookie (the page's image and CSV links).
std::string presented_token(const std::string& method, const std::string& authorization, const std::string& cookie_header);

struct Identity {
    std::string user;  // a user's name, "service" for the --token-file token, "" when nobody signed in (an open server)
    Role role = Role::Admin;
};

// Who the request is from, or the response that refuses it: 401 unauthorized (no token, or one
// that no user has or that was revoked; the message never holds the token), 403 forbidden (a role
// below the route's), 500 storage_failed when the users cannot be read. An unknown path passes
// (it is a 404 either way).
// A trusted reverse proxy's sign-in (serve --trusted-proxy-header NAME --trusted-proxy-secret FILE):
// the user named in the header NAME (set by oauth2-proxy, nginx auth_request, ...) is believed only
// on requests that also carry the proxy's shared secret in X-Fetalhc-Proxy-Secret; on any other
// request the header is ignored. The user must be a user of the store (its role applies), not revoked.
struct TrustedProxy {
    std::string user_header;  // lower case; empty: off
    std::string secret;
};
inline constexpr const char* kProxySecretHeader = "x-fetalhc-proxy-secret";

// What a request presents: a bearer token (presented_token), and the proxy's user and secret headers.
struct Credentials {
    std::string token, proxy_user, proxy_secret;
};

struct Authorization {
    std::optional<Identity> who;  // also set with a 403: the user is known, the role too low
    std::optional<HttpResponse> refused;
};
Authorization authorize_request(const std::string& method, const std::string& path, const Credentials& presented, Store& store,
                                const std::string& service_token, const TrustedProxy& proxy = {});
// The same with a bearer token only.
Authorization authorize_request(const std::string& method, const std::string& path, const std::string& token, Store& store,
                                const std::string& service_token);

}  // namespace fetalhc::server
