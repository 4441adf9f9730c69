// DICOM input: the real files in ../shared/dicom (each does what its README row says), synthetic
// files written here with DCMTK (photometric interpretations, bit depths, byte orders, every
// refusal, dual view, anisotropic pixels), and DICOM-wrapped HC18 scans against the PNG path.
#include "fetalhc/dicom.h"
#include "fetalhc/hc18.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"

#include "dicom_wrap.h"
#include "j2k_encode.h"
#include "net_frame.h"  // internal (src/): a segmentation of a mask

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dctk.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <random>

namespace fs = std::filesystem;
using namespace fetalhc;

namespace {

const std::string kShared = FETALHC_DICOM_DIR;
const std::string kHc18 = FETALHC_DATA_DIR;

#define NEED_SHARED()                                                                                  \
    if (!fs::exists(kShared + "/OBXXXX1A.dcm")) GTEST_SKIP() << "no DICOM samples in '" << kShared << "'"

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

fs::path temp_dir() {
    static const fs::path d = [] {
        fs::path p = fs::temp_directory_path() / ("fetalhc_test_dicom_" + std::to_string(::getpid()));
        fs::create_directories(p);
        return p;
    }();
    return d;
}

struct Region {
    cv::Rect box;  // inclusive pixels: x..x+width-1
    double delta_x_cm = 0.01, delta_y_cm = 0.01;
    int units = 3, spatial = 1, type = 1;
};

// What a synthetic file holds. Pixels: `frames` (CV_8UC1, CV_16UC1 or CV_8UC3 RGB).
struct Synthetic {
    std::vector<cv::Mat> frames;
    std::string photometric = "MONOCHROME2";
    int bits_stored = 0;  // 0: the Mat's depth
    std::vector<Region> regions;
    std::optional<cv::Vec2d> pixel_spacing;
    E_TransferSyntax xfer = EXS_LittleEndianExplicit;
    bool pixel_data = true;
    std::optional<std::string> frames_tag;  // NumberOfFrames as written (a lie when set)
    std::optional<cv::Size> size_tag;       // Rows/Columns as written
};

std::string write_dicom(const Synthetic& s, const std::string& name) {
    DcmFileFormat ff;
    DcmDataset* ds = ff.getDataset();
    char uid[100];
    const cv::Mat& f0 = s.frames.at(0);
    const bool colour = f0.channels() == 3, wide = f0.depth() == CV_16U;
    ds->putAndInsertString(DCM_SOPClassUID, s.frames.size() > 1 ? UID_UltrasoundMultiframeImageStorage : UID_UltrasoundImageStorage);
    ds->putAndInsertString(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
    ds->putAndInsertString(DCM_StudyInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_STUDY_UID_ROOT));
    ds->putAndInsertString(DCM_SeriesInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT));
    ds->putAndInsertString(DCM_Modality, "US");
    const cv::Size size = s.size_tag.value_or(f0.size());
    ds->putAndInsertUint16(DCM_Rows, Uint16(size.height));
    ds->putAndInsertUint16(DCM_Columns, Uint16(size.width));
    ds->putAndInsertUint16(DCM_SamplesPerPixel, colour ? 3 : 1);
    ds->putAndInsertString(DCM_PhotometricInterpretation, s.photometric.c_str());
    const int bits = wide ? 16 : 8, stored = s.bits_stored ? s.bits_stored : bits;
    ds->putAndInsertUint16(DCM_BitsAllocated, Uint16(bits));
    ds->putAndInsertUint16(DCM_BitsStored, Uint16(stored));
    ds->putAndInsertUint16(DCM_HighBit, Uint16(stored - 1));
    ds->putAndInsertUint16(DCM_PixelRepresentation, 0);
    if (colour) ds->putAndInsertUint16(DCM_PlanarConfiguration, 0);
    if (s.frames.size() > 1 || s.frames_tag)
        ds->putAndInsertString(DCM_NumberOfFrames, s.frames_tag.value_or(std::to_string(s.frames.size())).c_str());
    for (const auto& r : s.regions) {
        DcmItem* it = nullptr;
        ds->findOrCreateSequenceItem(DCM_SequenceOfUltrasoundRegions, it, -2);
        it->putAndInsertUint32(DCM_RegionLocationMinX0, Uint32(r.box.x));
        it->putAndInsertUint32(DCM_RegionLocationMinY0, Uint32(r.box.y));
        it->putAndInsertUint32(DCM_RegionLocationMaxX1, Uint32(r.box.x + r.box.width - 1));
        it->putAndInsertUint32(DCM_RegionLocationMaxY1, Uint32(r.box.y + r.box.height - 1));
        it->putAndInsertUint16(DCM_RegionSpatialFormat, Uint16(r.spatial));
        it->putAndInsertUint16(DCM_RegionDataType, Uint16(r.type));
        it->putAndInsertUint32(DCM_RegionFlags, 0);
        it->putAndInsertUint16(DCM_PhysicalUnitsXDirection, Uint16(r.units));
        it->putAndInsertUint16(DCM_PhysicalUnitsYDirection, Uint16(r.units));
        it->putAndInsertFloat64(DCM_PhysicalDeltaX, r.delta_x_cm);
        it->putAndInsertFloat64(DCM_PhysicalDeltaY, r.delta_y_cm);
    }
    if (s.pixel_spacing) {
        const std::string v = std::to_string((*s.pixel_spacing)[0]) + "\\" + std::to_string((*s.pixel_spacing)[1]);
        ds->putAndInsertString(DCM_PixelSpacing, v.c_str());
    }
    if (s.pixel_data) {
        std::vector<unsigned char> bytes;
        for (const auto& f : s.frames) {
            cv::Mat c = f.isContinuous() ? f : f.clone();
            bytes.insert(bytes.end(), c.data, c.data + c.total() * c.elemSize());
        }
        if (wide)
            ds->putAndInsertUint16Array(DCM_PixelData, reinterpret_cast<const Uint16*>(bytes.data()), bytes.size() / 2);
        else
            ds->putAndInsertUint8Array(DCM_PixelData, bytes.data(), bytes.size());
    }
    const std::string path = (temp_dir() / name).string();
    const OFCondition c = ff.saveFile(path.c_str(), s.xfer);
    EXPECT_TRUE(c.good()) << c.text();
    return path;
}

cv::Mat noise8(cv::Size size, unsigned seed) {
    cv::Mat m(size, CV_8UC1);
    cv::RNG rng(seed);
    rng.fill(m, cv::RNG::UNIFORM, 0, 256);
    return m;
}

std::vector<cv::Mat> frames_of(const std::string& path) {
    auto f = decode_dicom_frames(path);
    EXPECT_TRUE(f) << (f ? "" : f.error());
    return f ? *f : std::vector<cv::Mat>{};
}

bool same(const cv::Mat& a, const cv::Mat& b) {
    return a.size() == b.size() && a.type() == b.type() && cv::countNonZero(a != b) == 0;
}

}  // namespace

// ---- the real files (../shared/dicom, README) ------------------------------------------------------

TEST(DicomSamples, PhilipsFrameIsCalibratedFromRegionZero) {
    NEED_SHARED();
    auto h = read_dicom_header(kShared + "/OBXXXX1A.dcm");
    ASSERT_TRUE(h) << h.error();
    EXPECT_EQ(h->columns, 800);
    EXPECT_EQ(h->rows, 600);
    EXPECT_EQ(h->frames, 1);
    EXPECT_EQ(h->photometric_interpretation, "PALETTE COLOR");
    ASSERT_EQ(h->regions.size(), 2u);
    auto c = choose_calibration(*h, std::nullopt);
    ASSERT_TRUE(c) << c.error();
    ASSERT_TRUE(c->region);
    EXPECT_EQ(*c->region, 0);
    // PhysicalDelta 0.02622878766 cm, x 10 (README); the box overhanging by one column is accepted.
    EXPECT_NEAR(c->mm_per_px_x, 0.2622878766, 1e-9);
    EXPECT_NEAR(c->mm_per_px_y, 0.2622878766, 1e-9);
    EXPECT_FALSE(c->anisotropic());
    // The burned-in caliper: 40.5 px apart, read "1.06 cm" on the screen (rounded to 0.01 cm).
    EXPECT_NEAR(40.5 * c->mm_per_px_x, 10.6, 0.05);
    auto frames = frames_of(kShared + "/OBXXXX1A.dcm");
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(frames[0].size(), cv::Size(800, 600));
    EXPECT_EQ(frames[0].type(), CV_8UC1);
}

TEST(DicomSamples, RleGivesIdenticalPixelsAndCalibration) {
    NEED_SHARED();
    auto plain = frames_of(kShared + "/OBXXXX1A.dcm");
    auto rle = frames_of(kShared + "/OBXXXX1A_rle.dcm");
    ASSERT_EQ(rle.size(), 1u);
    EXPECT_TRUE(same(plain.at(0), rle[0]));
    auto h = read_dicom_header(kShared + "/OBXXXX1A_rle.dcm");
    ASSERT_TRUE(h);
    EXPECT_TRUE(contains(h->transfer_syntax_name, "RLE"));
    auto c = choose_calibration(*h, std::nullopt);
    ASSERT_TRUE(c);
    EXPECT_NEAR(c->mm_per_px_x, 0.2622878766, 1e-9);
}

TEST(DicomSamples, TwoFrameRleDecodesBothFrames) {
    NEED_SHARED();
    auto f = frames_of(kShared + "/OBXXXX1A_rle_2frame.dcm");
    ASSERT_EQ(f.size(), 2u);
    auto single = frames_of(kShared + "/OBXXXX1A.dcm");
    EXPECT_TRUE(same(f[0], single.at(0)));
    EXPECT_FALSE(same(f[0], f[1]));  // the collection's authors altered the second frame
}

TEST(DicomSamples, JpegYbrCineDecodesAndRefusesItsStaleCalibration) {
    NEED_SHARED();
    auto f = frames_of(kShared + "/examples_ybr_color.dcm");
    ASSERT_EQ(f.size(), 30u);
    EXPECT_EQ(f[0].size(), cv::Size(320, 240));
    double mx = 0;
    cv::minMaxLoc(f[15], nullptr, &mx);
    EXPECT_GT(mx, 50);  // a real picture, not a black frame
    auto h = read_dicom_header(kShared + "/examples_ybr_color.dcm");
    ASSERT_TRUE(h);
    auto c = choose_calibration(*h, std::nullopt);
    ASSERT_FALSE(c);
    EXPECT_TRUE(contains(c.error(), "outside")) << c.error();
    EXPECT_EQ(c.error_kind(), ErrorKind::InvalidCalibration);
    EXPECT_EQ(c.error_value().field, "pixel_size");  // the front ends name it: --pixel-size, pixel_size_mm
    EXPECT_FALSE(contains(c.error(), "--")) << c.error();
}

TEST(DicomSamples, UncalibratedRgbDecodesAndIsRefusedWithoutPixelSize) {
    NEED_SHARED();
    auto f = frames_of(kShared + "/US1_UNCR.dcm");
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].size(), cv::Size(640, 480));
    auto h = read_dicom_header(kShared + "/US1_UNCR.dcm");
    ASSERT_TRUE(h);
    auto c = choose_calibration(*h, std::nullopt);
    ASSERT_FALSE(c);
    EXPECT_TRUE(contains(c.error(), "no calibration")) << c.error();
}

// The README's row for US1_J2KR (a clear error) predates the OpenJPEG decoder: the JPEG 2000
// lossless copy (YBR_RCT, which OpenJPEG undoes) now gives exactly the uncompressed file's pixels.
TEST(DicomSamples, Jpeg2000LosslessGivesTheUncompressedPixels) {
    NEED_SHARED();
    auto h = read_dicom_header(kShared + "/US1_J2KR.dcm");
    ASSERT_TRUE(h) << h.error();
    EXPECT_TRUE(h->can_decode);
    EXPECT_EQ(h->transfer_syntax_uid, "1.2.840.10008.1.2.4.90");
    EXPECT_EQ(h->columns, 640);
    auto j2k = decode_dicom_frames(kShared + "/US1_J2KR.dcm");
    ASSERT_TRUE(j2k) << j2k.error();
    auto plain = frames_of(kShared + "/US1_UNCR.dcm");
    ASSERT_EQ(j2k->size(), 1u);
    ASSERT_EQ(plain.size(), 1u);
    ASSERT_EQ(j2k->at(0).size(), plain[0].size());
    ASSERT_EQ(j2k->at(0).type(), CV_8UC1);
    EXPECT_EQ(cv::norm(j2k->at(0), plain[0], cv::NORM_INF), 0);
}

TEST(DicomSamples, HeaderFromBytesMatchesHeaderFromFile) {
    NEED_SHARED();
    std::ifstream in(kShared + "/OBXXXX1A_rle.dcm", std::ios::binary);
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
    ASSERT_TRUE(is_dicom(bytes));
    auto h = read_dicom_header(bytes, "upload.dcm");
    ASSERT_TRUE(h) << h.error();
    EXPECT_EQ(h->path, "upload.dcm");
    EXPECT_EQ(h->regions.size(), 2u);
    auto f = decode_dicom_frames(bytes, "upload.dcm");
    ASSERT_TRUE(f) << f.error();
    EXPECT_TRUE(same(f->at(0), frames_of(kShared + "/OBXXXX1A.dcm").at(0)));
}

// ---- synthetic files: photometric interpretations, depths, byte order ------------------------------

TEST(DicomDecode, Monochrome2EightBitIsUnchanged) {
    Synthetic s;
    s.frames = {noise8({97, 61}, 1)};
    EXPECT_TRUE(same(frames_of(write_dicom(s, "m2_8.dcm")).at(0), s.frames[0]));
}

// DCMTK renders MONOCHROME1 through its internal value range, which rounds some levels the other
// way (dcm2pnm gives the same pixels): one grey level of tolerance.
TEST(DicomDecode, Monochrome1IsInverted) {
    Synthetic s;
    s.frames = {noise8({64, 48}, 2)};
    s.photometric = "MONOCHROME1";
    cv::Mat expected = 255 - s.frames[0];
    cv::Mat got = frames_of(write_dicom(s, "m1_8.dcm")).at(0), diff;
    ASSERT_EQ(got.size(), expected.size());
    cv::absdiff(got, expected, diff);
    double mx = 0;
    cv::minMaxLoc(diff, nullptr, &mx);
    EXPECT_LE(mx, 1);
}

// 16-bit data is scaled by the frame's maximum (as 16-bit PNGs are): exact up to rounding, so the
// tolerance is one grey level.
TEST(DicomDecode, SixteenBitIsScaledByItsMaximum) {
    for (bool big_endian : {false, true}) {
        Synthetic s;
        cv::Mat v(40, 50, CV_16UC1);
        cv::RNG(3).fill(v, cv::RNG::UNIFORM, 0, 3000);  // 12 bits stored
        s.frames = {v};
        s.bits_stored = 12;
        s.xfer = big_endian ? EXS_BigEndianExplicit : EXS_LittleEndianExplicit;
        double mx = 0;
        cv::minMaxLoc(v, nullptr, &mx);
        cv::Mat expected;
        v.convertTo(expected, CV_8U, 255.0 / mx);
        cv::Mat got = frames_of(write_dicom(s, big_endian ? "m2_16_be.dcm" : "m2_16.dcm")).at(0);
        ASSERT_EQ(got.type(), CV_8UC1);
        double diff = 0;
        cv::minMaxLoc(cv::abs(got - expected) + cv::abs(expected - got), nullptr, &diff);
        EXPECT_LE(diff, 1) << (big_endian ? "big endian" : "little endian");
        auto h = read_dicom_header((temp_dir() / (big_endian ? "m2_16_be.dcm" : "m2_16.dcm")).string());
        ASSERT_TRUE(h);
        if (big_endian) EXPECT_TRUE(contains(h->transfer_syntax_name, "Big Endian")) << h->transfer_syntax_name;
    }
}

TEST(DicomDecode, BigEndianEightBitIsUnchanged) {
    Synthetic s;
    s.frames = {noise8({33, 35}, 9)};
    s.xfer = EXS_BigEndianExplicit;
    EXPECT_TRUE(same(frames_of(write_dicom(s, "m2_8_be.dcm")).at(0), s.frames[0]));
}

TEST(DicomDecode, RgbBecomesLuminance) {
    Synthetic s;
    cv::Mat rgb(30, 40, CV_8UC3);
    cv::RNG(4).fill(rgb, cv::RNG::UNIFORM, 0, 256);
    s.frames = {rgb};
    s.photometric = "RGB";
    cv::Mat expected;
    cv::cvtColor(rgb, expected, cv::COLOR_RGB2GRAY);
    EXPECT_TRUE(same(frames_of(write_dicom(s, "rgb.dcm")).at(0), expected));
}

TEST(DicomDecode, MultiFrameKeepsFrameOrder) {
    Synthetic s;
    for (unsigned i = 0; i < 5; ++i) s.frames.push_back(noise8({20, 16}, 10 + i));
    auto got = frames_of(write_dicom(s, "multi.dcm"));
    ASSERT_EQ(got.size(), 5u);
    for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(same(got[i], s.frames[i])) << i;
}

// ---- bad files: clear errors, never a crash or a hang ----------------------------------------------

TEST(DicomBad, TruncatedFileIsAnError) {
    Synthetic s;
    s.frames = {noise8({200, 200}, 5)};
    const std::string whole = write_dicom(s, "whole.dcm");
    std::ifstream in(whole, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
    for (size_t keep : {bytes.size() / 2, size_t(300), size_t(140)}) {
        const std::string cut = (temp_dir() / ("cut_" + std::to_string(keep) + ".dcm")).string();
        std::ofstream(cut, std::ios::binary).write(bytes.data(), std::streamsize(keep));
        auto f = decode_dicom_frames(cut);
        ASSERT_FALSE(f) << keep;
        EXPECT_TRUE(contains(f.error(), cut)) << f.error();
    }
}

TEST(DicomBad, NoPixelDataIsAnError) {
    Synthetic s;
    s.frames = {noise8({20, 20}, 6)};
    s.pixel_data = false;
    s.regions = {{{0, 0, 20, 20}}};
    const std::string p = write_dicom(s, "nopixels.dcm");
    auto h = read_dicom_header(p);
    ASSERT_TRUE(h) << h.error();  // a header without an image is still readable (dicom info)
    EXPECT_FALSE(h->has_pixel_data);
    auto f = decode_dicom_frames(p);
    ASSERT_FALSE(f);
    EXPECT_TRUE(contains(f.error(), "no pixel data")) << f.error();
}

TEST(DicomBad, LyingFrameCountIsAnError) {
    Synthetic s;
    s.frames = {noise8({20, 20}, 7), noise8({20, 20}, 8)};
    s.frames_tag = "50";
    auto f = decode_dicom_frames(write_dicom(s, "lying.dcm"));
    ASSERT_FALSE(f);
    EXPECT_TRUE(contains(f.error(), "50 frames")) << f.error();
    s.frames_tag = "0";
    f = decode_dicom_frames(write_dicom(s, "zero_frames.dcm"));
    ASSERT_FALSE(f);
    s.frames_tag = "99999999";
    f = decode_dicom_frames(write_dicom(s, "huge_frames.dcm"));
    ASSERT_FALSE(f);
}

TEST(DicomBad, HugeHeaderIsRefusedBeforeAllocating) {
    Synthetic s;
    s.frames = {noise8({16, 16}, 9)};
    s.size_tag = cv::Size(60000, 60000);
    const std::string p = write_dicom(s, "huge.dcm");
    auto h = read_dicom_header(p);
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "60000 x 60000")) << h.error();
    EXPECT_FALSE(decode_dicom_frames(p));
}

TEST(DicomBad, NotDicomIsAnError) {
    const std::string p = (temp_dir() / "not.dcm").string();
    std::ofstream(p) << "hello";
    auto h = read_dicom_header(p);
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "not a DICOM")) << h.error();
    EXPECT_FALSE(is_dicom_file(p));
    EXPECT_FALSE(read_dicom_header("/nonexistent/x.dcm"));
}

// ---- calibration ------------------------------------------------------------------------------------

namespace {
DicomHeader header_with(std::vector<Region> regions, cv::Size size = {400, 300}) {
    Synthetic s;
    s.frames = {cv::Mat::zeros(size, CV_8UC1)};
    s.regions = std::move(regions);
    static int n = 0;
    auto h = read_dicom_header(write_dicom(s, "cal_" + std::to_string(n++) + ".dcm"));
    EXPECT_TRUE(h) << h.error();
    return *h;
}
}  // namespace

TEST(DicomCalibration, RefusesUnitsOtherThanCm) {
    Region r{{0, 0, 400, 300}};
    r.units = 4;  // seconds
    auto c = choose_calibration(header_with({r}), std::nullopt);
    ASSERT_FALSE(c);
    EXPECT_TRUE(contains(c.error(), "not cm")) << c.error();
}

TEST(DicomCalibration, RefusesZeroNegativeAndAbsurdDeltas) {
    for (double d : {0.0, -0.01, 0.5 /* 5 mm per pixel */}) {
        Region r{{0, 0, 400, 300}, d, d};
        auto c = choose_calibration(header_with({r}), std::nullopt);
        EXPECT_FALSE(c) << d;
    }
}

TEST(DicomCalibration, RefusesABoxOutsideTheImageButToleratesAPixelOfOverhang) {
    EXPECT_FALSE(choose_calibration(header_with({{{50, 40, 500, 300}}}), std::nullopt));
    auto ok = choose_calibration(header_with({{{100, 20, 301, 200}}}), std::nullopt);  // ends at column 400 of 400
    ASSERT_TRUE(ok) << ok.error();
    EXPECT_EQ(ok->keep.at(0), cv::Rect(100, 20, 300, 200));
}

TEST(DicomCalibration, FallsBackToPixelSpacingOnlyWithoutARegion) {
    Synthetic s;
    s.frames = {cv::Mat::zeros(30, 40, CV_8UC1)};
    s.pixel_spacing = cv::Vec2d(0.2, 0.1);  // rows 0.2 mm apart, columns 0.1 mm
    auto h = read_dicom_header(write_dicom(s, "spacing.dcm"));
    ASSERT_TRUE(h);
    auto c = choose_calibration(*h, std::nullopt);
    ASSERT_TRUE(c) << c.error();
    EXPECT_EQ(c->source, "PixelSpacing");
    EXPECT_DOUBLE_EQ(c->mm_per_px_x, 0.1);
    EXPECT_DOUBLE_EQ(c->mm_per_px_y, 0.2);
    EXPECT_TRUE(c->anisotropic());
    s.regions = {{{0, 0, 40, 30}, 0.005, 0.005}};
    h = read_dicom_header(write_dicom(s, "spacing_and_region.dcm"));
    c = choose_calibration(*h, std::nullopt);
    ASSERT_TRUE(c);
    EXPECT_NEAR(c->mm_per_px_x, 0.05, 1e-12);  // the region wins
}

TEST(DicomCalibration, DualViewIsResolvedByTheHeadCentre) {
    const Region left{{0, 0, 200, 300}, 0.02, 0.02}, right{{200, 0, 200, 300}, 0.01, 0.01};
    const DicomHeader h = header_with({left, right});
    auto before = choose_calibration(h, std::nullopt);
    ASSERT_FALSE(before);
    EXPECT_TRUE(contains(before.error(), "dual view")) << before.error();
    auto l = choose_calibration(h, cv::Point2d(80, 150)), r = choose_calibration(h, cv::Point2d(300, 150));
    ASSERT_TRUE(l && r);
    EXPECT_EQ(*l->region, 0);
    EXPECT_NEAR(l->mm_per_px_x, 0.2, 1e-12);
    EXPECT_EQ(*r->region, 1);
    EXPECT_NEAR(r->mm_per_px_x, 0.1, 1e-12);
    // Two regions that agree need no head.
    auto same_cal = choose_calibration(header_with({left, {{200, 0, 200, 300}, 0.02, 0.02}}), std::nullopt);
    ASSERT_TRUE(same_cal) << same_cal.error();
    EXPECT_EQ(same_cal->keep.size(), 2u);
}

TEST(DicomCalibration, MaskKeepsOnlyTheRegion) {
    cv::Mat img(10, 10, CV_8UC1, cv::Scalar(200));
    cv::Mat m = mask_outside(img, {cv::Rect(2, 3, 4, 5)});
    EXPECT_EQ(cv::countNonZero(m), 20);
    EXPECT_EQ(m.at<uchar>(3, 2), 200);
    EXPECT_EQ(m.at<uchar>(0, 0), 0);
}

// ---- anisotropic pixels: measured in physical space ------------------------------------------------

// A physical ellipse (mm) rasterised on a grid of 0.15 x 0.21 mm pixels: in pixels it is an
// affinely stretched ellipse whose perimeter is not the physical one times any single pixel size.
// Fitted in physical space, HC matches Ramanujan's perimeter of the physical ellipse within 0.5%:
// the boundary is extracted to sub-pixel precision from a binary mask, whose staircase displaces
// the edge by at most half a pixel (<= 0.105 mm on semi-axes of 24-30 mm, i.e. < 0.4%).
TEST(DicomAnisotropic, HcIsThePhysicalEllipses) {
    const double sx = 0.15, sy = 0.21;
    const Ellipse phys{40, 38, 30, 24, 0.6};  // mm
    cv::Mat mask(380, 560, CV_8UC1, cv::Scalar(0));
    const double c = std::cos(phys.angle), s = std::sin(phys.angle);
    for (int y = 0; y < mask.rows; ++y)
        for (int x = 0; x < mask.cols; ++x) {
            const double dx = x * sx - phys.cx, dy = y * sy - phys.cy;
            const double u = dx * c + dy * s, v = -dx * s + dy * c;
            if (u * u / (phys.a * phys.a) + v * v / (phys.b * phys.b) <= 1) mask.at<uchar>(y, x) = 255;
        }
    cv::Mat prob;
    mask.convertTo(prob, CV_32F, 1.0 / 255);
    Segmentation seg = segmentation_at_image(prob);
    seg.presence = 0.98f;
    MeasureOptions o;
    o.pixel_size_mm = sx;
    o.pixel_size_y_mm = sy;
    auto m = measure_from_segmentation(seg, cv::Mat(), o, "anisotropic");  // no image: no sector to find
    ASSERT_TRUE(m) << m.error();
    const double truth = ramanujan_perimeter(phys.a, phys.b);
    EXPECT_NEAR(m->hc_mm, truth, 0.005 * truth);
    EXPECT_NEAR(m->ofd_mm, 2 * phys.a, 0.01 * 2 * phys.a);
    EXPECT_NEAR(m->bpd_mm, 2 * phys.b, 0.01 * 2 * phys.b);
    ASSERT_TRUE(m->pixel_size_y_mm);
    // One average pixel size would be off by far more than the tolerance.
    o.pixel_size_mm = (sx + sy) / 2;
    o.pixel_size_y_mm.reset();
    auto naive = measure_from_segmentation(seg, cv::Mat(), o, "averaged");
    ASSERT_TRUE(naive);
    EXPECT_GT(std::abs(naive->hc_mm - truth), 0.02 * truth);
}

// ---- HC18 scans wrapped into DICOM: the same HC as the PNG path ------------------------------------

namespace {
bool have_model_and_data() { return fs::exists(FETALHC_DEFAULT_MODEL) && fs::exists(kHc18 + "/training_set/010_HC.png"); }

// An HC18 scan, its pixel size, its measurement through the PNG path, and the scan wrapped into a
// one-region DICOM at that pixel size (written to the temp folder, never committed).
struct WrappedScan {
    cv::Mat img;
    double px = 0;
    Measurement ref;
    std::string dcm;
};
// The shipped model's Measurer and HC18's pixel sizes, for the tests that wrap HC18 scans (false,
// with a test failure, when either cannot be read).
bool load_hc18_measurer(std::map<std::string, double>& sizes, std::optional<Measurer>& measurer) {
    auto s = read_pixel_sizes(kHc18 + "/training_set_pixel_size_and_HC.csv");
    if (!s) return ADD_FAILURE() << s.error(), false;
    auto seg = Segmenter::load(FETALHC_DEFAULT_MODEL);
    if (!seg) return ADD_FAILURE() << seg.error(), false;
    sizes = std::move(*s);
    measurer.emplace(*seg);
    return true;
}

void wrap_scan(const Measurer& measurer, const std::map<std::string, double>& sizes, const std::string& name,
               const std::string& suffix, WrappedScan& out) {
    const std::string png = kHc18 + "/training_set/" + name;
    auto img = load_grayscale(png);
    ASSERT_TRUE(img) << img.error();
    out.img = *img;
    out.px = sizes.at(name);
    MeasureOptions o;
    o.pixel_size_mm = out.px;
    auto ref = measurer.measure(*img, o, png);
    ASSERT_TRUE(ref) << ref.error();
    out.ref = *ref;
    Synthetic s;
    s.frames = {*img};
    s.regions = {{{0, 0, img->cols, img->rows}, out.px / 10, out.px / 10}};
    out.dcm = write_dicom(s, name + suffix);
}
}  // namespace

TEST(DicomMeasure, WrappedHc18ScansGiveThePngHc) {
    if (!have_model_and_data()) GTEST_SKIP() << "needs the model and HC18 in '" << kHc18 << "'";
    std::map<std::string, double> sizes_map;
    std::optional<Measurer> loaded;
    if (!load_hc18_measurer(sizes_map, loaded)) return;
    const auto* sizes = &sizes_map;
    const Measurer& measurer = *loaded;
    for (const std::string name : {"010_HC.png", "011_HC.png", "013_HC.png"}) {
        WrappedScan w;
        wrap_scan(measurer, *sizes, name, ".dcm", w);
        if (HasFatalFailure()) return;
        const cv::Mat* img = &w.img;
        const double px = w.px;
        const Measurement* ref = &w.ref;
        const std::string dcm = w.dcm;
        auto h = read_dicom_header(dcm);
        ASSERT_TRUE(h) << h.error();
        auto frames = frames_of(dcm);
        ASSERT_EQ(frames.size(), 1u);
        EXPECT_TRUE(same(frames[0], *img)) << name;
        auto r = measure_dicom_frame(measurer, *h, frames[0], {}, dcm);
        ASSERT_TRUE(r) << r.error();
        EXPECT_NEAR(r->m.hc_mm, ref->hc_mm, 0.1) << name;
        EXPECT_EQ(r->calibration.region.value_or(-1), 0);
        // The head's region is chosen in a dual view whose other half has another calibration.
        cv::Mat dual = cv::Mat::zeros(img->rows, img->cols * 2, CV_8UC1);
        img->copyTo(dual(cv::Rect(img->cols, 0, img->cols, img->rows)));
        Synthetic d;
        d.frames = {dual};
        d.regions = {{{0, 0, img->cols, img->rows}, 3 * px / 10, 3 * px / 10},
                     {{img->cols, 0, img->cols, img->rows}, px / 10, px / 10}};
        const std::string ddcm = write_dicom(d, name + "_dual.dcm");
        auto dh = read_dicom_header(ddcm);
        ASSERT_TRUE(dh);
        auto dr = measure_dicom_frame(measurer, *dh, frames_of(ddcm).at(0), {}, ddcm);
        ASSERT_TRUE(dr) << dr.error();
        EXPECT_EQ(dr->calibration.region.value_or(-1), 1) << name;
        EXPECT_NEAR(dr->m.pixel_size_mm, px, 1e-12);
        // The network sees the scan inside an image twice as wide (half the resolution after its
        // letterbox), so the HC is the PNG's only to the network's resolution: 2%.
        EXPECT_NEAR(dr->m.hc_mm, ref->hc_mm, 0.02 * ref->hc_mm) << name;
        // A given pixel size that disagrees by more than 1% is used, with a note.
        DicomMeasureOptions given;
        given.pixel_size_mm = px * 1.05;
        auto g = measure_dicom_frame(measurer, *h, frames[0], given, dcm);
        ASSERT_TRUE(g) << g.error();
        EXPECT_NEAR(g->m.pixel_size_mm, px * 1.05, 1e-12);
        EXPECT_EQ(g->notes.size(), 1u);
    }
}

TEST(DicomMeasure, HeadLeavingItsRegionIsRefused) {
    if (!have_model_and_data()) GTEST_SKIP() << "needs the model and HC18 in '" << kHc18 << "'";
    auto seg = Segmenter::load(FETALHC_DEFAULT_MODEL);
    ASSERT_TRUE(seg);
    const Measurer measurer(*seg);
    auto img = load_grayscale(kHc18 + "/training_set/010_HC.png");
    ASSERT_TRUE(img);
    // Measured with the whole image, the head lies across the image's centre column: a region that
    // ends at the centre column (second region right of it, other calibration) cuts it.
    Synthetic s;
    s.frames = {*img};
    const int half = img->cols / 2;
    s.regions = {{{0, 0, half, img->rows}, 0.01, 0.01}, {{half, 0, img->cols - half, img->rows}, 0.02, 0.02}};
    const std::string p = write_dicom(s, "straddle.dcm");
    auto h = read_dicom_header(p);
    ASSERT_TRUE(h);
    // The premise, checked rather than assumed: on the whole image the head crosses the centre column.
    MeasureOptions whole_opt;
    whole_opt.pixel_size_mm = 0.1;
    auto whole = measurer.measure(*img, whole_opt);
    ASSERT_TRUE(whole) << whole.error();
    const Ellipse& e = whole->ellipse_px;
    const double half_width = std::sqrt(e.a * e.a * std::cos(e.angle) * std::cos(e.angle) +
                                        e.b * e.b * std::sin(e.angle) * std::sin(e.angle));
    ASSERT_LT(e.cx - half_width, half) << "premise: the head of 010_HC does not reach the centre column";
    ASSERT_GT(e.cx + half_width, half) << "premise: the head of 010_HC does not reach the centre column";
    // Measured with the file's regions, a head straddling two calibrations must be refused, and
    // refused for that reason (not as "no fetal head").
    auto r = measure_dicom_frame(measurer, *h, frames_of(p).at(0), {}, p);
    ASSERT_FALSE(r) << "a head straddling two regions was measured: HC " << r->m.hc_mm << " mm";
    EXPECT_TRUE(contains(r.error(), "outside") || contains(r.error(), "none of")) << r.error();
}

// Each compressed transfer syntax DCMTK decodes here, written by DCMTK's own encoders (the `dcmtk`
// command-line tools): lossless ones give the uncompressed pixels exactly; JPEG baseline is lossy
// (8-bit DCT at the tools' default quality 90: a few grey levels on noise-free structure, so a
// mean absolute difference under 3 levels).
TEST(DicomDecode, CompressedTransferSyntaxesMatchTheUncompressedPixels) {
    if (std::system("command -v dcmcjpeg >/dev/null 2>&1 && command -v dcmcjpls >/dev/null 2>&1 && "
                    "command -v dcmcrle >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "DCMTK's command-line tools (package dcmtk) are not installed";
    Synthetic s;
    cv::Mat img(120, 160, CV_8UC1);
    for (int y = 0; y < img.rows; ++y)
        for (int x = 0; x < img.cols; ++x) img.at<uchar>(y, x) = uchar((x * 3 + y * 2) % 256);
    cv::circle(img, {80, 60}, 40, cv::Scalar(250), 3);
    s.frames = {img, 255 - img};
    const std::string src = write_dicom(s, "to_compress.dcm");
    const struct { const char* tool; const char* opts; const char* name; bool lossless; } cases[] = {
        {"dcmcrle", "", "rle", true},
        {"dcmcjpeg", "+el", "jpeg_lossless", true},
        {"dcmcjpeg", "+eb", "jpeg_baseline", false},
        {"dcmcjpls", "+el", "jpegls_lossless", true},
    };
    for (const auto& c : cases) {
        const std::string out = (temp_dir() / (std::string(c.name) + ".dcm")).string();
        const std::string cmd = std::string(c.tool) + " " + c.opts + " '" + src + "' '" + out + "'";
        ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
        auto f = frames_of(out);
        ASSERT_EQ(f.size(), 2u) << c.name;
        for (size_t i = 0; i < 2; ++i) {
            if (c.lossless) {
                EXPECT_TRUE(same(f[i], s.frames[i])) << c.name << " frame " << i;
            } else {
                cv::Mat d;
                cv::absdiff(f[i], s.frames[i], d);
                EXPECT_LT(cv::mean(d)[0], 3) << c.name << " frame " << i;
            }
        }
        auto h = read_dicom_header(out);
        ASSERT_TRUE(h);
        EXPECT_TRUE(h->can_decode) << h->transfer_syntax_name;
    }
}

// ---- wrong value lengths: files DCMTK would not write, built byte by byte ---------------------------

namespace {
// Explicit VR little endian, with every length written as given (so it may lie).
struct RawDicom {
    std::string b = std::string(128, '\0') + "DICM";
    void u16(unsigned v) { b += char(v & 255), b += char(v >> 8 & 255); }
    void u32(unsigned long v) { u16(unsigned(v & 0xFFFF)), u16(unsigned(v >> 16 & 0xFFFF)); }
    void el(unsigned g, unsigned e, const char* vr, unsigned long len) {
        u16(g), u16(e), b += vr;
        const std::string v = vr;
        if (v == "OB" || v == "OW" || v == "SQ" || v == "UN") u16(0), u32(len);
        else u16(unsigned(len));
    }
    void str(unsigned g, unsigned e, const char* vr, std::string v) {
        if (v.size() % 2) v += std::string(vr) == "UI" ? '\0' : ' ';
        el(g, e, vr, v.size());
        b += v;
    }
    void us(unsigned g, unsigned e, unsigned v) { el(g, e, "US", 2), u16(v); }
    void meta() {
        el(0x0002, 0x0001, "OB", 2), b += std::string("\0\1", 2);
        str(0x0002, 0x0002, "UI", UID_UltrasoundImageStorage);
        str(0x0002, 0x0003, "UI", "1.2.3.4.5");
        str(0x0002, 0x0010, "UI", UID_LittleEndianExplicitTransferSyntax);
        str(0x0008, 0x0016, "UI", UID_UltrasoundImageStorage);
        str(0x0008, 0x0018, "UI", "1.2.3.4.5");
    }
    // The image pixel module of a 30 x 20 8-bit MONOCHROME2 image; `rows_bytes`: Rows written with
    // that length (3: an odd US length) and that many bytes.
    void image(int rows_len = 2) {
        us(0x0028, 0x0002, 1);
        str(0x0028, 0x0004, "CS", "MONOCHROME2");
        el(0x0028, 0x0010, "US", unsigned(rows_len)), u16(20), b += std::string(size_t(std::max(0, rows_len - 2)), '\0');
        us(0x0028, 0x0011, 30);
        us(0x0028, 0x0100, 8), us(0x0028, 0x0101, 8), us(0x0028, 0x0102, 7), us(0x0028, 0x0103, 0);
    }
    void pixels(unsigned long len, size_t bytes) { el(0x7FE0, 0x0010, "OB", len), b += std::string(bytes, '\x40'); }
    std::string save(const std::string& name) const {
        const std::string p = (temp_dir() / name).string();
        std::ofstream(p, std::ios::binary).write(b.data(), std::streamsize(b.size()));
        return p;
    }
};
}  // namespace

// Each one is refused with the file's name, from the file and from bytes in memory (an upload).
// Without the value-length checks the odd lengths were read silently: DCMTK pads an odd length,
// so a 3-byte US Rows read as "20\0" and a 5-byte UL region corner as one number and two stray bytes.
TEST(DicomBad, WrongValueLengthsAreErrors) {
    struct Case { std::string name; RawDicom d; std::string says; };
    std::vector<Case> cases;
    {
        RawDicom d;  // pixel data whose length runs 1 MB past the end of the file (the walk reads files too)
        d.meta(), d.image(), d.pixels(1'000'000, 600);
        cases.push_back({"len_past_end.dcm", d, "longer than the file"});
    }
    {
        RawDicom d;  // a text element whose length runs past the end of the file
        d.meta(), d.el(0x0028, 0x0004, "CS", 60000), d.b += "MONOCHROME2";
        cases.push_back({"cs_past_end.dcm", d, "longer than the file"});
    }
    {
        RawDicom d;  // Rows (US) with an odd length, 3 bytes
        d.meta(), d.image(3), d.pixels(600, 600);
        cases.push_back({"odd_us.dcm", d, "wrong value length in Rows"});
    }
    {
        RawDicom d;  // Rows (US) claims 3 bytes but holds 2: everything after it is misread
        d.meta();
        d.us(0x0028, 0x0002, 1), d.str(0x0028, 0x0004, "CS", "MONOCHROME2"), d.el(0x0028, 0x0010, "US", 3), d.u16(20);
        d.us(0x0028, 0x0011, 30), d.us(0x0028, 0x0100, 8), d.us(0x0028, 0x0101, 8), d.pixels(600, 600);
        cases.push_back({"odd_us_misaligned.dcm", d, "DICOM"});
    }
    {
        RawDicom d;  // a region whose RegionLocationMinX0 (UL) has 5 bytes
        d.meta(), d.image();
        d.el(0x0018, 0x6011, "SQ", 0xFFFFFFFF), d.u16(0xFFFE), d.u16(0xE000), d.u32(0xFFFFFFFF);
        d.el(0x0018, 0x6018, "UL", 5), d.u32(0), d.b += '\0';
        for (unsigned e : {0x601Au, 0x601Cu, 0x601Eu}) d.el(0x0018, e, "UL", 4), d.u32(e == 0x601C ? 29 : e == 0x601E ? 19 : 0);
        for (unsigned e : {0x6012u, 0x6014u, 0x6024u, 0x6026u}) d.us(0x0018, e, e < 0x6020 ? 1 : 3);
        const double delta = 0.01;
        for (unsigned e : {0x602Cu, 0x602Eu}) d.el(0x0018, e, "FD", 8), d.b.append(reinterpret_cast<const char*>(&delta), 8);
        d.u16(0xFFFE), d.u16(0xE00D), d.u32(0), d.u16(0xFFFE), d.u16(0xE0DD), d.u32(0);
        d.pixels(600, 600);
        cases.push_back({"odd_ul_region.dcm", d, "wrong value length in RegionLocationMinX0"});
    }
    {
        RawDicom d;  // Rows as UL with 2 bytes (a VR that does not match its length)
        d.meta();
        d.us(0x0028, 0x0002, 1), d.str(0x0028, 0x0004, "CS", "MONOCHROME2"), d.el(0x0028, 0x0010, "UL", 2), d.u16(20);
        d.us(0x0028, 0x0011, 30), d.us(0x0028, 0x0100, 8), d.us(0x0028, 0x0101, 8), d.us(0x0028, 0x0102, 7);
        d.us(0x0028, 0x0103, 0), d.pixels(600, 600);
        cases.push_back({"short_ul.dcm", d, "wrong value length in Rows"});
    }
    {
        RawDicom d;  // the control: the same bytes with right lengths decode
        d.meta(), d.image(), d.pixels(600, 600);
        const std::string p = d.save("right_lengths.dcm");
        auto f = decode_dicom_frames(p);
        ASSERT_TRUE(f) << f.error();
        EXPECT_EQ(f->at(0).size(), cv::Size(30, 20));
    }
    for (const auto& c : cases) {
        const std::string p = c.d.save(c.name);
        auto h = read_dicom_header(p);
        auto f = decode_dicom_frames(p);
        ASSERT_FALSE(h && f) << c.name;
        const std::string e = h ? f.error() : h.error();
        EXPECT_TRUE(contains(e, p)) << e;
        EXPECT_TRUE(contains(e, c.says)) << c.name << ": " << e;
        const std::vector<unsigned char> bytes(c.d.b.begin(), c.d.b.end());
        auto hb = read_dicom_header(bytes, "upload_" + c.name);
        auto fb = decode_dicom_frames(bytes, "upload_" + c.name);
        ASSERT_FALSE(hb && fb) << c.name << " from bytes";
        EXPECT_TRUE(contains(hb ? fb.error() : hb.error(), "upload_" + c.name)) << (hb ? fb.error() : hb.error());
    }
}

// Found by fuzz/fuzz_dicom: from bytes in memory DCMTK allocates a value at its declared length
// before reading it, so a 4 KB upload whose element declared 2.6 GB allocated 2.6 GB. The lengths are
// now walked first (explicit and implicit VR, inside sequences and items) and a length that runs
// past the end of the bytes is refused before DCMTK reads anything.
TEST(DicomBad, DeclaredLengthPastTheEndOfBytesIsRefusedBeforeReading) {
    struct Case { std::string name; RawDicom d; };
    std::vector<Case> cases;
    {
        RawDicom d;  // explicit VR: a text element declaring 60000 bytes (short form)
        d.meta(), d.el(0x0010, 0x0010, "PN", 60000), d.b += "Fuzz^Seed";
        cases.push_back({"explicit_short_form", d});
    }
    {
        RawDicom d;  // explicit VR: OB declaring 2.6 GB
        d.meta(), d.image(), d.pixels(0xA0A0A0A0ul, 600);
        cases.push_back({"explicit_ob", d});
    }
    {
        RawDicom d;  // inside an item of a sequence (undefined lengths): a UL region corner declaring 48 KB
        d.meta(), d.image();
        d.el(0x0018, 0x6011, "SQ", 0xFFFFFFFF), d.u16(0xFFFE), d.u16(0xE000), d.u32(0xFFFFFFFF);
        d.el(0x0018, 0x6018, "UL", 0xC000);
        d.u16(0xFFFE), d.u16(0xE00D), d.u32(0), d.u16(0xFFFE), d.u16(0xE0DD), d.u32(0);
        cases.push_back({"in_sequence", d});
    }
    {
        RawDicom d;  // implicit VR little endian (the transfer syntax in the meta header): 2.6 GB
        d.el(0x0002, 0x0001, "OB", 2), d.b += std::string("\0\1", 2);
        d.str(0x0002, 0x0002, "UI", UID_UltrasoundImageStorage);
        d.str(0x0002, 0x0003, "UI", "1.2.3.4.5");
        d.str(0x0002, 0x0010, "UI", UID_LittleEndianImplicitTransferSyntax);
        d.u16(0x0008), d.u16(0x0016), d.u32(0x30), d.b += std::string(0x30, '1');
        d.u16(0x0010), d.u16(0x0010), d.u32(0xA0A0A0A0ul), d.b += "Fuzz^Seed";
        cases.push_back({"implicit", d});
    }
    for (const auto& c : cases) {
        const std::vector<unsigned char> bytes(c.d.b.begin(), c.d.b.end());
        auto h = read_dicom_header(bytes, c.name + ".dcm");
        ASSERT_FALSE(h) << c.name;
        EXPECT_TRUE(contains(h.error(), c.name + ".dcm")) << h.error();
        EXPECT_TRUE(contains(h.error(), "longer than the file")) << c.name << ": " << h.error();
        auto f = decode_dicom_frames(bytes, c.name + ".dcm");
        ASSERT_FALSE(f) << c.name;
        EXPECT_TRUE(contains(f.error(), "longer than the file")) << c.name << ": " << f.error();
    }
    // The walk refuses nothing DCMTK reads: the control file, every synthetic encoding and every
    // sample read the same from bytes as from the file.
    RawDicom ok;
    ok.meta(), ok.image(), ok.pixels(600, 600);
    std::vector<std::string> files = {ok.save("walk_control.dcm")};
    Synthetic s;
    s.frames = {noise8({40, 30}, 31), noise8({40, 30}, 32)};
    s.regions = {{cv::Rect(0, 0, 40, 30)}};
    for (auto xfer : {EXS_LittleEndianExplicit, EXS_LittleEndianImplicit, EXS_BigEndianExplicit}) {
        s.xfer = xfer;
        files.push_back(write_dicom(s, "walk_" + std::to_string(int(xfer)) + ".dcm"));
    }
    if (fs::exists(kShared))
        for (const auto& e : fs::directory_iterator(kShared))
            if (e.path().extension() == ".dcm") files.push_back(e.path().string());
    for (const auto& p : files) {
        std::ifstream in(p, std::ios::binary);
        const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
        auto hf = read_dicom_header(p);
        auto hb = read_dicom_header(bytes, "bytes.dcm");
        ASSERT_EQ(bool(hf), bool(hb)) << p << ": " << (hb ? hf.error() : hb.error());
        auto ff = decode_dicom_frames(p);
        auto fb = decode_dicom_frames(bytes, "bytes.dcm");
        ASSERT_EQ(bool(ff), bool(fb)) << p << ": " << (fb ? ff.error() : fb.error());
        if (ff) EXPECT_EQ(ff->size(), fb->size()) << p;
    }
}

// A compressed file whose NumberOfFrames is larger than its fragments can hold: refused from the
// fragment count before anything is decoded.
TEST(DicomBad, LyingFrameCountInACompressedFileIsAnError) {
    if (std::system("command -v dcmcrle >/dev/null 2>&1 && command -v dcmodify >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "DCMTK's command-line tools (package dcmtk) are not installed";
    Synthetic s;
    s.frames = {noise8({32, 24}, 21), noise8({32, 24}, 22)};
    const std::string src = write_dicom(s, "to_rle_lying.dcm");
    const std::string out = (temp_dir() / "rle_lying.dcm").string();
    ASSERT_EQ(std::system(("dcmcrle '" + src + "' '" + out + "' && dcmodify -nb -m '(0028,0008)=7' '" + out + "'").c_str()), 0);
    auto f = decode_dicom_frames(out);
    ASSERT_FALSE(f);
    EXPECT_TRUE(contains(f.error(), "7 frames")) << f.error();
    EXPECT_TRUE(contains(f.error(), out)) << f.error();
}

// Uncompressed YBR_FULL (PS3.3 C.7.6.3.1.2: Y = .299 R + .587 G + .114 B, Cb/Cr offset by 128)
// gives the RGB source's luminance. Tolerance 2 grey levels: Y, Cb and Cr are stored rounded to
// integers (0.5 each), DCMTK rounds the R, G, B it converts back and clips them to 0..255 (the
// rounded Cb/Cr can push a saturated colour just outside), and the luminance is rounded again;
// each step is under one level and they do not all add up to more than 2.
// A YBR frame converted to gray against the gray of its RGB source: YCbCr rounding leaves at most
// 2 grey levels and well under one on average.
void expect_gray_close(const cv::Mat& got, const cv::Mat& expected) {
    cv::Mat diff;
    cv::absdiff(got, expected, diff);
    double mx = 0;
    cv::minMaxLoc(diff, nullptr, &mx);
    EXPECT_LE(mx, 2);
    EXPECT_LT(cv::mean(diff)[0], 0.6);
}

TEST(DicomDecode, YbrFullBecomesLuminance) {
    cv::Mat rgb(48, 64, CV_8UC3);
    cv::RNG(31).fill(rgb, cv::RNG::UNIFORM, 0, 256);
    cv::rectangle(rgb, {0, 0, 16, 16}, cv::Scalar(255, 0, 0), cv::FILLED);  // saturated corners
    cv::rectangle(rgb, {16, 0, 16, 16}, cv::Scalar(0, 0, 255), cv::FILLED);
    cv::Mat ybr(rgb.size(), CV_8UC3);
    for (int y = 0; y < rgb.rows; ++y)
        for (int x = 0; x < rgb.cols; ++x) {
            const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
            const double r = p[0], g = p[1], b = p[2];
            ybr.at<cv::Vec3b>(y, x) = cv::Vec3b(cv::saturate_cast<uchar>(0.299 * r + 0.587 * g + 0.114 * b),
                                                cv::saturate_cast<uchar>(-0.168736 * r - 0.331264 * g + 0.5 * b + 128),
                                                cv::saturate_cast<uchar>(0.5 * r - 0.418688 * g - 0.081312 * b + 128));
        }
    Synthetic s;
    s.frames = {ybr};
    s.photometric = "YBR_FULL";
    const std::string p = write_dicom(s, "ybr_full.dcm");
    auto h = read_dicom_header(p);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->photometric_interpretation, "YBR_FULL");
    cv::Mat expected;
    cv::cvtColor(rgb, expected, cv::COLOR_RGB2GRAY);
    cv::Mat got = frames_of(p).at(0);
    ASSERT_EQ(got.size(), expected.size());
    expect_gray_close(got, expected);
    // Read as if it were RGB (the bug this guards against), the grey values are far off.
    cv::Mat as_rgb;
    cv::cvtColor(ybr, as_rgb, cv::COLOR_RGB2GRAY);
    EXPECT_GT(cv::norm(as_rgb, expected, cv::NORM_INF), 20);
}

// Lossy JPEG baseline (dcmcjpeg +eb, quality 90) around an HC18 scan: within 2% of the PNG's HC
// (the DCT changes grey levels by a few steps along the skull, which moves the boundary by a
// fraction of a pixel; 2% is the bound for lossy files).
TEST(DicomMeasure, JpegBaselineWrappedScanGivesThePngHcWithin2Percent) {
    if (!have_model_and_data()) GTEST_SKIP() << "needs the model and HC18 in '" << kHc18 << "'";
    if (std::system("command -v dcmcjpeg >/dev/null 2>&1") != 0) GTEST_SKIP() << "dcmcjpeg (package dcmtk) is not installed";
    auto sizes = read_pixel_sizes(kHc18 + "/training_set_pixel_size_and_HC.csv");
    ASSERT_TRUE(sizes) << sizes.error();
    auto seg = Segmenter::load(FETALHC_DEFAULT_MODEL);
    ASSERT_TRUE(seg) << seg.error();
    const Measurer measurer(*seg);
    for (const std::string name : {"010_HC.png", "011_HC.png", "013_HC.png"}) {
        WrappedScan w;
        wrap_scan(measurer, *sizes, name, "_raw.dcm", w);
        if (HasFatalFailure()) return;
        const cv::Mat* img = &w.img;
        const double px = w.px;
        const Measurement* ref = &w.ref;
        const std::string raw = w.dcm;
        const std::string jpeg = (temp_dir() / (name + "_jpeg.dcm")).string();
        ASSERT_EQ(std::system(("dcmcjpeg +eb '" + raw + "' '" + jpeg + "'").c_str()), 0);
        auto h = read_dicom_header(jpeg);
        ASSERT_TRUE(h) << h.error();
        EXPECT_TRUE(contains(h->transfer_syntax_name, "Baseline")) << h->transfer_syntax_name;
        auto frames = frames_of(jpeg);
        ASSERT_EQ(frames.size(), 1u);
        cv::Mat d;
        cv::absdiff(frames[0], *img, d);
        EXPECT_GT(cv::countNonZero(d), 0) << "not lossy: the test would not test anything";
        auto r = measure_dicom_frame(measurer, *h, frames[0], {}, jpeg);
        ASSERT_TRUE(r) << r.error();
        EXPECT_NEAR(r->m.pixel_size_mm, px, 1e-9);
        EXPECT_NEAR(r->m.hc_mm, ref->hc_mm, 0.02 * ref->hc_mm) << name;
    }
}

// The shipped model and HC18's 010_HC, for the multi-frame tests (skipped without them).
class DicomCine : public ::testing::Test {
protected:
    void SetUp() override {
        if (!have_model_and_data()) GTEST_SKIP() << "needs the model and HC18 in '" << kHc18 << "'";
        auto seg = Segmenter::load(FETALHC_DEFAULT_MODEL);
        ASSERT_TRUE(seg) << seg.error();
        measurer_.emplace(*seg);
        auto img = load_grayscale(kHc18 + "/training_set/010_HC.png");
        ASSERT_TRUE(img) << img.error();
        img_ = *img;
    }
    // The file's bytes, as a front end reads them for DicomFrameReader.
    static std::vector<unsigned char> bytes_of(const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        return std::vector<unsigned char>((std::istreambuf_iterator<char>(in)), {});
    }
    std::optional<Measurer> measurer_;
    cv::Mat img_;
};

// Multi-frame: every frame's head must lie in the calibration region, as for one frame. Frame 0
// holds the scan inside the region (the left half of a canvas twice as wide); frame 1 holds the
// same scan moved right by half its width, so the region's edge cuts through the head. Frame 1
// is that frame's error, not a number measured on half a head with a calibration that does not
// hold beyond the region, and the summary comes from frame 0 alone.
TEST_F(DicomCine, MultiFrameHeadLeavingItsRegionIsThatFramesError) {
    const Measurer& measurer = *measurer_;
    const cv::Mat* img = &img_;
    const double px = 0.1;
    cv::Mat inside = cv::Mat::zeros(img->rows, img->cols * 2, CV_8UC1), across = inside.clone();
    img->copyTo(inside(cv::Rect(0, 0, img->cols, img->rows)));
    img->copyTo(across(cv::Rect(img->cols / 2, 0, img->cols, img->rows)));
    Synthetic s;
    s.frames = {inside, across, inside};
    s.regions = {{{0, 0, img->cols, img->rows}, px / 10, px / 10}};
    const std::string p = write_dicom(s, "multi_region.dcm");
    const std::vector<unsigned char> bytes = bytes_of(p);
    auto run = [&](std::optional<double> given, std::vector<VideoFrame>& seen) -> Expected<DicomResult> {
        auto reader = DicomFrameReader::open(bytes, p);
        if (!reader) return reader.error_value();
        DicomRequest request;
        request.pixel_size_mm = given;
        DicomEvents events;
        events.on_frame = [&](const VideoFrame& f) { seen.push_back(f); };
        return measure_dicom(measurer, **reader, request, events);
    };
    std::vector<VideoFrame> seen;
    auto r = run(std::nullopt, seen);
    ASSERT_TRUE(r) << r.error();
    ASSERT_TRUE(r->summary);
    const VideoSummary& sum = *r->summary;
    ASSERT_EQ(seen.size(), 3u);
    ASSERT_EQ(r->frames.size(), 3u);
    ASSERT_TRUE(seen[0].result) << seen[0].result.error();
    ASSERT_FALSE(seen[1].result) << "frame 1 measured " << seen[1].result->hc_mm << " mm (" << seen[1].result->quality << ")";
    EXPECT_FALSE(r->frames[1].result);
    EXPECT_EQ(seen[1].result.error_kind(), ErrorKind::InvalidCalibration);
    EXPECT_TRUE(contains(seen[1].result.error(), "outside ultrasound region 0")) << seen[1].result.error();
    EXPECT_TRUE(contains(seen[1].result.error(), p + "#1")) << seen[1].result.error();
    ASSERT_TRUE(seen[2].result);
    EXPECT_EQ(sum.frames, 3);
    EXPECT_EQ(sum.measured, 2);
    EXPECT_NE(sum.estimate_frame, 1);
    if (seen[0].result->quality == "ok") {
        ASSERT_TRUE(sum.has_estimate);
        EXPECT_NEAR(sum.estimate.hc_mm, seen[0].result->hc_mm, 0.02 * seen[0].result->hc_mm);
        EXPECT_EQ(r->measurement.hc_mm, sum.estimate.hc_mm);
    }
    // With a pixel size given the user takes the calibration on: no region check (as for one frame).
    std::vector<VideoFrame> seen_given;
    auto g = run(px, seen_given);
    ASSERT_TRUE(g) << g.error();
    ASSERT_EQ(seen_given.size(), 3u);
    EXPECT_TRUE(g->calibration.given);
}

// A cine over the frame limit is measured on that many frames, evenly spaced from the first to
// the last, named by their number in the file (issue 22 row 5).
TEST(DicomMeasure, FramesToMeasureAreEvenlySpacedFromFirstToLast) {
    const std::vector<int> all = frames_to_measure(10, 400);
    ASSERT_EQ(all.size(), 10u);
    EXPECT_EQ(all.back(), 9);
    const std::vector<int> pick = frames_to_measure(2000, 400);
    ASSERT_EQ(pick.size(), 400u);
    EXPECT_EQ(pick.front(), 0);
    EXPECT_EQ(pick.back(), 1999);
    for (size_t k = 1; k < pick.size(); ++k) {
        EXPECT_GT(pick[k], pick[k - 1]);
        EXPECT_LE(pick[k] - pick[k - 1], 6);
    }
    EXPECT_EQ(frames_to_measure(5, 0).size(), 5u);
    EXPECT_EQ(frames_to_measure(5, 1), std::vector<int>{0});
}

// A 5-frame cine of one real scan (a few pixels of motion), thinned to 3 frames: frames 0, 2, 4
// measured and numbered so, a note says so, and the summary is one complete measurement whose GA
// and interval are those of its (median) HC, not of the frame whose ellipse it shows.
TEST_F(DicomCine, SummaryIsOneMeasurementOfTheMedianHc) {
    const Measurer& measurer = *measurer_;
    const cv::Mat* img = &img_;
    const double px = 0.12;
    Synthetic s;
    for (int i = 0; i < 5; ++i) {
        cv::Mat f;
        cv::warpAffine(*img, f, cv::Matx23d(1, 0, 2.0 * i - 4, 0, 1, 1.5 * (i % 3)), img->size());
        s.frames.push_back(f);
    }
    s.regions = {{{0, 0, img->cols, img->rows}, px / 10, px / 10}};
    const std::string p = write_dicom(s, "cine5.dcm");
    auto reader = DicomFrameReader::open(bytes_of(p), p);
    ASSERT_TRUE(reader) << reader.error();
    DicomRequest request;
    request.max_frames = 3;
    request.measure.ga_weeks = 20.0;
    auto r = measure_dicom(measurer, **reader, request);
    ASSERT_TRUE(r) << r.error();
    ASSERT_EQ(r->frames.size(), 3u);
    EXPECT_EQ(r->frames[0].index, 0);
    EXPECT_EQ(r->frames[1].index, 2);
    EXPECT_EQ(r->frames[2].index, 4);
    ASSERT_TRUE(r->frames[1].result) << r->frames[1].result.error();
    EXPECT_EQ(r->frames[1].result->source, p + "#2");
    ASSERT_FALSE(r->notes.empty());
    EXPECT_TRUE(contains(r->notes.back(), "3 evenly spaced frames were measured")) << r->notes.back();
    ASSERT_TRUE(r->summary);
    const VideoSummary& sum = *r->summary;
    ASSERT_TRUE(sum.has_estimate) << sum.estimate.reasons.front();
    EXPECT_TRUE(sum.estimate_frame == 0 || sum.estimate_frame == 2 || sum.estimate_frame == 4) << sum.estimate_frame;
    const Measurement& m = r->measurement;
    EXPECT_EQ(m.source, p + "#summary");
    std::vector<double> hc;
    for (const auto& f : r->frames)
        if (f.result && f.result->quality == "ok") hc.push_back(f.result->hc_mm);
    ASSERT_EQ(int(hc.size()), sum.ok);
    std::sort(hc.begin(), hc.end());
    EXPECT_DOUBLE_EQ(m.hc_mm, hc.size() % 2 ? hc[hc.size() / 2] : (hc[hc.size() / 2 - 1] + hc[hc.size() / 2]) / 2);
    const GaEstimate ga = hadlock_ga(m.hc_mm);
    EXPECT_EQ(m.ga_hadlock.in_range, ga.in_range);
    EXPECT_DOUBLE_EQ(m.ga_hadlock.weeks, ga.weeks);
    EXPECT_DOUBLE_EQ(m.ga_intergrowth.weeks, intergrowth_ga(m.hc_mm).weeks);
    ASSERT_TRUE(m.centile);
    EXPECT_DOUBLE_EQ(m.centile->z, intergrowth_hc_centile(m.hc_mm, 20.0).z);
    EXPECT_EQ(m.interval.has_value(), measurer.interval_for(m.hc_mm, m.quality != "ok").has_value());
    if (m.interval) {
        EXPECT_DOUBLE_EQ(m.interval->low_mm, measurer.interval_for(m.hc_mm, m.quality != "ok")->low_mm);
        EXPECT_LT(m.interval->low_mm, m.hc_mm);
        EXPECT_GT(m.interval->high_mm, m.hc_mm);
    }
    // Frames of one plane that agree: an ok summary (all three ok, spread well under 5%).
    if (sum.ok == 3) EXPECT_EQ(m.quality, "ok") << (m.reasons.empty() ? "" : m.reasons.front());
    const nlohmann::json j = to_json(*r, "pixel_size_mm");
    EXPECT_DOUBLE_EQ(j["hc_mm"].get<double>(), j["summary"]["hc_median_mm"].get<double>());
    EXPECT_DOUBLE_EQ(j["summary"]["estimate"]["ga_hadlock"]["weeks"].get<double>(), ga.weeks);
    EXPECT_EQ(j["frames"].size(), 3u);
    EXPECT_EQ(j["frames"][1]["frame"], 2);
    EXPECT_EQ(j["calibration"]["source"], "ultrasound region 0");
}

// Found by fuzz/fuzz_dicom (issue 16): DCMTK reads the meta header for as many bytes as its group
// length (0002,0000) says, whatever the tags inside. The length walk ended the meta header at the
// first tag outside group 0002 and, the transfer syntax being deflated, checked nothing after it,
// so an element of another group inside the meta header declaring 3.2 GB was allocated by DCMTK.
TEST(DicomBad, OverlongElementInsideTheMetaGroupLengthIsRefusedBeforeReading) {
    RawDicom meta;  // the meta elements after the group length, as the fuzzer's file had them
    meta.b.clear();
    meta.el(0x0002, 0x0001, "OB", 2), meta.b += std::string("\0\1", 2);
    meta.str(0x0002, 0x0002, "UI", UID_UltrasoundImageStorage);
    meta.str(0x0002, 0x0003, "UI", "1.2.3.4.5");
    meta.str(0x0002, 0x0010, "UI", UID_DeflatedExplicitVRLittleEndianTransferSyntax);
    meta.u16(0xF914), meta.u16(0x3B80), meta.b += "MG", meta.u16(0), meta.u32(0xC20A0EE9ul);  // unknown VR: 4-byte length
    meta.b += std::string(8, '\x51');
    RawDicom d;
    d.el(0x0002, 0x0000, "UL", 4), d.u32(meta.b.size());
    d.b += meta.b + std::string(64, '\0');
    const std::vector<unsigned char> bytes(d.b.begin(), d.b.end());
    ASSERT_LT(bytes.size(), 400u);
    auto h = read_dicom_header(bytes, "meta_bomb.dcm");
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "meta_bomb.dcm")) << h.error();
    EXPECT_TRUE(contains(h.error(), "longer than the file")) << h.error();
    EXPECT_TRUE(contains(h.error(), "(F914,3B80)")) << h.error();
    auto f = decode_dicom_frames(bytes, "meta_bomb.dcm");
    ASSERT_FALSE(f);
    EXPECT_TRUE(contains(f.error(), "longer than the file")) << f.error();
}

// Found by fuzz/fuzz_dicom (issue 16): DCMTK reads the meta header in the encoding it guesses from
// the first element, implicit VR when the two bytes after the tag are not letters; the length walk
// read it as explicit VR, saw an undefined length there and let DCMTK allocate 4.2 GB for the
// implicit 4-byte length. The bytes after the preamble are the fuzzer's (151 bytes in all).
TEST(DicomBad, ImplicitMetaHeaderLengthIsWalkedAsDcmtkReadsIt) {
    RawDicom d;
    d.u16(0x0002), d.u16(0xC300), d.b += std::string("U\x08\x0f\xff\xff\xff\xff\xff", 8);
    d.b += ".8.44.1";
    const std::vector<unsigned char> bytes(d.b.begin(), d.b.end());
    ASSERT_EQ(bytes.size(), 151u);
    auto h = read_dicom_header(bytes, "implicit_meta.dcm");
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "implicit_meta.dcm")) << h.error();
    EXPECT_TRUE(contains(h.error(), "(0002,C300): 4279175253 bytes declared")) << h.error();
}

// Found by fuzz/fuzz_routes (issue 16, the 30-minute run): an element of group FFFE that is neither
// an item nor a delimiter, (FFFE,FFFF) here, is read by DCMTK as an element with a value; the length
// walk skipped it as structure and DCMTK allocated its declared 3.2 GB. The bytes after the preamble
// are the fuzzer's (implicit VR: no meta header).
TEST(DicomBad, NonItemElementOfGroupFffeIsLengthChecked) {
    RawDicom d;
    d.b += std::string("\x83\x53\x66\x00\x00\x00\x00\x00\xfe\xff\xff\xff\x01\x00\x60\xc0", 16);
    d.b += std::string("\x00\x5e\x07\xd6", 4) + std::string(16, '\xff') + "r";
    const std::vector<unsigned char> bytes(d.b.begin(), d.b.end());
    auto h = read_dicom_header(bytes, "fffe_bomb.dcm");
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "fffe_bomb.dcm")) << h.error();
    EXPECT_TRUE(contains(h.error(), "(FFFE,FFFF): 3227516929 bytes declared")) << h.error();
}

// Found by fuzz/fuzz_dicom (issue 16): an RLE frame header whose segment offset points 3.5 GB past
// its fragment made DCMTK's RLE decoder read there and crash the process. The header is now checked
// before DCMTK decodes (a well-formed RLE file still decodes: DicomSamples.RleGivesIdenticalPixels...).
TEST(DicomBad, RleSegmentOffsetOutsideItsFragmentIsAnError) {
    RawDicom d;
    d.el(0x0002, 0x0001, "OB", 2), d.b += std::string("\0\1", 2);
    d.str(0x0002, 0x0002, "UI", UID_UltrasoundImageStorage);
    d.str(0x0002, 0x0003, "UI", "1.2.3.4.5");
    d.str(0x0002, 0x0010, "UI", UID_RLELosslessTransferSyntax);
    d.str(0x0008, 0x0016, "UI", UID_UltrasoundImageStorage);
    d.str(0x0008, 0x0018, "UI", "1.2.3.4.5");
    d.image();  // 30 x 20, 8-bit MONOCHROME2
    d.el(0x7FE0, 0x0010, "OB", 0xFFFFFFFF);
    d.u16(0xFFFE), d.u16(0xE000), d.u32(0);  // empty basic offset table
    std::string rle(64, '\0');
    rle[0] = 1;                                       // one segment
    rle[4] = 0x40, rle[7] = char(0xD1);               // starting at byte 0xD1000040
    rle += std::string(1, char(-19)) + std::string(1, '\x40') + std::string(1, char(-19)) + std::string(1, '\x40');
    d.u16(0xFFFE), d.u16(0xE000), d.u32(rle.size()), d.b += rle;
    d.u16(0xFFFE), d.u16(0xE0DD), d.u32(0);
    const std::vector<unsigned char> bytes(d.b.begin(), d.b.end());
    ASSERT_TRUE(read_dicom_header(bytes, "rle_offset.dcm"));
    auto f = decode_dicom_frames(bytes, "rle_offset.dcm");
    ASSERT_FALSE(f);
    EXPECT_TRUE(contains(f.error(), "rle_offset.dcm")) << f.error();
    EXPECT_TRUE(contains(f.error(), "damaged RLE frame header")) << f.error();
    EXPECT_TRUE(contains(f.error(), "segment 1 starts at byte 3506438208")) << f.error();
}

// A deflated data set (PS3.5 A.5) hides its element lengths inside the DEFLATE stream, so the
// length walk used to pass it to DCMTK unchecked. The stream is now inflated (at most 256 MB) and
// walked like any data set before DCMTK reads it: the 3 GB pixel data element below is named.
namespace {

std::string deflate_raw(const std::string& plain) {
    z_stream z{};
    EXPECT_EQ(deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string out(compressBound(uLong(plain.size())) + 64, '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data()));
    z.avail_in = uInt(plain.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = uInt(out.size());
    EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

// Meta header (deflated transfer syntax) + the deflated data set `data` (explicit VR LE inside).
std::vector<unsigned char> deflated_file(const std::string& data) {
    RawDicom meta;
    meta.b.clear();
    meta.el(0x0002, 0x0001, "OB", 2), meta.b += std::string("\0\1", 2);
    meta.str(0x0002, 0x0002, "UI", UID_UltrasoundImageStorage);
    meta.str(0x0002, 0x0003, "UI", "1.2.3.4.5");
    meta.str(0x0002, 0x0010, "UI", UID_DeflatedExplicitVRLittleEndianTransferSyntax);
    RawDicom d;
    d.el(0x0002, 0x0000, "UL", 4), d.u32(meta.b.size());
    d.b += meta.b + deflate_raw(data);
    return {d.b.begin(), d.b.end()};
}

}  // namespace

TEST(DicomBad, DeflatedDataSetIsWalkedAfterInflating) {
    RawDicom inner;
    inner.b.clear();
    inner.str(0x0008, 0x0016, "UI", UID_UltrasoundImageStorage);
    inner.str(0x0008, 0x0018, "UI", "1.2.3.4.5");
    // Pixel data declaring 3 GB with 16 bytes behind it.
    inner.el(0x7FE0, 0x0010, "OB", 3000000000ul), inner.b += std::string(16, '\x7f');
    const auto bomb = deflated_file(inner.b);
    ASSERT_LT(bomb.size(), 400u);
    auto h = read_dicom_header(bomb, "deflate_bomb.dcm");
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "deflate_bomb.dcm")) << h.error();
    EXPECT_TRUE(contains(h.error(), "(7FE0,0010)")) << h.error();

    // A damaged stream is an error too, named.
    auto damaged = deflated_file(inner.b);
    damaged.resize(damaged.size() - 6);
    for (size_t i = damaged.size() - 8; i < damaged.size(); ++i) damaged[i] = 0xFF;
    auto d = read_dicom_header(damaged, "deflate_damaged.dcm");
    ASSERT_FALSE(d);
    EXPECT_TRUE(contains(d.error(), "deflate_damaged.dcm")) << d.error();

    // A sound deflated data set still reads.
    RawDicom ok;
    ok.b.clear();
    ok.str(0x0008, 0x0016, "UI", UID_UltrasoundImageStorage);
    ok.str(0x0008, 0x0018, "UI", "1.2.3.4.5");
    auto good = read_dicom_header(deflated_file(ok.b), "deflated_ok.dcm");
    ASSERT_TRUE(good) << good.error();
    EXPECT_EQ(good->sop_instance_uid, "1.2.3.4.5");
}

// Issue 22 row 1: a file whose first element nests 6000 undefined-length sequences overflowed
// DCMTK's stack (the process died: HTTP, the node, preview, the CLI). The walk refuses nesting past
// kDicomMaxNesting before DCMTK reads a byte, from memory and from a file; shallow nesting reads.
TEST(DicomBad, DeeplyNestedSequencesAreRefusedBeforeDcmtkRecurses) {
    for (int levels : {kDicomMaxNesting + 1, 6000, 20000}) {
        const std::string raw = nested_sequences_dicom(levels);
        const std::vector<unsigned char> bytes(raw.begin(), raw.end());
        auto h = read_dicom_header(bytes, "nested.dcm");
        ASSERT_FALSE(h) << levels;
        EXPECT_TRUE(contains(h.error(), "nested.dcm")) << h.error();
        EXPECT_TRUE(contains(h.error(), "nested more than " + std::to_string(kDicomMaxNesting))) << h.error();
        auto f = decode_dicom_frames(bytes, "nested.dcm");
        ASSERT_FALSE(f);
        EXPECT_TRUE(contains(f.error(), "nested more than")) << f.error();
        const std::string path = (temp_dir() / "nested.dcm").string();
        std::ofstream(path, std::ios::binary).write(raw.data(), std::streamsize(raw.size()));
        auto hf = read_dicom_header(path);
        ASSERT_FALSE(hf);
        EXPECT_TRUE(contains(hf.error(), "nested more than")) << hf.error();
        auto ff = decode_dicom_frames(path);
        ASSERT_FALSE(ff);
        EXPECT_TRUE(contains(ff.error(), "nested more than")) << ff.error();
    }
    // Within the budget the same structure reads and decodes (16 x 16 pixels of 0x40).
    const std::string ok_raw = nested_sequences_dicom(kDicomMaxNesting);
    auto h = read_dicom_header(std::vector<unsigned char>(ok_raw.begin(), ok_raw.end()), "shallow.dcm");
    ASSERT_TRUE(h) << h.error();
    EXPECT_EQ(h->rows, 16);
    auto f = decode_dicom_frames(std::vector<unsigned char>(ok_raw.begin(), ok_raw.end()), "shallow.dcm");
    ASSERT_TRUE(f) << f.error();
    ASSERT_EQ(f->size(), 1u);
    EXPECT_EQ((*f)[0].at<unsigned char>(3, 3), 0x40);
}

// Sequences of defined length are counted too, and closing them at their end lets siblings follow:
// 200 sibling sequences one level deep are fine.
TEST(DicomBad, NestingCountsDefinedLengthSequencesAndClosesThem) {
    RawDicom d;
    d.meta();
    std::string inner;  // kDicomMaxNesting + 1 nested defined-length sequences, built inside out
    const auto wrap = [](const std::string& body) {
        RawDicom w;
        w.b.clear();
        w.u16(0xFFFE), w.u16(0xE000), w.u32(body.size()), w.b += body;
        const std::string item = w.b;
        w.b.clear();
        w.el(0x0008, 0x1115, "SQ", item.size());
        return w.b + item;
    };
    for (int i = 0; i <= kDicomMaxNesting; ++i) inner = wrap(inner);
    RawDicom deep = d;
    deep.b += inner;
    deep.image();
    deep.pixels(600, 600);
    auto h = read_dicom_header(std::vector<unsigned char>(deep.b.begin(), deep.b.end()), "deep.dcm");
    ASSERT_FALSE(h);
    EXPECT_TRUE(contains(h.error(), "nested more than")) << h.error();
    RawDicom wide = d;
    for (int i = 0; i < 200; ++i) wide.b += wrap(wrap(""));
    wide.image();
    wide.pixels(600, 600);
    auto w = read_dicom_header(std::vector<unsigned char>(wide.b.begin(), wide.b.end()), "wide.dcm");
    ASSERT_TRUE(w) << w.error();
}

// Issue 22 row 6: one frame is decoded alone, whatever its number. The proof: an RLE cine whose
// frame 0 cannot be decoded (its header announces 2 segments for 8-bit gray, which DCMTK's RLE
// decoder refuses); frame 2 still decodes alone, identical to its source, while decoding every
// frame (what a preview did before) fails at frame 0.
TEST(DicomDecode, OneFrameIsDecodedWithoutTheFramesBeforeIt) {
    if (std::system("command -v dcmcrle >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "DCMTK's command-line tools (package dcmtk) are not installed";
    Synthetic s;
    s.frames = {noise8({32, 24}, 41), noise8({32, 24}, 42), noise8({32, 24}, 43)};
    const std::string src = write_dicom(s, "to_rle_three.dcm");
    const std::string rle = (temp_dir() / "rle_three.dcm").string();
    ASSERT_EQ(std::system(("dcmcrle '" + src + "' '" + rle + "'").c_str()), 0);
    {  // break frame 0: two segments, the second starting inside its fragment
        DcmFileFormat ff;
        ASSERT_TRUE(ff.loadFile(rle.c_str()).good());
        DcmElement* el = nullptr;
        ASSERT_TRUE(ff.getDataset()->findAndGetElement(DCM_PixelData, el).good());
        DcmPixelSequence* seq = nullptr;
        ASSERT_TRUE(dynamic_cast<DcmPixelData*>(el)->getEncapsulatedRepresentation(EXS_RLELossless, nullptr, seq).good());
        DcmPixelItem* item = nullptr;
        ASSERT_TRUE(seq->getItem(item, 1).good());
        Uint8* b = nullptr;
        ASSERT_TRUE(item->getUint8Array(b).good());
        ASSERT_GT(item->getLength(), 70u);
        b[0] = 2, b[8] = 66, b[9] = b[10] = b[11] = 0;
        ASSERT_TRUE(ff.saveFile(rle.c_str(), EXS_RLELossless).good());
    }
    std::ifstream in(rle, std::ios::binary);
    const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
    auto all = decode_dicom_frames(bytes, "rle_three.dcm");
    ASSERT_FALSE(all) << "frame 0 should not decode";
    auto two = decode_dicom_frame(bytes, "rle_three.dcm", 2);
    ASSERT_TRUE(two) << two.error();
    EXPECT_EQ(cv::countNonZero(*two != s.frames[2]), 0);
    EXPECT_FALSE(decode_dicom_frame(bytes, "rle_three.dcm", 0));
    auto past = decode_dicom_frame(bytes, "rle_three.dcm", 3);
    ASSERT_FALSE(past);
    EXPECT_TRUE(contains(past.error(), "has 3 frames")) << past.error();
}

// ---- JPEG 2000 (OpenJPEG): files made here with OpenJPEG's encoder -----------------------------------

namespace {

// A JPEG 2000 DICOM file: `fragments` after the Basic Offset Table (`offset_table`, empty: an empty
// table item), the image fields as given.
struct J2kFile {
    std::vector<std::vector<unsigned char>> fragments;
    std::vector<Uint32> offset_table;
    int rows = 0, cols = 0, frames = 1, samples = 1, bits_stored = 8;
    bool is_signed = false;
    std::string photometric = "MONOCHROME2";
    E_TransferSyntax xfer = EXS_JPEG2000LosslessOnly;
    double mm = 0.1;  // the region calibration over the whole image, mm per pixel
};

std::string write_j2k_dicom(const J2kFile& j, const std::string& name) {
    DcmFileFormat ff;
    build_wrapped_dicom(ff, cv::Mat::zeros(j.rows, j.cols, CV_8UC1), j.mm, j.frames);
    DcmDataset* d = ff.getDataset();
    d->putAndInsertUint16(DCM_SamplesPerPixel, Uint16(j.samples));
    d->putAndInsertString(DCM_PhotometricInterpretation, j.photometric.c_str());
    d->putAndInsertUint16(DCM_BitsAllocated, j.bits_stored > 8 ? 16 : 8);
    d->putAndInsertUint16(DCM_BitsStored, Uint16(j.bits_stored));
    d->putAndInsertUint16(DCM_HighBit, Uint16(j.bits_stored - 1));
    d->putAndInsertUint16(DCM_PixelRepresentation, j.is_signed ? 1 : 0);
    if (j.samples == 3) d->putAndInsertUint16(DCM_PlanarConfiguration, 0);
    auto* seq = new DcmPixelSequence(DCM_PixelSequenceTag);
    auto* table = new DcmPixelItem(DCM_PixelItemTag);
    if (!j.offset_table.empty())  // little endian, as this machine stores it
        table->putUint8Array(reinterpret_cast<const Uint8*>(j.offset_table.data()), Uint32(4 * j.offset_table.size()));
    seq->insert(table);
    for (const auto& f : j.fragments) {
        auto* item = new DcmPixelItem(DCM_PixelItemTag);
        item->putUint8Array(f.data(), Uint32(f.size()));
        seq->insert(item);
    }
    auto* px = new DcmPixelData(DCM_PixelData);
    px->putOriginalRepresentation(j.xfer, nullptr, seq);
    d->insert(px, true);
    const std::string path = (temp_dir() / name).string();
    const OFCondition c = ff.saveFile(path.c_str(), j.xfer);
    EXPECT_TRUE(c.good()) << c.text();
    return path;
}

// One frame as a lossless JPEG 2000 file.
J2kFile j2k_file(const cv::Mat& img, const j2k_test::EncodeOptions& o = {}) {
    J2kFile j;
    j.fragments = {j2k_test::encode_j2k(img, o)};
    EXPECT_FALSE(j.fragments[0].empty()) << "OpenJPEG did not encode the test image";
    j.rows = img.rows, j.cols = img.cols, j.samples = img.channels();
    return j;
}

// A head-like test scan: an HC18 scan when the data is there, else a drawn ellipse on a gradient
// with speckle (each grey level and edge the codec must keep).
cv::Mat j2k_scan() {
    if (fs::exists(kHc18 + "/training_set/010_HC.png"))
        if (auto img = load_grayscale(kHc18 + "/training_set/010_HC.png")) return *img;
    cv::Mat img(120, 160, CV_8UC1);
    for (int y = 0; y < img.rows; ++y)
        for (int x = 0; x < img.cols; ++x) img.at<uchar>(y, x) = uchar((x + 2 * y) % 200);
    cv::ellipse(img, {80, 60}, {50, 35}, 20, 0, 360, cv::Scalar(250), 3);
    cv::Mat speckle(img.size(), CV_8UC1);
    cv::RNG(77).fill(speckle, cv::RNG::UNIFORM, 0, 40);
    return img + speckle;
}

std::vector<unsigned char> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST(DicomJpeg2000, LosslessGrayIsExactFromFileAndFromBytes) {
    const cv::Mat img = j2k_scan();
    const std::string p = write_j2k_dicom(j2k_file(img), "j2k_gray.dcm");
    auto h = read_dicom_header(p);
    ASSERT_TRUE(h) << h.error();
    EXPECT_TRUE(h->can_decode);
    EXPECT_TRUE(contains(h->transfer_syntax_name, "JPEG 2000")) << h->transfer_syntax_name;
    auto f = frames_of(p);
    ASSERT_EQ(f.size(), 1u);
    EXPECT_TRUE(same(f[0], img));
    auto b = decode_dicom_frames(read_bytes(p), "j2k_upload.dcm");
    ASSERT_TRUE(b) << b.error();
    EXPECT_TRUE(same(b->at(0), img));
}

// A frame in a JP2 file wrapper (some writers keep it): the codestream inside is checked and decoded.
TEST(DicomJpeg2000, Jp2WrappedFrameIsDecoded) {
    const cv::Mat img = noise8({40, 30}, 14);
    j2k_test::EncodeOptions o;
    o.jp2 = true;
    J2kFile j = j2k_file(img, o);
    ASSERT_EQ(j.fragments[0].at(4), 0x6A);  // 'jP  ': the signature box
    auto f = frames_of(write_j2k_dicom(j, "j2k_jp2.dcm"));
    ASSERT_EQ(f.size(), 1u);
    EXPECT_TRUE(same(f[0], img));
}

TEST(DicomJpeg2000, TwoFramesKeepTheirOrderAndDecodeOneAtATime) {
    const cv::Mat a = j2k_scan(), b = 255 - a;
    J2kFile j = j2k_file(a);
    j.fragments.push_back(j2k_test::encode_j2k(b));
    j.frames = 2;
    const std::string p = write_j2k_dicom(j, "j2k_two.dcm");
    auto f = frames_of(p);
    ASSERT_EQ(f.size(), 2u);
    EXPECT_TRUE(same(f[0], a));
    EXPECT_TRUE(same(f[1], b));
    auto reader = DicomFrameReader::open(read_bytes(p), "j2k_two.dcm");
    ASSERT_TRUE(reader) << reader.error();
    auto second = (*reader)->frame(1);
    ASSERT_TRUE(second) << second.error();
    EXPECT_TRUE(same(*second, b));
    auto first = (*reader)->frame(0);
    ASSERT_TRUE(first) << first.error();
    EXPECT_TRUE(same(*first, a));
}

// Frames split over several fragments: found from the Basic Offset Table, or without one from the
// fragments that start a codestream; a file where neither tells is refused, not guessed.
TEST(DicomJpeg2000, FramesOverSeveralFragmentsAreFoundByOffsetTableOrMarkers) {
    cv::Mat a(48, 64, CV_8UC1), b;
    cv::RNG(5).fill(a, cv::RNG::UNIFORM, 0, 256);  // noise: the codestreams are long enough to split
    b = 255 - a;
    J2kFile j;
    j.rows = 48, j.cols = 64, j.frames = 2;
    std::vector<std::vector<unsigned char>> split;
    for (const cv::Mat& m : {a, b}) {
        const auto cs = j2k_test::encode_j2k(m);
        const size_t half = cs.size() / 2 & ~size_t(1);  // fragments of even length, as DICOM stores them
        split.push_back({cs.begin(), cs.begin() + long(half)});
        split.push_back({cs.begin() + long(half), cs.end()});
    }
    j.fragments = split;
    auto check = [&](const std::string& name) {
        auto f = frames_of(write_j2k_dicom(j, name));
        ASSERT_EQ(f.size(), 2u) << name;
        EXPECT_TRUE(same(f[0], a)) << name;
        EXPECT_TRUE(same(f[1], b)) << name;
    };
    check("j2k_split_markers.dcm");
    const Uint32 second = Uint32(8 + split[0].size() + 8 + (split[1].size() + 1) / 2 * 2);
    j.offset_table = {0, second};
    check("j2k_split_table.dcm");
    j.offset_table.clear();
    j.fragments = {split[0], split[1], std::vector<unsigned char>(200, 0x33)};  // frame 1 starts no codestream
    auto f = decode_dicom_frames(write_j2k_dicom(j, "j2k_split_unknown.dcm"));
    ASSERT_FALSE(f);
    EXPECT_EQ(f.error_kind(), ErrorKind::ImageUnreadable);
    EXPECT_TRUE(contains(f.error(), "j2k_split_unknown.dcm")) << f.error();
    EXPECT_TRUE(contains(f.error(), "which fragments make which frame")) << f.error();
}

// 12 bits stored: scaled by the frame's maximum exactly as the uncompressed path scales it (the
// same OpenCV conversion), and within one grey level of DCMTK's rendering of the same pixels.
TEST(DicomJpeg2000, TwelveBitIsScaledByItsMaximumAsUncompressed) {
    cv::Mat v(60, 80, CV_16UC1);
    cv::RNG(8).fill(v, cv::RNG::UNIFORM, 0, 4096);
    j2k_test::EncodeOptions o;
    o.precision = 12;
    J2kFile j = j2k_file(v, o);
    j.bits_stored = 12;
    auto f = frames_of(write_j2k_dicom(j, "j2k_12bit.dcm"));
    ASSERT_EQ(f.size(), 1u);
    double mx = 0;
    cv::minMaxLoc(v, nullptr, &mx);
    cv::Mat expected;
    v.convertTo(expected, CV_8U, 255.0 / mx);
    EXPECT_TRUE(same(f[0], expected));
    Synthetic s;
    s.frames = {v};
    s.bits_stored = 12;
    cv::Mat dcmtk = frames_of(write_dicom(s, "j2k_12bit_plain.dcm")).at(0);
    EXPECT_LE(cv::norm(f[0], dcmtk, cv::NORM_INF), 1);
}

// Signed samples (PixelRepresentation 1) are offset by half their range, as DCMTK maps them.
TEST(DicomJpeg2000, SignedTwelveBitIsOffsetIntoUnsigned) {
    cv::Mat v(40, 50, CV_16SC1);
    cv::RNG(9).fill(v, cv::RNG::UNIFORM, -2048, 2048);
    j2k_test::EncodeOptions o;
    o.precision = 12;
    J2kFile j = j2k_file(v, o);
    j.bits_stored = 12;
    j.is_signed = true;
    auto f = frames_of(write_j2k_dicom(j, "j2k_signed.dcm"));
    ASSERT_EQ(f.size(), 1u);
    cv::Mat u;
    v.convertTo(u, CV_16U, 1, 2048);
    double mx = 0;
    cv::minMaxLoc(u, nullptr, &mx);
    cv::Mat expected;
    u.convertTo(expected, CV_8U, 255.0 / mx);
    EXPECT_TRUE(same(f[0], expected));
}

// MONOCHROME1 is inverted (higher = brighter), as DicomImage renders it (tests above: within a level).
TEST(DicomJpeg2000, Monochrome1IsInvertedAsDcmtkRendersIt) {
    const cv::Mat img = noise8({64, 48}, 12);
    J2kFile j = j2k_file(img);
    j.photometric = "MONOCHROME1";
    auto f = frames_of(write_j2k_dicom(j, "j2k_m1.dcm"));
    ASSERT_EQ(f.size(), 1u);
    EXPECT_TRUE(same(f[0], cv::Mat(255 - img)));
    Synthetic s;
    s.frames = {img};
    s.photometric = "MONOCHROME1";
    EXPECT_LE(cv::norm(f[0], frames_of(write_dicom(s, "j2k_m1_plain.dcm")).at(0), cv::NORM_INF), 1);
}

// Colour: lossless with the reversible transform (YBR_RCT) gives the luminance of the RGB pixels
// exactly; the lossy form (YBR_ICT, 1.2.840.10008.1.2.4.91, 10:1) within a few grey levels on average.
TEST(DicomJpeg2000, ColourBecomesLuminanceLosslessAndLossy) {
    cv::Mat rgb(96, 128, CV_8UC3);
    for (int y = 0; y < rgb.rows; ++y)
        for (int x = 0; x < rgb.cols; ++x) rgb.at<cv::Vec3b>(y, x) = cv::Vec3b(uchar(2 * x), uchar(2 * y), uchar((x + y) % 256));
    cv::ellipse(rgb, {64, 48}, {40, 28}, 0, 0, 360, cv::Scalar(250, 240, 30), 2);
    cv::Mat expected;
    cv::cvtColor(rgb, expected, cv::COLOR_RGB2GRAY);
    J2kFile lossless = j2k_file(rgb);
    lossless.photometric = "YBR_RCT";
    auto f = frames_of(write_j2k_dicom(lossless, "j2k_rct.dcm"));
    ASSERT_EQ(f.size(), 1u);
    EXPECT_TRUE(same(f[0], expected));
    j2k_test::EncodeOptions o;
    o.reversible = false;
    J2kFile lossy = j2k_file(rgb, o);
    lossy.photometric = "YBR_ICT";
    lossy.xfer = EXS_JPEG2000;
    f = frames_of(write_j2k_dicom(lossy, "j2k_ict.dcm"));
    ASSERT_EQ(f.size(), 1u);
    ASSERT_EQ(f[0].size(), expected.size());
    cv::Mat d;
    cv::absdiff(f[0], expected, d);
    EXPECT_LT(cv::mean(d)[0], 3);
}

// YBR_FULL without the codestream's transform (the codestream holds Y, Cb, Cr): converted to RGB
// first, with the uncompressed path's tolerance (YbrFullBecomesLuminance above), and next to DCMTK's
// rendering of the same samples.
TEST(DicomJpeg2000, YbrFullBecomesLuminance) {
    cv::Mat rgb(48, 64, CV_8UC3);
    cv::RNG(32).fill(rgb, cv::RNG::UNIFORM, 0, 256);
    cv::Mat ycrcb, ybr(rgb.size(), CV_8UC3);
    cv::cvtColor(rgb, ycrcb, cv::COLOR_RGB2YCrCb);
    cv::mixChannels(ycrcb, ybr, std::vector<int>{0, 0, 1, 2, 2, 1});  // OpenCV's Y, Cr, Cb to DICOM's Y, Cb, Cr
    j2k_test::EncodeOptions o;
    o.mct = false;
    J2kFile j = j2k_file(ybr, o);
    j.photometric = "YBR_FULL";
    cv::Mat got = frames_of(write_j2k_dicom(j, "j2k_ybr_full.dcm")).at(0), expected;
    cv::cvtColor(rgb, expected, cv::COLOR_RGB2GRAY);
    ASSERT_EQ(got.size(), expected.size());
    expect_gray_close(got, expected);
    Synthetic s;
    s.frames = {ybr};
    s.photometric = "YBR_FULL";
    EXPECT_LE(cv::norm(got, frames_of(write_dicom(s, "j2k_ybr_full_plain.dcm")).at(0), cv::NORM_INF), 2);
}

// Hostile codestreams: each is a clean ImageUnreadable error naming the file (from the file and
// from bytes), never a crash or an allocation the header did not agree with.
TEST(DicomJpeg2000, HostileCodestreamsAreCleanErrors) {
    cv::Mat img(48, 64, CV_8UC1);
    cv::RNG(6).fill(img, cv::RNG::UNIFORM, 0, 256);
    const std::vector<unsigned char> good = j2k_test::encode_j2k(img);
    ASSERT_GT(good.size(), 200u);
    const auto put32 = [](std::vector<unsigned char>& cs, size_t at, uint32_t v) {
        for (int i = 0; i < 4; ++i) cs[at + size_t(i)] = uchar(v >> (24 - 8 * i));
    };
    struct Case { std::string name; J2kFile file; std::string says; };
    std::vector<Case> cases;
    {
        J2kFile j = j2k_file(img);
        put32(j.fragments[0], 8, 4096), put32(j.fragments[0], 12, 4096);  // Xsiz, Ysiz
        cases.push_back({"j2k_bad_size.dcm", j, "says 4096 x 4096 pixels but the header says 64 x 48"});
    }
    {
        J2kFile j = j2k_file(img);
        j.fragments[0].resize(100);
        cases.push_back({"j2k_truncated.dcm", j, "cannot be decoded"});
    }
    {
        J2kFile j = j2k_file(img);
        cv::Mat noise(1, 3000, CV_8UC1);
        cv::RNG(7).fill(noise, cv::RNG::UNIFORM, 0, 256);
        j.fragments[0].assign(noise.datastart, noise.dataend);
        cases.push_back({"j2k_garbage.dcm", j, "not a JPEG 2000 codestream"});
    }
    {
        J2kFile j = j2k_file(img);  // a valid SIZ segment (45 bytes with one component), then garbage
        for (size_t i = 45; i < j.fragments[0].size(); ++i) j.fragments[0][i] = uchar(i * 37 + 11);
        cases.push_back({"j2k_garbage_body.dcm", j, "cannot be decoded"});
    }
    {
        cv::Mat rgb;
        cv::cvtColor(img, rgb, cv::COLOR_GRAY2RGB);
        J2kFile j = j2k_file(rgb);  // three components ...
        j.samples = 1;              // ... in a MONOCHROME2 file
        cases.push_back({"j2k_three_for_mono.dcm", j, "has 3 components but the header says 1 sample"});
    }
    {
        J2kFile j = j2k_file(img);
        put32(j.fragments[0], 24, 1), put32(j.fragments[0], 28, 1);  // XTsiz, YTsiz: 307200 tiles of 1 x 1
        j.rows = 480, j.cols = 640;
        put32(j.fragments[0], 8, 640), put32(j.fragments[0], 12, 480);
        cases.push_back({"j2k_tiny_tiles.dcm", j, "tiles of 1 x 1 pixels"});
    }
    for (const auto& c : cases) {
        const std::string p = write_j2k_dicom(c.file, c.name);
        for (bool from_bytes : {false, true}) {
            auto f = from_bytes ? decode_dicom_frames(read_bytes(p), c.name) : decode_dicom_frames(p);
            ASSERT_FALSE(f) << c.name;
            EXPECT_EQ(f.error_kind(), ErrorKind::ImageUnreadable) << c.name;
            EXPECT_TRUE(contains(f.error(), c.name)) << f.error();
            EXPECT_TRUE(contains(f.error(), c.says)) << c.name << ": " << f.error();
        }
    }
}

// HTJ2K (PS3.5 A.4.11) is newer than this DCMTK, which refuses the file ("meta information header
// missing"): the refusal names the transfer syntax from the meta header, from a file and from bytes.
// Issue 25: a calibrated HC18 scan re-encoded as lossless JPEG 2000 measures the HC of its
// uncompressed twin (the same region calibration, the same decoded pixels).
TEST(DicomJpeg2000, CalibratedScanMeasuresTheHcOfItsUncompressedTwin) {
    if (!have_model_and_data()) GTEST_SKIP() << "needs the model and HC18 in '" << kHc18 << "'";
    std::map<std::string, double> sizes;
    std::optional<Measurer> measurer;
    if (!load_hc18_measurer(sizes, measurer)) return;
    WrappedScan w;
    wrap_scan(*measurer, sizes, "010_HC.png", "_twin.dcm", w);
    if (HasFatalFailure()) return;
    J2kFile j = j2k_file(w.img);
    j.mm = w.px;
    const std::string j2k = write_j2k_dicom(j, "010_HC_j2k.dcm");
    auto hu = read_dicom_header(w.dcm), hj = read_dicom_header(j2k);
    ASSERT_TRUE(hu && hj);
    EXPECT_EQ(hj->transfer_syntax_uid, "1.2.840.10008.1.2.4.90");
    auto u = measure_dicom_frame(*measurer, *hu, frames_of(w.dcm).at(0), {}, w.dcm);
    auto c = measure_dicom_frame(*measurer, *hj, frames_of(j2k).at(0), {}, j2k);
    ASSERT_TRUE(u && c) << (u ? c.error() : u.error());
    EXPECT_DOUBLE_EQ(c->m.hc_mm, u->m.hc_mm);
    EXPECT_NEAR(c->m.pixel_size_mm, w.px, 1e-12);
    EXPECT_NEAR(c->m.hc_mm, w.ref.hc_mm, 0.1);
}

TEST(DicomJpeg2000, HtJ2kIsRefusedByName) {
    const std::string p = write_j2k_dicom(j2k_file(noise8({32, 24}, 13)), "htj2k.dcm");
    {
        DcmFileFormat ff;
        ASSERT_TRUE(ff.loadFile(p.c_str()).good());
        DcmMetaInfo* meta = ff.getMetaInfo();
        Uint32 group = 0;
        ASSERT_TRUE(meta->findAndGetUint32(DCM_FileMetaInformationGroupLength, group).good());
        meta->putAndInsertString(DCM_TransferSyntaxUID, "1.2.840.10008.1.2.4.201");
        meta->putAndInsertUint32(DCM_FileMetaInformationGroupLength, group + 2);  // 24 bytes (padded) for 22
        ASSERT_TRUE(ff.saveFile(p.c_str(), EXS_JPEG2000LosslessOnly, EET_ExplicitLength, EGL_recalcGL, EPD_noChange, 0, 0,
                                EWM_dontUpdateMeta).good());
    }
    const std::vector<Expected<DicomHeader>> headers = {read_dicom_header(p), read_dicom_header(read_bytes(p), "htj2k.dcm")};
    for (const auto& h : headers) {
        ASSERT_FALSE(h);
        EXPECT_EQ(h.error_kind(), ErrorKind::ImageUnreadable);
        EXPECT_TRUE(contains(h.error(), "htj2k.dcm")) << h.error();
        EXPECT_TRUE(contains(h.error(), "High-Throughput JPEG 2000")) << h.error();
        EXPECT_TRUE(contains(h.error(), "1.2.840.10008.1.2.4.201")) << h.error();
    }
    auto f = decode_dicom_frames(p);
    ASSERT_FALSE(f);
    EXPECT_TRUE(contains(f.error(), "High-Throughput JPEG 2000")) << f.error();
}
