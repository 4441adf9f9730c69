#include "png_decode.h"

#include <png.h>

#include <cctype>
#include <csetjmp>
#include <cstring>
#include <string>
#include <vector>

namespace fetalhc::detail {

namespace {

// What the libpng callbacks share. Plain data only: libpng reports errors by longjmp, which must
// not skip C++ destructors, so the functions that call setjmp hold no such objects.
struct Reader {
    const unsigned char* data;
    size_t size, pos;
    char message[256];
};

void on_error(png_structp png, png_const_charp msg) {
    auto* r = static_cast<Reader*>(png_get_error_ptr(png));
    std::snprintf(r->message, sizeof r->message, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}  // skipped ancillary data: nothing to tell the user

void on_read(png_structp png, png_bytep out, png_size_t n) {
    auto* r = static_cast<Reader*>(png_get_io_ptr(png));
    if (n > r->size - r->pos) png_error(png, "the file ends before the image data does (truncated)");
    std::memcpy(out, r->data + r->pos, n);
    r->pos += n;
}

struct Layout {
    png_uint_32 width = 0, height = 0;
    int channels = 0, bit_depth = 0;
};

// Reads the header and sets the transforms; false on a libpng error (message in r).
bool read_header(png_structp png, png_infop info, Layout* out) {
    if (setjmp(png_jmpbuf(png))) return false;
    png_read_info(png, info);
    const int color = png_get_color_type(png, info);
    png_set_expand(png);  // palette -> RGB, 1/2/4-bit gray -> 8-bit, tRNS -> alpha
    png_set_strip_alpha(png);
    if (png_get_bit_depth(png, info) == 16) png_set_swap(png);  // native (little-endian) 16-bit
    if (color & PNG_COLOR_MASK_COLOR || color == PNG_COLOR_TYPE_PALETTE) png_set_bgr(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    out->width = png_get_image_width(png, info);
    out->height = png_get_image_height(png, info);
    out->channels = png_get_channels(png, info);
    out->bit_depth = png_get_bit_depth(png, info);
    return true;
}

bool read_rows(png_structp png, png_infop info, png_bytepp rows) {
    if (setjmp(png_jmpbuf(png))) return false;
    png_read_image(png, rows);
    png_read_end(png, info);
    return true;
}

// libpng allocates (and clears) an ancillary chunk at the length its header declares before it
// reads the chunk, and only warns when that length is over its 8 MB chunk limit: a 450-byte file
// whose tEXt chunk declared 2 GB made it allocate and clear 2 GB (found by fuzz_decode_image). A
// chunk before IEND whose length and CRC run past the end of the bytes, which libpng could never
// read whole, is refused first. Returns why, or "".
std::string overrunning_chunk(const unsigned char* data, size_t size) {
    for (size_t i = 8; i + 8 <= size;) {
        const size_t len = size_t(data[i]) << 24 | size_t(data[i + 1]) << 16 | size_t(data[i + 2]) << 8 | data[i + 3];
        std::string type(reinterpret_cast<const char*>(data + i + 4), 4);
        for (char& c : type)
            if (!std::isalpha(static_cast<unsigned char>(c))) c = '?';
        const size_t left = size - i - 8;
        if (len > left || left - len < 4)
            return "its " + type + " chunk declares " + std::to_string(len) + " bytes and a CRC, " + std::to_string(left) +
                   " bytes are left: truncated or damaged";
        if (type == "IEND") break;
        i += 12 + len;
    }
    return "";
}

}  // namespace

bool is_png(const unsigned char* data, size_t size) {
    return size >= 8 && png_sig_cmp(const_cast<png_bytep>(data), 0, 8) == 0;
}

size_t png_idat_bytes(const unsigned char* data, size_t size) {
    size_t total = 0;
    for (size_t i = 8; i + 12 <= size;) {
        const size_t len = size_t(data[i]) << 24 | size_t(data[i + 1]) << 16 | size_t(data[i + 2]) << 8 | data[i + 3];
        if (len > size - i - 12) break;
        if (std::memcmp(data + i + 4, "IDAT", 4) == 0) total += len;
        i += 12 + len;
    }
    return total;
}

Expected<cv::Mat> decode_png(const unsigned char* data, size_t size, const std::string& name) {
    if (const std::string e = overrunning_chunk(data, size); !e.empty())
        return make_error(ErrorKind::ImageUnreadable,
                          "'" + name + "' is a damaged PNG (" + e + "); export the image again or use the original file");
    Reader r{data, size, 0, {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        return make_error(ErrorKind::ImageUnreadable, "'" + name + "': out of memory while opening the PNG");
    }
    png_set_read_fn(png, &r, on_read);
    Layout lay;
    cv::Mat img;
    bool ok = read_header(png, info, &lay);
    if (ok && (lay.channels != 1 && lay.channels != 3)) ok = false, std::snprintf(r.message, sizeof r.message, "unexpected channel layout");
    // Deflate expands at most 1032:1: image data too short to fill the image is refused before the
    // image is allocated (a forged header cannot make us zero-fill gigabytes).
    if (ok && png_idat_bytes(data, size) * 1032 + 1032 < size_t(lay.height) * png_get_rowbytes(png, info)) {
        ok = false;
        std::snprintf(r.message, sizeof r.message, "the image data is too short for the %u x %u image it declares",
                      unsigned(lay.width), unsigned(lay.height));
    }
    if (ok) {
        img.create(int(lay.height), int(lay.width), CV_MAKETYPE(lay.bit_depth == 16 ? CV_16U : CV_8U, lay.channels));
        std::vector<png_bytep> rows(lay.height);
        for (png_uint_32 y = 0; y < lay.height; ++y) rows[y] = img.ptr(int(y));
        ok = read_rows(png, info, rows.data());
    }
    png_destroy_read_struct(&png, &info, nullptr);
    if (!ok)
        return make_error(ErrorKind::ImageUnreadable, "'" + name + "' is a damaged PNG (" + r.message +
                                                          "); export the image again or use the original file");
    return img;
}

}  // namespace fetalhc::detail
