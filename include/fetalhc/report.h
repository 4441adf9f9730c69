// fetalhc/report.h - results back to the record: DICOM Comprehensive SR (DCMTK dcmsr), a key image
// (DICOM Secondary Capture) and FHIR R4.
//
//   fetalhc::Measurement m = ...;                       // from Measurer, or measurement_from_ellipse
//   const fetalhc::DicomHeader* src = dicom ? &*header : nullptr;   // nullptr for a PNG input
//   auto path = fetalhc::write_biometry_sr_file(m, src, "out/" + fetalhc::sr_file_name(m.source));
//   if (!path) std::cerr << "error: " << path.error() << "\n";
//   nlohmann::json bundle = fetalhc::fhir_bundle({{m, header_or_nullopt}});
//   std::cout << bundle.dump(2) << "\n";
//
// DICOM SR (PS3.3 A.35.3 Comprehensive SR IOD, SOP Class 1.2.840.10008.5.1.4.1.1.88.33), content
// after PS3.16 TID 5000 "OB-GYN Ultrasound Procedure Report" (template identification on the root):
//
//   CONTAINER (125000, DCM, "OB-GYN Ultrasound Procedure Report")       TID 5000 root
//    HAS OBS CONTEXT  CODE   (121005, DCM, "Observer Type") = (121007, DCM, "Device")   TID 1002
//    HAS OBS CONTEXT  UIDREF (121012, DCM, "Device Observer UID")                       TID 1004
//    HAS OBS CONTEXT  TEXT   (121013 Device Observer Name), (121014 Manufacturer), (121015 Model Name)
//    CONTAINS CONTAINER (111028, DCM, "Image Library")                  only with a DICOM source
//     CONTAINS IMAGE  the source image (SOP Class/Instance UID, frame number when given)
//    CONTAINS CONTAINER (125002, DCM, "Fetal Biometry")                 TID 5005
//     CONTAINS CONTAINER (125005, DCM, "Biometry Group")                TID 5008, one per biometry type
//      CONTAINS NUM (11984-2, LN, "Head Circumference") mm               TID 300
//       INFERRED FROM SCOORD ELLIPSE (the fitted skull ellipse)           TID 320, DICOM source only
//        SELECTED FROM IMAGE (the source image)
//      CONTAINS NUM (18185-9, LN, "Gestational Age") d                   only when Hadlock is in range
//       INFERRED FROM CODE (121420, DCM, "Equation") = (11932-1, LN, "HC, Hadlock 1984")
//     CONTAINS CONTAINER (125005, DCM, "Biometry Group")
//      CONTAINS NUM (11820-8, LN, "Biparietal Diameter") mm  [INFERRED FROM SCOORD POLYLINE: minor axis]
//     CONTAINS CONTAINER (125005, DCM, "Biometry Group")
//      CONTAINS NUM (11851-3, LN, "Occipital-Frontal Diameter") mm [INFERRED FROM SCOORD POLYLINE: major axis]
//
// TID 5008 describes one biometry type per group ($BiometryType), with the GA derived from that
// measurement in the same group: hence three groups, GA beside HC. Values: mm with 0.1 mm
// resolution in NumericValue (DS) and the full double in FloatingPointValue; GA in days (UCUM `d`).
// SCOORD points are DICOM image coordinates: (column, row) with (0,0) the top-left CORNER of the
// top-left pixel, so the project's pixel-centre coordinates are shifted by +0.5.
//
// Identity: with a DICOM source the SR joins the source's study (StudyInstanceUID, StudyDate/Time,
// StudyID, AccessionNumber, ReferringPhysicianName and PatientName/ID/BirthDate/Sex copied as they
// are; DicomHeader strings are taken as UTF-8 and SpecificCharacterSet is ISO_IR 192 when any is not
// ASCII) in a NEW series with a new SOP Instance UID; the source image is listed in the Current
// Requested Procedure Evidence Sequence. Without a source (PNG input) a new study is created and the
// type 2 patient and study attributes are present but empty. New UIDs come from DCMTK's generator.
// Modality SR, Manufacturer "fetalhc", CompletionFlag PARTIAL, VerificationFlag UNVERIFIED (a
// machine measurement that a clinician has not signed).
//
// FHIR R4 (http://hl7.org/fhir/R4/observation.html): a Bundle of type `collection`, one entry per
// Observation, each with fullUrl `urn:uuid:<v4 uuid>`. Per measurement three Observations (HC
// 11984-2, BPD 11820-8, OFD 11851-3, system http://loinc.org), status `final`, category `imaging`
// (http://terminology.hl7.org/CodeSystem/observation-category), valueQuantity in UCUM mm
// (http://unitsofmeasure.org, code `mm`, 0.1 mm resolution), device.display "fetalhc <version>",
// and a note with the quality (`ok` / `review: reasons`). effectiveDateTime: the source's
// StudyDate (+ StudyTime, given with this machine's local UTC offset, since DICOM times carry no
// zone) when known, else FhirOptions::measured_at, else now (UTC). With a DICOM source: derivedFrom
// names the image ({identifier: {system "urn:dicom:uid", value "urn:oid:<SOP Instance UID>"}}) and
// the study (type ImagingStudy, its Study Instance UID), and subject carries the PatientID as an
// identifier (no Patient resource is written).
//
// Thread safety: pure functions; DCMTK's UID generator is thread-safe.
#pragma once

#include "fetalhc/dicom.h"
#include "fetalhc/expected.h"
#include "fetalhc/measure.h"

#include <nlohmann/json_fwd.hpp>

#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

struct SrOptions {
    std::string series_number = "900";     // (0020,0011) of the new SR series
    std::string instance_number = "1";     // (0020,0013)
    std::string series_description = "fetalhc fetal biometry";
    // 1-based frame of a multi-frame source the measurement was made on (Referenced Frame Number
    // of the IMAGE items); nullopt references the whole instance (a still image, or a summary).
    std::optional<int> referenced_frame;
    // Write the fitted ellipse and the axes as SCOORDs on the source image (needs a source). Off for
    // a multi-frame summary, whose numbers are medians that no single outline shows.
    bool include_outline = true;
};

// The SR as a DICOM Part 10 file in memory (Explicit VR Little Endian). Errors: a measurement
// without numbers, or DCMTK refusing the document (the message says which step). A multi-frame
// summary is written from VideoSummary::estimate as it is: its GA is already the median HC's.
Expected<std::vector<unsigned char>> write_biometry_sr(const Measurement& m, const DicomHeader* source,
                                                       const SrOptions& opt = {});
// Same, written to `path` (the folder must exist); returns the path.
Expected<std::string> write_biometry_sr_file(const Measurement& m, const DicomHeader* source,
                                             const std::string& path, const SrOptions& opt = {});
// File name for the SR of an input: its stem, with any `#frame` / `#summary` suffix kept as
// `_frame` / `_summary`, and characters other than [A-Za-z0-9._-] as `_`, plus "_sr.dcm"
// ("scans/a b.dcm" -> "a_b_sr.dcm", "cine.dcm#summary" -> "cine_summary_sr.dcm").
std::string sr_file_name(const std::string& source);

// Key image: a Secondary Capture (PS3.3 A.8.1, SOP Class 1.2.840.10008.5.1.4.1.1.7) of the measured
// image with the measurement burned in as draw_overlay (overlay.h) draws it: the ellipse, its axes,
// HC, the 90% interval, BPD/OFD, GA and the quality with its `review` reasons. 8-bit RGB,
// uncompressed, the source frame's size; ImageType DERIVED\SECONDARY, BurnedInAnnotation YES,
// ConversionType WSD, Modality OT, the source image (and frame) in the Source Image Sequence.
// Identity as for the SR: the source's patient and study attributes copied (the same fitting),
// a NEW series in the source's study with new SOP Instance and Series UIDs; a new study without a
// source. Why a Secondary Capture rather than a Presentation State: every viewer and PACS preview
// shows its pixels (Orthanc's /preview included), where a presentation state's graphics show only
// in viewers that apply it; the price is a second copy of the pixels (no pixel size: read the
// numbers from the image or the SR).
struct KeyImageOptions {
    std::string series_number = "901";
    std::string instance_number = "1";
    std::string series_description = "fetalhc key image";
    std::optional<int> referenced_frame;   // 1-based frame of a multi-frame source, as for the SR
};
// `image`: the measured frame, 8-bit gray (DicomResult::image, or the frame the summary's estimate
// came from). Errors: a measurement without numbers, no image, the source's UIDs (as for the SR).
Expected<std::vector<unsigned char>> write_key_image(const Measurement& m, const cv::Mat& image, const DicomHeader* source,
                                                     const KeyImageOptions& opt = {});
Expected<std::string> write_key_image_file(const Measurement& m, const cv::Mat& image, const DicomHeader* source,
                                           const std::string& path, const KeyImageOptions& opt = {});
// The image a DICOM result's key image draws on: the frame measured (DicomResult::image), or for a
// multi-frame file the frame its summary's ellipse comes from, decoded from `reader` and named by
// its 1-based number. The CLI and the server both take it from here. Error: a cine without an estimate.
struct KeyImageFrame {
    cv::Mat image;
    std::optional<int> referenced_frame;
};
Expected<KeyImageFrame> key_image_frame(const DicomResult& r, DicomFrameReader& reader);

// sr_file_name's stem with "_key.dcm" ("scans/a b.dcm" -> "a_b_key.dcm").
std::string key_image_file_name(const std::string& source);

struct FhirOptions {
    std::string measured_at;               // FHIR dateTime used without a study date; empty: now (UTC)
};

// One measured input for the bundle.
struct FhirInput {
    Measurement measurement;
    std::optional<DicomHeader> source;     // the DICOM header, nullopt for other images
};

// The three Observations (HC, BPD, OFD) of one measurement, as FHIR JSON resources.
nlohmann::json fhir_observations(const Measurement& m, const DicomHeader* source, const FhirOptions& opt = {});
// Bundle (type collection) with the Observations of every input, in input order.
nlohmann::json fhir_bundle(const std::vector<FhirInput>& inputs, const FhirOptions& opt = {});

// LOINC codes used by both outputs (facts from LOINC; see the comment above).
inline constexpr const char* kLoincHeadCircumference = "11984-2";
inline constexpr const char* kLoincBiparietalDiameter = "11820-8";
inline constexpr const char* kLoincOccipitoFrontalDiameter = "11851-3";
inline constexpr const char* kLoincGestationalAge = "18185-9";
inline constexpr const char* kLoincHadlock1984Hc = "11932-1";

}  // namespace fetalhc
