#include "http_types.h"

#include <algorithm>
#include <cctype>

namespace fetalhc::server {

std::string HttpRequest::header(const std::string& name) const {
    std::string key = name;
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    auto it = headers.find(key);
    return it == headers.end() ? std::string() : it->second;
}

std::string HttpResponse::header(const std::string& name) const {
    for (const auto& [k, v] : headers)
        if (k == name) return v;
    return "";
}

HttpResponse json_response(int status, const nlohmann::json& body) {
    HttpResponse r;
    r.status = status;
    r.content_type = "application/json";
    // Text from the request (a path, a file name) may be any bytes: invalid UTF-8 is replaced by
    // U+FFFD instead of throwing, so an error that quotes it is still answered (found by fuzz_routes).
    r.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return r;
}

}  // namespace fetalhc::server
