// Results back to the record (report.h): the DICOM SR checked by the real clients (dciodvfy from
// dicom3tools, dsrdump from DCMTK) and read back with DCMTK; the FHIR Observations' content. The
// FHIR Bundle's validity against the R4 StructureDefinitions is the `fhir_validate` test (Node).
#include "fetalhc/dicom.h"
#include "fetalhc/report.h"

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmsr/dsrdoc.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace fs = std::filesystem;
using fetalhc::DicomHeader;
using fetalhc::Measurement;

namespace {

DicomHeader synthetic_source() {
    DicomHeader h;
    h.path = "synthetic.dcm";
    h.sop_class_uid = "1.2.840.10008.5.1.4.1.1.6.1";  // Ultrasound Image Storage
    h.sop_instance_uid = "2.25.301298017421098264817402938475610293847";
    h.study_instance_uid = "2.25.117283746502938475610293847561029384756";
    h.series_instance_uid = "2.25.229384756102938475610293847561029384756";
    h.patient_name = "Doe^Jane";
    h.patient_id = "FHC-0001";
    h.patient_birth_date = "19900101";
    h.patient_sex = "F";
    h.study_date = "20240315";
    h.study_time = "101500";
    h.study_id = "S1";
    h.accession_number = "ACC123";
    h.referring_physician = "Smith^John";
    h.modality = "US";
    return h;
}

// A head of about 20 weeks: a = 206 px, b = 160 px at 0.15 mm/px (OFD 61.8 mm, BPD 48.0 mm).
Measurement synthetic_measurement() {
    Measurement m = fetalhc::measurement_from_ellipse(fetalhc::Ellipse{400, 270, 206, 160, 0.3}, 0.15, std::nullopt);
    m.source = "synthetic.dcm";
    return m;
}

std::string fixed1(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

bool have_tool(const char* name) { return std::system((std::string("command -v ") + name + " >/dev/null 2>&1").c_str()) == 0; }

std::string run(const std::string& cmd) {
    std::string out;
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
}

std::string lines_with(const std::string& text, const std::string& word) {
    std::istringstream in(text);
    std::string line, hits;
    while (std::getline(in, line))
        if (line.find(word) != std::string::npos) hits += line + "\n";
    return hits;
}

class SrFile : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("fetalhc_test_report_" + std::to_string(::getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    std::string write(const Measurement& m, const DicomHeader* src, const std::string& name,
                      const fetalhc::SrOptions& opt = {}) {
        auto path = fetalhc::write_biometry_sr_file(m, src, (dir_ / name).string(), opt);
        EXPECT_TRUE(path.has_value()) << (path ? "" : path.error());
        return path ? *path : "";
    }
    static std::string get(DcmFileFormat& f, const DcmTagKey& tag) {
        OFString v;
        f.getDataset()->findAndGetOFStringArray(tag, v);
        return v.c_str();
    }
    fs::path dir_;
};

}  // namespace

TEST_F(SrFile, WithDicomSourcePassesDciodvfyWithoutErrors) {
    if (!have_tool("dciodvfy")) GTEST_SKIP() << "dciodvfy not found (apt-get install dicom3tools)";
    const DicomHeader src = synthetic_source();
    const std::string path = write(synthetic_measurement(), &src, "with_source_sr.dcm");
    const std::string out = run("dciodvfy '" + path + "'");
    EXPECT_EQ(lines_with(out, "Error"), "") << out;
    EXPECT_NE(out.find("ComprehensiveSR"), std::string::npos) << out;  // dciodvfy recognised the IOD
}

TEST_F(SrFile, WithoutSourcePassesDciodvfyWithoutErrors) {
    if (!have_tool("dciodvfy")) GTEST_SKIP() << "dciodvfy not found (apt-get install dicom3tools)";
    const std::string path = write(synthetic_measurement(), nullptr, "png_sr.dcm");
    const std::string out = run("dciodvfy '" + path + "'");
    EXPECT_EQ(lines_with(out, "Error"), "") << out;
}

TEST_F(SrFile, DsrdumpShowsTheTemplateCodesAndValues) {
    if (!have_tool("dsrdump")) GTEST_SKIP() << "dsrdump not found (apt-get install dcmtk)";
    const DicomHeader src = synthetic_source();
    const Measurement m = synthetic_measurement();
    ASSERT_TRUE(m.ga_hadlock.in_range);
    const std::string path = write(m, &src, "dump_sr.dcm");
    const std::string out = run("dsrdump +Pc +Pt +Pu '" + path + "'");
    for (const char* s : {"(125000,DCM,\"OB-GYN Ultrasound Procedure Report\")", "TID 5000 (DCMR)",
                          "(125002,DCM,\"Fetal Biometry\")", "(125005,DCM,\"Biometry Group\")",
                          "(121005,DCM,\"Observer Type\")=(121007,DCM,\"Device\")", "(111028,DCM,\"Image Library\")",
                          "(11984-2,LN,", "(11820-8,LN,", "(11851-3,LN,", "(18185-9,LN,", "(d,UCUM,",
                          "=(11932-1,LN,\"HC, Hadlock 1984\")", "inferred from SCOORD:=(ELLIPSE,", "selected from IMAGE"})
        EXPECT_NE(out.find(s), std::string::npos) << "missing " << s << " in\n" << out;
    EXPECT_NE(out.find("\"" + fixed1(m.hc_mm) + "\" (mm,UCUM,"), std::string::npos) << out;
    EXPECT_NE(out.find("\"" + fixed1(m.bpd_mm) + "\" (mm,UCUM,"), std::string::npos) << out;
    EXPECT_NE(out.find("\"" + fixed1(m.ofd_mm) + "\" (mm,UCUM,"), std::string::npos) << out;
    EXPECT_NE(out.find("\"" + fixed1(m.ga_hadlock.weeks * 7) + "\" (d,UCUM,"), std::string::npos) << out;
    EXPECT_NE(out.find(src.sop_instance_uid), std::string::npos) << out;  // the IMAGE references
}

TEST_F(SrFile, ReadBackCopiesIdentityIntoANewSeries) {
    const DicomHeader src = synthetic_source();
    const Measurement m = synthetic_measurement();
    const std::string path = write(m, &src, "identity_sr.dcm");
    DcmFileFormat f;
    ASSERT_TRUE(f.loadFile(path.c_str()).good());
    EXPECT_EQ(get(f, DCM_SOPClassUID), UID_ComprehensiveSRStorage);
    EXPECT_EQ(get(f, DCM_Modality), "SR");
    EXPECT_EQ(get(f, DCM_Manufacturer), "fetalhc");
    EXPECT_EQ(get(f, DCM_PatientName), src.patient_name);
    EXPECT_EQ(get(f, DCM_PatientID), src.patient_id);
    EXPECT_EQ(get(f, DCM_PatientBirthDate), src.patient_birth_date);
    EXPECT_EQ(get(f, DCM_PatientSex), src.patient_sex);
    EXPECT_EQ(get(f, DCM_StudyInstanceUID), src.study_instance_uid);
    EXPECT_EQ(get(f, DCM_StudyDate), src.study_date);
    EXPECT_EQ(get(f, DCM_StudyTime), src.study_time);
    EXPECT_EQ(get(f, DCM_StudyID), src.study_id);
    EXPECT_EQ(get(f, DCM_AccessionNumber), src.accession_number);
    EXPECT_EQ(get(f, DCM_ReferringPhysicianName), src.referring_physician);
    const std::string series = get(f, DCM_SeriesInstanceUID), sop = get(f, DCM_SOPInstanceUID);
    EXPECT_FALSE(series.empty());
    EXPECT_NE(series, src.series_instance_uid);
    EXPECT_FALSE(sop.empty());
    EXPECT_NE(sop, src.sop_instance_uid);
    OFString meta_sop;
    f.getMetaInfo()->findAndGetOFString(DCM_MediaStorageSOPInstanceUID, meta_sop);
    EXPECT_EQ(meta_sop.c_str(), sop);

    // DCMTK's own SR reader accepts the document and finds the HC value with its full precision.
    DSRDocument doc;
    ASSERT_TRUE(doc.read(*f.getDataset()).good());
    EXPECT_EQ(doc.getDocumentType(), DSRTypes::DT_ComprehensiveSR);
    DSRDocumentTree& tree = doc.getTree();
    ASSERT_TRUE(tree.isValid());
    ASSERT_GT(tree.gotoNamedNode(DSRBasicCodedEntry("11984-2", "LN", "Head Circumference")), 0u);
    Float64 hc = 0;
    ASSERT_TRUE(tree.getCurrentContentItem().getNumericValue().getFloatingPointRepresentation(hc).good());
    EXPECT_DOUBLE_EQ(hc, m.hc_mm);  // exact: FloatingPointValue is the double itself
    // The source image is evidence of the document (Current Requested Procedure Evidence).
    EXPECT_EQ(doc.getCurrentRequestedProcedureEvidence().getNumberOfInstances(), 1u);
}

TEST_F(SrFile, WithoutSourceHasEmptyType2IdentityAndItsOwnStudy) {
    const Measurement m = synthetic_measurement();
    const std::string a = write(m, nullptr, "a_sr.dcm"), b = write(m, nullptr, "b_sr.dcm");
    DcmFileFormat fa, fb;
    ASSERT_TRUE(fa.loadFile(a.c_str()).good());
    ASSERT_TRUE(fb.loadFile(b.c_str()).good());
    for (const DcmTagKey& tag : {DCM_PatientName, DCM_PatientID, DCM_PatientBirthDate, DCM_PatientSex, DCM_StudyDate,
                                 DCM_StudyTime, DCM_AccessionNumber, DCM_ReferringPhysicianName, DCM_StudyID}) {
        EXPECT_TRUE(fa.getDataset()->tagExists(tag)) << DcmTag(tag).getTagName() << " (type 2) must be present";
        EXPECT_EQ(get(fa, tag), "") << DcmTag(tag).getTagName();
    }
    EXPECT_FALSE(get(fa, DCM_StudyInstanceUID).empty());
    EXPECT_NE(get(fa, DCM_StudyInstanceUID), get(fb, DCM_StudyInstanceUID));
    EXPECT_NE(get(fa, DCM_SOPInstanceUID), get(fb, DCM_SOPInstanceUID));
}

TEST_F(SrFile, NonAsciiIdentityIsWrittenAsUtf8) {
    DicomHeader src = synthetic_source();
    src.patient_name = "M\xC3\xBCller^Anna";  // "Müller^Anna" in UTF-8
    const std::string path = write(synthetic_measurement(), &src, "utf8_sr.dcm");
    DcmFileFormat f;
    ASSERT_TRUE(f.loadFile(path.c_str()).good());
    EXPECT_EQ(get(f, DCM_SpecificCharacterSet), "ISO_IR 192");
    EXPECT_EQ(get(f, DCM_PatientName), src.patient_name);
    if (have_tool("dciodvfy")) {
        const std::string out = run("dciodvfy '" + path + "'");
        EXPECT_EQ(lines_with(out, "Error"), "") << out;
    }
}

TEST(SrBytes, IsAPart10FileAndRefusesAMeasurementWithoutNumbers) {
    auto bytes = fetalhc::write_biometry_sr(synthetic_measurement(), nullptr);
    ASSERT_TRUE(bytes.has_value()) << bytes.error();
    ASSERT_GT(bytes->size(), 132u);
    EXPECT_EQ(std::string(bytes->begin() + 128, bytes->begin() + 132), "DICM");

    Measurement empty;
    empty.source = "nothing.png";
    auto refused = fetalhc::write_biometry_sr(empty, nullptr);
    ASSERT_FALSE(refused.has_value());
    EXPECT_NE(refused.error().find("nothing.png"), std::string::npos) << refused.error();

    DicomHeader no_uid = synthetic_source();
    no_uid.sop_instance_uid.clear();
    EXPECT_FALSE(fetalhc::write_biometry_sr(synthetic_measurement(), &no_uid).has_value());
}

TEST(SrBytes, ReferencedFrameIsWrittenOnTheImageItems) {
    const DicomHeader src = synthetic_source();
    fetalhc::SrOptions opt;
    opt.referenced_frame = 7;
    auto bytes = fetalhc::write_biometry_sr(synthetic_measurement(), &src, opt);
    ASSERT_TRUE(bytes.has_value()) << bytes.error();
    // (0008,1160) Referenced Frame Number, IS "7" (padded to even length): present in the encoding.
    const std::string s(bytes->begin(), bytes->end());
    EXPECT_NE(s.find(std::string("\x08\x00\x60\x11" "IS\x02\x00" "7 ", 10)), std::string::npos);
    opt.referenced_frame = 0;
    EXPECT_FALSE(fetalhc::write_biometry_sr(synthetic_measurement(), &src, opt).has_value());
}

TEST(SrFileName, KeepsTheStemAndFrameAndReplacesOddCharacters) {
    EXPECT_EQ(fetalhc::sr_file_name("scans/a b.dcm"), "a_b_sr.dcm");
    EXPECT_EQ(fetalhc::sr_file_name("cine.dcm#summary"), "cine_summary_sr.dcm");
    EXPECT_EQ(fetalhc::sr_file_name("dir.d/cine.mp4#12"), "cine_12_sr.dcm");
    EXPECT_EQ(fetalhc::sr_file_name("001_HC.png"), "001_HC_sr.dcm");
}

// ---- Key image (Secondary Capture) ----

// A 640 x 480 gray ramp under the synthetic measurement's ellipse (centre 400, 270).
cv::Mat synthetic_image() {
    cv::Mat img(480, 640, CV_8UC1);
    for (int y = 0; y < img.rows; ++y)
        for (int x = 0; x < img.cols; ++x) img.at<unsigned char>(y, x) = static_cast<unsigned char>((x + y) / 5);
    return img;
}

TEST_F(SrFile, KeyImageIsADciodvfyCleanSecondaryCaptureInANewSeriesOfTheStudy) {
    DicomHeader src = synthetic_source();
    src.sop_class_uid = "1.2.840.10008.5.1.4.1.1.3.1";  // Ultrasound Multi-frame Image Storage
    src.frames = 10;
    fetalhc::KeyImageOptions opt;
    opt.referenced_frame = 3;
    auto path = fetalhc::write_key_image_file(synthetic_measurement(), synthetic_image(), &src, (dir_ / "k_key.dcm").string(), opt);
    ASSERT_TRUE(path.has_value()) << path.error();
    if (have_tool("dciodvfy")) {
        const std::string out = run("dciodvfy '" + *path + "'");
        EXPECT_EQ(lines_with(out, "Error"), "") << out;
        EXPECT_NE(out.find("SC"), std::string::npos) << out;  // dciodvfy recognised the Secondary Capture IOD
    }
    DcmFileFormat f;
    ASSERT_TRUE(f.loadFile(path->c_str()).good());
    EXPECT_EQ(get(f, DCM_SOPClassUID), UID_SecondaryCaptureImageStorage);
    EXPECT_EQ(get(f, DCM_StudyInstanceUID), src.study_instance_uid);
    EXPECT_EQ(get(f, DCM_PatientID), src.patient_id);
    EXPECT_EQ(get(f, DCM_PatientName), src.patient_name);
    EXPECT_EQ(get(f, DCM_AccessionNumber), src.accession_number);
    EXPECT_NE(get(f, DCM_SeriesInstanceUID), src.series_instance_uid);
    EXPECT_FALSE(get(f, DCM_SeriesInstanceUID).empty());
    EXPECT_NE(get(f, DCM_SOPInstanceUID), src.sop_instance_uid);
    EXPECT_EQ(get(f, DCM_BurnedInAnnotation), "YES");
    EXPECT_EQ(get(f, DCM_PhotometricInterpretation), "RGB");
    DcmItem* ref = nullptr;
    ASSERT_TRUE(f.getDataset()->findAndGetSequenceItem(DCM_SourceImageSequence, ref, 0).good());
    OFString ref_sop, ref_frame;
    ref->findAndGetOFString(DCM_ReferencedSOPInstanceUID, ref_sop);
    ref->findAndGetOFString(DCM_ReferencedFrameNumber, ref_frame);
    EXPECT_EQ(ref_sop.c_str(), src.sop_instance_uid);
    EXPECT_EQ(ref_frame, "3");

    // The pixels: the source's size, the gray image where nothing is drawn, the ellipse drawn in
    // colour on its outline (the end of the major axis, centre + a along the angle).
    Uint16 rows = 0, cols = 0;
    f.getDataset()->findAndGetUint16(DCM_Rows, rows);
    f.getDataset()->findAndGetUint16(DCM_Columns, cols);
    ASSERT_EQ(rows, 480);
    ASSERT_EQ(cols, 640);
    const Uint8* px = nullptr;
    unsigned long n = 0;
    ASSERT_TRUE(f.getDataset()->findAndGetUint8Array(DCM_PixelData, px, &n).good());
    ASSERT_EQ(n, 480ul * 640 * 3);
    auto rgb_at = [&](int x, int y) { return cv::Vec3b(px[(y * 640 + x) * 3], px[(y * 640 + x) * 3 + 1], px[(y * 640 + x) * 3 + 2]); };
    const cv::Vec3b corner = rgb_at(630, 470);  // far from the ellipse and the text panel
    EXPECT_EQ(corner[0], corner[1]);
    EXPECT_EQ(corner[1], corner[2]);
    EXPECT_EQ(corner[0], (630 + 470) / 5);
    const fetalhc::Ellipse e = synthetic_measurement().ellipse_px;
    const int ex = int(std::lround(e.cx + e.a * std::cos(e.angle))), ey = int(std::lround(e.cy + e.a * std::sin(e.angle)));
    bool coloured = false;
    for (int dy = -2; dy <= 2; ++dy)
        for (int dx = -2; dx <= 2; ++dx) {
            const cv::Vec3b p = rgb_at(std::clamp(ex + dx, 0, 639), std::clamp(ey + dy, 0, 479));
            coloured = coloured || p[0] != p[1] || p[1] != p[2];
        }
    EXPECT_TRUE(coloured) << "no colour on the ellipse at (" << ex << ", " << ey << ")";
}

TEST_F(SrFile, KeyImageWithoutSourceOpensItsOwnStudyAndIsDciodvfyClean) {
    auto a = fetalhc::write_key_image(synthetic_measurement(), synthetic_image(), nullptr);
    auto b = fetalhc::write_key_image(synthetic_measurement(), synthetic_image(), nullptr);
    ASSERT_TRUE(a.has_value()) << a.error();
    ASSERT_TRUE(b.has_value()) << b.error();
    const fs::path pa = dir_ / "a_key.dcm";
    std::ofstream(pa, std::ios::binary).write(reinterpret_cast<const char*>(a->data()), std::streamsize(a->size()));
    DcmFileFormat fa;
    ASSERT_TRUE(fa.loadFile(pa.c_str()).good());
    EXPECT_FALSE(get(fa, DCM_StudyInstanceUID).empty());
    EXPECT_EQ(get(fa, DCM_PatientID), "");
    EXPECT_TRUE(fa.getDataset()->tagExists(DCM_PatientID));
    EXPECT_FALSE(fa.getDataset()->tagExists(DCM_SourceImageSequence));
    EXPECT_NE(std::string(a->begin(), a->end()), std::string(b->begin(), b->end()));  // new UIDs each time
    if (have_tool("dciodvfy")) {
        const std::string out = run("dciodvfy '" + pa.string() + "'");
        EXPECT_EQ(lines_with(out, "Error"), "") << out;
    }
}

TEST(KeyImage, RefusesWhatItCannotDrawOrReference) {
    const DicomHeader src = synthetic_source();
    Measurement empty;
    empty.source = "nothing.dcm";
    auto no_numbers = fetalhc::write_key_image(empty, synthetic_image(), &src);
    ASSERT_FALSE(no_numbers.has_value());
    EXPECT_NE(no_numbers.error().find("nothing.dcm"), std::string::npos) << no_numbers.error();
    auto no_image = fetalhc::write_key_image(synthetic_measurement(), cv::Mat(), &src);
    ASSERT_FALSE(no_image.has_value());
    EXPECT_NE(no_image.error().find("image"), std::string::npos) << no_image.error();
    DicomHeader bad = src;
    bad.sop_instance_uid = "not.a.uid";
    EXPECT_FALSE(fetalhc::write_key_image(synthetic_measurement(), synthetic_image(), &bad).has_value());
    EXPECT_EQ(fetalhc::key_image_file_name("scans/a b.dcm"), "a_b_key.dcm");
    EXPECT_EQ(fetalhc::key_image_file_name("cine.dcm#summary"), "cine_summary_key.dcm");
}

TEST(Fhir, ObservationsCarryLoincUcumAndTheSourceImage) {
    const DicomHeader src = synthetic_source();
    const Measurement m = synthetic_measurement();
    const nlohmann::json obs = fetalhc::fhir_observations(m, &src);
    ASSERT_EQ(obs.size(), 3u);
    const char* codes[] = {"11984-2", "11820-8", "11851-3"};
    const double mm[] = {m.hc_mm, m.bpd_mm, m.ofd_mm};
    for (int i = 0; i < 3; ++i) {
        const auto& o = obs[i];
        EXPECT_EQ(o["resourceType"], "Observation");
        EXPECT_EQ(o["status"], "final");
        EXPECT_EQ(o["category"][0]["coding"][0]["system"], "http://terminology.hl7.org/CodeSystem/observation-category");
        EXPECT_EQ(o["category"][0]["coding"][0]["code"], "imaging");
        EXPECT_EQ(o["code"]["coding"][0]["system"], "http://loinc.org");
        EXPECT_EQ(o["code"]["coding"][0]["code"], codes[i]);
        EXPECT_EQ(o["valueQuantity"]["system"], "http://unitsofmeasure.org");
        EXPECT_EQ(o["valueQuantity"]["code"], "mm");
        EXPECT_NEAR(o["valueQuantity"]["value"].get<double>(), mm[i], 0.05);  // 0.1 mm resolution
        // Study date and time (the zone is this machine's: only the local part is fixed).
        EXPECT_EQ(o["effectiveDateTime"].get<std::string>().substr(0, 19), "2024-03-15T10:15:00");
        EXPECT_EQ(o["derivedFrom"][0]["identifier"]["system"], "urn:dicom:uid");
        EXPECT_EQ(o["derivedFrom"][0]["identifier"]["value"], "urn:oid:" + src.sop_instance_uid);
        EXPECT_EQ(o["derivedFrom"][1]["type"], "ImagingStudy");
        EXPECT_EQ(o["subject"]["identifier"]["value"], src.patient_id);
    }
}

TEST(Fhir, WithoutSourceUsesTheMeasurementTimeAndNamesNoImage) {
    fetalhc::FhirOptions opt;
    opt.measured_at = "2024-03-15T10:20:00Z";
    const nlohmann::json obs = fetalhc::fhir_observations(synthetic_measurement(), nullptr, opt);
    ASSERT_EQ(obs.size(), 3u);
    EXPECT_EQ(obs[0]["effectiveDateTime"], "2024-03-15T10:20:00Z");
    EXPECT_FALSE(obs[0].contains("derivedFrom"));
    EXPECT_FALSE(obs[0].contains("subject"));

    DicomHeader date_only = synthetic_source();
    date_only.study_time.clear();
    EXPECT_EQ(fetalhc::fhir_observations(synthetic_measurement(), &date_only, opt)[0]["effectiveDateTime"], "2024-03-15");
    DicomHeader no_date = synthetic_source();
    no_date.study_date = "";
    EXPECT_EQ(fetalhc::fhir_observations(synthetic_measurement(), &no_date, opt)[0]["effectiveDateTime"],
              "2024-03-15T10:20:00Z");
}

TEST(Fhir, BundleIsACollectionWithUuidFullUrls) {
    const nlohmann::json b = fetalhc::fhir_bundle({{synthetic_measurement(), synthetic_source()},
                                                   {synthetic_measurement(), std::nullopt}});
    EXPECT_EQ(b["resourceType"], "Bundle");
    EXPECT_EQ(b["type"], "collection");
    ASSERT_EQ(b["entry"].size(), 6u);
    std::set<std::string> urls;
    for (const auto& e : b["entry"]) {
        const std::string url = e["fullUrl"];
        EXPECT_EQ(url.rfind("urn:uuid:", 0), 0u) << url;
        EXPECT_EQ(url.size(), 9u + 36u) << url;
        urls.insert(url);
    }
    EXPECT_EQ(urls.size(), 6u);  // distinct
}

// Issue 22 row 9: a sender's oversized or malformed values (a 20,000-character PatientName, a date
// that is not a date, a newline, a backslash) are cut or dropped to fit their VRs, so that the SR
// still passes dciodvfy; a study UID that breaks the UID rules is refused (the SR could not
// reference its image).
TEST_F(SrFile, OversizedAndMalformedSourceValuesFitTheirVrs) {
    DicomHeader src = synthetic_source();
    src.patient_name = std::string(20000, 'A');
    src.patient_id = "ID\nwith\\backslash" + std::string(100, '9');
    src.patient_birth_date = "1990-01-01";
    src.patient_sex = "female";
    src.study_time = "10:15";
    src.study_id = std::string(40, 'S');
    src.accession_number = std::string(40, '7');
    const std::string path = write(synthetic_measurement(), &src, "oversized_sr.dcm");
    DcmFileFormat f;
    ASSERT_TRUE(f.loadFile(path.c_str()).good());
    EXPECT_EQ(get(f, DCM_PatientName), std::string(64, 'A'));
    EXPECT_EQ(get(f, DCM_PatientID).rfind("IDwithbackslash9", 0), 0u) << get(f, DCM_PatientID);
    EXPECT_EQ(get(f, DCM_PatientID).size(), 64u);
    EXPECT_EQ(get(f, DCM_PatientBirthDate), "");
    EXPECT_EQ(get(f, DCM_PatientSex), "");
    EXPECT_EQ(get(f, DCM_StudyTime), "");
    EXPECT_EQ(get(f, DCM_StudyID), std::string(16, 'S'));
    EXPECT_EQ(get(f, DCM_AccessionNumber), std::string(16, '7'));
    DicomHeader bad_uid = synthetic_source();
    bad_uid.study_instance_uid = "1.2.3.<script>";
    auto refused = fetalhc::write_biometry_sr(synthetic_measurement(), &bad_uid);
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().find("Study or Series Instance UID"), std::string::npos) << refused.error();
    if (!have_tool("dciodvfy")) GTEST_SKIP() << "dciodvfy not found (apt-get install dicom3tools)";
    const std::string out = run("dciodvfy '" + path + "'");
    EXPECT_EQ(lines_with(out, "Error"), "") << out;
}

TEST(DicomUid, FollowsTheRulesOfPs35Section91) {
    for (const char* ok : {"0", "1.2.840.10008.5.1.4.1.1.6.1", "2.25.329800735698586629295641978511506172918", "1.0.3"})
        EXPECT_TRUE(fetalhc::valid_dicom_uid(ok)) << ok;
    for (const char* bad : {"", "1..2", ".1", "1.", "1.02", "01.2", "1.2.3.<script>", "../../etc/x", "1 2"})
        EXPECT_FALSE(fetalhc::valid_dicom_uid(bad)) << bad;
    EXPECT_TRUE(fetalhc::valid_dicom_uid(std::string(64, '1')));
    EXPECT_FALSE(fetalhc::valid_dicom_uid(std::string(65, '1')));
}
