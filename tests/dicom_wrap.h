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

// Issue 22 row 1: a Part 10 file (explicit VR little endian) whose first data set element opens
// `levels` nested sequences of undefined length, each with one item of undefined length, all closed
// by their delimiters, followed by a small 8-bit image. DCMTK reads nesting by recursion; some
// thousands of levels overflowed its stack.
inline std::string nested_sequences_dicom(int levels) {
    std::string b(128, '\0');
    b += "DICM";
    const auto u16 = [&](unsigned v) { b += char(v & 255), b += char(v >> 8 & 255); };
    const auto u32 = [&](unsigned long v) { u16(unsigned(v & 0xFFFF)), u16(unsigned(v >> 16 & 0xFFFF)); };
    const auto str = [&](unsigned g, unsigned e, const char* vr, std::string v) {
        if (v.size() % 2) v += std::string(vr) == "UI" ? '\0' : ' ';
        u16(g), u16(e), b += vr, u16(unsigned(v.size())), b += v;
    };
    const auto us = [&](unsigned g, unsigned e, unsigned v) { u16(g), u16(e), b += "US", u16(2), u16(v); };
    str(0x0002, 0x0002, "UI", UID_UltrasoundImageStorage);
    str(0x0002, 0x0003, "UI", "1.2.826.0.1.3680043.10.1000.1");
    str(0x0002, 0x0010, "UI", UID_LittleEndianExplicitTransferSyntax);
    for (int i = 0; i < levels; ++i) {
        u16(0x0008), u16(0x1115), b += "SQ", u16(0), u32(0xFFFFFFFFul);  // Referenced Series Sequence
        u16(0xFFFE), u16(0xE000), u32(0xFFFFFFFFul);                      // an item
    }
    for (int i = 0; i < levels; ++i) {
        u16(0xFFFE), u16(0xE00D), u32(0);  // item delimiter
        u16(0xFFFE), u16(0xE0DD), u32(0);  // sequence delimiter
    }
    str(0x0008, 0x0016, "UI", UID_UltrasoundImageStorage);
    str(0x0008, 0x0018, "UI", "1.2.826.0.1.3680043.10.1000.1");
    us(0x0028, 0x0002, 1);
    str(0x0028, 0x0004, "CS", "MONOCHROME2");
    us(0x0028, 0x0010, 16), us(0x0028, 0x0011, 16);
    us(0x0028, 0x0100, 8), us(0x0028, 0x0101, 8), us(0x0028, 0x0102, 7), us(0x0028, 0x0103, 0);
    u16(0x7FE0), u16(0x0010), b += "OB", u16(0), u32(256), b += std::string(256, '\x40');
    return b;
}
