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
    r.body = body.dump();
    return r;
}

}  // namespace fetalhc::server
