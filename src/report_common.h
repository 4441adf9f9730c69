// Internal to the report writers (SR and key image): the patient and study attributes a derived
// object copies from its source, each made to fit its VR, and the Part 10 encoding. Not installed.
#pragma once

#include "fetalhc/dicom.h"
#include "fetalhc/expected.h"
#include "fetalhc/measure.h"

#include <optional>

#include <string>
#include <vector>

class DcmFileFormat;

namespace fetalhc::report_detail {

// A value copied from a received file, made to fit its VR (PS3.5 6.2) so that the new object is
// valid whatever the sender wrote: at most `max_chars` characters (cut at a UTF-8 character
// boundary), no control characters and no backslash (these attributes hold one value).
std::string fit_vr(const std::string& v, size_t max_chars);

// The source's patient and study attributes as a derived object writes them: PN and LO cut to 64
// characters, SH to 16, DA/TM/CS dropped (left empty) unless they have their VR's form.
struct CopiedIdentity {
    std::string patient_name, patient_id, patient_birth_date, patient_sex;
    std::string study_date, study_time, study_id, accession_number, referring_physician;
    bool utf8 = false;  // some value is not ASCII: SpecificCharacterSet ISO_IR 192
};
CopiedIdentity copied_identity(const DicomHeader& src);

// Why `m` with `src` cannot give a derived object (`object`: "an SR", "a key image"): no HC/BPD/OFD,
// a source without valid SOP Class/Instance UIDs (the object references its image by UID) or with
// malformed Study/Series UIDs, a frame number under 1. nullopt when it can.
std::optional<Error> derivation_problem(const Measurement& m, const DicomHeader* src, std::optional<int> frame,
                                        const std::string& object);

// "%.*f" of v.
std::string fixed_decimals(double v, int decimals);

// The file as DICOM Part 10 bytes (Explicit VR Little Endian); `what` names it in the error.
Expected<std::vector<unsigned char>> encode_part10(DcmFileFormat& file, const std::string& what);
// `bytes` written to `path` (the folder must exist); returns the path.
Expected<std::string> write_bytes_file(const std::vector<unsigned char>& bytes, const std::string& path);

}  // namespace fetalhc::report_detail
