// Internal: the calibration helpers of dicom.cpp that dicom_measure.cpp shares.
#pragma once

#include "fetalhc/dicom.h"

#include <string>

namespace fetalhc::detail {

std::string dicom_fmt(double v, int digits);      // fixed, `digits` decimals
std::string dicom_box_text(const cv::Rect& b);    // "(x0,y0)-(x1,y1)", inclusive
bool dicom_is_2d_tissue(const UltrasoundRegion& r);
// The calibration of one 2D tissue region, or why it cannot be used.
Expected<DicomCalibration> dicom_region_calibration(const DicomHeader& h, const UltrasoundRegion& r);

}  // namespace fetalhc::detail
