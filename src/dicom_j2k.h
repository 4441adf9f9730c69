// Internal: one JPEG 2000 frame of DICOM pixel data (transfer syntaxes 1.2.840.10008.1.2.4.90 and
// .91), decoded with OpenJPEG into the 8-bit gray frame the DCMTK path gives (dicom.cpp's
// frame_gray8): 8-bit kept, wider data scaled by the frame's own maximum, MONOCHROME1 inverted
// (higher = brighter, as DicomImage renders it), colour to gray by cv::cvtColor RGB2GRAY.
// Debian's DCMTK has no JPEG 2000 decoder; dicom.cpp finds each frame's codestream in the
// fragments and calls this.
//
// The bytes are untrusted. Before OpenJPEG sees them, the codestream's main header (SOC, SIZ) is
// read here with every read bounds-checked and must agree with the DICOM header: image size ==
// Columns x Rows, components == SamplesPerPixel, each component 1..16 bits (signed ones are
// offset into unsigned), no subsampling, non-zero tiles and at most kJ2kMaxTiles of them. So
// nothing OpenJPEG allocates is sized by a number the header has not agreed with. A JP2 file
// wrapper (signature box) is accepted too: its jp2c box's codestream gets the same check and the
// JP2 decoder is used. The decoded image is checked again before it is copied.
// HTJ2K (1.2.840.10008.1.2.4.201-203) is not decoded (dicom.cpp refuses it by its UID).
// Errors: ErrorKind::ImageUnreadable, the message starting with `label` ("DICOM 'x.dcm' frame 2").
// Thread safety: a pure function; OpenJPEG runs on the calling thread only.
#pragma once

#include "fetalhc/expected.h"

#include <opencv2/core.hpp>

#include <cstddef>
#include <string>

namespace fetalhc::detail {

// What the DICOM header says a frame is.
struct J2kExpect {
    int rows = 0, columns = 0;
    int samples_per_pixel = 1;  // 1 (MONOCHROME1/2) or 3 (RGB, YBR_RCT, YBR_ICT, YBR_FULL)
    int bits_stored = 8;        // > 8: the frame is scaled by its maximum (as the DCMTK path does)
    std::string photometric;    // PhotometricInterpretation (0028,0004)
};

// Tiles a codestream may declare (OpenJPEG allocates per tile before decoding any: a 1 x 1 tile
// grid over a large image would cost gigabytes). Real encoders use one tile or tiles of 128 px up.
constexpr long long kJ2kMaxTiles = 4096;

// The frame `data` holds (a JPEG 2000 codestream or a JP2 file) as CV_8UC1 Rows x Columns.
Expected<cv::Mat> decode_j2k_frame(const unsigned char* data, size_t size, const J2kExpect& expect,
                                   const std::string& label);

// True when `data` starts a JPEG 2000 codestream (SOC then SIZ) or a JP2 file (signature box):
// how dicom.cpp finds where frames start when fragments and frames do not pair up.
bool starts_j2k_frame(const unsigned char* data, size_t size);

}  // namespace fetalhc::detail
