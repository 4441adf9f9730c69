// Internal: fast decoding of the PNG variant ultrasound exports use most (8-bit grayscale).
#pragma once

#include <opencv2/core.hpp>

#include <cstddef>

namespace fetalhc::detail {

// Decodes an 8-bit grayscale, non-interlaced PNG held in memory (whole-buffer inflate with
// libdeflate, then the five PNG row filters). Returns an empty Mat for anything else or anything
// malformed, so that the caller falls back to OpenCV's decoder (which also gives the errors).
// Chunk CRCs are not checked; the zlib stream's own Adler-32 checksum is.
cv::Mat decode_png_gray8(const unsigned char* data, size_t size);

}  // namespace fetalhc::detail
