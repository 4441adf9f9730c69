// Test helper shared by the dicom_wrap program and the route tests: a grayscale image (e.g. an HC18
// scan) as an Ultrasound Image (or, with frames > 1, Multi-frame) Storage data set whose Sequence of
// Ultrasound Regions calibrates the whole image at `mm` per pixel. Lets tests send a measurable head
// through the DICOM paths without committing any such file.
#pragma once

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <opencv2/core.hpp>

#include <string>
#include <vector>

// Fills `file` with `img` (CV_8UC1) repeated `frames` times; `sop` empty: a new SOP Instance UID.
inline void build_wrapped_dicom(DcmFileFormat& file, const cv::Mat& img, double mm, int frames = 1,
                                const std::string& sop = "") {
    char uid[100];
    DcmDataset* d = file.getDataset();
    d->putAndInsertString(DCM_SOPClassUID, frames > 1 ? UID_UltrasoundMultiframeImageStorage : UID_UltrasoundImageStorage);
    d->putAndInsertString(DCM_SOPInstanceUID, sop.empty() ? dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT) : sop.c_str());
    d->putAndInsertString(DCM_StudyInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_STUDY_UID_ROOT));
    d->putAndInsertString(DCM_SeriesInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT));
    d->putAndInsertString(DCM_Modality, "US");
    d->putAndInsertString(DCM_PatientName, "Test^Wrapped");
    d->putAndInsertString(DCM_PatientID, "WRAP-1");
    d->putAndInsertString(DCM_StudyDate, "20240102");
    d->putAndInsertString(DCM_StudyTime, "101500");
    d->putAndInsertString(DCM_SeriesNumber, "1");
    d->putAndInsertString(DCM_InstanceNumber, "1");
    d->putAndInsertUint16(DCM_SamplesPerPixel, 1);
    d->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
    d->putAndInsertUint16(DCM_Rows, Uint16(img.rows));
    d->putAndInsertUint16(DCM_Columns, Uint16(img.cols));
    d->putAndInsertUint16(DCM_BitsAllocated, 8);
    d->putAndInsertUint16(DCM_BitsStored, 8);
    d->putAndInsertUint16(DCM_HighBit, 7);
    d->putAndInsertUint16(DCM_PixelRepresentation, 0);
    if (frames > 1) {
        d->putAndInsertString(DCM_NumberOfFrames, std::to_string(frames).c_str());
        d->putAndInsertString(DCM_FrameTime, "40");
    }
    const cv::Mat px = img.isContinuous() ? img : img.clone();
    std::vector<unsigned char> all;
    for (int k = 0; k < frames; ++k) all.insert(all.end(), px.datastart, px.dataend);
    d->putAndInsertUint8Array(DCM_PixelData, all.data(), unsigned(all.size()));
    DcmItem* region = nullptr;
    d->findOrCreateSequenceItem(DCM_SequenceOfUltrasoundRegions, region, 0);
    region->putAndInsertUint16(DCM_RegionSpatialFormat, 1);  // 2D
    region->putAndInsertUint16(DCM_RegionDataType, 1);       // tissue
    region->putAndInsertUint32(DCM_RegionFlags, 0);
    region->putAndInsertUint32(DCM_RegionLocationMinX0, 0);
    region->putAndInsertUint32(DCM_RegionLocationMinY0, 0);
    region->putAndInsertUint32(DCM_RegionLocationMaxX1, Uint32(img.cols - 1));
    region->putAndInsertUint32(DCM_RegionLocationMaxY1, Uint32(img.rows - 1));
    region->putAndInsertUint16(DCM_PhysicalUnitsXDirection, 3);  // cm
    region->putAndInsertUint16(DCM_PhysicalUnitsYDirection, 3);
    region->putAndInsertFloat64(DCM_PhysicalDeltaX, mm / 10);
    region->putAndInsertFloat64(DCM_PhysicalDeltaY, mm / 10);
}
