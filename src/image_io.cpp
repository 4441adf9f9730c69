#include "fetalhc/image_io.h"

#include "png_decode.h"
#include "png_gray.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace fetalhc {

bool has_image_extension(const std::string& path) {
    std::string ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff";
}

Expected<cv::Mat> to_gray8(const cv::Mat& img, const std::string& name) {
    if (img.empty()) return make_error("'" + name + "' decoded to an empty image");
    cv::Mat g;
    switch (img.channels()) {
        case 1: g = img; break;
        case 3: cv::cvtColor(img, g, cv::COLOR_BGR2GRAY); break;
        case 4: cv::cvtColor(img, g, cv::COLOR_BGRA2GRAY); break;
        default: return make_error("'" + name + "' has " + std::to_string(img.channels()) + " channels; use a grayscale or colour image");
    }
    if (g.depth() != CV_8U) {
        double lo, hi;
        cv::minMaxLoc(g, &lo, &hi);
        cv::Mat f;
        g.convertTo(f, CV_8U, hi > 0 ? 255.0 / hi : 1.0);
        g = f;
    }
    if (g.cols < kMinImageSide || g.rows < kMinImageSide)
        return make_error("'" + name + "' is only " + std::to_string(g.cols) + "x" + std::to_string(g.rows) +
                          " pixels; a head measurement needs at least " + std::to_string(kMinImageSide) + "x" +
                          std::to_string(kMinImageSide) + " (use the original, full-size image)");
    return g.isContinuous() ? g : g.clone();
}

namespace {

std::string too_large(const std::string& name, long long w, long long h) {
    return "'" + name + "' claims " + std::to_string(w) + " x " + std::to_string(h) + " pixels, over the " +
           std::to_string(kMaxImagePixels / 1'000'000) + " megapixels fetalhc decodes; pass the ultrasound frame itself";
}

// OpenCV's own limit for the formats it decodes (JPEG, BMP, TIFF), read once at its first decode.
void limit_opencv_decoders() {
    static const bool set = [] {
        setenv("OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(kMaxImagePixels).c_str(), 0);
        return true;
    }();
    (void)set;
}

}  // namespace

Expected<cv::Mat> decode_grayscale(const std::vector<unsigned char>& bytes, const std::string& name) {
    if (bytes.empty()) return make_error("'" + name + "' is empty (0 bytes); pass an ultrasound image file");
    // A PNG's size is in its first chunk (IHDR, bytes 16..23): checked before either PNG decoder
    // allocates anything.
    if (detail::is_png(bytes.data(), bytes.size()) && bytes.size() >= 24) {
        const auto be32 = [&](size_t i) {
            return (long long)bytes[i] << 24 | (long long)bytes[i + 1] << 16 | (long long)bytes[i + 2] << 8 | bytes[i + 3];
        };
        const long long w = be32(16), h = be32(20);
        // Each side first: two 32-bit sides multiply past the range of long long.
        if (w > kMaxImagePixels || h > kMaxImagePixels || w * h > kMaxImagePixels) return make_error(too_large(name, w, h));
    }
    limit_opencv_decoders();
    cv::Mat img = detail::decode_png_gray8(bytes.data(), bytes.size());  // the common case, ~2x faster
    if (!img.empty()) return to_gray8(img, name);
    if (detail::is_png(bytes.data(), bytes.size())) {
        auto png = detail::decode_png(bytes.data(), bytes.size(), name);  // libpng kept off stderr
        if (!png) return make_error(png.error());
        return to_gray8(*png, name);
    }
    try {
        img = cv::imdecode(bytes, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR);
    } catch (const cv::Exception& e) {
        return make_error("'" + name + "' could not be decoded (" + e.err + "); it may be corrupt or truncated");
    }
    if (img.empty())
        return make_error("'" + name + "' is not a readable image (PNG, JPEG, BMP or TIFF), or it is corrupt or truncated");
    return to_gray8(img, name);
}

Expected<cv::Mat> load_grayscale(const std::string& path) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return make_error("'" + path + "' does not exist; check the path");
    if (fs::is_directory(path, ec)) return make_error("'" + path + "' is a folder, not an image");
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return make_error("cannot open '" + path + "': check its permissions");
    const std::streamoff size = in.tellg();
    std::vector<unsigned char> bytes(size > 0 ? size_t(size) : 0);
    in.seekg(0);
    if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), size))
        return make_error("cannot read '" + path + "': the file could not be read to its end");
    return decode_grayscale(bytes, path);
}

std::vector<InputItem> expand_inputs(const std::vector<std::string>& paths) {
    std::vector<InputItem> out;
    for (const auto& p : paths) {
        std::error_code ec;
        if (fs::is_directory(p, ec)) {
            std::vector<std::string> files;
            for (const auto& e : fs::directory_iterator(p, ec))
                if (e.is_regular_file() && has_image_extension(e.path().string())) {
                    const std::string stem = e.path().stem().string();
                    // HC18 masks sit beside their images; they are labels, not scans.
                    if (stem.size() > 5 && stem.compare(stem.size() - 5, 5, "_Mask") == 0) continue;
                    files.push_back(e.path().string());
                }
            std::sort(files.begin(), files.end());
            if (files.empty())
                out.push_back({p, "folder '" + p + "' holds no images (.png .jpg .jpeg .bmp .tif .tiff)"});
            for (auto& f : files) out.push_back({f, ""});
        } else {
            out.push_back({p, ""});
        }
    }
    return out;
}

}  // namespace fetalhc
