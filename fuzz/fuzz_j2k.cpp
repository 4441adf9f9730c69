// libFuzzer target: the JPEG 2000 frame decoder (src/dicom_j2k.h) on arbitrary bytes against a
// fixed small DICOM header: 64 x 64; the first byte picks the photometric interpretation (its low
// bits: MONOCHROME2, MONOCHROME1, RGB, YBR_RCT, YBR_ICT, YBR_FULL; 1 or 3 samples with it) and the
// bits stored (its top bit: 12, else 8); the rest is the frame (a codestream or a JP2 file).
// Whatever decodes must be a 64 x 64 CV_8UC1 frame; whatever does not, an ImageUnreadable error.
#include "dicom_j2k.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    static const char* const kPhotometric[] = {"MONOCHROME2", "MONOCHROME1", "RGB", "YBR_RCT", "YBR_ICT", "YBR_FULL"};
    const int pick = (data[0] & 0x7F) % 6;
    fetalhc::detail::J2kExpect e;
    e.rows = e.columns = 64;
    e.photometric = kPhotometric[pick];
    e.samples_per_pixel = pick < 2 ? 1 : 3;
    e.bits_stored = data[0] & 0x80 ? 12 : 8;
    auto m = fetalhc::detail::decode_j2k_frame(data + 1, size - 1, e, "fuzz");
    if (!m) {
        if (m.error_kind() != fetalhc::ErrorKind::ImageUnreadable) {
            std::fprintf(stderr, "an error of kind %s: %s\n", fetalhc::error_kind_name(m.error_kind()), m.error().c_str());
            std::abort();
        }
        return 0;
    }
    if (m->type() != CV_8UC1 || m->rows != 64 || m->cols != 64) {
        std::fprintf(stderr, "decode_j2k_frame returned a Mat of type %d, %d x %d\n", m->type(), m->cols, m->rows);
        std::abort();
    }
    return 0;
}
