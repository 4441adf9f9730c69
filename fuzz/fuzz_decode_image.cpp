// libFuzzer target: the image decode entry point fetalhc::decode_grayscale (image_io.h): the PNG
// header limit, the fast path, libpng (png_decode.cpp) and OpenCV for the other formats.
#include "fetalhc/image_io.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::vector<unsigned char> bytes(data, data + size);
    auto img = fetalhc::decode_grayscale(bytes, "fuzz.png");
    if (img) {
        // What image_io.h promises of a success: 8-bit, one channel, continuous, at least the minimum size.
        if (img->type() != CV_8UC1 || !img->isContinuous() || img->cols < fetalhc::kMinImageSide ||
            img->rows < fetalhc::kMinImageSide || 1LL * img->cols * img->rows > fetalhc::kMaxImagePixels) {
            std::fprintf(stderr, "decode_grayscale returned type %d, %d x %d\n", img->type(), img->cols, img->rows);
            std::abort();
        }
    } else if (img.error().empty()) {
        std::fprintf(stderr, "decode_grayscale failed with an empty message\n");
        std::abort();
    }
    return 0;
}
