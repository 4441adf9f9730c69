// Writes the fuzz targets' seed corpora into OUT/{png_gray,decode_image,pixel_sizes,dicom,routes,dicom_node,j2k}:
// small synthetic files made here (no HC18 image or copy of one). Usage: fuzz_make_seeds OUT
#include <dcmtk/config/osconfig.h>  // must come first among the DCMTK headers
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dctk.h>
#include "../tests/dicom_wrap.h"  // nested_sequences_dicom
#include "../tests/j2k_encode.h"  // encode_j2k
#include <libdeflate.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using Bytes = std::vector<unsigned char>;

namespace {

void write(const fs::path& p, const Bytes& b) {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// A smooth test pattern with an ellipse (a head-like ring), `w` x `h`.
cv::Mat pattern(int w, int h, int type = CV_8UC1) {
    cv::Mat m(h, w, CV_8UC1);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) m.at<uint8_t>(y, x) = uint8_t((x * 7 + y * 3) & 0xFF);
    cv::ellipse(m, cv::Point(w / 2, h / 2), cv::Size(w / 3, h / 4), 20, 0, 360, cv::Scalar(250), 2);
    cv::Mat out;
    if (CV_MAT_CN(type) == 3) cv::cvtColor(m, out, cv::COLOR_GRAY2BGR);
    else if (CV_MAT_CN(type) == 4) cv::cvtColor(m, out, cv::COLOR_GRAY2BGRA);
    else out = m;
    if (CV_MAT_DEPTH(type) == CV_16U) out.convertTo(out, CV_16U, 257);
    return out;
}

void put32(Bytes& b, uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

void chunk(Bytes& png, const char* type, const Bytes& data) {
    put32(png, uint32_t(data.size()));
    Bytes td(type, type + 4);
    td.insert(td.end(), data.begin(), data.end());
    png.insert(png.end(), td.begin(), td.end());
    put32(png, libdeflate_crc32(0, td.data(), td.size()));
}

// A PNG written by hand: any colour type and bit depth, each row with the filter `filter(y)`
// (applied to raw bytes as the encoder would), the data split over `idats` IDAT chunks.
Bytes png(uint32_t w, uint32_t h, int depth, int color, const Bytes& raw_rows, int idats = 1, const Bytes& plte = {},
          bool extra_chunk = false) {
    Bytes out = {137, 80, 78, 71, 13, 10, 26, 10};
    Bytes ihdr;
    put32(ihdr, w);
    put32(ihdr, h);
    ihdr.insert(ihdr.end(), {uint8_t(depth), uint8_t(color), 0, 0, 0});
    chunk(out, "IHDR", ihdr);
    if (extra_chunk) chunk(out, "tEXt", Bytes{'C', 'o', 'm', 'm', 'e', 'n', 't', 0, 's', 'e', 'e', 'd'});
    if (!plte.empty()) chunk(out, "PLTE", plte);
    libdeflate_compressor* c = libdeflate_alloc_compressor(6);
    Bytes z(libdeflate_zlib_compress_bound(c, raw_rows.size()));
    z.resize(libdeflate_zlib_compress(c, raw_rows.data(), raw_rows.size(), z.data(), z.size()));
    libdeflate_free_compressor(c);
    const size_t part = (z.size() + idats - 1) / idats;
    for (size_t i = 0; i < z.size(); i += part)
        chunk(out, "IDAT", Bytes(z.begin() + long(i), z.begin() + long(std::min(z.size(), i + part))));
    chunk(out, "IEND", {});
    return out;
}

// Filtered rows of an 8-bit gray image, filter type (y % 5) on row y (or `only` on every row).
Bytes filtered_gray8(const cv::Mat& m, int only = -1) {
    Bytes raw;
    for (int y = 0; y < m.rows; ++y) {
        const int f = only >= 0 ? only : y % 5;
        raw.push_back(uint8_t(f));
        const uint8_t* row = m.ptr<uint8_t>(y);
        const uint8_t* up = y ? m.ptr<uint8_t>(y - 1) : nullptr;
        for (int x = 0; x < m.cols; ++x) {
            const int a = x ? row[x - 1] : 0, b = up ? up[x] : 0, c = (x && up) ? up[x - 1] : 0;
            int pred = 0;
            if (f == 1) pred = a;
            else if (f == 2) pred = b;
            else if (f == 3) pred = (a + b) / 2;
            else if (f == 4) {
                const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
                pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
            }
            raw.push_back(uint8_t(row[x] - pred));
        }
    }
    return raw;
}

// Unfiltered rows of `bytes_per_row` bytes from a generator.
Bytes plain_rows(uint32_t h, size_t bytes_per_row) {
    Bytes raw;
    for (uint32_t y = 0; y < h; ++y) {
        raw.push_back(0);
        for (size_t x = 0; x < bytes_per_row; ++x) raw.push_back(uint8_t(x * 5 + y * 11));
    }
    return raw;
}

Bytes encode(const std::string& ext, const cv::Mat& m, const std::vector<int>& params = {}) {
    Bytes b;
    cv::imencode(ext, m, b, params);
    return b;
}

void png_seeds(const fs::path& dir) {
    const cv::Mat g = pattern(40, 36);
    write(dir / "gray8_filters.png", png(40, 36, 8, 0, filtered_gray8(g)));
    for (int f = 0; f < 5; ++f) write(dir / ("gray8_filter" + std::to_string(f) + ".png"), png(40, 36, 8, 0, filtered_gray8(g, f)));
    write(dir / "gray8_3idat_text.png", png(40, 36, 8, 0, filtered_gray8(g), 3, {}, true));
    write(dir / "gray8_opencv.png", encode(".png", g));
    write(dir / "gray8_small.png", png(3, 2, 8, 0, filtered_gray8(pattern(3, 2))));
}

void image_seeds(const fs::path& dir) {
    png_seeds(dir);
    write(dir / "gray16.png", encode(".png", pattern(40, 36, CV_16UC1)));
    write(dir / "bgr8.png", encode(".png", pattern(40, 36, CV_8UC3)));
    write(dir / "bgra8.png", encode(".png", pattern(40, 36, CV_8UC4)));
    write(dir / "bgr16.png", encode(".png", pattern(34, 33, CV_16UC3)));
    Bytes plte;
    for (int i = 0; i < 16; ++i) plte.insert(plte.end(), {uint8_t(i * 16), uint8_t(255 - i * 16), uint8_t(i * 8)});
    write(dir / "palette4.png", png(40, 36, 4, 3, plain_rows(36, 20), 1, plte));
    write(dir / "gray1.png", png(40, 36, 1, 0, plain_rows(36, 5)));
    write(dir / "gray_alpha8.png", png(34, 33, 8, 4, plain_rows(33, 68)));
    write(dir / "rgb8_hand.png", png(34, 33, 8, 2, plain_rows(33, 102)));
    write(dir / "gray8.jpg", encode(".jpg", pattern(40, 36), {cv::IMWRITE_JPEG_QUALITY, 80}));
    write(dir / "bgr8_progressive.jpg", encode(".jpg", pattern(40, 36, CV_8UC3), {cv::IMWRITE_JPEG_PROGRESSIVE, 1}));
    write(dir / "gray8.bmp", encode(".bmp", pattern(40, 36)));
    write(dir / "bgr8.bmp", encode(".bmp", pattern(34, 33, CV_8UC3)));
    write(dir / "gray8.tif", encode(".tif", pattern(40, 36)));
    write(dir / "gray16.tif", encode(".tif", pattern(34, 33, CV_16UC1)));
    write(dir / "gray8.pgm", encode(".pgm", pattern(40, 36)));
    write(dir / "bgr8.ppm", encode(".ppm", pattern(34, 33, CV_8UC3)));
}

void csv_seeds(const fs::path& dir) {
    write(dir / "hc18_header.csv", "filename,pixel size(mm)\n000_HC.png,0.0691358041432\n001_HC.png,0.0891085728\n");
    write(dir / "hc18_with_hc.csv", "filename,pixel size(mm),head circumference (mm)\n010_HC.png,0.1234,172.41\n");
    write(dir / "no_header_crlf.csv", "a.png,0.1\r\nb.png,0.2\r\n");
    write(dir / "bom_quoted.csv", "\xEF\xBB\xBF\"a,b.png\",0.15\n\"say \"\"hi\"\".png\", 0.11 \n");
    write(dir / "duplicates.csv", "x.png,0.1\nx.png,0.1\nx.png,0.2\n");
    write(dir / "bad_number.csv", "filename,pixel size(mm)\nc.png,nan\nd.png,1e400\ne.png,0x1p-3\n");
    write(dir / "unterminated.csv", "\"open.png,0.1\n");
    write(dir / "spaces.csv", "   f.png   ,   0.3   \n,0.1\n\n");
}

DcmDataset* base_dataset(DcmFileFormat& ff, int rows, int cols, int frames, int samples, int bits, const char* photometric) {
    DcmDataset* ds = ff.getDataset();
    ds->putAndInsertString(DCM_SOPClassUID, UID_UltrasoundMultiframeImageStorage);
    ds->putAndInsertString(DCM_SOPInstanceUID, "1.2.826.0.1.3680043.2.1125.1.1");
    ds->putAndInsertString(DCM_StudyInstanceUID, "1.2.826.0.1.3680043.2.1125.1.2");
    ds->putAndInsertString(DCM_SeriesInstanceUID, "1.2.826.0.1.3680043.2.1125.1.3");
    ds->putAndInsertString(DCM_Modality, "US");
    ds->putAndInsertString(DCM_PatientName, "Fuzz^Seed");
    ds->putAndInsertString(DCM_PatientID, "SEED-1");
    ds->putAndInsertUint16(DCM_Rows, Uint16(rows));
    ds->putAndInsertUint16(DCM_Columns, Uint16(cols));
    ds->putAndInsertUint16(DCM_SamplesPerPixel, Uint16(samples));
    ds->putAndInsertString(DCM_PhotometricInterpretation, photometric);
    ds->putAndInsertUint16(DCM_BitsAllocated, Uint16(bits));
    ds->putAndInsertUint16(DCM_BitsStored, Uint16(bits));
    ds->putAndInsertUint16(DCM_HighBit, Uint16(bits - 1));
    ds->putAndInsertUint16(DCM_PixelRepresentation, 0);
    if (samples > 1) ds->putAndInsertUint16(DCM_PlanarConfiguration, 0);
    if (frames > 1) {
        ds->putAndInsertString(DCM_NumberOfFrames, std::to_string(frames).c_str());
        ds->putAndInsertString(DCM_FrameTime, "40");
    }
    const size_t n = size_t(rows) * cols * frames * samples * (bits / 8);
    std::vector<Uint8> px(n);
    for (size_t i = 0; i < n; ++i) px[i] = Uint8(i * 7 + i / 97);
    if (bits == 16) ds->putAndInsertUint16Array(DCM_PixelData, reinterpret_cast<const Uint16*>(px.data()), unsigned(n / 2));
    else ds->putAndInsertUint8Array(DCM_PixelData, px.data(), unsigned(n));
    return ds;
}

void add_region(DcmDataset* ds, int x0, int y0, int x1, int y1, double delta_cm) {
    DcmItem* it = nullptr;
    ds->findOrCreateSequenceItem(DCM_SequenceOfUltrasoundRegions, it, -2);
    it->putAndInsertUint16(DCM_RegionSpatialFormat, 1);
    it->putAndInsertUint16(DCM_RegionDataType, 1);
    it->putAndInsertUint32(DCM_RegionFlags, 0);
    it->putAndInsertUint32(DCM_RegionLocationMinX0, Uint32(x0));
    it->putAndInsertUint32(DCM_RegionLocationMinY0, Uint32(y0));
    it->putAndInsertUint32(DCM_RegionLocationMaxX1, Uint32(x1));
    it->putAndInsertUint32(DCM_RegionLocationMaxY1, Uint32(y1));
    it->putAndInsertUint16(DCM_PhysicalUnitsXDirection, 3);
    it->putAndInsertUint16(DCM_PhysicalUnitsYDirection, 3);
    it->putAndInsertFloat64(DCM_PhysicalDeltaX, delta_cm);
    it->putAndInsertFloat64(DCM_PhysicalDeltaY, delta_cm);
}

void save(DcmFileFormat& ff, const fs::path& p, E_TransferSyntax xfer = EXS_LittleEndianExplicit) {
    const OFCondition c = ff.saveFile(p.c_str(), xfer);
    if (c.bad()) std::fprintf(stderr, "fuzz_make_seeds: %s: %s\n", p.c_str(), c.text());
}

// A JPEG 2000 DICOM file of `fragments` (after an empty offset table), 8-bit MONOCHROME2.
void j2k_dicom_seed(const fs::path& p, int rows, int cols, const std::vector<Bytes>& fragments) {
    DcmFileFormat ff;
    DcmDataset* ds = base_dataset(ff, rows, cols, 2, 1, 8, "MONOCHROME2");
    add_region(ds, 0, 0, cols - 1, rows - 1, 0.012);
    auto* seq = new DcmPixelSequence(DCM_PixelSequenceTag);
    seq->insert(new DcmPixelItem(DCM_PixelItemTag));
    for (const auto& f : fragments) {
        auto* item = new DcmPixelItem(DCM_PixelItemTag);
        item->putUint8Array(f.data(), Uint32(f.size()));
        seq->insert(item);
    }
    auto* px = new DcmPixelData(DCM_PixelData);
    px->putOriginalRepresentation(EXS_JPEG2000LosslessOnly, nullptr, seq);
    ds->insert(px, true);
    save(ff, p, EXS_JPEG2000LosslessOnly);
}

void dicom_seeds(const fs::path& dir) {
    {
        DcmFileFormat ff;
        DcmDataset* ds = base_dataset(ff, 36, 40, 1, 1, 8, "MONOCHROME2");
        add_region(ds, 0, 0, 39, 35, 0.012);
        save(ff, dir / "mono8_region.dcm");
    }
    {
        DcmFileFormat ff;
        DcmDataset* ds = base_dataset(ff, 36, 40, 1, 1, 8, "MONOCHROME2");
        add_region(ds, 0, 0, 19, 35, 0.012);
        add_region(ds, 20, 0, 39, 35, 0.015);
        save(ff, dir / "mono8_dual_view.dcm");
    }
    {
        DcmFileFormat ff;
        DcmDataset* ds = base_dataset(ff, 33, 34, 1, 1, 16, "MONOCHROME1");
        ds->putAndInsertString(DCM_PixelSpacing, "0.12\\0.13");
        save(ff, dir / "mono16_spacing.dcm");
    }
    {
        DcmFileFormat ff;
        DcmDataset* ds = base_dataset(ff, 33, 34, 1, 3, 8, "RGB");
        ds->putAndInsertString(DCM_ImagerPixelSpacing, "0.1\\0.1");
        save(ff, dir / "rgb8.dcm");
    }
    {
        DcmFileFormat ff;
        DcmDataset* ds = base_dataset(ff, 33, 34, 3, 1, 8, "MONOCHROME2");
        add_region(ds, 2, 2, 31, 30, 0.02);
        save(ff, dir / "mono8_3frames.dcm");
        save(ff, dir / "mono8_3frames_implicit.dcm", EXS_LittleEndianImplicit);
    }
    {
        DcmFileFormat ff;
        base_dataset(ff, 33, 34, 1, 3, 8, "YBR_FULL");
        save(ff, dir / "ybr_full.dcm");
    }
    // Nested sequences (issue 22 row 1): within the budget, and past it.
    write(dir / "nested_64.dcm", nested_sequences_dicom(64));
    write(dir / "nested_200.dcm", nested_sequences_dicom(200));
    // JPEG 2000: two frames, one fragment each, and the same frames in three fragments (the first
    // frame split: its start is found by its SOC marker).
    const cv::Mat a = pattern(40, 36), b = 255 - a;
    const Bytes ca = j2k_test::encode_j2k(a), cb = j2k_test::encode_j2k(b);
    const long half = long(ca.size() / 2 & ~size_t(1));
    j2k_dicom_seed(dir / "j2k_2frames.dcm", 36, 40, {ca, cb});
    j2k_dicom_seed(dir / "j2k_2frames_split.dcm", 36, 40,
                   {Bytes(ca.begin(), ca.begin() + half), Bytes(ca.begin() + half, ca.end()), cb});
}

// Frame seeds for fuzz_j2k: the first byte picks the header (fuzz_j2k.cpp: its low bits index
// MONOCHROME2, MONOCHROME1, RGB, YBR_RCT, YBR_ICT, YBR_FULL; its top bit 12 bits stored), the rest
// is a 64 x 64 frame.
void j2k_seeds(const fs::path& dir) {
    const auto seed = [&](const std::string& name, uint8_t pick, const Bytes& frame) {
        Bytes b{pick};
        b.insert(b.end(), frame.begin(), frame.end());
        write(dir / name, b);
    };
    const cv::Mat gray = pattern(64, 64), rgb = pattern(64, 64, CV_8UC3);
    cv::Mat gray12;
    gray.convertTo(gray12, CV_16U, 16);
    j2k_test::EncodeOptions o;
    seed("mono2.j2k", 0, j2k_test::encode_j2k(gray, o));
    seed("mono1.j2k", 1, j2k_test::encode_j2k(gray, o));
    seed("rgb_rct.j2k", 3, j2k_test::encode_j2k(rgb, o));
    o.mct = false;
    seed("ybr_full.j2k", 5, j2k_test::encode_j2k(rgb, o));
    seed("rgb_plain.j2k", 2, j2k_test::encode_j2k(rgb, o));
    o = {};
    o.precision = 12;
    seed("mono2_12bit.j2k", 0x80, j2k_test::encode_j2k(gray12, o));
    o = {};
    o.reversible = false;
    seed("rgb_ict_lossy.j2k", 4, j2k_test::encode_j2k(rgb, o));
    seed("mono2_lossy.j2k", 0, j2k_test::encode_j2k(gray, o));
    o = {};
    o.tile = 32;
    seed("mono2_tiled.j2k", 0, j2k_test::encode_j2k(gray, o));
    o = {};
    o.jp2 = true;
    seed("mono2.jp2", 0, j2k_test::encode_j2k(gray, o));
}

// C-STOREs for fuzz_dicom_node: "SOP_INSTANCE_UID\0SOP_CLASS_UID\0CALLING_AET\0" then the data set.
void dicom_node_seeds(const fs::path& dicom_dir, const fs::path& dir) {
    const std::string us = "1.2.840.10008.5.1.4.1.1.6.1";
    for (const auto& e : fs::directory_iterator(dicom_dir)) {
        std::ifstream in(e.path(), std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(in)), {});
        write(dir / e.path().filename(), "1.2.826.0.1.3680043.10.1000." + std::to_string(bytes.size()) + std::string(1, '\0') + us +
                                             std::string(1, '\0') + "US1" + std::string(1, '\0') + bytes);
    }
    write(dir / "bad_uid.dcm", "1.2.3.<script>" + std::string(1, '\0') + us + std::string(1, '\0') + "X\n[error] FAKE" +
                                   std::string(1, '\0') + nested_sequences_dicom(2));
}

// Requests for fuzz_routes: the first byte picks the route (kRoutes in fuzz_routes.cpp), the rest is
// a JSON body, multipart parts ("NAME[;FILENAME]\n" then the bytes, separated by "\r\n--\r\n") or
// the rest of a GET path.
void route_seeds(const fs::path& dir) {
    const auto seed = [&](const std::string& name, int route, const std::string& rest) {
        write(dir / name, std::string(1, char(route)) + rest);
    };
    const std::string ellipse = R"({"center_x": 402, "center_y": 268, "semi_axis_a": 170, "semi_axis_b": 130, "angle_rad": 0.45})";
    seed("perimeter.json", 0, R"({"ellipse_px": )" + ellipse + R"(, "pixel_size_mm": 0.15, "ga_weeks": 22.5})");
    seed("exam.json", 1,
         R"({"pregnancy_id": "P-1", "exam_date": "2024-03-01", "image_sha256": ")" + std::string(64, 'a') +
             R"(", "pixel_size_mm": 0.15, "ellipse_px": )" + ellipse +
             R"(, "corrected": true, "ga_weeks": 22, "quality": "review", "reasons": ["low detection score"],)"
             R"( "sop_instance_uid": "1.2.826.0.1.3680043.2.1125.1"})");
    seed("fit_points.json", 2, R"({"points": [[10, 0], [0, 5], [-10, 0], [0, -5], [7.07, 3.54], [-7.07, -3.54]]})");
    cv::Mat mask = cv::Mat::zeros(36, 40, CV_8U);
    cv::ellipse(mask, cv::Point(20, 18), cv::Size(14, 10), 20, 0, 360, cv::Scalar(255), cv::FILLED);
    const Bytes mask_png = encode(".png", mask);
    const std::string part_sep = "\r\n--\r\n";
    seed("fit_mask.multipart", 3, "mask;mask.png\n" + std::string(mask_png.begin(), mask_png.end()));
    const Bytes scan = encode(".png", pattern(40, 36));
    const std::string scan_part = "image;scan.png\n" + std::string(scan.begin(), scan.end());
    seed("measure.multipart", 4,
         scan_part + part_sep + "pixel_size_mm\n0.15" + part_sep + "ga_weeks\n22" + part_sep + "pregnancy_id\nP-1" +
             part_sep + "exam_date\n2024-03-01" + part_sep + "format\nfhir");
    seed("segment.multipart", 5, scan_part + part_sep + "format\njson");
    seed("measure_json.json", 6, R"({"pixel_size_mm": 0.15})");
    seed("pregnancy.path", 7, "P-1");
    seed("pregnancy_csv.path", 7, "P-1/export.csv");
    seed("image_preview.path", 8, std::string(64, 'a') + "/preview.png?frame=1");
    seed("static.path", 9, "js/main.js");
    seed("instances.path", 10, "");
    seed("growth.path", 11, "");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: fuzz_make_seeds OUT\n");
        return 2;
    }
    const fs::path out = argv[1];
    for (const char* d : {"png_gray", "decode_image", "pixel_sizes", "dicom", "routes", "dicom_node", "j2k"})
        fs::create_directories(out / d);
    png_seeds(out / "png_gray");
    image_seeds(out / "decode_image");
    csv_seeds(out / "pixel_sizes");
    dicom_seeds(out / "dicom");
    dicom_node_seeds(out / "dicom", out / "dicom_node");
    route_seeds(out / "routes");
    j2k_seeds(out / "j2k");
    for (const char* d : {"png_gray", "decode_image", "pixel_sizes", "dicom", "routes", "dicom_node", "j2k"}) {
        size_t n = 0;
        for ([[maybe_unused]] const auto& e : fs::directory_iterator(out / d)) ++n;
        std::printf("%s: %zu seeds\n", d, n);
    }
    return 0;
}
