// libFuzzer target: the PNG fast path (src/png_gray.h), checked against libpng (src/png_decode.h):
// whatever the fast path decodes, libpng must decode to the same pixels when it accepts the file.
#include "png_decode.h"
#include "png_gray.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const cv::Mat fast = fetalhc::detail::decode_png_gray8(data, size);
    if (fast.empty()) return 0;
    if (fast.type() != CV_8UC1 || fast.rows <= 0 || fast.cols <= 0) {
        std::fprintf(stderr, "decode_png_gray8 returned a Mat of type %d, %d x %d\n", fast.type(), fast.cols, fast.rows);
        std::abort();
    }
    auto strict = fetalhc::detail::decode_png(data, size, "fuzz");
    if (strict && (strict->type() != CV_8UC1 || strict->size() != fast.size() || cv::norm(*strict, fast, cv::NORM_INF) != 0)) {
        std::fprintf(stderr, "the fast path and libpng disagree on the pixels\n");
        std::abort();
    }
    return 0;
}
