// Files embedded into the binary at build time (cmake/embed_files.cmake): the web page under web/
// and the Chart.js UMD build from Debian's libjs-chart.js, served under /static/<name>.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace fetalhc::server {

struct Asset {
    const char* name;  // path relative to /static/, e.g. "index.html" or "js/app.js"
    const unsigned char* data;
    size_t size;
};

const std::vector<Asset>& embedded_assets();

}  // namespace fetalhc::server
