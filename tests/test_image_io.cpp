// Tests for fetalhc/image_io.h: decoding every supported format to 8-bit grayscale, error
// messages for unusable files, and the expansion of folders into image lists.
//
// Tolerance classes:
//   - exact: lossless formats (PNG, TIFF, BMP) of gray images must round-trip bit for bit;
//   - colour conversion: OpenCV's fixed-point BGR->gray rounds, so luminance is checked within 1;
//   - 16-bit scaling: v * 255 / max rounded to 8 bits, within 1 grey level;
//   - JPEG: lossy; a smooth gradient at quality 95 stays within a mean error of 2 grey levels.
#include "fetalhc/image_io.h"

#include "png_decode.h"
#include "png_gray.h"

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <zlib.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// A fresh folder per test, removed afterwards.
class ImageIo : public ::testing::Test {
protected:
    void SetUp() override {
        static std::atomic<int> counter{0};
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::temp_directory_path() /
               ("fetalhc_test_image_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + info->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    std::string write_image(const std::string& name, const cv::Mat& img, const std::vector<int>& params = {}) const {
        const std::string p = path(name);
        EXPECT_TRUE(cv::imwrite(p, img, params)) << "test setup: cannot write " << p;
        return p;
    }

    std::string write_bytes(const std::string& name, const std::string& bytes) const {
        const std::string p = path(name);
        std::ofstream out(p, std::ios::binary);
        out << bytes;
        return p;
    }

    std::string read_bytes(const std::string& p) const {
        std::ifstream in(p, std::ios::binary);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }

    fs::path dir_;
};

// A smooth 8-bit pattern with every grey level present, so round trips are meaningful.
cv::Mat gray_pattern(int w = 96, int h = 64) {
    cv::Mat m(h, w, CV_8U);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) m.at<uint8_t>(y, x) = static_cast<uint8_t>((x * 255 / (w - 1) + y) % 256);
    return m;
}

double max_abs_diff(const cv::Mat& a, const cv::Mat& b) {
    cv::Mat d;
    cv::absdiff(a, b, d);
    double mx = 0;
    cv::minMaxLoc(d, nullptr, &mx);
    return mx;
}

void expect_gray8(const cv::Mat& m, cv::Size size) {
    EXPECT_EQ(m.type(), CV_8UC1);
    EXPECT_EQ(m.size(), size);
    EXPECT_TRUE(m.isContinuous());
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// ---- supported inputs -------------------------------------------------------------------------------

TEST_F(ImageIo, Gray8PngRoundTripsExactly) {
    const cv::Mat src = gray_pattern();
    auto img = fetalhc::load_grayscale(write_image("gray.png", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    EXPECT_EQ(max_abs_diff(*img, src), 0);
}

TEST_F(ImageIo, BgrPngBecomesLuminance) {
    // Uniform colour B=10, G=200, R=50: Y = 0.299 R + 0.587 G + 0.114 B = 133.49.
    cv::Mat src(48, 64, CV_8UC3, cv::Scalar(10, 200, 50));
    auto img = fetalhc::load_grayscale(write_image("colour.png", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    double lo, hi;
    cv::minMaxLoc(*img, &lo, &hi);
    EXPECT_NEAR(lo, 133.49, 1.0);
    EXPECT_NEAR(hi, 133.49, 1.0);
}

TEST_F(ImageIo, GrayStoredAsBgrKeepsItsValues) {
    // Ultrasound exported as RGB with R = G = B must come back unchanged.
    const cv::Mat gray = gray_pattern();
    cv::Mat bgr;
    cv::cvtColor(gray, bgr, cv::COLOR_GRAY2BGR);
    auto img = fetalhc::load_grayscale(write_image("rgb_gray.png", bgr));
    ASSERT_TRUE(img) << img.error();
    EXPECT_LE(max_abs_diff(*img, gray), 1);
}

TEST_F(ImageIo, BgraPngIgnoresAlpha) {
    cv::Mat src(40, 50, CV_8UC4, cv::Scalar(10, 200, 50, 128));
    auto img = fetalhc::load_grayscale(write_image("alpha.png", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    EXPECT_NEAR(img->at<uint8_t>(20, 25), 133.49, 1.0);
}

TEST_F(ImageIo, Gray16PngIsScaledByItsMaximum) {
    // Values 0..4000 in 16 bits: the maximum maps to 255 and v to v * 255 / 4000.
    cv::Mat src(64, 80, CV_16U);
    for (int y = 0; y < src.rows; ++y)
        for (int x = 0; x < src.cols; ++x) src.at<uint16_t>(y, x) = static_cast<uint16_t>(x * 50);  // 0..3950
    src.at<uint16_t>(0, 0) = 4000;
    auto img = fetalhc::load_grayscale(write_image("deep.png", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    EXPECT_EQ(img->at<uint8_t>(0, 0), 255);
    for (int x : {1, 10, 40, 79}) EXPECT_NEAR(img->at<uint8_t>(5, x), x * 50 * 255.0 / 4000.0, 1.0) << "x=" << x;
}

TEST_F(ImageIo, Gray16WithSmallValuesIsStretchedNotCrushed) {
    // A 12-bit detector's values 0..1023 must not all collapse to 0..3 (dividing by 256 would).
    cv::Mat src(40, 40, CV_16U, cv::Scalar(0));
    src(cv::Rect(0, 0, 20, 40)).setTo(1023);
    auto img = fetalhc::load_grayscale(write_image("twelve_bit.png", src));
    ASSERT_TRUE(img) << img.error();
    EXPECT_EQ(img->at<uint8_t>(10, 5), 255);
    EXPECT_EQ(img->at<uint8_t>(10, 30), 0);
}

TEST_F(ImageIo, TiffRoundTripsExactly) {
    const cv::Mat src = gray_pattern();
    auto img = fetalhc::load_grayscale(write_image("scan.tif", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    EXPECT_EQ(max_abs_diff(*img, src), 0);
}

TEST_F(ImageIo, BmpRoundTripsExactly) {
    const cv::Mat src = gray_pattern();
    auto img = fetalhc::load_grayscale(write_image("scan.bmp", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    EXPECT_EQ(max_abs_diff(*img, src), 0);
}

TEST_F(ImageIo, JpegDecodesCloseToTheOriginal) {
    cv::Mat src(64, 96, CV_8U);
    for (int y = 0; y < src.rows; ++y)
        for (int x = 0; x < src.cols; ++x) src.at<uint8_t>(y, x) = static_cast<uint8_t>(40 + x + y);
    auto img = fetalhc::load_grayscale(write_image("scan.jpg", src, {cv::IMWRITE_JPEG_QUALITY, 95}));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    cv::Mat d;
    cv::absdiff(*img, src, d);
    EXPECT_LT(cv::mean(d)[0], 2.0);
}

TEST_F(ImageIo, ColourJpegDecodes) {
    cv::Mat src(64, 96, CV_8UC3, cv::Scalar(10, 200, 50));
    auto img = fetalhc::load_grayscale(write_image("colour.jpeg", src, {cv::IMWRITE_JPEG_QUALITY, 95}));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
    EXPECT_NEAR(cv::mean(*img)[0], 133.49, 2.0);
}

TEST_F(ImageIo, ExtensionDoesNotDecideTheDecoder) {
    // A PNG saved with a .jpg name (common after renaming) still decodes: the bytes decide.
    const cv::Mat src = gray_pattern();
    const std::string png = write_image("real.png", src);
    const std::string renamed = write_bytes("renamed.jpg", read_bytes(png));
    auto img = fetalhc::load_grayscale(renamed);
    ASSERT_TRUE(img) << img.error();
    EXPECT_EQ(max_abs_diff(*img, src), 0);
}

TEST_F(ImageIo, SmallestAcceptedSizeLoads) {
    cv::Mat src(fetalhc::kMinImageSide, fetalhc::kMinImageSide, CV_8U, cv::Scalar(77));
    auto img = fetalhc::load_grayscale(write_image("min.png", src));
    ASSERT_TRUE(img) << img.error();
    expect_gray8(*img, src.size());
}

TEST_F(ImageIo, DecodeGrayscaleReadsBytesInMemory) {
    const cv::Mat src = gray_pattern();
    std::vector<unsigned char> bytes;
    ASSERT_TRUE(cv::imencode(".png", src, bytes));
    auto img = fetalhc::decode_grayscale(bytes, "upload.png");
    ASSERT_TRUE(img) << img.error();
    EXPECT_EQ(max_abs_diff(*img, src), 0);
}

// ---- to_gray8 on Mats --------------------------------------------------------------------------------

TEST(ToGray8, FloatImageIsScaledByItsMaximum) {
    cv::Mat f(40, 40, CV_32F, cv::Scalar(0.25f));
    f.at<float>(0, 0) = 1.0f;
    auto g = fetalhc::to_gray8(f, "float");
    ASSERT_TRUE(g) << g.error();
    EXPECT_EQ(g->type(), CV_8UC1);
    EXPECT_EQ(g->at<uint8_t>(0, 0), 255);
    EXPECT_NEAR(g->at<uint8_t>(10, 10), 0.25 * 255, 1.0);
}

TEST(ToGray8, RoiOfALargerImageComesBackContinuous) {
    cv::Mat big = gray_pattern(200, 100);
    cv::Mat roi = big(cv::Rect(10, 10, 64, 48));
    ASSERT_FALSE(roi.isContinuous());
    auto g = fetalhc::to_gray8(roi, "roi");
    ASSERT_TRUE(g) << g.error();
    expect_gray8(*g, roi.size());
    EXPECT_EQ(max_abs_diff(*g, roi), 0);
}

TEST(ToGray8, TwoChannelsAreRejectedByName) {
    cv::Mat two(40, 40, CV_8UC2, cv::Scalar(1, 2));
    auto g = fetalhc::to_gray8(two, "odd.png");
    ASSERT_FALSE(g);
    EXPECT_TRUE(contains(g.error(), "odd.png")) << g.error();
    EXPECT_TRUE(contains(g.error(), "2 channels")) << g.error();
}

TEST(ToGray8, EmptyMatIsAnError) {
    auto g = fetalhc::to_gray8(cv::Mat(), "nothing.png");
    ASSERT_FALSE(g);
    EXPECT_TRUE(contains(g.error(), "nothing.png")) << g.error();
}

// ---- unusable files: the message names the file ----------------------------------------------------

TEST_F(ImageIo, MissingFileIsNamed) {
    const std::string p = path("no_such_scan.png");
    auto img = fetalhc::load_grayscale(p);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), p)) << img.error();
    EXPECT_TRUE(contains(img.error(), "does not exist")) << img.error();
}

TEST_F(ImageIo, DirectoryIsNotAnImage) {
    fs::create_directories(dir_ / "scans.png");  // a folder, even with an image-like name
    auto img = fetalhc::load_grayscale(path("scans.png"));
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), path("scans.png"))) << img.error();
    EXPECT_TRUE(contains(img.error(), "folder")) << img.error();
}

TEST_F(ImageIo, TextFileNamedPngIsNotAnImage) {
    const std::string p = write_bytes("notes.png", "this is a text file, not an ultrasound scan\n");
    auto img = fetalhc::load_grayscale(p);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), p)) << img.error();
    EXPECT_TRUE(contains(img.error(), "not a readable image")) << img.error();
}

TEST_F(ImageIo, TruncatedPngIsAnError) {
    // Keep the signature and header but cut the image data short, as an interrupted copy would.
    const std::string full = read_bytes(write_image("full.png", gray_pattern(400, 300)));
    ASSERT_GT(full.size(), 400u);
    const std::string p = write_bytes("cut.png", full.substr(0, 200));
    auto img = fetalhc::load_grayscale(p);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), p)) << img.error();
}

TEST_F(ImageIo, ZeroByteFileIsAnError) {
    const std::string p = write_bytes("empty.png", "");
    auto img = fetalhc::load_grayscale(p);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), p)) << img.error();
    EXPECT_TRUE(contains(img.error(), "0 bytes")) << img.error();
}

TEST_F(ImageIo, TinyImageIsRejectedWithItsSize) {
    const std::string p = write_image("tiny.png", cv::Mat(10, 10, CV_8U, cv::Scalar(128)));
    auto img = fetalhc::load_grayscale(p);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), p)) << img.error();
    EXPECT_TRUE(contains(img.error(), "10x10")) << img.error();
}

TEST_F(ImageIo, ThinImageIsRejected) {
    // Large in one direction is not enough: both sides must reach the minimum.
    const std::string p = write_image("strip.png", cv::Mat(fetalhc::kMinImageSide - 1, 500, CV_8U, cv::Scalar(9)));
    auto img = fetalhc::load_grayscale(p);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), p)) << img.error();
}

TEST(DecodeGrayscale, EmptyBytesNameTheUpload) {
    auto img = fetalhc::decode_grayscale({}, "upload-17.png");
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), "upload-17.png")) << img.error();
}

TEST(DecodeGrayscale, GarbageBytesNameTheUpload) {
    const std::string junk = "GIF89a? no, just junk";
    auto img = fetalhc::decode_grayscale(std::vector<unsigned char>(junk.begin(), junk.end()), "form-field");
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), "form-field")) << img.error();
}

// ---- the 8-bit grayscale PNG fast path ----------------------------------------------------------------

namespace {

void put32(std::vector<unsigned char>& out, uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(v >> s));
}

void put_chunk(std::vector<unsigned char>& out, const char* type, const std::vector<unsigned char>& data) {
    put32(out, static_cast<uint32_t>(data.size()));
    const size_t start = out.size();
    out.insert(out.end(), type, type + 4);
    out.insert(out.end(), data.begin(), data.end());
    put32(out, static_cast<uint32_t>(crc32(0, out.data() + start, static_cast<uInt>(out.size() - start))));
}

// An 8-bit grayscale PNG of `img` whose row y is written with filter filters[y % filters.size()],
// the filters applied here as the PNG specification defines them (independently of the decoder).
std::vector<unsigned char> png_with_filters(const cv::Mat& img, const std::vector<int>& filters) {
    std::vector<unsigned char> raw;
    for (int y = 0; y < img.rows; ++y) {
        const int f = filters[size_t(y) % filters.size()];
        raw.push_back(static_cast<unsigned char>(f));
        for (int x = 0; x < img.cols; ++x) {
            const int v = img.at<uint8_t>(y, x), a = x ? img.at<uint8_t>(y, x - 1) : 0,
                      b = y ? img.at<uint8_t>(y - 1, x) : 0, c = x && y ? img.at<uint8_t>(y - 1, x - 1) : 0;
            int pred = 0;
            if (f == 1) pred = a;
            if (f == 2) pred = b;
            if (f == 3) pred = (a + b) / 2;
            if (f == 4) {
                const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
                pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
            }
            raw.push_back(static_cast<unsigned char>((v - pred) & 255));
        }
    }
    uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
    std::vector<unsigned char> z(zlen);
    EXPECT_EQ(compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size()), 6), Z_OK);
    z.resize(zlen);
    std::vector<unsigned char> png = {137, 80, 78, 71, 13, 10, 26, 10}, ihdr;
    put32(ihdr, static_cast<uint32_t>(img.cols));
    put32(ihdr, static_cast<uint32_t>(img.rows));
    ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
    put_chunk(png, "IHDR", ihdr);
    put_chunk(png, "tEXt", {'C', 'o', 'm', 'm', 'e', 'n', 't', 0, 'x'});  // ancillary: skipped
    // Two IDAT chunks: the stream may be split anywhere.
    put_chunk(png, "IDAT", std::vector<unsigned char>(z.begin(), z.begin() + long(z.size() / 2)));
    put_chunk(png, "IDAT", std::vector<unsigned char>(z.begin() + long(z.size() / 2), z.end()));
    put_chunk(png, "IEND", {});
    return png;
}

// Speckle-like content with every grey level and sharp edges (the predictors' ties and wrap-around).
cv::Mat speckle_image(int w, int h) {
    cv::Mat m(h, w, CV_8U);
    cv::RNG rng(11);
    rng.fill(m, cv::RNG::UNIFORM, 0, 256);
    cv::Mat smooth;
    cv::GaussianBlur(m, smooth, {0, 0}, 2.0);
    smooth(cv::Rect(0, 0, w / 2, h)).copyTo(m(cv::Rect(0, 0, w / 2, h)));
    m(cv::Rect(w / 4, h / 4, w / 8, h / 8)).setTo(255);
    return m;
}

}  // namespace

TEST(PngFastPath, EveryRowFilterDecodesToTheOriginalPixels) {
    const cv::Mat img = speckle_image(173, 61);
    for (const std::vector<int>& filters : std::vector<std::vector<int>>{{0}, {1}, {2}, {3}, {4}, {4, 0, 3, 1, 2, 4, 3}}) {
        const auto png = png_with_filters(img, filters);
        const cv::Mat fast = fetalhc::detail::decode_png_gray8(png.data(), png.size());
        ASSERT_FALSE(fast.empty()) << "filter " << filters[0];
        EXPECT_EQ(cv::norm(fast, img, cv::NORM_INF), 0) << "filter " << filters[0];
        // The writer above is right too: OpenCV (libpng) reads the same pixels.
        EXPECT_EQ(cv::norm(cv::imdecode(png, cv::IMREAD_UNCHANGED), img, cv::NORM_INF), 0) << "filter " << filters[0];
        auto via_api = fetalhc::decode_grayscale(png, "filters.png");
        ASSERT_TRUE(via_api) << via_api.error();
        EXPECT_EQ(cv::norm(*via_api, img, cv::NORM_INF), 0);
    }
}

TEST(PngFastPath, OpenCvWrittenPngsAtEveryLevelAndStrategy) {
    const cv::Mat img = speckle_image(320, 200);
    for (int level : {0, 1, 6, 9})
        for (int strategy : {cv::IMWRITE_PNG_STRATEGY_DEFAULT, cv::IMWRITE_PNG_STRATEGY_FILTERED, cv::IMWRITE_PNG_STRATEGY_RLE}) {
            std::vector<unsigned char> png;
            ASSERT_TRUE(cv::imencode(".png", img, png, {cv::IMWRITE_PNG_COMPRESSION, level, cv::IMWRITE_PNG_STRATEGY, strategy}));
            const cv::Mat fast = fetalhc::detail::decode_png_gray8(png.data(), png.size());
            ASSERT_FALSE(fast.empty()) << level << "/" << strategy;
            EXPECT_EQ(cv::norm(fast, img, cv::NORM_INF), 0) << level << "/" << strategy;
        }
}

TEST(PngFastPath, OtherVariantsAndDamageGoToOpenCv) {
    const cv::Mat img = speckle_image(64, 48);
    std::vector<unsigned char> colour, deep, good;
    cv::Mat bgr;
    cv::cvtColor(img, bgr, cv::COLOR_GRAY2BGR);
    ASSERT_TRUE(cv::imencode(".png", bgr, colour));
    cv::Mat wide;
    img.convertTo(wide, CV_16U, 257);
    ASSERT_TRUE(cv::imencode(".png", wide, deep));
    ASSERT_TRUE(cv::imencode(".png", img, good));
    // Not this variant: OpenCV decodes them (colour -> luminance, 16 bit scaled) as before.
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(colour.data(), colour.size()).empty());
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(deep.data(), deep.size()).empty());
    for (const auto* bytes : {&colour, &deep}) {
        auto g = fetalhc::decode_grayscale(*bytes, "other.png");
        ASSERT_TRUE(g) << g.error();
        EXPECT_LE(cv::norm(*g, img, cv::NORM_INF), 1);
    }
    // Damage: cut short, or a flipped byte inside the compressed data (the zlib checksum fails).
    std::vector<unsigned char> cut(good.begin(), good.begin() + long(good.size() * 2 / 3));
    std::vector<unsigned char> flipped = good;
    flipped[flipped.size() / 2] ^= 0x5a;
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(cut.data(), cut.size()).empty());
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(flipped.data(), flipped.size()).empty());
    auto r = fetalhc::decode_grayscale(cut, "cut.png");
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r.error(), "cut.png")) << r.error();
    // A length field pointing past the end is caught before any read.
    std::vector<unsigned char> lying = good;
    lying[8] = 0x7f;  // IHDR length -> ~2 GB
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(lying.data(), lying.size()).empty());
}

// ---- PNGs the fast path declines: libpng directly, silent on stderr ------------------------------

namespace {

// The PNG's chunks after the signature, as (type, data) pairs.
std::vector<std::pair<std::string, std::vector<unsigned char>>> png_chunks(const std::vector<unsigned char>& png) {
    std::vector<std::pair<std::string, std::vector<unsigned char>>> out;
    for (size_t p = 8; p + 12 <= png.size();) {
        const uint32_t n = uint32_t(png[p]) << 24 | uint32_t(png[p + 1]) << 16 | uint32_t(png[p + 2]) << 8 | png[p + 3];
        out.emplace_back(std::string(png.begin() + long(p) + 4, png.begin() + long(p) + 8),
                         std::vector<unsigned char>(png.begin() + long(p) + 8, png.begin() + long(p) + 8 + n));
        p += 12 + n;
    }
    return out;
}

std::vector<unsigned char> png_from_chunks(const std::vector<std::pair<std::string, std::vector<unsigned char>>>& chunks) {
    std::vector<unsigned char> out{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    for (const auto& [type, data] : chunks) put_chunk(out, type.c_str(), data);
    return out;
}

// Decodes through the library and returns what reached stderr meanwhile.
std::string stderr_of_decode(const std::vector<unsigned char>& bytes, fetalhc::Expected<cv::Mat>* result) {
    ::testing::internal::CaptureStderr();
    *result = fetalhc::decode_grayscale(bytes, "scan.png");
    return ::testing::internal::GetCapturedStderr();
}

}  // namespace

// Cross-check against OpenCV's reader: every other PNG variant OpenCV writes gives the same gray
// image through libpng here as through cv::imdecode (exact: same samples, same conversion).
TEST(PngDecode, EveryOtherVariantMatchesOpenCv) {
    const cv::Mat gray = speckle_image(70, 50);
    cv::Mat bgr, bgra, deep, deep_bgr;
    cv::merge(std::vector<cv::Mat>{gray, 255 - gray, gray / 2}, bgr);
    cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
    gray.convertTo(deep, CV_16U, 200);
    bgr.convertTo(deep_bgr, CV_16UC3, 150);
    for (const cv::Mat* m : {&bgr, &bgra, &deep, &deep_bgr}) {
        std::vector<unsigned char> bytes;
        ASSERT_TRUE(cv::imencode(".png", *m, bytes));
        ASSERT_TRUE(fetalhc::detail::is_png(bytes.data(), bytes.size()));
        auto mine = fetalhc::detail::decode_png(bytes.data(), bytes.size(), "x.png");
        ASSERT_TRUE(mine) << mine.error();
        const cv::Mat theirs = cv::imdecode(bytes, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR);
        auto a = fetalhc::to_gray8(*mine, "x"), b = fetalhc::to_gray8(theirs, "x");
        ASSERT_TRUE(a && b);
        EXPECT_EQ(cv::norm(*a, *b, cv::NORM_INF), 0) << "channels " << m->channels() << " depth " << m->depth();
    }
}

TEST(PngDecode, DamagedAncillaryChunkIsSkippedSilently) {
    cv::Mat bgr;
    cv::cvtColor(speckle_image(64, 48), bgr, cv::COLOR_GRAY2BGR);
    std::vector<unsigned char> good;
    ASSERT_TRUE(cv::imencode(".png", bgr, good));
    auto chunks = png_chunks(good);
    // A text chunk whose CRC is wrong, and a too-short iCCP chunk: libpng warns and skips them.
    chunks.insert(chunks.begin() + 1, {"iCCP", {'x', 0, 0}});
    auto bytes = png_from_chunks(chunks);
    std::vector<unsigned char> text{'C', 'o', 'm', 'm', 'e', 'n', 't', 0, 'h', 'i'};
    std::vector<unsigned char> with_text;
    put_chunk(with_text, "tEXt", text);
    with_text.back() ^= 0xff;  // break its CRC
    bytes.insert(bytes.begin() + 8 + 25, with_text.begin(), with_text.end());  // after IHDR (8 + 25 bytes)
    // The premise: this file makes libpng warn when OpenCV's reader decodes it.
    ::testing::internal::CaptureStderr();
    (void)cv::imdecode(bytes, cv::IMREAD_ANYCOLOR);
    EXPECT_NE(::testing::internal::GetCapturedStderr(), "") << "OpenCV decoded it silently: the input provokes nothing";
    fetalhc::Expected<cv::Mat> img = cv::Mat();
    const std::string err = stderr_of_decode(bytes, &img);
    ASSERT_TRUE(img) << img.error();
    EXPECT_EQ(err, "") << "libpng talked on stderr";
    cv::Mat want;
    cv::cvtColor(bgr, want, cv::COLOR_BGR2GRAY);
    EXPECT_EQ(cv::norm(*img, want, cv::NORM_INF), 0);
}

TEST(PngDecode, TruncatedOrCorruptIsAnErrorNamingTheFileAndNothingOnStderr) {
    cv::Mat bgr;
    cv::cvtColor(speckle_image(64, 48), bgr, cv::COLOR_GRAY2BGR);
    std::vector<unsigned char> good;
    ASSERT_TRUE(cv::imencode(".png", bgr, good));
    std::vector<unsigned char> cut(good.begin(), good.begin() + long(good.size() / 2));
    std::vector<unsigned char> bad_ihdr = good;
    bad_ihdr[8 + 8 + 3] ^= 0x01;  // a bit of the width: IHDR's CRC no longer matches
    for (const auto* bytes : {&cut, &bad_ihdr}) {
        fetalhc::Expected<cv::Mat> img = cv::Mat();
        const std::string err = stderr_of_decode(*bytes, &img);
        ASSERT_FALSE(img);
        EXPECT_TRUE(contains(img.error(), "scan.png")) << img.error();
        EXPECT_TRUE(contains(img.error(), "damaged PNG")) << img.error();
        EXPECT_EQ(err, "") << "libpng talked on stderr";
    }
}

// ---- hostile PNGs: a budget before allocation, strictness like libpng -----------------------------

TEST(PngHostile, ForgedHugeHeaderIsRefusedBeforeAnyAllocation) {
    // A 69-byte PNG whose IHDR claims 32768 x 32768 (1 GB of pixels) with a tiny IDAT.
    std::vector<unsigned char> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<unsigned char> ihdr;
    put32(ihdr, 32768);
    put32(ihdr, 32768);
    ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
    put_chunk(png, "IHDR", ihdr);
    std::vector<unsigned char> tiny(16, 0);
    uLongf clen = compressBound(16);
    std::vector<unsigned char> z(clen);
    ASSERT_EQ(compress(z.data(), &clen, tiny.data(), 16), Z_OK);
    z.resize(clen);
    put_chunk(png, "IDAT", z);
    put_chunk(png, "IEND", {});
    auto r = fetalhc::decode_grayscale(png, "bomb.png");
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r.error(), "bomb.png")) << r.error();
    EXPECT_TRUE(contains(r.error(), "megapixels")) << r.error();
    // Under the pixel budget but with far too little data: both decoders refuse before allocating.
    std::vector<unsigned char> small_claim = png;
    small_claim[16 + 2] = 0x10;  // width 4096 (0x00001000)
    small_claim[16 + 3] = 0x00;
    small_claim[16 + 1] = 0x00;
    small_claim[20 + 1] = 0x00, small_claim[20 + 2] = 0x10, small_claim[20 + 3] = 0x00;  // height 4096
    const uint32_t crc = uint32_t(crc32(0, small_claim.data() + 12, 17));
    for (int k = 0; k < 4; ++k) small_claim[29 + k] = static_cast<unsigned char>(crc >> (24 - 8 * k));
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(small_claim.data(), small_claim.size()).empty());
    auto lib = fetalhc::detail::decode_png(small_claim.data(), small_claim.size(), "short.png");
    ASSERT_FALSE(lib);
    EXPECT_TRUE(contains(lib.error(), "too short")) << lib.error();
}

// Found by fuzz/fuzz_decode_image: the header check multiplied the two 32-bit sides in a long long,
// which overflows (undefined behaviour) for sides near 2^32 and could come out negative, so the
// budget let the file through to the decoders. Each side is now checked first.
TEST(PngHostile, HeaderSidesNearFourBillionAreRefusedByTheBudget) {
    for (const uint32_t side : {0xC3C3C3C3u, 0xFFFFFFFFu}) {
        std::vector<unsigned char> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        std::vector<unsigned char> ihdr;
        put32(ihdr, side);
        put32(ihdr, side);
        ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
        put_chunk(png, "IHDR", ihdr);
        put_chunk(png, "IEND", {});
        auto r = fetalhc::decode_grayscale(png, "sides.png");
        ASSERT_FALSE(r);
        EXPECT_TRUE(contains(r.error(), "sides.png")) << r.error();
        EXPECT_TRUE(contains(r.error(), "megapixels")) << r.error();
    }
}

TEST(PngHostile, DamagedCrcOrASecondHeaderIsAnErrorNotAnImage) {
    const cv::Mat img = speckle_image(64, 48);
    std::vector<unsigned char> good;
    ASSERT_TRUE(cv::imencode(".png", img, good));
    ASSERT_FALSE(fetalhc::detail::decode_png_gray8(good.data(), good.size()).empty());
    // A flipped bit in the IDAT chunk's stored CRC: libpng refuses a critical chunk with a bad CRC.
    auto chunks = png_chunks(good);
    std::vector<unsigned char> bad_crc = good;
    size_t idat_end = 8;
    for (const auto& [type, data] : chunks) {
        idat_end += 12 + data.size();
        if (type == "IDAT") break;
    }
    bad_crc[idat_end - 1] ^= 0x01;
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(bad_crc.data(), bad_crc.size()).empty());
    auto r = fetalhc::decode_grayscale(bad_crc, "crc.png");
    ASSERT_FALSE(r) << "a PNG with a damaged critical chunk was decoded";
    EXPECT_TRUE(contains(r.error(), "crc.png")) << r.error();
    // Two IHDR chunks (the second one claiming another size).
    auto two = chunks;
    auto second = two.front();
    second.second[3] = 0x50;  // another width
    two.insert(two.begin() + 1, second);
    const auto twice = png_from_chunks(two);
    EXPECT_TRUE(fetalhc::detail::decode_png_gray8(twice.data(), twice.size()).empty());
    EXPECT_FALSE(fetalhc::decode_grayscale(twice, "two_headers.png"));
}

#ifdef FETALHC_DATA_DIR
// Every HC18 scan (all 8-bit grayscale PNGs; the masks and annotation files are labels) through the fast
// path equals OpenCV's decoding.
TEST(PngFastPath, EveryHc18ImageDecodesAsOpenCvDoes) {
    const fs::path root(FETALHC_DATA_DIR);
    if (!fs::is_directory(root / "training_set")) GTEST_SKIP() << "HC18 data absent at " << root;
    int n = 0, fast = 0;
    for (const char* sub : {"training_set", "test_set"})
        for (const auto& e : fs::directory_iterator(root / sub)) {
            const std::string name = e.path().filename().string();
            if (e.path().extension() != ".png" || name.find("_Mask") != std::string::npos || name.find("Annotation") != std::string::npos)
                continue;
            std::ifstream in(e.path(), std::ios::binary);
            std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
            const cv::Mat mine = fetalhc::detail::decode_png_gray8(bytes.data(), bytes.size());
            const cv::Mat ref = cv::imdecode(bytes, cv::IMREAD_GRAYSCALE);
            ASSERT_FALSE(ref.empty()) << e.path();
            ++n;
            if (mine.empty()) continue;
            ++fast;
            ASSERT_EQ(cv::norm(mine, ref, cv::NORM_INF), 0) << e.path();
        }
    EXPECT_GT(n, 1000);
    EXPECT_EQ(fast, n);  // HC18 is all 8-bit grayscale: every file took the fast path
}
#endif

// ---- expand_inputs --------------------------------------------------------------------------------------

TEST(HasImageExtension, KnowsTheSupportedFormatsInAnyCase) {
    for (const char* p : {"a.png", "a.PNG", "b.jpg", "b.JPEG", "c.bmp", "d.tif", "d.TIFF", "dir.x/e.Png"})
        EXPECT_TRUE(fetalhc::has_image_extension(p)) << p;
    for (const char* p : {"a.txt", "a.csv", "png", "a.png.bak", "a", "a.gif", "dir.png/readme"})
        EXPECT_FALSE(fetalhc::has_image_extension(p)) << p;
}

TEST_F(ImageIo, FolderExpandsToSortedImagesWithoutMasksOrOtherFiles) {
    const cv::Mat m = gray_pattern();
    write_image("b_HC.png", m);
    write_image("a_HC.jpg", m);
    write_image("a_HC_Mask.png", m);  // HC18 label beside its image: not an input
    write_image("c.TIFF", m);
    write_bytes("notes.txt", "not an image");
    write_bytes("pixel_sizes.csv", "a_HC.jpg,0.1\n");
    fs::create_directories(dir_ / "sub");  // folders are not entered
    write_image("sub/d.png", m);

    const auto items = fetalhc::expand_inputs({dir_.string()});
    std::vector<std::string> names;
    for (const auto& it : items) {
        EXPECT_TRUE(it.error.empty()) << it.path << ": " << it.error;
        names.push_back(fs::path(it.path).filename().string());
    }
    EXPECT_EQ(names, (std::vector<std::string>{"a_HC.jpg", "b_HC.png", "c.TIFF"}));
    // Each path is usable as is.
    for (const auto& it : items) EXPECT_TRUE(fs::exists(it.path)) << it.path;
}

TEST_F(ImageIo, EmptyFolderIsAnErrorEntryNamingIt) {
    fs::create_directories(dir_ / "empty");
    const auto items = fetalhc::expand_inputs({path("empty")});
    ASSERT_EQ(items.size(), 1u);
    EXPECT_FALSE(items[0].error.empty());
    EXPECT_TRUE(contains(items[0].error, path("empty"))) << items[0].error;
}

TEST_F(ImageIo, FolderWithOnlyMasksAndTextIsAnErrorEntry) {
    fs::create_directories(dir_ / "labels");
    write_image("labels/001_HC_Mask.png", gray_pattern());
    write_bytes("labels/readme.txt", "masks only");
    const auto items = fetalhc::expand_inputs({path("labels")});
    ASSERT_EQ(items.size(), 1u);
    EXPECT_FALSE(items[0].error.empty());
}

TEST_F(ImageIo, MissingPathPassesThroughAndFailsAtLoad) {
    const std::string missing = path("gone.png");
    const auto items = fetalhc::expand_inputs({missing});
    ASSERT_EQ(items.size(), 1u);
    EXPECT_EQ(items[0].path, missing);
    EXPECT_TRUE(items[0].error.empty()) << "the error belongs to load time, not to expansion";
    auto img = fetalhc::load_grayscale(items[0].path);
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), missing)) << img.error();
}

TEST_F(ImageIo, MixedInputsKeepTheGivenOrder) {
    const cv::Mat m = gray_pattern();
    fs::create_directories(dir_ / "folder");
    write_image("folder/y.png", m);
    write_image("folder/x.png", m);
    const std::string z = write_image("z.png", m);
    fs::create_directories(dir_ / "nothing");
    const auto items = fetalhc::expand_inputs({z, path("folder"), path("nothing"), path("missing.png")});
    ASSERT_EQ(items.size(), 5u);
    EXPECT_EQ(items[0].path, z);
    EXPECT_EQ(fs::path(items[1].path).filename(), "x.png");
    EXPECT_EQ(fs::path(items[2].path).filename(), "y.png");
    EXPECT_FALSE(items[3].error.empty());
    EXPECT_EQ(items[4].path, path("missing.png"));
    EXPECT_TRUE(items[4].error.empty());
}

TEST(ExpandInputs, NothingInNothingOut) {
    EXPECT_TRUE(fetalhc::expand_inputs({}).empty());
}

}  // namespace

// Found by fuzz/fuzz_decode_image (issue 16; its RSS passed 2 GB): libpng allocates and clears an
// ancillary chunk at its declared length before reading it, and only warns when that is over its
// 8 MB limit, so a 450-byte PNG whose tEXt chunk declared 2 GB took 2 GB for a moment. A chunk
// that runs past the end of the bytes is now refused before libpng reads anything. Peak RSS is
// the process's high-water mark: it may not rise by the 2 GB the chunk declares.
TEST(PngDecode, ChunkLongerThanTheFileIsRefusedBeforeLibpngAllocatesIt) {
    std::string png("\x89PNG\r\n\x1a\n", 8);
    const auto be32 = [&](uint32_t v) {
        for (int s = 24; s >= 0; s -= 8) png += char(v >> s & 0xFF);
    };
    const auto chunk_header = [&](uint32_t len, const char* type) { be32(len), png += std::string(type, 4); };
    const std::string ihdr("\0\0\0\x28\0\0\0\x24\x08\0\0\0\0", 13);  // 40 x 36, 8-bit gray
    chunk_header(13, "IHDR"), png += ihdr;
    be32(uint32_t(crc32(crc32(0, reinterpret_cast<const Bytef*>("IHDR"), 4), reinterpret_cast<const Bytef*>(ihdr.data()), 13)));
    chunk_header(0x7B00000C, "tEXt"), png += std::string("Comment\0seed", 12) + std::string(400, '\0');
    const std::vector<unsigned char> bytes(png.begin(), png.end());
    rusage before{}, after{};
    getrusage(RUSAGE_SELF, &before);
    auto img = fetalhc::decode_grayscale(bytes, "text_bomb.png");
    getrusage(RUSAGE_SELF, &after);
    ASSERT_FALSE(img);
    EXPECT_NE(img.error().find("text_bomb.png"), std::string::npos) << img.error();
    EXPECT_NE(img.error().find("tEXt chunk declares 2063597580 bytes"), std::string::npos) << img.error();
    EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 256L << 10) << "peak RSS rose by " << (after.ru_maxrss - before.ru_maxrss) / 1024
                                                               << " MB decoding a 450-byte file";
}

// ---- input files that are not regular files (issue 22) -----------------------------------------------
// A careless operator's inputs: each is named as what it is, and nothing blocks or reads without end.

namespace {

// Runs `fn` (which opens `fifo`) on a thread and waits at most 5 s. Should it block in open(), a
// writer is opened on the FIFO so that the read ends and the test fails instead of hanging.
template <class Fn>
bool returns_without_a_writer(const std::string& fifo, Fn fn) {
    auto done = std::async(std::launch::async, fn);
    if (done.wait_for(std::chrono::seconds(5)) == std::future_status::ready) return true;
    const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (w >= 0) ::close(w);
    done.wait();
    return false;
}

}  // namespace

TEST_F(ImageIo, CharacterDeviceIsNamedAsOneNotAsAnEmptyFile) {
    // /dev/zero used to give "is empty (0 bytes)" (its size is 0, yet it reads without end).
    auto img = fetalhc::load_grayscale("/dev/zero");
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), "'/dev/zero' is a character device, not a regular file")) << img.error();
    EXPECT_FALSE(contains(img.error(), "0 bytes")) << img.error();
}

TEST_F(ImageIo, NamedPipeIsRefusedWithoutBlocking) {
    const std::string fifo = path("scan.png");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
    fetalhc::Expected<cv::Mat> img = fetalhc::make_error("not run");
    ASSERT_TRUE(returns_without_a_writer(fifo, [&] { img = fetalhc::load_grayscale(fifo); }))
        << "load_grayscale blocked opening a named pipe";
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), "named pipe (FIFO)")) << img.error();
    EXPECT_TRUE(contains(img.error(), fifo)) << img.error();
}

TEST_F(ImageIo, SymlinkLoopIsNamedAsOneNotAsMissing) {
    fs::create_symlink(path("b.png"), path("a.png"));
    fs::create_symlink(path("a.png"), path("b.png"));
    auto img = fetalhc::load_grayscale(path("a.png"));
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), "symbolic link loop (ELOOP")) << img.error();
    EXPECT_FALSE(contains(img.error(), "does not exist")) << img.error();
}

TEST_F(ImageIo, BrokenSymlinkNamesItsTarget) {
    fs::create_symlink(path("moved_away.png"), path("scan.png"));
    auto img = fetalhc::load_grayscale(path("scan.png"));
    ASSERT_FALSE(img);
    EXPECT_TRUE(contains(img.error(), "broken symbolic link")) << img.error();
    EXPECT_TRUE(contains(img.error(), "moved_away.png")) << img.error();
}

TEST_F(ImageIo, RegularFileProblemSaysWhatStandsAtThePath) {
    const std::string file = write_bytes("notes.txt", "x");
    EXPECT_EQ(fetalhc::regular_file_problem(file, "an image"), "");
    fs::create_symlink(file, path("link.txt"));
    EXPECT_EQ(fetalhc::regular_file_problem(path("link.txt"), "an image"), "");  // links are followed
    EXPECT_TRUE(contains(fetalhc::regular_file_problem(path("none"), "an image"), "does not exist"));
    EXPECT_EQ(fetalhc::regular_file_problem(path("none"), "a database", /*missing_ok=*/true), "");
    EXPECT_TRUE(contains(fetalhc::regular_file_problem(file + "/below", "an image"), "part of the path is a file"));
    EXPECT_TRUE(contains(fetalhc::regular_file_problem(dir_.string(), "an image"), "is a folder, not an image"));
    const std::string fifo = path("pipe");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_TRUE(contains(fetalhc::regular_file_problem(fifo, "a CSV"), "is a named pipe (FIFO), not a regular file; pass a CSV"));
    if (fs::exists("/dev/loop0") && fs::is_block_file("/dev/loop0"))
        EXPECT_TRUE(contains(fetalhc::regular_file_problem("/dev/loop0", "an image"), "block device"));
}

TEST_F(ImageIo, ReadFileLimitedReadsUpToItsBudgetAndRefusesMore) {
    const std::string p = write_bytes("data.bin", std::string(1000, 'a'));
    auto all = fetalhc::read_file_limited(p, 1000, "a test file");
    ASSERT_TRUE(all) << all.error();
    EXPECT_EQ(all->size(), 1000u);
    auto over = fetalhc::read_file_limited(p, 999, "a test file");
    ASSERT_FALSE(over);
    EXPECT_TRUE(contains(over.error(), "is 1000 bytes, over the 999 bytes fetalhc reads as a test file")) << over.error();
    auto empty = fetalhc::read_file_limited(write_bytes("empty.bin", ""), 10, "a test file");
    ASSERT_TRUE(empty) << empty.error();
    EXPECT_TRUE(empty->empty());
}
