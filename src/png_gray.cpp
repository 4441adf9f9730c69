#include "png_gray.h"

#include <libdeflate.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace fetalhc::detail {
namespace {

uint32_t be32(const unsigned char* p) {
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

bool is(const unsigned char* type, const char* name) { return std::memcmp(type, name, 4) == 0; }

// Reverses one row's filter (PNG specification, W3C 2003, section 9: None, Sub, Up, Average,
// Paeth), one byte per pixel. `up` is the previous decoded row, or null for the first row.
bool unfilter_row(int filter, const uint8_t* in, const uint8_t* up, uint8_t* out, size_t w) {
    switch (filter) {
        case 0: std::memcpy(out, in, w); return true;
        case 1: {
            uint8_t left = 0;
            for (size_t x = 0; x < w; ++x) out[x] = left = uint8_t(in[x] + left);
            return true;
        }
        case 2:
            for (size_t x = 0; x < w; ++x) out[x] = uint8_t(in[x] + (up ? up[x] : 0));
            return true;
        case 3: {
            int left = 0;
            for (size_t x = 0; x < w; ++x) out[x] = uint8_t(left = uint8_t(in[x] + ((left + (up ? up[x] : 0)) >> 1)));
            return true;
        }
        case 4: {
            // Predictor: whichever of left a, above b, upper-left c is closest to a + b - c, ties
            // in the order a, b, c; written without branches on the data.
            int a = 0, c = 0;
            for (size_t x = 0; x < w; ++x) {
                const int b = up ? up[x] : 0;
                const int pa = std::abs(b - c), pb = std::abs(a - c), pc = std::abs(a + b - 2 * c);
                int pred = pb < pa ? b : a;
                const int pmin = pb < pa ? pb : pa;
                pred = pc < pmin ? c : pred;
                a = uint8_t(in[x] + pred);
                out[x] = uint8_t(a);
                c = b;
            }
            return true;
        }
        default: return false;
    }
}

struct FreeDecompressor {
    void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};

}  // namespace

cv::Mat decode_png_gray8(const unsigned char* p, size_t n) {
    static const unsigned char kSignature[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    if (n < 8 || std::memcmp(p, kSignature, 8) != 0) return {};
    uint32_t w = 0, h = 0;
    bool header = false, end = false;
    std::vector<uint8_t> compressed;
    for (size_t i = 8; i + 12 <= n && !end;) {
        const size_t len = be32(p + i);
        const unsigned char* type = p + i + 4;
        const unsigned char* d = p + i + 8;
        if (len > n - i - 12) return {};  // truncated
        // Every chunk's CRC (over type and data), as libpng checks it: damage goes to the strict decoder.
        if (libdeflate_crc32(0, type, len + 4) != be32(d + len)) return {};
        if (is(type, "IHDR")) {
            if (header || len != 13) return {};  // a second IHDR is malformed
            w = be32(d);
            h = be32(d + 4);
            // bit depth 8, colour type 0 (grey), compression 0, filter method 0, no interlace
            if (d[8] != 8 || d[9] != 0 || d[10] != 0 || d[11] != 0 || d[12] != 0) return {};
            header = true;
        } else if (is(type, "IDAT")) {
            if (!header) return {};
            compressed.insert(compressed.end(), d, d + len);
        } else if (is(type, "IEND")) {
            end = true;
        } else if (type[0] >= 'A' && type[0] <= 'Z') {
            return {};  // another critical chunk (e.g. a palette): not this variant
        }
        i += 12 + len;
    }
    if (!header || !end || compressed.empty() || w == 0 || h == 0 || w > 32768 || h > 32768) return {};

    thread_local std::unique_ptr<libdeflate_decompressor, FreeDecompressor> inflater(libdeflate_alloc_decompressor());
    if (!inflater) return {};
    const size_t stride = size_t(w) + 1;  // filter byte + one byte per pixel
    // Deflate expands at most 1032:1 (RFC 1951: a 258-byte match per 2 bits at best), so compressed
    // data too short to hold the image is refused before the image is allocated.
    if (compressed.size() * 1032 + 1032 < stride * h) return {};
    std::vector<uint8_t> raw(stride * h);
    size_t got = 0;
    if (libdeflate_zlib_decompress(inflater.get(), compressed.data(), compressed.size(), raw.data(), raw.size(), &got) !=
            LIBDEFLATE_SUCCESS ||
        got != raw.size())
        return {};
    cv::Mat img(int(h), int(w), CV_8U);
    for (int y = 0; y < int(h); ++y) {
        const uint8_t* row = raw.data() + size_t(y) * stride;
        if (!unfilter_row(row[0], row + 1, y ? img.ptr<uint8_t>(y - 1) : nullptr, img.ptr<uint8_t>(y), w)) return {};
    }
    return img;
}

}  // namespace fetalhc::detail
