// DICOM Comprehensive SR of a fetal biometry measurement (DCMTK dcmsr). Structure: report.h.
#include "fetalhc/report.h"

#include "report_common.h"

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

using report_detail::fixed_decimals;

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
    DSRNumericMeasurementValue num(fixed_decimals(value, decimals).c_str(), unit);
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
    const report_detail::CopiedIdentity c = report_detail::copied_identity(*src);
    if (c.utf8) ok(doc.setSpecificCharacterSetType(DSRTypes::CS_UTF8), "SpecificCharacterSet");
    ok(doc.setPatientName(c.patient_name.c_str(), OFFalse), "PatientName");
    ok(doc.setPatientID(c.patient_id.c_str(), OFFalse), "PatientID");
    ok(doc.setPatientBirthDate(c.patient_birth_date.c_str(), OFFalse), "PatientBirthDate");
    ok(doc.setPatientSex(c.patient_sex.c_str(), OFFalse), "PatientSex");
    ok(doc.setStudyDate(c.study_date.c_str(), OFFalse), "StudyDate");
    ok(doc.setStudyTime(c.study_time.c_str(), OFFalse), "StudyTime");
    ok(doc.setStudyID(c.study_id.c_str(), OFFalse), "StudyID");
    ok(doc.setAccessionNumber(c.accession_number.c_str(), OFFalse), "AccessionNumber");
    ok(doc.setReferringPhysicianName(c.referring_physician.c_str(), OFFalse), "ReferringPhysicianName");
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
    if (auto e = report_detail::derivation_problem(m, src, opt.referenced_frame, "an SR")) return *e;

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
    return report_detail::encode_part10(file, "the SR for '" + m.source + "'");
}

Expected<std::string> write_biometry_sr_file(const Measurement& m, const DicomHeader* source, const std::string& path,
                                             const SrOptions& opt) {
    auto bytes = write_biometry_sr(m, source, opt);
    if (!bytes) return bytes.error_value();
    return report_detail::write_bytes_file(*bytes, path);
}

namespace {
// An input's name as a file name stem (report.h, sr_file_name).
std::string derived_stem(const std::string& source) {
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
    return name.empty() ? "measurement" : name;
}
}  // namespace

std::string sr_file_name(const std::string& source) { return derived_stem(source) + "_sr.dcm"; }
std::string key_image_file_name(const std::string& source) { return derived_stem(source) + "_key.dcm"; }

}  // namespace fetalhc
