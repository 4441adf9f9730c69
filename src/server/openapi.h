// The OpenAPI 3 document of the HTTP service (GET /openapi.json).
#pragma once

#include <string>

namespace fetalhc::server {

// version: the service version; max_upload_bytes: the request body cap, stated in the document.
std::string openapi_json(const std::string& version, size_t max_upload_bytes);

}  // namespace fetalhc::server
