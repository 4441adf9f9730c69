// libFuzzer target: the CSV record parser (csv.h) on every line of the input, and the pixel-size
// CSV reader read_pixel_sizes (hc18.h) on the whole input, written to a file per run (it takes a path).
#include "fetalhc/csv.h"
#include "fetalhc/hc18.h"

#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

const std::string& csv_path() {
    static const std::string p = [] {
        const char* tmp = std::getenv("TMPDIR");
        return std::string(tmp && *tmp ? tmp : "/tmp") + "/fetalhc-fuzz-pixel-sizes-" + std::to_string(getpid()) + ".csv";
    }();
    return p;
}

void fail(const char* what) {
    std::fprintf(stderr, "%s\n", what);
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    for (size_t start = 0; start <= text.size();) {
        size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        auto cells = fetalhc::parse_csv_record(text.substr(start, end - start));
        if (cells ? cells->empty() : cells.error().empty()) fail("parse_csv_record: no cell and no error");
        start = end + 1;
    }

    FILE* f = std::fopen(csv_path().c_str(), "wb");
    if (!f) fail("cannot write the temporary CSV");
    if (size && std::fwrite(data, 1, size, f) != size) fail("cannot write the temporary CSV");
    std::fclose(f);
    auto sizes = fetalhc::read_pixel_sizes(csv_path());
    std::remove(csv_path().c_str());
    if (!sizes) {
        if (sizes.error().empty()) fail("read_pixel_sizes failed with an empty message");
        return 0;
    }
    if (sizes->empty()) fail("read_pixel_sizes succeeded with no rows");
    for (const auto& [name, mm] : *sizes)
        if (name.empty() || !std::isfinite(mm)) fail("read_pixel_sizes returned an empty name or a non-finite size");
    return 0;
}
