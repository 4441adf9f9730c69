// JPEG 2000 frames with OpenJPEG (dicom_j2k.h): the main header is read here and checked against
// the DICOM header, then OpenJPEG decodes from memory, then the decoded image is checked again and
// converted to 8-bit gray the way the DCMTK path converts its frames.
#include "dicom_j2k.h"

#include <openjpeg.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace fetalhc::detail {
namespace {

Error unreadable(std::string message) { return make_error(ErrorKind::ImageUnreadable, std::move(message)); }

// ---- the main header, read before OpenJPEG sees the bytes -----------------------------------------

// Big-endian numbers (all of JPEG 2000's) at `at`, or nothing when they would run past the end.
struct Bytes {
    const unsigned char* p;
    size_t n;
    bool has(size_t at, size_t len) const { return at <= n && len <= n - at; }
    std::optional<uint64_t> be(size_t at, int len) const {
        if (!has(at, size_t(len))) return std::nullopt;
        uint64_t v = 0;
        for (int i = 0; i < len; ++i) v = v << 8 | p[at + size_t(i)];
        return v;
    }
};

constexpr unsigned char kJp2Signature[12] = {0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50, 0x20, 0x20, 0x0D, 0x0A, 0x87, 0x0A};
constexpr uint32_t kJp2cBox = 0x6A703263;  // 'jp2c': the contiguous codestream box

bool starts_codestream(const unsigned char* p, size_t n) {
    return n >= 4 && p[0] == 0xFF && p[1] == 0x4F && p[2] == 0xFF && p[3] == 0x51;  // SOC, SIZ
}
bool starts_jp2(const unsigned char* p, size_t n) { return n >= 12 && std::memcmp(p, kJp2Signature, 12) == 0; }

// The SIZ marker segment (ITU-T T.800 A.5.1).
struct Siz {
    uint32_t rsiz = 0, xsiz = 0, ysiz = 0, xosiz = 0, yosiz = 0, xtsiz = 0, ytsiz = 0, xtosiz = 0, ytosiz = 0;
    struct Component {
        int precision = 0;  // bits, (Ssiz & 0x7F) + 1
        bool is_signed = false;
        int dx = 0, dy = 0;  // XRsiz, YRsiz: subsampling
    };
    std::vector<Component> components;
    uint64_t width() const { return uint64_t(xsiz) - xosiz; }
    uint64_t height() const { return uint64_t(ysiz) - yosiz; }
};

// The SIZ segment of the codestream `cs`, every read bounds-checked.
Expected<Siz> read_siz(const Bytes& cs, const std::string& label) {
    if (!starts_codestream(cs.p, cs.n))
        return unreadable(label + ": the pixel data is not a JPEG 2000 codestream (it does not start with the SOC and SIZ "
                                  "markers FF4F FF51); the file is damaged or its transfer syntax is wrong");
    const auto lsiz = cs.be(4, 2), csiz = cs.be(40, 2);
    if (!lsiz || !csiz || !cs.has(4, size_t(*lsiz)))
        return unreadable(label + ": the JPEG 2000 codestream ends inside its SIZ header (" + std::to_string(cs.n) +
                          " bytes); the file is truncated or damaged");
    if (*csiz < 1 || *lsiz != 38 + 3 * *csiz)
        return unreadable(label + ": the JPEG 2000 SIZ header is " + std::to_string(*lsiz) + " bytes long for " +
                          std::to_string(*csiz) + " components (38 + 3 per component expected); the file is damaged");
    Siz s;
    uint32_t* fields[] = {&s.rsiz, &s.xsiz, &s.ysiz, &s.xosiz, &s.yosiz, &s.xtsiz, &s.ytsiz, &s.xtosiz, &s.ytosiz};
    size_t at = 6;
    for (uint32_t* f : fields) {
        const int len = f == &s.rsiz ? 2 : 4;
        *f = uint32_t(*cs.be(at, len));  // inside Lsiz, checked above
        at += size_t(len);
    }
    at += 2;  // Csiz, read above
    for (uint64_t c = 0; c < *csiz; ++c, at += 3) {
        const uint64_t ssiz = *cs.be(at, 1);
        s.components.push_back({int(ssiz & 0x7F) + 1, (ssiz & 0x80) != 0, int(*cs.be(at + 1, 1)), int(*cs.be(at + 2, 1))});
    }
    return s;
}

std::string size_text(uint64_t w, uint64_t h) { return std::to_string(w) + " x " + std::to_string(h); }

// Why the SIZ segment `s` cannot be decoded as the frame the DICOM header describes (empty: it can).
std::string siz_problem(const Siz& s, const J2kExpect& e, const std::string& label) {
    const std::string j2k = label + ": the JPEG 2000 codestream ";
    if (s.xosiz >= s.xsiz || s.yosiz >= s.ysiz)
        return j2k + "declares an empty image (" + size_text(s.xsiz, s.ysiz) + " from offset " + size_text(s.xosiz, s.yosiz) +
               "); the file is damaged";
    if (s.width() != uint64_t(e.columns) || s.height() != uint64_t(e.rows))
        return j2k + "says " + size_text(s.width(), s.height()) + " pixels but the header says " +
               size_text(uint64_t(e.columns), uint64_t(e.rows)) + "; the file is damaged";
    if (s.components.size() != size_t(e.samples_per_pixel))
        return j2k + "has " + std::to_string(s.components.size()) + " components but the header says " +
               std::to_string(e.samples_per_pixel) + " sample" + (e.samples_per_pixel == 1 ? "" : "s") + " per pixel (" +
               e.photometric + "); the file is damaged";
    for (size_t c = 0; c < s.components.size(); ++c) {
        const Siz::Component& k = s.components[c];
        const std::string comp = label + ": JPEG 2000 component " + std::to_string(c);
        if (k.precision > 16)
            return comp + " has " + std::to_string(k.precision) + " bits; fetalhc reads 1 to 16 bits per sample (export it "
                          "uncompressed)";
        if (k.dx != 1 || k.dy != 1)
            return comp + " is subsampled (" + std::to_string(k.dx) + " x " + std::to_string(k.dy) +
                   "); fetalhc reads JPEG 2000 without subsampling (export it uncompressed)";
        if (k.precision != s.components[0].precision || k.is_signed != s.components[0].is_signed)
            return comp + " has another bit depth or sign than component 0; fetalhc reads colour whose components agree "
                          "(export it uncompressed)";
    }
    if (s.xtsiz == 0 || s.ytsiz == 0)
        return j2k + "declares tiles of " + size_text(s.xtsiz, s.ytsiz) + " pixels; the file is damaged";
    if (s.xtosiz > s.xosiz || s.ytosiz > s.yosiz || uint64_t(s.xtosiz) + s.xtsiz <= s.xosiz ||
        uint64_t(s.ytosiz) + s.ytsiz <= s.yosiz)
        return j2k + "declares a tile grid that misses the image's first pixel; the file is damaged";
    const uint64_t tiles_x = (uint64_t(s.xsiz) - s.xtosiz + s.xtsiz - 1) / s.xtsiz;
    const uint64_t tiles_y = (uint64_t(s.ysiz) - s.ytosiz + s.ytsiz - 1) / s.ytsiz;
    if (tiles_x * tiles_y > uint64_t(kJ2kMaxTiles))
        return j2k + "declares " + std::to_string(tiles_x * tiles_y) + " tiles of " + size_text(s.xtsiz, s.ytsiz) +
               " pixels, over the " + std::to_string(kJ2kMaxTiles) + " fetalhc reads; re-encode it with larger tiles";
    return "";
}

// Where the codestream of a JP2 file lies (its jp2c box): {offset, length}.
Expected<std::pair<size_t, size_t>> jp2_codestream(const Bytes& file, const std::string& label) {
    const std::string jp2 = label + ": the JP2 file around the JPEG 2000 codestream ";
    for (size_t at = 0; at < file.n;) {
        const auto len32 = file.be(at, 4), type = file.be(at + 4, 4);
        if (!len32 || !type) return unreadable(jp2 + "ends inside a box header; the file is truncated or damaged");
        uint64_t len = *len32, header = 8;
        if (len == 1) {  // the length follows as 64 bits
            const auto len64 = file.be(at + 8, 8);
            if (!len64) return unreadable(jp2 + "ends inside a box header; the file is truncated or damaged");
            len = *len64, header = 16;
        } else if (len == 0) {  // the last box: to the end
            len = file.n - at;
        }
        if (len < header || len > file.n - at)
            return unreadable(jp2 + "has a box of " + std::to_string(len) + " bytes at byte " + std::to_string(at) +
                              ", longer than the " + std::to_string(file.n - at) + " bytes left; the file is truncated or damaged");
        if (*type == kJp2cBox) return std::pair{at + size_t(header), size_t(len - header)};
        at += size_t(len);
    }
    return unreadable(jp2 + "holds no codestream (no jp2c box); the file is damaged");
}

// ---- OpenJPEG on a memory buffer ------------------------------------------------------------------

struct Source {
    const unsigned char* data;
    size_t size;
    size_t pos = 0;
};

OPJ_SIZE_T source_read(void* buffer, OPJ_SIZE_T n, void* user) {
    auto* s = static_cast<Source*>(user);
    if (s->pos >= s->size) return static_cast<OPJ_SIZE_T>(-1);  // OpenJPEG's "end of stream"
    const size_t k = std::min<size_t>(n, s->size - s->pos);
    std::memcpy(buffer, s->data + s->pos, k);
    s->pos += k;
    return k;
}

OPJ_OFF_T source_skip(OPJ_OFF_T n, void* user) {
    auto* s = static_cast<Source*>(user);
    const uint64_t step = n < 0 ? uint64_t(0) - uint64_t(n) : uint64_t(n);  // no overflow at the most negative value
    if (n < 0 ? step > s->pos : step > s->size - s->pos) return -1;
    s->pos = n < 0 ? s->pos - size_t(step) : s->pos + size_t(step);
    return n;
}

OPJ_BOOL source_seek(OPJ_OFF_T at, void* user) {
    auto* s = static_cast<Source*>(user);
    if (at < 0 || uint64_t(at) > s->size) return OPJ_FALSE;
    s->pos = size_t(at);
    return OPJ_TRUE;
}

// OpenJPEG's messages, kept for the error instead of printed (the library prints nothing itself;
// this makes sure and gives the reason).
struct Messages {
    std::string errors, warnings;
    static void add(std::string& to, const char* msg) {
        if (!msg || to.size() > 400) return;  // a damaged stream can warn per packet: the first few say enough
        std::string m = msg;
        while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
        if (m.empty()) return;
        to += (to.empty() ? "" : "; ") + m;
    }
    static void on_error(const char* msg, void* self) { add(static_cast<Messages*>(self)->errors, msg); }
    static void on_warning(const char* msg, void* self) { add(static_cast<Messages*>(self)->warnings, msg); }
    static void on_info(const char*, void*) {}
    std::string why() const {
        if (!errors.empty()) return errors;
        if (!warnings.empty()) return warnings;
        return "no reason given";
    }
};

struct CodecFree {
    void operator()(opj_codec_t* c) const { opj_destroy_codec(c); }
};
struct StreamFree {
    void operator()(opj_stream_t* s) const { opj_stream_destroy(s); }
};
struct ImageFree {
    void operator()(opj_image_t* i) const { opj_image_destroy(i); }
};
using ImagePtr = std::unique_ptr<opj_image_t, ImageFree>;

// OpenJPEG's decode of `src` (already checked), with its error text on failure.
Expected<ImagePtr> openjpeg_decode(Source& src, bool jp2, const std::string& label) {
    Messages messages;
    std::unique_ptr<opj_stream_t, StreamFree> stream(opj_stream_create(std::clamp<size_t>(src.size, 1, size_t(1) << 20), OPJ_TRUE));
    std::unique_ptr<opj_codec_t, CodecFree> codec(opj_create_decompress(jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K));
    if (!stream || !codec) return unreadable(label + ": OpenJPEG could not start (out of memory?)");
    opj_stream_set_user_data(stream.get(), &src, nullptr);
    opj_stream_set_user_data_length(stream.get(), src.size);
    opj_stream_set_read_function(stream.get(), source_read);
    opj_stream_set_skip_function(stream.get(), source_skip);
    opj_stream_set_seek_function(stream.get(), source_seek);
    opj_set_error_handler(codec.get(), Messages::on_error, &messages);
    opj_set_warning_handler(codec.get(), Messages::on_warning, &messages);
    opj_set_info_handler(codec.get(), Messages::on_info, &messages);
    opj_dparameters_t params;
    opj_set_default_decoder_parameters(&params);
    const auto failed = [&](const char* step) {
        return unreadable(label + ": the JPEG 2000 codestream cannot be decoded (" + step + ": " + messages.why() +
                          "); the file is truncated or damaged");
    };
    if (!opj_setup_decoder(codec.get(), &params)) return failed("setup");
    // 0: no worker threads, the calling thread decodes (and OPJ_NUM_THREADS in the environment is
    // ignored): the server bounds its concurrent decodes, each must stay one thread.
    opj_codec_set_threads(codec.get(), 0);
    opj_decoder_set_strict_mode(codec.get(), OPJ_TRUE);  // a truncated codestream is an error, not a partial image
    opj_image_t* raw = nullptr;
    const bool header_read = opj_read_header(stream.get(), codec.get(), &raw);
    ImagePtr image(raw);
    if (!header_read || !image) return failed("header");
    if (!opj_decode(codec.get(), stream.get(), image.get())) return failed("decode");
    if (!opj_end_decompress(codec.get(), stream.get())) return failed("end of codestream");
    return image;
}

// Why the decoded image does not hold the frame the SIZ segment promised (empty: it does).
std::string decoded_problem(const opj_image_t& img, const Siz& s, const J2kExpect& e, const std::string& label) {
    if (img.numcomps != s.components.size() || !img.comps)
        return label + ": OpenJPEG decoded " + std::to_string(img.numcomps) + " components where the codestream declares " +
               std::to_string(s.components.size()) + " (a JP2 palette or channel mapping?); export it uncompressed";
    for (OPJ_UINT32 c = 0; c < img.numcomps; ++c) {
        const opj_image_comp_t& k = img.comps[c];
        if (!k.data || k.w != OPJ_UINT32(e.columns) || k.h != OPJ_UINT32(e.rows) || int(k.prec) != s.components[c].precision ||
            (k.sgnd != 0) != s.components[c].is_signed || k.factor != 0)
            return label + ": JPEG 2000 component " + std::to_string(c) + " decoded as " + size_text(k.w, k.h) + ", " +
                   std::to_string(k.prec) + " bits" + (k.data ? "" : ", no data") + ", not as its header says (" +
                   size_text(uint64_t(e.columns), uint64_t(e.rows)) + ", " + std::to_string(s.components[c].precision) +
                   " bits); the file is damaged";
    }
    return "";
}

// ---- to 8-bit gray, as the DCMTK path renders ----------------------------------------------------

enum class Colour { Monochrome1, Monochrome2, Rgb, YbrFull };

std::optional<Colour> colour_of(const std::string& photometric) {
    if (photometric == "MONOCHROME1") return Colour::Monochrome1;
    if (photometric == "MONOCHROME2") return Colour::Monochrome2;
    // YBR_RCT / YBR_ICT: the codestream's multi-component transform, which OpenJPEG undoes: RGB out.
    if (photometric == "RGB" || photometric == "YBR_RCT" || photometric == "YBR_ICT") return Colour::Rgb;
    if (photometric == "YBR_FULL") return Colour::YbrFull;  // YCbCr kept by the codestream (no transform)
    return std::nullopt;
}

// Component `k` as unsigned values 0 .. 2^precision - 1 (signed ones offset by half the range, as
// DCMTK maps signed data), CV_16UC1: precision is at most 16 (checked).
cv::Mat unsigned_plane(const opj_image_comp_t& k, int rows, int cols) {
    const int64_t offset = k.sgnd ? int64_t(1) << (k.prec - 1) : 0, top = (int64_t(1) << k.prec) - 1;
    cv::Mat out(rows, cols, CV_16UC1);
    for (int y = 0; y < rows; ++y) {
        const OPJ_INT32* in = k.data + size_t(y) * size_t(cols);
        auto* row = out.ptr<uint16_t>(y);
        for (int x = 0; x < cols; ++x) row[x] = uint16_t(std::clamp<int64_t>(int64_t(in[x]) + offset, 0, top));
    }
    return out;
}

// A plane of `bits`-bit values as 8 bits over the same range: DCMTK stretches data under 8 bits by
// a shift (6-bit 10 renders as 40) and maps wider colour samples linearly.
cv::Mat to_8bit_range(const cv::Mat& plane16, int bits) {
    cv::Mat out;
    if (bits <= 8) plane16.convertTo(out, CV_8U, double(1 << (8 - bits)));
    else plane16.convertTo(out, CV_8U, 255.0 / double((1 << bits) - 1));
    return out;
}

cv::Mat gray8(const opj_image_t& img, const J2kExpect& e, Colour colour) {
    const int bits = int(img.comps[0].prec);
    if (colour == Colour::Monochrome1 || colour == Colour::Monochrome2) {
        cv::Mat v = unsigned_plane(img.comps[0], e.rows, e.columns);
        if (std::max(bits, e.bits_stored) <= 8) {
            cv::Mat out = to_8bit_range(v, bits);
            return colour == Colour::Monochrome1 ? cv::Mat(255 - out) : out;
        }
        // Wider data: scaled by the frame's own maximum (dicom.cpp's frame_gray8), MONOCHROME1 first
        // inverted over its stored range.
        if (colour == Colour::Monochrome1) cv::subtract(cv::Scalar((1 << bits) - 1), v, v);
        double mx = 0;
        cv::minMaxLoc(v, nullptr, &mx);
        cv::Mat out;
        v.convertTo(out, CV_8U, mx > 0 ? 255.0 / mx : 0);
        return out;
    }
    std::vector<cv::Mat> planes;
    for (int c = 0; c < 3; ++c) planes.push_back(to_8bit_range(unsigned_plane(img.comps[c], e.rows, e.columns), bits));
    cv::Mat rgb, gray;
    if (colour == Colour::YbrFull) {
        cv::Mat ycrcb;
        cv::merge(std::vector<cv::Mat>{planes[0], planes[2], planes[1]}, ycrcb);  // OpenCV's order: Y, Cr, Cb
        cv::cvtColor(ycrcb, rgb, cv::COLOR_YCrCb2RGB);
    } else {
        cv::merge(planes, rgb);
    }
    cv::cvtColor(rgb, gray, cv::COLOR_RGB2GRAY);
    return gray;
}

std::string trimmed(std::string s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
    return s;
}

}  // namespace

bool starts_j2k_frame(const unsigned char* data, size_t size) {
    return data && (starts_codestream(data, size) || starts_jp2(data, size));
}

Expected<cv::Mat> decode_j2k_frame(const unsigned char* data, size_t size, const J2kExpect& expect, const std::string& label) {
    J2kExpect e = expect;
    e.photometric = trimmed(e.photometric);
    const auto colour = colour_of(e.photometric);
    if (!colour)
        return unreadable(label + ": JPEG 2000 with the photometric interpretation '" + e.photometric +
                          "' is not decoded here (MONOCHROME1/2, RGB, YBR_RCT, YBR_ICT and YBR_FULL are); export it uncompressed");
    const int samples = (*colour == Colour::Monochrome1 || *colour == Colour::Monochrome2) ? 1 : 3;
    if (e.samples_per_pixel != samples)
        return unreadable(label + ": the header says " + e.photometric + " with SamplesPerPixel " +
                          std::to_string(e.samples_per_pixel) + " (" + e.photometric + " has " + std::to_string(samples) +
                          "); the file is damaged");
    if (e.rows <= 0 || e.columns <= 0) return unreadable(label + ": the header gives no image size (Rows/Columns)");
    if (!data || size == 0) return unreadable(label + ": the frame's JPEG 2000 codestream is empty; the file is damaged");

    const Bytes all{data, size};
    const bool jp2 = starts_jp2(data, size);
    Bytes cs = all;
    if (jp2) {
        auto box = jp2_codestream(all, label);
        if (!box) return box.error_value();
        cs = Bytes{data + box->first, box->second};
    }
    auto siz = read_siz(cs, label);
    if (!siz) return siz.error_value();
    if (auto p = siz_problem(*siz, e, label); !p.empty()) return unreadable(p);

    Source src{data, size};
    auto image = openjpeg_decode(src, jp2, label);
    if (!image) return image.error_value();
    if (auto p = decoded_problem(**image, *siz, e, label); !p.empty()) return unreadable(p);
    return gray8(**image, e, *colour);
}

}  // namespace fetalhc::detail
