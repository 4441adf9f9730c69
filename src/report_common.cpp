// The patient and study attributes copied into a derived object (report_common.h).
#include "report_common.h"

#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcostrmb.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace fetalhc::report_detail {
namespace {

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

}  // namespace

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

CopiedIdentity copied_identity(const DicomHeader& src) {
    CopiedIdentity c;
    c.patient_name = fit_vr(src.patient_name, 64);
    c.patient_id = fit_vr(src.patient_id, 64);
    c.referring_physician = fit_vr(src.referring_physician, 64);
    c.study_id = fit_vr(src.study_id, 16);
    c.accession_number = fit_vr(src.accession_number, 16);
    for (const auto* s : {&c.patient_name, &c.patient_id, &c.referring_physician, &c.study_id, &c.accession_number})
        if (!is_ascii(*s)) c.utf8 = true;
    if (is_da(src.patient_birth_date)) c.patient_birth_date = src.patient_birth_date;
    if (src.patient_sex == "M" || src.patient_sex == "F" || src.patient_sex == "O") c.patient_sex = src.patient_sex;
    if (is_da(src.study_date)) c.study_date = src.study_date;
    if (is_tm(src.study_time)) c.study_time = src.study_time;
    return c;
}

std::optional<Error> derivation_problem(const Measurement& m, const DicomHeader* src, std::optional<int> frame,
                                        const std::string& object) {
    const std::string cannot = "cannot write " + object + " for '" + m.source + "': ";
    if (!(m.hc_mm > 0) || !(m.bpd_mm > 0) || !(m.ofd_mm > 0) || !std::isfinite(m.hc_mm))
        return make_error(ErrorKind::InvalidArgument, cannot + "the measurement has no HC/BPD/OFD", "measurement");
    if (src && (!valid_dicom_uid(src->sop_class_uid) || !valid_dicom_uid(src->sop_instance_uid)))
        return make_error(ErrorKind::InvalidArgument, cannot + "the source DICOM has no valid SOP Class/Instance UID (" + object +
                                                          " must reference its image by UID)");
    if (src && ((!src->study_instance_uid.empty() && !valid_dicom_uid(src->study_instance_uid)) ||
                (!src->series_instance_uid.empty() && !valid_dicom_uid(src->series_instance_uid))))
        return make_error(ErrorKind::InvalidArgument, cannot + "the source's Study or Series Instance UID is not a DICOM UID "
                                                               "(digits in dot-separated components, at most 64 characters)");
    if (frame && *frame < 1)
        return make_error(ErrorKind::InvalidArgument, "referenced frame numbers start at 1 (got " + std::to_string(*frame) + ")",
                          "referenced_frame");
    return std::nullopt;
}

std::string fixed_decimals(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

Expected<std::vector<unsigned char>> encode_part10(DcmFileFormat& file, const std::string& what) {
    std::vector<unsigned char> bytes;
    unsigned char chunk[1 << 16];
    DcmOutputBufferStream out(chunk, sizeof chunk);
    file.transferInit();
    OFCondition st = EC_StreamNotifyClient;
    while (st == EC_StreamNotifyClient) {
        st = file.write(out, EXS_LittleEndianExplicit, EET_ExplicitLength, nullptr);
        void* data = nullptr;
        offile_off_t n = 0;
        out.flushBuffer(data, n);
        if (n > 0) bytes.insert(bytes.end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + n);
    }
    file.transferEnd();
    if (st.bad()) return make_error(ErrorKind::Internal, "cannot encode " + what + ": " + st.text());
    return bytes;
}

Expected<std::string> write_bytes_file(const std::vector<unsigned char>& bytes, const std::string& path) {
    std::ofstream f(path, std::ios::binary);
    if (!f) return make_error(ErrorKind::Io, "cannot write '" + path + "': check that the folder exists and is writable");
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    f.close();
    if (!f) return make_error(ErrorKind::Io, "cannot write '" + path + "': disk full or not writable");
    return path;
}

}  // namespace fetalhc::report_detail
