// fetalhc/image_io.h - reading ultrasound images as 8-bit grayscale.
//
//   auto img = fetalhc::load_grayscale("scan.png");   // PNG, JPEG, BMP, TIFF; 8/16-bit; gray/colour
//   if (!img) std::cerr << img.error();
//
// Colour images are converted to luminance; 16-bit images are scaled to 0..255 by their own
// maximum. Errors name the file and say what to do (missing, not an image, truncated, too small).
// Thread safety: pure functions.
#pragma once

#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <string>
#include <vector>

namespace fetalhc {

constexpr int kMinImageSide = 32;  // px; smaller images cannot hold a measurable head
// The largest image decoded (width x height, pixels), checked from the file's header before any pixel
// is allocated: far above any ultrasound frame (800x600 is 0.5 MP), far below what a forged header
// can claim (a 69-byte PNG can say 32768 x 32768).
constexpr long long kMaxImagePixels = 40'000'000;

Expected<cv::Mat> load_grayscale(const std::string& path);
// Decodes bytes already in memory (an upload); `name` is used in error messages.
Expected<cv::Mat> decode_grayscale(const std::vector<unsigned char>& bytes, const std::string& name);
// Converts any 1/3/4-channel 8/16-bit/float Mat to CV_8UC1.
Expected<cv::Mat> to_gray8(const cv::Mat& img, const std::string& name);

// Expands files and folders (non-recursive) into image files, in the given order, folders sorted.
// Unknown extensions inside folders are skipped; a folder without images is an error entry.
struct InputItem {
    std::string path;
    std::string error;  // non-empty when the item cannot be used
};
std::vector<InputItem> expand_inputs(const std::vector<std::string>& paths);
bool has_image_extension(const std::string& path);

}  // namespace fetalhc
