// fetalhc/image_io.h - reading ultrasound images as 8-bit grayscale.
//
//   auto img = fetalhc::load_grayscale("scan.png");   // PNG, JPEG, BMP, TIFF; 8/16-bit; gray/colour
//   if (!img) std::cerr << img.error();
//
// Colour images are converted to luminance; 16-bit images are scaled to 0..255 by their own
// maximum. Errors name the file and say what to do (missing, not an image, truncated, too small).
// Input files are checked before they are opened: only regular files (symlinks followed) are read,
// so a named pipe never blocks and a device such as /dev/zero is named as one, and at most a
// budget of bytes is read (kMaxImageFileBytes for an image).
// The plausible pixel size of an image (check_pixel_size) is here too: every reader of an image or
// its pixel size (measure, the pixel-size CSV, DICOM calibration) checks it the same way.
// Thread safety: pure functions.
#pragma once

#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace fetalhc {

constexpr int kMinImageSide = 32;  // px; smaller images cannot hold a measurable head
// The largest image decoded (width x height, pixels), checked from the file's header before any pixel
// is allocated: far above any ultrasound frame (800x600 is 0.5 MP), far below what a forged header
// can claim (a 69-byte PNG can say 32768 x 32768).
constexpr long long kMaxImagePixels = 40'000'000;
// The largest image file read, bytes: an uncompressed 16-bit RGBA TIFF of kMaxImagePixels is 320 MB
// and an ultrasound frame a few MB at most; a larger file is refused before it is read.
constexpr size_t kMaxImageFileBytes = size_t(512) << 20;

// The plausible pixel sizes of an ultrasound image, mm per pixel: [kMinPixelSizeMm, kMaxPixelSizeMm].
// HC18 spans 0.052..0.331; below 0.01 a 400 mm head would be 40,000 pixels across (a unit mistake,
// metres or an exponent), above 2 a 100 mm head is 50 pixels (pixels per mm given for mm per pixel).
constexpr double kMinPixelSizeMm = 0.01;
constexpr double kMaxPixelSizeMm = 2.0;

// Checks a pixel size (mm per pixel) against [kMinPixelSizeMm, kMaxPixelSizeMm]; returns an error
// message naming `what`, or "" when valid. The one check every pixel size given goes through.
std::string check_pixel_size(double mm, const std::string& what);

// Why `path` cannot be read as `what` (a noun such as "an image" or "a pixel-size CSV"), or "" when
// it can: after following symbolic links it must be a regular file. Nothing is opened, so a named
// pipe checked here does not block. The message names the path and what stands there instead, and
// says what to do: missing, a broken symbolic link, a symbolic link loop (ELOOP), a folder, a
// character or block device, a named pipe (FIFO), a socket, permission denied (EACCES).
// `missing_ok`: "" also when nothing at all is at the path (a file the caller will create).
std::string regular_file_problem(const std::string& path, const std::string& what, bool missing_ok = false);

// The bytes of the regular file `path`, at most `max_bytes`: regular_file_problem's refusals, then a
// file over `max_bytes` is refused with its size before it is read (and one that grows past it while
// read). The file is opened without blocking and checked again once open, so a named pipe put in
// its place after the check is refused too. `what` as for regular_file_problem.
Expected<std::vector<unsigned char>> read_file_limited(const std::string& path, size_t max_bytes, const std::string& what);

// Reads and decodes an image file (read_file_limited with kMaxImageFileBytes, then decode_grayscale).
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
