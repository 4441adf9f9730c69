// The key image: a DICOM Secondary Capture of the measured image with the measurement burned in
// (report.h). Built with DCMTK dcmdata, attribute by attribute (PS3.3 A.8.1 SC Image IOD).
#include "fetalhc/report.h"

#include "fetalhc/overlay.h"
#include "report_common.h"

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/ofstd/ofdatime.h>

#include <opencv2/imgproc.hpp>

#ifndef FETALHC_VERSION
#define FETALHC_VERSION "dev"
#endif

namespace fetalhc {
namespace {

std::string new_uid(const char* root) {
    char buf[100];
    return dcmGenerateUniqueIdentifier(buf, root);
}

// Carries the first DCMTK failure with the attribute that failed.
struct Puts {
    DcmItem& item;
    std::string failed;
    void str(const DcmTagKey& tag, const std::string& value, const char* what) {
        const OFCondition c = item.putAndInsertString(tag, value.c_str());
        if (c.bad() && failed.empty()) failed = std::string(what) + ": " + c.text();
    }
    void u16(const DcmTagKey& tag, Uint16 value, const char* what) {
        const OFCondition c = item.putAndInsertUint16(tag, value);
        if (c.bad() && failed.empty()) failed = std::string(what) + ": " + c.text();
    }
};

}  // namespace

Expected<std::vector<unsigned char>> write_key_image(const Measurement& m, const cv::Mat& image, const DicomHeader* source,
                                                     const KeyImageOptions& opt) {
    if (auto e = report_detail::derivation_problem(m, source, opt.referenced_frame, "a key image")) return *e;
    if (image.empty() || image.type() != CV_8UC1)
        return make_error(ErrorKind::InvalidArgument,
                          "cannot write a key image for '" + m.source + "': it needs the measured image as 8-bit gray", "image");
    if (image.cols > 65535 || image.rows > 65535)
        return make_error(ErrorKind::InvalidArgument, "cannot write a key image for '" + m.source + "': the image is over "
                                                      "65535 pixels on a side, more than DICOM's Rows/Columns hold", "image");
    cv::Mat rgb;
    cv::cvtColor(draw_overlay(image, m), rgb, cv::COLOR_BGR2RGB);
    if (!rgb.isContinuous()) rgb = rgb.clone();

    DcmFileFormat file;
    DcmDataset& ds = *file.getDataset();
    Puts put{ds, {}};
    const OFDateTime now = OFDateTime::getCurrentDateTime();
    OFString date, time;
    now.getDate().getISOFormattedDate(date, OFFalse);
    now.getTime().getISOFormattedTime(time, OFTrue, OFFalse, OFFalse, OFFalse);

    // SOP Common, and the patient and study of the source (a new study without one).
    const report_detail::CopiedIdentity id = source ? report_detail::copied_identity(*source) : report_detail::CopiedIdentity{};
    if (id.utf8) put.str(DCM_SpecificCharacterSet, "ISO_IR 192", "SpecificCharacterSet");
    put.str(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage, "SOPClassUID");
    put.str(DCM_SOPInstanceUID, new_uid(SITE_INSTANCE_UID_ROOT), "SOPInstanceUID");
    put.str(DCM_InstanceCreationDate, date.c_str(), "InstanceCreationDate");
    put.str(DCM_InstanceCreationTime, time.c_str(), "InstanceCreationTime");
    put.str(DCM_PatientName, id.patient_name, "PatientName");
    put.str(DCM_PatientID, id.patient_id, "PatientID");
    put.str(DCM_PatientBirthDate, id.patient_birth_date, "PatientBirthDate");
    put.str(DCM_PatientSex, id.patient_sex, "PatientSex");
    const bool same_study = source && !source->study_instance_uid.empty();
    put.str(DCM_StudyInstanceUID, same_study ? source->study_instance_uid : new_uid(SITE_STUDY_UID_ROOT), "StudyInstanceUID");
    put.str(DCM_StudyDate, id.study_date, "StudyDate");
    put.str(DCM_StudyTime, id.study_time, "StudyTime");
    put.str(DCM_StudyID, id.study_id, "StudyID");
    put.str(DCM_AccessionNumber, id.accession_number, "AccessionNumber");
    put.str(DCM_ReferringPhysicianName, id.referring_physician, "ReferringPhysicianName");

    // General Series (a new one in the study), equipment: this program, a workstation conversion.
    put.str(DCM_Modality, "OT", "Modality");
    put.str(DCM_SeriesInstanceUID, new_uid(SITE_SERIES_UID_ROOT), "SeriesInstanceUID");
    put.str(DCM_SeriesNumber, opt.series_number, "SeriesNumber");
    put.str(DCM_Laterality, "", "Laterality");  // type 2C: a fetal head is no paired structure
    put.str(DCM_SeriesDescription, opt.series_description, "SeriesDescription");
    put.str(DCM_Manufacturer, "fetalhc", "Manufacturer");
    put.str(DCM_ManufacturerModelName, "fetalhc", "ManufacturerModelName");
    put.str(DCM_SoftwareVersions, FETALHC_VERSION, "SoftwareVersions");
    put.str(DCM_ConversionType, "WSD", "ConversionType");
    put.str(DCM_DateOfSecondaryCapture, date.c_str(), "DateOfSecondaryCapture");
    put.str(DCM_TimeOfSecondaryCapture, time.c_str(), "TimeOfSecondaryCapture");

    // General Image: derived from the source image, whose frame it names; the text is burned in.
    put.str(DCM_InstanceNumber, opt.instance_number, "InstanceNumber");
    put.str(DCM_PatientOrientation, "", "PatientOrientation");
    put.str(DCM_ContentDate, date.c_str(), "ContentDate");
    put.str(DCM_ContentTime, time.c_str(), "ContentTime");
    put.str(DCM_ImageType, "DERIVED\\SECONDARY", "ImageType");
    put.str(DCM_DerivationDescription, "fetalhc head circumference: fitted ellipse, axes and numbers drawn on the image",
            "DerivationDescription");
    put.str(DCM_BurnedInAnnotation, "YES", "BurnedInAnnotation");
    if (source) {
        DcmItem* ref = nullptr;
        if (ds.findOrCreateSequenceItem(DCM_SourceImageSequence, ref, -2).bad() || !ref) {
            put.failed = put.failed.empty() ? "SourceImageSequence" : put.failed;
        } else {
            Puts r{*ref, {}};
            r.str(DCM_ReferencedSOPClassUID, source->sop_class_uid, "ReferencedSOPClassUID");
            r.str(DCM_ReferencedSOPInstanceUID, source->sop_instance_uid, "ReferencedSOPInstanceUID");
            if (opt.referenced_frame && source->frames > 1)  // only a multi-frame source has frames to name
                r.str(DCM_ReferencedFrameNumber, std::to_string(*opt.referenced_frame), "ReferencedFrameNumber");
            if (put.failed.empty()) put.failed = r.failed;
        }
    }

    // Image Pixel: 8-bit RGB, pixel-interleaved.
    put.u16(DCM_SamplesPerPixel, 3, "SamplesPerPixel");
    put.str(DCM_PhotometricInterpretation, "RGB", "PhotometricInterpretation");
    put.u16(DCM_PlanarConfiguration, 0, "PlanarConfiguration");
    put.u16(DCM_Rows, Uint16(rgb.rows), "Rows");
    put.u16(DCM_Columns, Uint16(rgb.cols), "Columns");
    put.u16(DCM_BitsAllocated, 8, "BitsAllocated");
    put.u16(DCM_BitsStored, 8, "BitsStored");
    put.u16(DCM_HighBit, 7, "HighBit");
    put.u16(DCM_PixelRepresentation, 0, "PixelRepresentation");
    if (ds.putAndInsertUint8Array(DCM_PixelData, rgb.data, Uint32(rgb.total() * rgb.elemSize())).bad() && put.failed.empty())
        put.failed = "PixelData";
    if (!put.failed.empty())
        return make_error(ErrorKind::Internal, "cannot build the key image for '" + m.source + "': " + put.failed);
    return report_detail::encode_part10(file, "the key image for '" + m.source + "'");
}

Expected<KeyImageFrame> key_image_frame(const DicomResult& r, DicomFrameReader& reader) {
    if (!r.summary) return KeyImageFrame{r.image, std::nullopt};
    if (!r.summary->has_estimate || r.summary->estimate_frame < 0)
        return make_error(ErrorKind::InvalidArgument,
                          "'" + reader.header().path + "': no frame was judged ok, so there is no key image");
    auto f = reader.frame(r.summary->estimate_frame);
    if (!f) return f.error_value();
    return KeyImageFrame{std::move(*f), r.summary->estimate_frame + 1};
}

Expected<std::string> write_key_image_file(const Measurement& m, const cv::Mat& image, const DicomHeader* source,
                                           const std::string& path, const KeyImageOptions& opt) {
    auto bytes = write_key_image(m, image, source, opt);
    if (!bytes) return bytes.error_value();
    return report_detail::write_bytes_file(*bytes, path);
}

}  // namespace fetalhc
