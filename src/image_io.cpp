#include "fetalhc/image_io.h"

#include "png_decode.h"
#include "png_gray.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace fs = std::filesystem;

namespace fetalhc {

bool has_image_extension(const std::string& path) {
    std::string ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff";
}

Expected<cv::Mat> to_gray8(const cv::Mat& img, const std::string& name) {
    if (img.empty()) return make_error(ErrorKind::ImageUnreadable, "'" + name + "' decoded to an empty image");
    cv::Mat g;
    switch (img.channels()) {
        case 1: g = img; break;
        case 3: cv::cvtColor(img, g, cv::COLOR_BGR2GRAY); break;
        case 4: cv::cvtColor(img, g, cv::COLOR_BGRA2GRAY); break;
        default:
            return make_error(ErrorKind::ImageUnreadable, "'" + name + "' has " + std::to_string(img.channels()) +
                                                              " channels; use a grayscale or colour image");
    }
    if (g.depth() != CV_8U) {
        double lo, hi;
        cv::minMaxLoc(g, &lo, &hi);
        cv::Mat f;
        g.convertTo(f, CV_8U, hi > 0 ? 255.0 / hi : 1.0);
        g = f;
    }
    if (g.cols < kMinImageSide || g.rows < kMinImageSide)
        return make_error(ErrorKind::ImageUnreadable, "'" + name + "' is only " + std::to_string(g.cols) + "x" + std::to_string(g.rows) +
                          " pixels; a head measurement needs at least " + std::to_string(kMinImageSide) + "x" +
                          std::to_string(kMinImageSide) + " (use the original, full-size image)");
    return g.isContinuous() ? g : g.clone();
}

namespace {

// What a non-regular file is, as a noun phrase.
std::string kind_of(mode_t mode) {
    if (S_ISDIR(mode)) return "a folder";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISFIFO(mode)) return "a named pipe (FIFO)";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

// The refusal of a path that is there but not a regular file.
std::string not_regular(const std::string& path, mode_t mode, const std::string& what) {
    if (S_ISDIR(mode)) return "'" + path + "' is a folder, not " + what;
    return "'" + path + "' is " + kind_of(mode) + ", not a regular file; pass " + what + " (fetalhc reads files only)";
}

// The refusal of a path that stat() or open() failed on with `err`.
std::string unreachable(const std::string& path, int err, const std::string& what) {
    switch (err) {
        case ENOENT: {
            struct stat l{};
            if (::lstat(path.c_str(), &l) == 0 && S_ISLNK(l.st_mode)) {
                std::error_code ec;
                const std::string target = fs::read_symlink(path, ec).string();
                return "'" + path + "' is a broken symbolic link (to '" + target + "', which does not exist); check the path";
            }
            return "'" + path + "' does not exist; check the path";
        }
        case ENOTDIR: return "'" + path + "' does not exist (a part of the path is a file, not a folder); check the path";
        case ELOOP:
            return "'" + path + "' is a symbolic link loop (ELOOP: too many levels of symbolic links); point the link at " + what;
        case EACCES:
            return "cannot read '" + path + "': permission denied (EACCES); fix its permissions, or those of its folders";
        default: return "cannot read '" + path + "' as " + what + ": " + std::strerror(err);
    }
}

// "8 MB" for a whole number of MiB, else "1000 bytes".
std::string size_text(size_t bytes) {
    if (bytes >= (1 << 20) && bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MB";
    return std::to_string(bytes) + " bytes";
}

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

// A number as a person writes it: 0.13, 2, 1e-320 (std::to_string gives 0.000000 for the last).
std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

}  // namespace

std::string check_pixel_size(double mm, const std::string& what) {
    const std::string unit = "; give it in mm per pixel, e.g. 0.13";
    if (!std::isfinite(mm)) return "pixel size for " + what + " is not a number" + unit;
    if (mm <= 0) return "pixel size for " + what + " must be positive (got " + number_text(mm) + ")" + unit;
    if (mm < kMinPixelSizeMm)
        return "pixel size for " + what + " is " + number_text(mm) + " mm, under the " + number_text(kMinPixelSizeMm) +
               " mm/pixel plausible for ultrasound; check the unit (mm per pixel, not metres or a lost exponent)";
    if (mm > kMaxPixelSizeMm)
        return "pixel size for " + what + " is " + number_text(mm) + " mm, over the " + number_text(kMaxPixelSizeMm) +
               " mm/pixel plausible for ultrasound; check the unit (mm per pixel, not pixels per mm or cm)";
    return "";
}

Expected<cv::Mat> decode_grayscale(const std::vector<unsigned char>& bytes, const std::string& name) {
    if (bytes.empty()) return make_error(ErrorKind::ImageUnreadable, "'" + name + "' is empty (0 bytes); pass an ultrasound image file");
    // A PNG's size is in its first chunk (IHDR, bytes 16..23): checked before either PNG decoder
    // allocates anything.
    if (detail::is_png(bytes.data(), bytes.size()) && bytes.size() >= 24) {
        const auto be32 = [&](size_t i) {
            return (long long)bytes[i] << 24 | (long long)bytes[i + 1] << 16 | (long long)bytes[i + 2] << 8 | bytes[i + 3];
        };
        const long long w = be32(16), h = be32(20);
        // Each side first: two 32-bit sides multiply past the range of long long.
        if (w > kMaxImagePixels || h > kMaxImagePixels || w * h > kMaxImagePixels)
            return make_error(ErrorKind::ImageUnreadable, too_large(name, w, h));
    }
    limit_opencv_decoders();
    cv::Mat img = detail::decode_png_gray8(bytes.data(), bytes.size());  // the common case, ~2x faster
    if (!img.empty()) return to_gray8(img, name);
    if (detail::is_png(bytes.data(), bytes.size())) {
        auto png = detail::decode_png(bytes.data(), bytes.size(), name);  // libpng kept off stderr
        if (!png) return png.error_value();
        return to_gray8(*png, name);
    }
    try {
        img = cv::imdecode(bytes, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR);
    } catch (const cv::Exception& e) {
        return make_error(ErrorKind::ImageUnreadable, "'" + name + "' could not be decoded (" + e.err + "); it may be corrupt or truncated");
    }
    if (img.empty())
        return make_error(ErrorKind::ImageUnreadable, "'" + name + "' is not a readable image (PNG, JPEG, BMP or TIFF), or it is corrupt or truncated");
    return to_gray8(img, name);
}

std::string regular_file_problem(const std::string& path, const std::string& what, bool missing_ok) {
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) {
        const int err = errno;
        if (missing_ok && err == ENOENT) {
            struct stat l{};
            if (::lstat(path.c_str(), &l) != 0) return "";  // nothing there; a dangling link is still refused
            // Created between the two calls (another process opening the same new file): check it.
            if (!S_ISLNK(l.st_mode)) return regular_file_problem(path, what, false);
        }
        return unreachable(path, err, what);
    }
    if (!S_ISREG(st.st_mode)) return not_regular(path, st.st_mode, what);
    if (::access(path.c_str(), R_OK) != 0 && errno == EACCES) return unreachable(path, EACCES, what);
    return "";
}

Expected<std::vector<unsigned char>> read_file_limited(const std::string& path, size_t max_bytes, const std::string& what) {
    if (auto p = regular_file_problem(path, what); !p.empty()) return make_error(ErrorKind::Io, p);
    // O_NONBLOCK: should a FIFO take the file's place after the check, open() returns at once.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return make_error(ErrorKind::Io, unreachable(path, errno, what));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st{};
    if (::fstat(fd, &st) != 0) return make_error(ErrorKind::Io, unreachable(path, errno, what));
    if (!S_ISREG(st.st_mode)) return make_error(ErrorKind::Io, not_regular(path, st.st_mode, what));
    const auto over = [&](const std::string& size) {
        return make_error(ErrorKind::Io, "'" + path + "' is " + size + ", over the " + size_text(max_bytes) + " fetalhc reads as " + what +
                          "; check that this is the file you meant");
    };
    if (st.st_size < 0 || size_t(st.st_size) > max_bytes) return over(std::to_string(st.st_size) + " bytes");
    std::vector<unsigned char> bytes(size_t(st.st_size));
    size_t got = 0;
    for (;;) {
        if (got == bytes.size()) {
            if (bytes.size() > max_bytes) return over("larger (it grew while read)");
            bytes.resize(std::min(max_bytes + 1, std::max<size_t>(bytes.size() * 2, 4096)));
        }
        const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(ErrorKind::Io, "cannot read '" + path + "' to its end: " + std::strerror(errno));
        if (n == 0) break;
        got += size_t(n);
    }
    bytes.resize(got);
    return bytes;
}

Expected<cv::Mat> load_grayscale(const std::string& path) {
    auto bytes = read_file_limited(path, kMaxImageFileBytes, "an image");
    if (!bytes) return make_error(ErrorKind::ImageUnreadable, bytes.error());  // the image given cannot be read
    return decode_grayscale(*bytes, path);
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
