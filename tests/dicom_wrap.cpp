// Test helper: wraps a grayscale image (e.g. an HC18 scan) into an Ultrasound Image Storage DICOM
// file whose Sequence of Ultrasound Regions calibrates the whole image at a given pixel size, so
// that tests can send a measurable head through DICOM paths without committing any such file.
//
//   dicom_wrap IMAGE PIXEL_SIZE_MM OUT.dcm [SOP_INSTANCE_UID]
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <opencv2/imgcodecs.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: dicom_wrap IMAGE PIXEL_SIZE_MM OUT.dcm [SOP_INSTANCE_UID]\n");
        return 2;
    }
    const cv::Mat img = cv::imread(argv[1], cv::IMREAD_GRAYSCALE);
    const double mm = std::atof(argv[2]);
    if (img.empty() || !(mm > 0)) {
        std::fprintf(stderr, "error: cannot read '%s' or bad pixel size\n", argv[1]);
        return 1;
    }
    char uid[100];
    const std::string sop = argc > 4 ? argv[4] : dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
    DcmFileFormat file;
    DcmDataset* d = file.getDataset();
    d->putAndInsertString(DCM_SOPClassUID, UID_UltrasoundImageStorage);
    d->putAndInsertString(DCM_SOPInstanceUID, sop.c_str());
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
    const cv::Mat px = img.isContinuous() ? img : img.clone();
    d->putAndInsertUint8Array(DCM_PixelData, px.data, unsigned(px.total()));
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
    const OFCondition c = file.saveFile(argv[3], EXS_LittleEndianExplicit);
    if (c.bad()) {
        std::fprintf(stderr, "error: cannot write '%s': %s\n", argv[3], c.text());
        return 1;
    }
    return 0;
}
