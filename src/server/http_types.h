// The request and response values that route handlers see: plain data, no sockets, no httplib.
// The transport (transport.cpp) fills an HttpRequest from the wire and writes an HttpResponse back;
// tests build them by hand and call routes::handle (routes.h) directly.
//
//   HttpRequest req;
//   req.method = "POST"; req.path = "/v1/perimeter";
//   req.headers["content-type"] = "application/json";
//   req.body = R"({"ellipse_px": {...}, "pixel_size_mm": 0.13})";
//   HttpResponse res = server::handle(req, services);   // res.status, res.content_type, res.body
//
// Thread safety: plain values.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fetalhc::server {

// One multipart part sent with a file name (the bytes are kept as they came).
struct UploadedFile {
    std::string name;          // the form field, e.g. "image"
    std::string filename;      // as sent by the client (may be empty when sent without one)
    std::string content_type;  // as sent by the client; not trusted, images are sniffed by decoding
    std::string bytes;
};

struct HttpRequest {
    std::string method = "GET";                       // HEAD is served as GET
    std::string path = "/";                           // URL-decoded, without the query
    std::map<std::string, std::string> path_params;   // filled by the router: {"id": ...} for /v1/pregnancies/{id}
    std::map<std::string, std::string> query;         // ?key=value (no endpoint reads it today)
    std::map<std::string, std::string> form;          // multipart parts sent without a file name
    std::map<std::string, UploadedFile> files;        // multipart parts sent with a file name
    std::map<std::string, std::string> headers;       // names in lower case
    std::string body;                                 // raw body of non-multipart requests (JSON)
    bool multipart = false;                           // Content-Type multipart/form-data
    std::string user;                                 // who sent it (auth.h): a user, "service", "" on an open server
    std::string role;                                 // that user's role ("admin" on an open server)
    std::string client;                               // the client's address (for the audit trail)
    std::string request_id;                           // answered as X-Request-Id; kept in the audit trail

    // A header's value, "" when absent (name in any case).
    std::string header(const std::string& name) const;
};

struct HttpResponse {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Content-Type is above)
    // What the handler touched, for the audit trail (routes.cpp adds the path's ids); `written`:
    // the handler already appended the entry in its own write's transaction.
    struct Audit {
        std::string pregnancy_id, image_sha256, sop_instance_uid;
        std::optional<long long> exam_id;
        bool written = false;
    } audit;

    // A header's value, "" when absent (exact name).
    std::string header(const std::string& name) const;
};

// A JSON response (Content-Type: application/json).
HttpResponse json_response(int status, const nlohmann::json& body);

}  // namespace fetalhc::server
