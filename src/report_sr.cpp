// DICOM Comprehensive SR of a fetal biometry measurement (DCMTK dcmsr). Structure: report.h.
#include "fetalhc/report.h"

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcostrmb.h>
#include <dcmtk/dcmsr/codes/dcm.h>
#include <dcmtk/dcmsr/codes/ucum.h>
#include <dcmtk/dcmsr/dsrdoc.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <utility>

#ifndef FETALHC_VERSION
#define FETALHC_VERSION "dev"
#endif

namespace fetalhc {
namespace {

// Device Observer UID (TID 1004) of fetalhc: a fixed UUID-derived UID (PS3.5 B.2, root 2.25), so
// every SR names the same observer.
constexpr const char* kDeviceObserverUid = "2.25.195412372953614190432869307183760395512";

const DSRBasicCodedEntry kHeadCircumference("11984-2", "LN", "Head Circumference");
const DSRBasicCodedEntry kBiparietalDiameter("11820-8", "LN", "Biparietal Diameter");
const DSRBasicCodedEntry kOccipitoFrontalDiameter("11851-3", "LN", "Occipital-Frontal Diameter");
const DSRBasicCodedEntry kGestationalAge("18185-9", "LN", "Gestational Age");
const DSRBasicCodedEntry kHadlockHc("11932-1", "LN", "HC, Hadlock 1984");
const DSRBasicCodedEntry kUcumDays("d", "UCUM", "days");

std::string fixed(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

// A value copied from a received file, made to fit its VR (PS3.5 6.2) so that the SR is valid
// whatever the sender wrote: at most `max_chars` characters (cut at a UTF-8 character boundary),
// no control characters and no backslash (these attributes hold one value).
std::string fit_vr(const std::string& v, size_t max_chars) {
    std::string out;
    size_t chars = 0;
    for (size_t i = 0; i < v.size() && chars < max_chars;) {
        const unsigned char c = static_cast<unsigned char>(v[i]);
        const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
        if (i + len > v.size()) break;
        if (!(c < 0x20 || c == 0x7f || c == '\\')) out.append(v, i, len), ++chars;
        i += len;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
}

// A DA (YYYYMMDD), TM (HHMMSS[.F...]) or CS value kept only when it has its VR's form.
std::string only_if(const std::string& v, bool ok) { return ok ? v : std::string(); }
bool all_digits(const std::string& v, size_t from, size_t to) {
    for (size_t i = from; i < to; ++i)
        if (i >= v.size() || !std::isdigit(static_cast<unsigned char>(v[i]))) return false;
    return true;
}
bool is_da(const std::string& v) { return v.size() == 8 && all_digits(v, 0, 8); }
bool is_tm(const std::string& v) {
    if (v.size() < 2 || v.size() > 14 || !all_digits(v, 0, std::min<size_t>(v.size(), 6))) return false;
    const size_t dot = v.find('.');
    return dot == std::string::npos ? v.size() <= 6 : (dot == 6 && all_digits(v, 7, v.size()));
}

bool is_ascii(const std::string& s) {
    for (unsigned char c : s)
        if (c >= 0x80) return false;
    return true;
}

// Carries the first DCMTK failure with the step that failed.
struct Steps {
    std::string failed;
    bool operator()(const OFCondition& c, const char* what) {
        if (c.bad() && failed.empty()) failed = std::string(what) + ": " + c.text();
        return c.good();
    }
};

// Adds a NUM below (first child) or after (sibling) the cursor; the cursor moves to it.
void add_num(DSRDocumentTree& t, Steps& ok, bool child, const DSRBasicCodedEntry& concept, double value,
             int decimals, const DSRBasicCodedEntry& unit) {
    const auto rel = DSRTypes::RT_contains;
    ok(child ? t.addChildContentItem(rel, DSRTypes::VT_Num, concept) : t.addContentItem(rel, DSRTypes::VT_Num, concept),
       "add NUM");
    DSRNumericMeasurementValue num(fixed(value, decimals).c_str(), unit);
    ok(num.setFloatingPointRepresentation(value), "NUM floating point value");
    ok(t.getCurrentContentItem().setNumericValue(num), "NUM value");
}

DSRImageReferenceValue image_ref(const DicomHeader& src, const SrOptions& opt) {
    DSRImageReferenceValue ref(src.sop_class_uid.c_str(), src.sop_instance_uid.c_str(), OFFalse);
    if (opt.referenced_frame) ref.getFrameList().addItem(static_cast<Sint32>(*opt.referenced_frame));
    return ref;
}

// Below the current NUM: INFERRED FROM SCOORD (points in the project's pixel-centre convention),
// SELECTED FROM the source image. The cursor returns to the NUM.
void add_outline(DSRDocumentTree& t, Steps& ok, DSRTypes::E_GraphicType type,
                 const std::vector<cv::Point2d>& points, const DicomHeader& src, const SrOptions& opt) {
    if (!t.addContentItem(DSRTypes::RT_inferredFrom, DSRTypes::VT_SCoord, DSRTypes::AM_belowCurrent))
        ok(SR_EC_CannotAddContentItem, "add SCOORD");
    DSRSpatialCoordinatesValue sc(type);
    for (const auto& p : points)
        sc.getGraphicDataList().addItem(static_cast<Float32>(p.x + 0.5), static_cast<Float32>(p.y + 0.5));
    ok(t.getCurrentContentItem().setSpatialCoordinates(sc), "SCOORD value");
    if (!t.addContentItem(DSRTypes::RT_selectedFrom, DSRTypes::VT_Image, DSRTypes::AM_belowCurrent))
        ok(SR_EC_CannotAddContentItem, "add IMAGE below SCOORD");
    ok(t.getCurrentContentItem().setImageReference(image_ref(src, opt), OFFalse), "IMAGE reference");
    t.goUp();
    t.goUp();
}

// Ends of the major (OFD) and minor (BPD) axes, and the four ends of the ellipse as DICOM wants it
// (PS3.3 C.18.6.1.2: major axis end points first, then minor axis end points).
struct Axes {
    std::vector<cv::Point2d> major, minor;
};
Axes axes_of(const Ellipse& e) {
    const double c = std::cos(e.angle), s = std::sin(e.angle);
    const cv::Point2d u(c, s), v(-s, c), o(e.cx, e.cy);
    return {{o - e.a * u, o + e.a * u}, {o - e.b * v, o + e.b * v}};
}

void set_identity(DSRDocument& doc, Steps& ok, const DicomHeader* src) {
    if (src && !src->study_instance_uid.empty()) {
        ok(doc.createNewSeriesInStudy(src->study_instance_uid.c_str(), OFFalse), "new series in the source study");
    } else {
        doc.createNewStudy();  // also a new series and SOP instance
    }
    if (!src) return;
    // Copied from the received file, each cut or dropped to fit its VR (PN and LO: 64 characters,
    // SH: 16, DA/TM/CS by form), so that a sender's oversized or malformed value never makes the
    // SR invalid.
    const std::string name = fit_vr(src->patient_name, 64), id = fit_vr(src->patient_id, 64),
                      physician = fit_vr(src->referring_physician, 64), study_id = fit_vr(src->study_id, 16),
                      accession = fit_vr(src->accession_number, 16);
    for (const auto* s : {&name, &id, &physician, &study_id, &accession})
        if (!is_ascii(*s)) {
            ok(doc.setSpecificCharacterSetType(DSRTypes::CS_UTF8), "SpecificCharacterSet");
            break;
        }
    const std::string& sex = src->patient_sex;
    ok(doc.setPatientName(name.c_str(), OFFalse), "PatientName");
    ok(doc.setPatientID(id.c_str(), OFFalse), "PatientID");
    ok(doc.setPatientBirthDate(only_if(src->patient_birth_date, is_da(src->patient_birth_date)).c_str(), OFFalse), "PatientBirthDate");
    ok(doc.setPatientSex(only_if(sex, sex == "M" || sex == "F" || sex == "O").c_str(), OFFalse), "PatientSex");
    ok(doc.setStudyDate(only_if(src->study_date, is_da(src->study_date)).c_str(), OFFalse), "StudyDate");
    ok(doc.setStudyTime(only_if(src->study_time, is_tm(src->study_time)).c_str(), OFFalse), "StudyTime");
    ok(doc.setStudyID(study_id.c_str(), OFFalse), "StudyID");
    ok(doc.setAccessionNumber(accession.c_str(), OFFalse), "AccessionNumber");
    ok(doc.setReferringPhysicianName(physician.c_str(), OFFalse), "ReferringPhysicianName");
    if (!src->series_instance_uid.empty())
        ok(doc.getCurrentRequestedProcedureEvidence().addItem(src->study_instance_uid.c_str(),
                                                             src->series_instance_uid.c_str(),
                                                             src->sop_class_uid.c_str(), src->sop_instance_uid.c_str()),
           "Current Requested Procedure Evidence");
}

// TID 1001 -> TID 1002 / 1004: the observer is this program. Below the root; the cursor stays on
// the last item, so the sections that follow are added after it.
void add_device_observer(DSRDocumentTree& t, Steps& ok) {
    ok(t.addChildContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_Code, CODE_DCM_ObserverType), "Observer Type");
    ok(t.getCurrentContentItem().setCodeValue(CODE_DCM_Device), "Observer Type value");
    ok(t.addContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_UIDRef, CODE_DCM_DeviceObserverUID), "Device Observer UID");
    ok(t.getCurrentContentItem().setStringValue(kDeviceObserverUid), "Device Observer UID value");
    const std::pair<DSRBasicCodedEntry, const char*> texts[] = {
        {CODE_DCM_DeviceObserverName, "fetalhc"},
        {CODE_DCM_DeviceObserverManufacturer, "fetalhc"},
        {CODE_DCM_DeviceObserverModelName, "fetalhc " FETALHC_VERSION}};
    for (const auto& [concept, text] : texts) {
        ok(t.addContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_Text, concept), "Device Observer text");
        ok(t.getCurrentContentItem().setStringValue(text), "Device Observer text value");
    }
}

void add_biometry(DSRDocumentTree& t, Steps& ok, const Measurement& m, const DicomHeader* src, const SrOptions& opt) {
    const bool outline = src && opt.include_outline && m.ellipse_px.valid();
    const Axes ax = axes_of(m.ellipse_px);
    ok(t.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, CODE_DCM_FetalBiometry), "Fetal Biometry section");

    // HC group: HC, its outline, and the GA inferred from it.
    ok(t.addChildContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, CODE_DCM_BiometryGroup), "HC Biometry Group");
    add_num(t, ok, true, kHeadCircumference, m.hc_mm, 1, CODE_UCUM_Millimeter);
    if (outline) add_outline(t, ok, DSRTypes::GT_Ellipse, {ax.major[0], ax.major[1], ax.minor[0], ax.minor[1]}, *src, opt);
    if (m.ga_hadlock.in_range && std::isfinite(m.ga_hadlock.weeks)) {
        add_num(t, ok, false, kGestationalAge, m.ga_hadlock.weeks * 7.0, 1, kUcumDays);
        ok(t.addChildContentItem(DSRTypes::RT_inferredFrom, DSRTypes::VT_Code, CODE_DCM_Equation), "GA equation");
        ok(t.getCurrentContentItem().setCodeValue(kHadlockHc), "GA equation value");
        t.goUp();
    }
    t.goUp();

    struct Diameter {
        const DSRBasicCodedEntry& concept;
        double mm;
        const std::vector<cv::Point2d>& axis;
    };
    const Diameter diameters[] = {{kBiparietalDiameter, m.bpd_mm, ax.minor}, {kOccipitoFrontalDiameter, m.ofd_mm, ax.major}};
    for (const auto& d : diameters) {
        ok(t.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, CODE_DCM_BiometryGroup), "Biometry Group");
        add_num(t, ok, true, d.concept, d.mm, 1, CODE_UCUM_Millimeter);
        if (outline) add_outline(t, ok, DSRTypes::GT_Polyline, d.axis, *src, opt);
        t.goUp();
    }
    t.goUp();
}

Expected<DcmFileFormat*> build(DcmFileFormat& file, const Measurement& m, const DicomHeader* src, const SrOptions& opt) {
    if (!(m.hc_mm > 0) || !(m.bpd_mm > 0) || !(m.ofd_mm > 0) || !std::isfinite(m.hc_mm))
        return make_error(ErrorKind::InvalidArgument, "cannot write an SR for '" + m.source + "': the measurement has no HC/BPD/OFD",
                          "measurement");
    if (src && (!valid_dicom_uid(src->sop_class_uid) || !valid_dicom_uid(src->sop_instance_uid)))
        return make_error(ErrorKind::InvalidArgument,
                          "cannot write an SR for '" + m.source + "': the source DICOM has no valid SOP Class/Instance UID "
                          "(an SR must reference its image by UID)");
    if (src && ((!src->study_instance_uid.empty() && !valid_dicom_uid(src->study_instance_uid)) ||
                (!src->series_instance_uid.empty() && !valid_dicom_uid(src->series_instance_uid))))
        return make_error(ErrorKind::InvalidArgument,
                          "cannot write an SR for '" + m.source + "': the source's Study or Series Instance UID is not a DICOM "
                          "UID (digits in dot-separated components, at most 64 characters)");
    if (opt.referenced_frame && *opt.referenced_frame < 1)
        return make_error(ErrorKind::InvalidArgument,
                          "SR referenced frame numbers start at 1 (got " + std::to_string(*opt.referenced_frame) + ")", "referenced_frame");

    Steps ok;
    DSRDocument doc(DSRTypes::DT_ComprehensiveSR);
    set_identity(doc, ok, src);
    ok(doc.setManufacturer("fetalhc"), "Manufacturer");
    ok(doc.setManufacturerModelName("fetalhc"), "ManufacturerModelName");
    ok(doc.setSoftwareVersions(FETALHC_VERSION), "SoftwareVersions");
    ok(doc.setSeriesNumber(opt.series_number.c_str()), "SeriesNumber");
    ok(doc.setInstanceNumber(opt.instance_number.c_str()), "InstanceNumber");
    ok(doc.setSeriesDescription(opt.series_description.c_str()), "SeriesDescription");

    DSRDocumentTree& t = doc.getTree();
    if (!t.addContentItem(DSRTypes::RT_isRoot, DSRTypes::VT_Container)) ok(SR_EC_CannotAddContentItem, "root");
    ok(t.getCurrentContentItem().setConceptName(CODE_DCM_OBGYNUltrasoundProcedureReport), "document title");
    ok(t.getCurrentContentItem().setTemplateIdentification("5000", "DCMR"), "template identification");
    add_device_observer(t, ok);
    if (src) {
        ok(t.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, CODE_DCM_ImageLibrary), "Image Library");
        // The library's IMAGE items carry no concept name (TID 5000 row 6).
        if (!t.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Image, DSRTypes::AM_belowCurrent))
            ok(SR_EC_CannotAddContentItem, "add Image Library IMAGE");
        ok(t.getCurrentContentItem().setImageReference(image_ref(*src, opt), OFFalse), "Image Library IMAGE");
        t.goUp();
    }
    add_biometry(t, ok, m, src, opt);
    if (!ok.failed.empty()) return make_error(ErrorKind::Internal, "cannot build the SR for '" + m.source + "': " + ok.failed);
    if (!ok(doc.write(*file.getDataset()), "write the dataset"))
        return make_error(ErrorKind::Internal, "cannot build the SR for '" + m.source + "': " + ok.failed);
    return &file;
}

}  // namespace

Expected<std::vector<unsigned char>> write_biometry_sr(const Measurement& m, const DicomHeader* source,
                                                       const SrOptions& opt) {
    DcmFileFormat file;
    auto built = build(file, m, source, opt);
    if (!built) return built.error_value();
    const E_TransferSyntax xfer = EXS_LittleEndianExplicit;
    std::vector<unsigned char> bytes;
    unsigned char chunk[1 << 16];
    DcmOutputBufferStream out(chunk, sizeof chunk);
    file.transferInit();
    OFCondition st = EC_StreamNotifyClient;
    while (st == EC_StreamNotifyClient) {
        st = file.write(out, xfer, EET_ExplicitLength, nullptr);
        void* data = nullptr;
        offile_off_t n = 0;
        out.flushBuffer(data, n);
        if (n > 0) bytes.insert(bytes.end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + n);
    }
    file.transferEnd();
    if (st.bad()) return make_error(ErrorKind::Internal, "cannot encode the SR for '" + m.source + "': " + st.text());
    return bytes;
}

Expected<std::string> write_biometry_sr_file(const Measurement& m, const DicomHeader* source, const std::string& path,
                                             const SrOptions& opt) {
    auto bytes = write_biometry_sr(m, source, opt);
    if (!bytes) return bytes.error_value();
    std::ofstream f(path, std::ios::binary);
    if (!f) return make_error(ErrorKind::Io, "cannot write '" + path + "': check that the folder exists and is writable");
    f.write(reinterpret_cast<const char*>(bytes->data()), static_cast<std::streamsize>(bytes->size()));
    f.close();
    if (!f) return make_error(ErrorKind::Io, "cannot write '" + path + "': disk full or not writable");
    return path;
}

std::string sr_file_name(const std::string& source) {
    std::string name = source, suffix;
    if (auto hash = name.rfind('#'); hash != std::string::npos) {
        suffix = "_" + name.substr(hash + 1);
        name.erase(hash);
    }
    if (auto slash = name.find_last_of("/\\"); slash != std::string::npos) name.erase(0, slash + 1);
    if (auto dot = name.rfind('.'); dot != std::string::npos && dot > 0) name.erase(dot);
    name += suffix;
    for (char& c : name)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
    if (name.empty()) name = "measurement";
    return name + "_sr.dcm";
}

}  // namespace fetalhc
