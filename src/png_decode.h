// Internal: every PNG the fast path (png_gray.h) declines, decoded with libpng directly so that
// libpng's warnings never reach stderr and a damaged file is an error that names it.
#pragma once

#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <cstddef>
#include <string>

namespace fetalhc::detail {

// True when the bytes start with the PNG signature.
bool is_png(const unsigned char* data, size_t size);
// Total length of the IDAT chunks (the compressed image data); stops at a chunk that overruns.
size_t png_idat_bytes(const unsigned char* data, size_t size);

// Decodes a PNG held in memory the way OpenCV's reader does with IMREAD_ANYDEPTH | IMREAD_ANYCOLOR,
// minus alpha: gray stays one channel, colour and palette images become BGR, 16-bit samples stay
// 16-bit, no gamma correction; transparency is dropped (it does not enter luminance). Every
// message libpng has is kept from stderr: warnings (a damaged ancillary chunk, which libpng skips)
// are dropped, errors (a bad critical chunk or CRC, truncated data) become the returned error,
// which names `name`.
Expected<cv::Mat> decode_png(const unsigned char* data, size_t size, const std::string& name);

}  // namespace fetalhc::detail
