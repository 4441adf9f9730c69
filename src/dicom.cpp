// DICOM input with DCMTK: the header (no pixels), the frames (DicomImage; JPEG 2000 frames through
// OpenJPEG, dicom_j2k.h) and the calibration from the Sequence of Ultrasound Regions. Measuring a
// frame inside its calibrated region (the part that needs the network) is in dicom_measure.cpp, so
// that this file builds without LibTorch (fuzz/).
#include "fetalhc/dicom.h"

#include "dicom_detail.h"
#include "dicom_j2k.h"
#include "dicom_walk.h"
#include "fixed_text.h"

#include "fetalhc/measure.h"

#include <dcmtk/config/osconfig.h>  // must come first among the DCMTK headers
#include <dcmtk/dcmdata/dccodec.h>
#include <dcmtk/dcmdata/dcfcache.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmimage/diregist.h>  // colour images in DicomImage
#include <dcmtk/dcmimgle/dcmimage.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>

#include <opencv2/imgproc.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

// The file cannot be read as an image (ErrorKind::ImageUnreadable).
Error unreadable(std::string message) { return make_error(ErrorKind::ImageUnreadable, std::move(message)); }
// The file's calibration cannot be used: a pixel size given by the caller would do.
Error calibration_error(std::string message) {
    return make_error(ErrorKind::InvalidCalibration, std::move(message), "pixel_size");
}

// Registers DCMTK's decoders once per process (they stay registered until exit) and keeps DCMTK's
// own log off stderr: our errors say what went wrong.
void init_dcmtk() {
    static std::once_flag once;
    std::call_once(once, [] {
        OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
        DJDecoderRegistration::registerCodecs();
        DJLSDecoderRegistration::registerCodecs();
        DcmRLEDecoderRegistration::registerCodecs();
    });
}

std::string get_string(DcmItem* d, const DcmTagKey& key) {
    OFString v;
    if (d->findAndGetOFStringArray(key, v).good()) return v.c_str();
    return "";
}

int get_u16(DcmItem* d, const DcmTagKey& key, int fallback = 0) {
    Uint16 v = 0;
    return d->findAndGetUint16(key, v).good() ? int(v) : fallback;
}

long long get_u32(DcmItem* d, const DcmTagKey& key) {
    Uint32 v = 0;
    if (d->findAndGetUint32(key, v).good()) return v;
    Uint16 s = 0;  // some writers use US
    return d->findAndGetUint16(key, s).good() ? s : 0;
}

std::optional<cv::Vec2d> get_spacing(DcmItem* d, const DcmTagKey& key) {
    Float64 r = 0, c = 0;
    if (d->findAndGetFloat64(key, r, 0).good() && d->findAndGetFloat64(key, c, 1).good()) return cv::Vec2d(r, c);
    return std::nullopt;
}

std::vector<UltrasoundRegion> read_regions(DcmItem* ds) {
    std::vector<UltrasoundRegion> out;
    DcmSequenceOfItems* seq = nullptr;
    if (ds->findAndGetSequence(DCM_SequenceOfUltrasoundRegions, seq).bad() || !seq) return out;
    for (unsigned long i = 0; i < seq->card(); ++i) {
        DcmItem* it = seq->getItem(i);
        if (!it) continue;
        UltrasoundRegion r;
        r.index = int(i);
        const long long x0 = get_u32(it, DCM_RegionLocationMinX0), y0 = get_u32(it, DCM_RegionLocationMinY0);
        const long long x1 = get_u32(it, DCM_RegionLocationMaxX1), y1 = get_u32(it, DCM_RegionLocationMaxY1);
        const auto clampi = [](long long v) { return int(std::min<long long>(v, 1'000'000'000)); };
        r.box = cv::Rect(clampi(x0), clampi(y0), clampi(std::max(0LL, x1 - x0 + 1)), clampi(std::max(0LL, y1 - y0 + 1)));
        r.spatial_format = get_u16(it, DCM_RegionSpatialFormat);
        r.data_type = get_u16(it, DCM_RegionDataType);
        r.units_x = get_u16(it, DCM_PhysicalUnitsXDirection);
        r.units_y = get_u16(it, DCM_PhysicalUnitsYDirection);
        Float64 v = 0;
        if (it->findAndGetFloat64(DCM_PhysicalDeltaX, v).good()) r.delta_x = v;
        if (it->findAndGetFloat64(DCM_PhysicalDeltaY, v).good()) r.delta_y = v;
        out.push_back(r);
    }
    return out;
}

// Bytes per value of a binary VR (0: not a fixed-size binary VR).
int binary_value_size(DcmEVR vr) {
    switch (vr) {
        case EVR_US: case EVR_SS: return 2;
        case EVR_UL: case EVR_SL: case EVR_FL: case EVR_AT: return 4;
        case EVR_FD: return 8;
        default: return 0;
    }
}

// Wrong value lengths in the elements fetalhc reads (a writer's bug or a damaged file): DCMTK
// reads an odd length as given and pads it (a 3-byte US becomes two values, a 5-byte UL one value
// and two stray bytes), so the numbers would be silently wrong. `single`: elements read as one
// value, whose length must be exactly one value's. Other elements are not fetalhc's concern: a
// broken field that is never read does not refuse an otherwise usable file. Returns the error, or
// empty.
std::string check_value_lengths(DcmItem* item, std::initializer_list<DcmTagKey> single, const std::string& what) {
    for (unsigned long i = 0; i < item->card(); ++i) {
        DcmElement* e = item->getElement(i);
        if (!e) continue;
        const int size = binary_value_size(e->ident());
        const Uint32 len = e->getLength();
        if (size == 0 || len == 0) continue;
        if (std::find(single.begin(), single.end(), e->getTag().getXTag()) == single.end()) continue;
        if (len != Uint32(size)) {
            DcmTag t = e->getTag();
            return what + " has a wrong value length in " + std::string(t.getTagName()) + " " +
                   std::string(t.getXTag().toString().c_str()) + ": " + std::to_string(len) + " bytes of " +
                   DcmVR(e->ident()).getVRName() + ", expected one " + std::to_string(size) +
                   "-byte value (a damaged file or a writer's bug)";
        }
    }
    return "";
}

// Wrong value lengths in the image-size fields and the ultrasound regions (see check_value_lengths).
std::string check_header_lengths(DcmDataset* ds, const std::string& name) {
    const std::string what = "DICOM '" + name + "'";
    if (auto e = check_value_lengths(ds, {DCM_SamplesPerPixel, DCM_Rows, DCM_Columns, DCM_BitsAllocated, DCM_BitsStored,
                                          DCM_HighBit, DCM_PixelRepresentation, DCM_PlanarConfiguration},
                                     what);
        !e.empty())
        return e;
    DcmSequenceOfItems* seq = nullptr;
    if (ds->findAndGetSequence(DCM_SequenceOfUltrasoundRegions, seq).good() && seq)
        for (unsigned long i = 0; i < seq->card(); ++i)
            if (DcmItem* it = seq->getItem(i))
                if (auto e = check_value_lengths(
                        it, {DCM_RegionLocationMinX0, DCM_RegionLocationMinY0, DCM_RegionLocationMaxX1, DCM_RegionLocationMaxY1,
                             DCM_RegionSpatialFormat, DCM_RegionDataType, DCM_PhysicalUnitsXDirection,
                             DCM_PhysicalUnitsYDirection, DCM_PhysicalDeltaX, DCM_PhysicalDeltaY},
                        what + " ultrasound region " + std::to_string(i));
                    !e.empty())
                    return e;
    return "";
}

// JPEG 2000 (lossless only, or lossy allowed): decoded with OpenJPEG (dicom_j2k.h), since
// Debian's DCMTK has no JPEG 2000 decoder.
bool is_j2k(E_TransferSyntax x) { return x == EXS_JPEG2000LosslessOnly || x == EXS_JPEG2000; }

// Transfer syntaxes newer than this DCMTK, whose files it refuses to read ("meta information header
// missing"): named from the meta header so that the refusal says what the file is. HTJ2K is not
// decoded (OpenJPEG's HTJ2K decoding is not wired in or tested here).
std::string newer_syntax_name(const std::string& uid) {
    if (uid == "1.2.840.10008.1.2.4.201") return "High-Throughput JPEG 2000 Image Compression (Lossless Only)";
    if (uid == "1.2.840.10008.1.2.4.202") return "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)";
    if (uid == "1.2.840.10008.1.2.4.203") return "High-Throughput JPEG 2000 Image Compression";
    return "";
}

// The header's identity, image and calibration fields; frames read as NumberOfFrames (1 when absent).
Expected<DicomHeader> header_fields(DcmFileFormat& ff, const std::string& name) {
    DcmDataset* ds = ff.getDataset();
    DicomHeader h;
    h.path = name;
    const DcmXfer xfer(ds->getOriginalXfer());
    h.transfer_syntax_uid = xfer.getXferID();
    h.transfer_syntax_name = xfer.getXferName();
    h.sop_class_uid = get_string(ds, DCM_SOPClassUID);
    if (h.sop_class_uid.empty()) h.sop_class_uid = get_string(ff.getMetaInfo(), DCM_MediaStorageSOPClassUID);
    h.sop_class_name = dcmFindNameOfUID(h.sop_class_uid.c_str(), "");
    h.sop_instance_uid = get_string(ds, DCM_SOPInstanceUID);
    h.study_instance_uid = get_string(ds, DCM_StudyInstanceUID);
    h.series_instance_uid = get_string(ds, DCM_SeriesInstanceUID);
    h.patient_name = get_string(ds, DCM_PatientName);
    h.patient_id = get_string(ds, DCM_PatientID);
    h.patient_birth_date = get_string(ds, DCM_PatientBirthDate);
    h.patient_sex = get_string(ds, DCM_PatientSex);
    h.study_date = get_string(ds, DCM_StudyDate);
    h.study_time = get_string(ds, DCM_StudyTime);
    h.study_id = get_string(ds, DCM_StudyID);
    h.accession_number = get_string(ds, DCM_AccessionNumber);
    h.referring_physician = get_string(ds, DCM_ReferringPhysicianName);
    h.series_number = get_string(ds, DCM_SeriesNumber);
    h.instance_number = get_string(ds, DCM_InstanceNumber);
    h.content_date = get_string(ds, DCM_ContentDate);
    h.content_time = get_string(ds, DCM_ContentTime);
    h.modality = get_string(ds, DCM_Modality);
    h.photometric_interpretation = get_string(ds, DCM_PhotometricInterpretation);
    h.rows = get_u16(ds, DCM_Rows);
    h.columns = get_u16(ds, DCM_Columns);
    h.samples_per_pixel = get_u16(ds, DCM_SamplesPerPixel, 1);
    h.bits_allocated = get_u16(ds, DCM_BitsAllocated);
    h.bits_stored = get_u16(ds, DCM_BitsStored, h.bits_allocated);
    Sint32 frames = 1;
    if (ds->tagExistsWithValue(DCM_NumberOfFrames) && ds->findAndGetSint32(DCM_NumberOfFrames, frames).bad())
        return unreadable("DICOM '" + name + "' has an unreadable NumberOfFrames (0028,0008)");
    h.frames = frames;
    h.regions = read_regions(ds);
    h.pixel_spacing_mm = get_spacing(ds, DCM_PixelSpacing);
    h.imager_pixel_spacing_mm = get_spacing(ds, DCM_ImagerPixelSpacing);
    Float64 t = 0;
    Sint32 rate = 0;
    if (ds->findAndGetFloat64(DCM_FrameTime, t).good() && t > 0) h.frame_time_ms = t;
    else if (ds->findAndGetSint32(DCM_CineRate, rate).good() && rate > 0) h.frame_time_ms = 1000.0 / rate;
    h.has_pixel_data = ds->tagExists(DCM_PixelData);
    h.can_decode = xfer.isNotEncapsulated() || is_j2k(xfer.getXfer()) ||
                   DcmCodecList::canChangeCoding(ds->getOriginalXfer(), EXS_LittleEndianExplicit);
    return h;
}

// The checks made before any pixel is allocated: an image size, and frames and pixels in budget.
Expected<DicomHeader> checked_budget(DicomHeader h) {
    const std::string& name = h.path;
    const std::string what = "DICOM '" + name + "'";
    if (!h.has_pixel_data) return h;  // a header without an image is still a header (info shows it)
    if (h.rows <= 0 || h.columns <= 0)
        return unreadable(what + " has pixel data but no image size (Rows/Columns missing or 0)");
    if (h.frames < 1 || h.frames > kDicomMaxFrames)
        return unreadable(what + " says it has " + std::to_string(h.frames) + " frames; fetalhc reads 1 to " +
                          std::to_string(kDicomMaxFrames));
    const long long px = 1LL * h.rows * h.columns;
    if (px > kDicomMaxFramePixels)
        return unreadable(what + " says its frames are " + std::to_string(h.columns) + " x " + std::to_string(h.rows) +
                          " pixels, over the " + std::to_string(kDicomMaxFramePixels / 1'000'000) +
                          " megapixels fetalhc reads; the header is probably wrong");
    if (px * h.frames > kDicomMaxTotalPixels)
        return unreadable(what + " holds " + std::to_string(px * h.frames) + " pixels in all, over the limit of " +
                          std::to_string(kDicomMaxTotalPixels) + "; split the cine into shorter files");
    return h;
}

// Header fields and the checks made before any pixel is allocated.
Expected<DicomHeader> header_from(DcmFileFormat& ff, const std::string& name) {
    if (auto e = check_header_lengths(ff.getDataset(), name); !e.empty()) return unreadable(e);
    auto h = header_fields(ff, name);
    if (!h) return h;
    return checked_budget(std::move(*h));
}

bool has_dicm_magic(const unsigned char* p, size_t n) { return n >= 132 && std::memcmp(p + 128, "DICM", 4) == 0; }

// Why DCMTK could not read `name`: a transfer syntax it does not know (HTJ2K) is named from the meta
// header it did read, else DCMTK's reason.
std::string load_error(DcmFileFormat& ff, const std::string& name, const OFCondition& c) {
    const std::string uid = get_string(ff.getMetaInfo(), DCM_TransferSyntaxUID);
    if (!uid.empty() && DcmXfer(uid.c_str()).getXfer() == EXS_Unknown) {
        const std::string known = newer_syntax_name(uid);
        return "DICOM '" + name + "' uses " + (known.empty() ? "a transfer syntax unknown to DCMTK" : "the transfer syntax " + known) +
               " (" + uid + "), which fetalhc cannot read; export it uncompressed, RLE, JPEG or JPEG 2000";
    }
    return "cannot read DICOM '" + name + "': " + c.text() + " (truncated or damaged file?)";
}

// The message for a problem the walk found in `name`.
std::string walk_error(const std::string& name, const std::string& problem) {
    if (problem.find("nested more than") != std::string::npos)
        return "DICOM '" + name + "' is refused: " + problem + " (a damaged or crafted file: no scanner nests that deep)";
    return "DICOM '" + name + "' is truncated or damaged: an element is longer than the file (" + problem + ")";
}

Expected<DicomHeader> load_file(DcmFileFormat& ff, const std::string& path, bool header_only) {
    init_dcmtk();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return unreadable("DICOM '" + path + "' does not exist or is not a file; check the path");
    if (!is_dicom_file(path))
        return unreadable("'" + path + "' is not a DICOM Part 10 file (no \"DICM\" at byte 128)");
    if (auto e = detail::dicom_walk_file_problem(path); !e.empty()) return unreadable(walk_error(path, e));
    // A read limit keeps large values (the pixel data) on disk until they are needed.
    const OFCondition c = ff.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, header_only ? 4096 : DCM_MaxReadLength,
                                      ERM_fileOnly);
    if (c.bad()) return unreadable(load_error(ff, path, c));
    return header_from(ff, path);
}

// Bytes in an anonymous memory file (memfd), open while the object lives. DCMTK reads them as a
// file: values over 4096 bytes stay in the file until needed, and one longer than the bytes left
// is refused when it is skipped, never allocated (read from a memory buffer DCMTK allocates the
// length an element declares, which the walk above tries to foresee; this is the second line).
class MemoryFile {
public:
    MemoryFile(const unsigned char* data, size_t size) : fd_(memfd_create("fetalhc-dicom", MFD_CLOEXEC)) {
        for (size_t done = 0; fd_ >= 0 && done < size;) {
            const ssize_t w = ::write(fd_, data + done, size - done);
            if (w <= 0) ::close(fd_), fd_ = -1;
            else done += size_t(w);
        }
    }
    ~MemoryFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    MemoryFile(const MemoryFile&) = delete;
    MemoryFile& operator=(const MemoryFile&) = delete;
    bool ok() const { return fd_ >= 0; }
    std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

private:
    int fd_;
};

Expected<DicomHeader> load_bytes(DcmFileFormat& ff, const MemoryFile& file, const unsigned char* data, size_t size,
                                 const std::string& name) {
    init_dcmtk();
    if (!has_dicm_magic(data, size)) return unreadable("'" + name + "' is not a DICOM Part 10 file (no \"DICM\" at byte 128)");
    if (auto e = detail::dicom_walk_problem(data, size); !e.empty()) return unreadable(walk_error(name, e));
    if (!file.ok()) return unreadable("cannot read DICOM '" + name + "': no memory file for it (" + std::strerror(errno) + ")");
    const OFCondition c = ff.loadFile(file.path().c_str(), EXS_Unknown, EGL_noChange, 4096, ERM_fileOnly);
    if (c.bad()) return unreadable(load_error(ff, name, c));
    return header_from(ff, name);
}

// The pixel data of an uncompressed file must hold every frame the header announces.
std::string check_native_length(DcmDataset* ds, const DicomHeader& h) {
    DcmElement* px = nullptr;
    if (ds->findAndGetElement(DCM_PixelData, px).bad() || !px) return "";
    const long long frame_bytes = 1LL * h.rows * h.columns * std::max(1, h.samples_per_pixel) * ((h.bits_allocated + 7) / 8);
    if (frame_bytes <= 0) return "";
    const long long have = px->getLength();
    if (have / frame_bytes < h.frames)
        return "DICOM '" + h.path + "' says it has " + std::to_string(h.frames) + " frames but its pixel data holds " +
               std::to_string(have / frame_bytes) + "; the file is truncated or its NumberOfFrames is wrong";
    return "";
}

// One output frame of a DicomImage as CV_8UC1.
// `shown`: the frame's number in the file, for messages.
Expected<cv::Mat> frame_gray8(DicomImage& img, int f, const DicomHeader& h, int shown) {
    const int w = int(img.getWidth()), ht = int(img.getHeight());
    const std::string label = "DICOM '" + h.path + "' frame " + std::to_string(shown);
    if (img.isMonochrome()) {
        // No VOI window: DCMTK maps the stored value range linearly (8-bit data unchanged); wider
        // data is then scaled by the frame's own maximum, as 16-bit PNGs are (image_io.h).
        const int bits = h.bits_stored > 8 ? 16 : 8;
        const void* data = img.getOutputData(bits, unsigned(f), 0);
        if (!data) return unreadable(label + " cannot be rendered: " + DicomImage::getString(img.getStatus()));
        cv::Mat m(ht, w, bits == 16 ? CV_16UC1 : CV_8UC1, const_cast<void*>(data));
        if (bits == 8) return m.clone();
        double mx = 0;
        cv::minMaxLoc(m, nullptr, &mx);
        cv::Mat out;
        m.convertTo(out, CV_8U, mx > 0 ? 255.0 / mx : 0);
        return out;
    }
    const void* data = img.getOutputData(8, unsigned(f), 0);  // interleaved RGB
    if (!data) return unreadable(label + " cannot be rendered: " + DicomImage::getString(img.getStatus()));
    cv::Mat rgb(ht, w, CV_8UC3, const_cast<void*>(data)), gray;
    cv::cvtColor(rgb, gray, cv::COLOR_RGB2GRAY);
    return gray;
}

// The fragments of an encapsulated file must be able to hold every frame the header announces
// (each frame takes at least one fragment after the basic offset table).
// An RLE frame starts with a 64-byte header: the number of segments (1 to 15) and where each starts.
// DCMTK's RLE decoder reads at those offsets unchecked (an offset of 3.5 GB crashed it; found by
// fuzz_dicom), so each fragment's header is checked first: every segment must start inside the
// frame's data (the fragment, or when frames span fragments, the fragments from there on).
std::string check_rle_headers(DcmPixelSequence* seq, const DicomHeader& h) {
    const unsigned long n = seq->card();
    std::vector<unsigned long long> rest(n + 1, 0);  // bytes from fragment i to the end
    for (unsigned long i = n; i-- > 1;) {
        DcmPixelItem* item = nullptr;
        rest[i] = rest[i + 1] + (seq->getItem(item, i).good() && item ? item->getLength() : 0);
    }
    const bool one_per_frame = n - 1 == static_cast<unsigned long>(h.frames);
    for (unsigned long i = 1; i < n; ++i) {
        DcmPixelItem* item = nullptr;
        Uint8* b = nullptr;
        if (seq->getItem(item, i).bad() || !item || item->getLength() == 0) continue;
        const unsigned long long len = item->getLength(), limit = one_per_frame ? len : rest[i];
        const std::string where = "DICOM '" + h.path + "' has a damaged RLE frame header in fragment " + std::to_string(i);
        if (len < 64 || item->getUint8Array(b).bad() || !b) return where + " (shorter than its 64-byte header)";
        const auto u32 = [&](int k) { return uint32_t(b[4 * k]) | uint32_t(b[4 * k + 1]) << 8 | uint32_t(b[4 * k + 2]) << 16 | uint32_t(b[4 * k + 3]) << 24; };
        const uint32_t segments = u32(0);
        if (segments < 1 || segments > 15) return where + " (" + std::to_string(segments) + " segments; 1 to 15 are possible)";
        for (uint32_t k = 1; k <= segments; ++k)
            if (u32(int(k)) < 64 || u32(int(k)) >= limit || (k > 1 && u32(int(k)) < u32(int(k) - 1)))
                return where + " (segment " + std::to_string(k) + " starts at byte " + std::to_string(u32(int(k))) + " of " +
                       std::to_string(limit) + ")";
    }
    return "";
}

// The items of encapsulated pixel data (item 0: the Basic Offset Table); null when it is not.
DcmPixelSequence* pixel_sequence(DcmDataset* ds) {
    DcmElement* el = nullptr;
    if (ds->findAndGetElement(DCM_PixelData, el).bad() || !el) return nullptr;
    auto* px = dynamic_cast<DcmPixelData*>(el);
    DcmPixelSequence* seq = nullptr;
    if (!px || px->getEncapsulatedRepresentation(ds->getOriginalXfer(), nullptr, seq).bad()) return nullptr;
    return seq;
}

std::string check_fragments(DcmDataset* ds, const DicomHeader& h) {
    DcmPixelSequence* seq = pixel_sequence(ds);
    if (!seq) return "";
    const long long fragments = std::max(0LL, static_cast<long long>(seq->card()) - 1);
    if (fragments < h.frames)
        return "DICOM '" + h.path + "' says it has " + std::to_string(h.frames) + " frames but its pixel data holds " +
               std::to_string(fragments) + " compressed fragment" + (fragments == 1 ? "" : "s") +
               "; the file is truncated or its NumberOfFrames is wrong";
    if (ds->getOriginalXfer() == EXS_RLELossless) return check_rle_headers(seq, h);
    return "";
}

// ---- JPEG 2000: each frame's codestream gathered from the fragments, decoded by OpenJPEG ------------

// The fragments after the offset table, read a part at a time without DCMTK keeping their values
// (as its partial access does), so that a cine holds one frame's codestream at a time.
class Fragments {
public:
    explicit Fragments(DcmPixelSequence* seq) : seq_(seq) {
        for (unsigned long i = 1; i < seq->card(); ++i) lengths_.push_back(item(i) ? item(i)->getLength() : 0);
    }
    unsigned long count() const { return static_cast<unsigned long>(lengths_.size()); }
    Uint32 length(unsigned long i) const { return lengths_[i]; }
    // `n` bytes of fragment `i` (item 0 when `i` is -1: the offset table) from byte `offset`.
    bool read(long i, Uint32 offset, Uint32 n, unsigned char* to) {
        DcmPixelItem* it = item(static_cast<unsigned long>(i + 1));
        return n == 0 || (it && it->getPartialValue(to, offset, n, &cache_).good());
    }

private:
    DcmPixelItem* item(unsigned long i) const {
        DcmPixelItem* it = nullptr;
        return seq_->getItem(it, i).good() ? it : nullptr;
    }
    DcmPixelSequence* seq_;
    std::vector<Uint32> lengths_;
    DcmFileCache cache_;  // keeps the file open between the reads
};

// Fragments [begin, end) of one frame.
struct FragmentRange {
    unsigned long begin = 0, end = 0;
};

// Frames from their first fragments (`starts`, ascending, one per frame): each runs to the next.
std::vector<FragmentRange> ranges_from_starts(const std::vector<unsigned long>& starts, unsigned long fragments) {
    std::vector<FragmentRange> out;
    for (size_t f = 0; f < starts.size(); ++f) out.push_back({starts[f], f + 1 < starts.size() ? starts[f + 1] : fragments});
    return out;
}

// The frames' first fragments from the Basic Offset Table (PS3.5 A.4: each frame's offset from the
// first fragment's item tag; every item has an 8-byte header). Empty when the table is absent or
// does not point at fragment starts, one per frame, in order.
std::vector<unsigned long> starts_from_offset_table(DcmPixelSequence* seq, Fragments& fr, int frames) {
    DcmPixelItem* table = nullptr;
    if (seq->getItem(table, 0).bad() || !table || table->getLength() != 4ULL * Uint32(frames)) return {};
    std::vector<unsigned char> b(table->getLength());
    if (!fr.read(-1, 0, Uint32(b.size()), b.data())) return {};
    std::vector<unsigned long long> at(fr.count());  // where each fragment's item tag starts
    for (unsigned long i = 1; i < fr.count(); ++i) at[i] = at[i - 1] + 8 + fr.length(i - 1);
    std::vector<unsigned long> starts;
    for (int f = 0; f < frames; ++f) {
        const size_t k = size_t(f) * 4;
        const unsigned long long off = b[k] | b[k + 1] << 8 | b[k + 2] << 16 | static_cast<unsigned long long>(b[k + 3]) << 24;
        const auto hit = std::lower_bound(at.begin(), at.end(), off);
        if (hit == at.end() || *hit != off) return {};
        const auto i = static_cast<unsigned long>(hit - at.begin());
        if ((f == 0 && i != 0) || (f > 0 && i <= starts.back())) return {};
        starts.push_back(i);
    }
    return starts;
}

// The frames' first fragments found by content: the fragments that start a codestream (SOC, SIZ)
// or a JP2 file. Empty unless there is one per frame, the first fragment among them.
std::vector<unsigned long> starts_from_markers(Fragments& fr, int frames) {
    std::vector<unsigned long> starts;
    for (unsigned long i = 0; i < fr.count(); ++i) {
        unsigned char head[12] = {};
        const Uint32 n = std::min<Uint32>(fr.length(i), sizeof head);
        if (fr.read(long(i), 0, n, head) && detail::starts_j2k_frame(head, n)) starts.push_back(i);
    }
    if (starts.size() != size_t(frames) || starts.empty() || starts[0] != 0) return {};
    return starts;
}

// Which fragments make each frame: one per frame when the counts agree, all of them for a single
// frame; otherwise the Basic Offset Table, else the fragments that start a codestream.
Expected<std::vector<FragmentRange>> j2k_frame_fragments(DcmPixelSequence* seq, Fragments& fr, const DicomHeader& h) {
    const unsigned long n = fr.count();
    if (n == static_cast<unsigned long>(h.frames)) {
        std::vector<unsigned long> each(n);
        for (unsigned long i = 0; i < n; ++i) each[i] = i;
        return ranges_from_starts(each, n);
    }
    if (h.frames == 1) return std::vector<FragmentRange>{{0, n}};
    if (auto s = starts_from_offset_table(seq, fr, h.frames); !s.empty()) return ranges_from_starts(s, n);
    if (auto s = starts_from_markers(fr, h.frames); !s.empty()) return ranges_from_starts(s, n);
    return unreadable("DICOM '" + h.path + "' holds " + std::to_string(n) + " JPEG 2000 fragments for " +
                      std::to_string(h.frames) + " frames, and neither its Basic Offset Table nor the fragments that "
                      "start a codestream tell which fragments make which frame; the file is damaged (export it with "
                      "one fragment per frame)");
}

// One frame's codestream: its fragments joined. At most twice the frame's uncompressed size (plus
// room for the headers): compressed data is smaller, and a lying file must not make a large allocation.
Expected<std::vector<unsigned char>> frame_codestream(Fragments& fr, FragmentRange r, const DicomHeader& h,
                                                      const std::string& label) {
    unsigned long long total = 0;
    for (unsigned long i = r.begin; i < r.end; ++i) total += fr.length(i);
    const int sample_bytes = (std::max({8, h.bits_allocated, h.bits_stored}) + 7) / 8;
    const unsigned long long raw =
        1ULL * Uint32(h.rows) * Uint32(h.columns) * Uint32(std::max(1, h.samples_per_pixel)) * Uint32(sample_bytes);
    if (total > 2 * raw + 65536)
        return unreadable(label + ": its JPEG 2000 codestream is " + std::to_string(total) + " bytes, more than twice the " +
                          std::to_string(raw) + " bytes of the uncompressed frame; the file is damaged");
    std::vector<unsigned char> bytes(total);
    size_t at = 0;
    for (unsigned long i = r.begin; i < r.end; at += fr.length(i), ++i)
        if (!fr.read(long(i), 0, fr.length(i), bytes.data() + at))
            return unreadable(label + ": JPEG 2000 fragment " + std::to_string(i + 1) +
                              " cannot be read; the file is truncated or damaged");
    return bytes;
}

// JPEG 2000 frames `first` .. `end` - 1.
Expected<std::vector<cv::Mat>> decode_j2k_frames(DcmDataset* ds, const DicomHeader& h, int first, int end) {
    const std::string what = "DICOM '" + h.path + "'";
    DcmPixelSequence* seq = pixel_sequence(ds);
    if (!seq) return unreadable(what + " says it is JPEG 2000 but its pixel data is not encapsulated; the file is damaged");
    Fragments fr(seq);
    auto ranges = j2k_frame_fragments(seq, fr, h);
    if (!ranges) return ranges.error_value();
    const detail::J2kExpect expect{h.rows, h.columns, h.samples_per_pixel, h.bits_stored, h.photometric_interpretation};
    std::vector<cv::Mat> frames;
    frames.reserve(size_t(end - first));
    for (int f = first; f < end; ++f) {
        const std::string label = what + (h.frames > 1 ? " frame " + std::to_string(f) : std::string());
        auto bytes = frame_codestream(fr, (*ranges)[size_t(f)], h, label);
        if (!bytes) return bytes.error_value();
        auto m = detail::decode_j2k_frame(bytes->data(), bytes->size(), expect, label);
        if (!m) return m.error_value();
        frames.push_back(std::move(*m));
    }
    return frames;
}

// Frame by frame: DCMTK reads (or decompresses) only the frame asked for (partial access), so
// at most one frame is held in DCMTK beside the frames already returned, instead of the whole
// pixel data, its decompressed copy and DicomImage's copy of every frame.
// `first`, `count`: the frames wanted (count -1: to the last); a frame past the last is an error.
// `checked`: the pixel data's length and fragments were already checked (by an earlier call).
Expected<std::vector<cv::Mat>> decode_loaded(DcmFileFormat& ff, const DicomHeader& h, int first = 0, int count = -1,
                                             bool checked = false) {
    const std::string what = "DICOM '" + h.path + "'";
    if (!h.has_pixel_data) return unreadable(what + " has no pixel data (7FE0,0010): it is not an image");
    if (!h.can_decode)
        return unreadable(what + " uses the transfer syntax " + h.transfer_syntax_name + " (" + h.transfer_syntax_uid +
                          "), which fetalhc cannot decode; export it uncompressed, RLE, JPEG or JPEG 2000");
    DcmDataset* ds = ff.getDataset();
    const DcmXfer xfer(ds->getOriginalXfer());
    if (!checked)
        if (auto e = xfer.isNotEncapsulated() ? check_native_length(ds, h) : check_fragments(ds, h); !e.empty())
            return unreadable(e);
    if (first < 0 || first >= h.frames)
        return make_error(ErrorKind::InvalidArgument, what + " has " + std::to_string(h.frames) + " frame" + (h.frames == 1 ? "" : "s") + "; frame " +
                                                      std::to_string(first) + " is past the last (frames count from 0)", "frame");
    const int end = count < 0 ? h.frames : std::min(h.frames, first + count);
    if (is_j2k(xfer.getXfer())) return decode_j2k_frames(ds, h, first, end);
    std::vector<cv::Mat> frames;
    frames.reserve(size_t(end - first));
    for (int f = first; f < end; ++f) {
        DicomImage img(&ff, ds->getOriginalXfer(), CIF_UsePartialAccessToPixelData, static_cast<unsigned long>(f), 1UL);
        if (img.getStatus() != EIS_Normal || img.getFrameCount() < 1)
            return unreadable("cannot decode " + what + (h.frames > 1 ? " frame " + std::to_string(f) : std::string()) + " (" +
                              h.photometric_interpretation + ", " + h.transfer_syntax_name + "): " +
                              (img.getStatus() != EIS_Normal ? DicomImage::getString(img.getStatus())
                                                             : "no frame decoded; NumberOfFrames is wrong") +
                              " (truncated or damaged file?)");
        auto m = frame_gray8(img, 0, h, f);
        if (!m) return m.error_value();
        frames.push_back(std::move(*m));
    }
    return frames;
}

template <class Load>
Expected<std::vector<cv::Mat>> decode_with(Load load) {
    try {
        DcmFileFormat ff;
        auto h = load(ff);
        if (!h) return h.error_value();
        return decode_loaded(ff, *h);
    } catch (const std::exception& e) {
        return unreadable(std::string("decoding DICOM failed: ") + e.what());
    }
}

// ---- calibration ----------------------------------------------------------------------------------

const char* unit_name(int u) {
    switch (u) {
        case 0: return "none";
        case 1: return "percent";
        case 2: return "dB";
        case 3: return "cm";
        case 4: return "seconds";
        case 5: return "hertz";
        case 6: return "dB/seconds";
        case 7: return "cm/sec";
        case 8: return "cm2";
        case 9: return "cm2/sec";
        case 0xA: return "cm3";
        case 0xB: return "cm3/sec";
        case 0xC: return "degrees";
        default: return "unknown";
    }
}

bool is_2d_tissue(const UltrasoundRegion& r) { return r.spatial_format == 1 && r.data_type == 1; }

const std::string kOverride = "; give a pixel size to measure anyway";

// The calibration of one 2D tissue region, or why it cannot be used.
Expected<DicomCalibration> region_calibration(const DicomHeader& h, const UltrasoundRegion& r) {
    const std::string what = "DICOM '" + h.path + "' ultrasound region " + std::to_string(r.index);
    if (r.units_x != 3 || r.units_y != 3)
        return calibration_error(what + " is in " + unit_name(r.units_x) + " x " + unit_name(r.units_y) +
                                 ", not cm: no length calibration" + kOverride);
    DicomCalibration c;
    c.mm_per_px_x = r.delta_x * 10;
    c.mm_per_px_y = r.delta_y * 10;
    for (double mm : {c.mm_per_px_x, c.mm_per_px_y})
        if (auto e = check_pixel_size(mm, what + " (PhysicalDeltaX/Y x 10)"); !e.empty())
            return calibration_error(e + kOverride);
    // Real files overhang by a pixel (the Philips box ends at column 800 of 800); a box further out
    // belongs to another pixel grid (a re-scaled image whose calibration was not updated).
    const int tol_x = std::max(2, h.columns / 100), tol_y = std::max(2, h.rows / 100);
    if (r.box.width <= 1 || r.box.height <= 1 || r.box.x < 0 || r.box.y < 0 || r.box.x + r.box.width > h.columns + tol_x ||
        r.box.y + r.box.height > h.rows + tol_y)
        return calibration_error(what + " box (" + std::to_string(r.box.x) + "," + std::to_string(r.box.y) + ")-(" +
                                 std::to_string(r.box.x + r.box.width - 1) + "," + std::to_string(r.box.y + r.box.height - 1) +
                                 ") lies outside the " + std::to_string(h.columns) + " x " + std::to_string(h.rows) +
                                 " image: the pixels were re-scaled after the calibration was written, so it does not hold" +
                                 kOverride);
    c.source = "ultrasound region " + std::to_string(r.index);
    c.region = r.index;
    c.box = r.box;
    c.keep = {r.box & cv::Rect(0, 0, h.columns, h.rows)};
    return c;
}

bool same_calibration(const DicomCalibration& a, const DicomCalibration& b) {
    return std::abs(a.mm_per_px_x - b.mm_per_px_x) <= 0.005 * a.mm_per_px_x &&
           std::abs(a.mm_per_px_y - b.mm_per_px_y) <= 0.005 * a.mm_per_px_y;
}

Expected<DicomCalibration> spacing_calibration(const DicomHeader& h) {
    const std::string what = "DICOM '" + h.path + "'";
    for (auto [sp, name] : {std::pair{h.pixel_spacing_mm, "PixelSpacing"}, std::pair{h.imager_pixel_spacing_mm, "ImagerPixelSpacing"}}) {
        if (!sp) continue;
        DicomCalibration c;
        c.mm_per_px_x = (*sp)[1];  // (row spacing, column spacing): x steps along a row = column spacing
        c.mm_per_px_y = (*sp)[0];
        for (double mm : {c.mm_per_px_x, c.mm_per_px_y})
            if (auto e = check_pixel_size(mm, what + " (" + name + ")"); !e.empty())
            return calibration_error(e + kOverride);
        c.source = name;
        c.box = cv::Rect(0, 0, h.columns, h.rows);
        return c;
    }
    return calibration_error(what + " carries no calibration (no 2D tissue ultrasound region in cm, no PixelSpacing or "
                             "ImagerPixelSpacing): its mm per pixel is unknown; give a pixel size");
}

std::string box_text(const cv::Rect& b) {
    return "(" + std::to_string(b.x) + "," + std::to_string(b.y) + ")-(" + std::to_string(b.x + b.width - 1) + "," +
           std::to_string(b.y + b.height - 1) + ")";
}

}  // namespace

namespace detail {
std::string dicom_fmt(double v, int digits) { return detail::fixed_text(v, digits); }
std::string dicom_box_text(const cv::Rect& b) { return box_text(b); }
bool dicom_is_2d_tissue(const UltrasoundRegion& r) { return is_2d_tissue(r); }
Expected<DicomCalibration> dicom_region_calibration(const DicomHeader& h, const UltrasoundRegion& r) {
    return region_calibration(h, r);
}
}  // namespace detail

bool is_dicom(const std::vector<unsigned char>& bytes) { return has_dicm_magic(bytes.data(), bytes.size()); }

bool valid_dicom_uid(const std::string& s) {
    if (s.empty() || s.size() > 64) return false;
    size_t start = 0;
    for (;;) {
        const size_t dot = s.find('.', start);
        const std::string part = s.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        if (part.empty() || part.find_first_not_of("0123456789") != std::string::npos) return false;
        if (part.size() > 1 && part[0] == '0') return false;  // no leading zero but "0" itself
        if (dot == std::string::npos) return true;
        start = dot + 1;
    }
}

bool is_dicom_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    unsigned char buf[132];
    if (!in.read(reinterpret_cast<char*>(buf), sizeof buf)) return false;
    return has_dicm_magic(buf, sizeof buf);
}

Expected<DicomHeader> read_dicom_header(const std::string& path) {
    try {
        DcmFileFormat ff;
        return load_file(ff, path, true);
    } catch (const std::exception& e) {
        return unreadable("reading DICOM '" + path + "' failed: " + e.what());
    }
}

Expected<DicomHeader> read_dicom_header(const std::vector<unsigned char>& bytes, const std::string& name) {
    try {
        const MemoryFile file(bytes.data(), bytes.size());
        DcmFileFormat ff;
        return load_bytes(ff, file, bytes.data(), bytes.size(), name);
    } catch (const std::exception& e) {
        return unreadable("reading DICOM '" + name + "' failed: " + e.what());
    }
}

Expected<std::vector<cv::Mat>> decode_dicom_frames(const std::string& path) {
    return decode_with([&](DcmFileFormat& ff) { return load_file(ff, path, true); });
}

Expected<std::vector<cv::Mat>> decode_dicom_frames(const std::vector<unsigned char>& bytes, const std::string& name) {
    const MemoryFile file(bytes.data(), bytes.size());  // outlives the decode: pixel data is read from it when needed
    return decode_with([&](DcmFileFormat& ff) { return load_bytes(ff, file, bytes.data(), bytes.size(), name); });
}

Expected<cv::Mat> decode_dicom_frame(const std::vector<unsigned char>& bytes, const std::string& name, int frame) {
    auto reader = DicomFrameReader::open(bytes, name);
    if (!reader) return reader.error_value();
    return (*reader)->frame(frame);
}

struct DicomFrameReader::Impl {
    Impl(const unsigned char* data, size_t size) : file(data, size) {}
    MemoryFile file;  // outlives the reads: pixel data is read from it when needed
    DcmFileFormat ff;
    DicomHeader header;
    bool checked = false;  // the pixel data passed its checks (done at the first frame)
};

DicomFrameReader::DicomFrameReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DicomFrameReader::~DicomFrameReader() = default;

Expected<std::unique_ptr<DicomFrameReader>> DicomFrameReader::open(const std::vector<unsigned char>& bytes,
                                                                   const std::string& name) {
    return open(bytes.data(), bytes.size(), name);
}

Expected<std::unique_ptr<DicomFrameReader>> DicomFrameReader::open(const unsigned char* data, size_t size,
                                                                   const std::string& name) {
    try {
        auto impl = std::make_unique<Impl>(data, size);
        auto h = load_bytes(impl->ff, impl->file, data, size, name);
        if (!h) return h.error_value();
        impl->header = std::move(*h);
        return std::unique_ptr<DicomFrameReader>(new DicomFrameReader(std::move(impl)));
    } catch (const std::exception& e) {
        return unreadable(std::string("reading DICOM failed: ") + e.what());
    }
}

const DicomHeader& DicomFrameReader::header() const { return impl_->header; }

Expected<cv::Mat> DicomFrameReader::frame(int index) {
    try {
        auto f = decode_loaded(impl_->ff, impl_->header, index, 1, impl_->checked);
        if (!f) return f.error_value();
        impl_->checked = true;
        return std::move(f->front());
    } catch (const std::exception& e) {
        return unreadable(std::string("decoding DICOM failed: ") + e.what());
    }
}

bool DicomCalibration::anisotropic() const {
    return std::abs(mm_per_px_x - mm_per_px_y) > 0.005 * std::max(mm_per_px_x, mm_per_px_y);
}

Expected<DicomCalibration> choose_calibration(const DicomHeader& h, std::optional<cv::Point2d> head_centre_px) {
    std::vector<const UltrasoundRegion*> tissue;
    for (const auto& r : h.regions)
        if (is_2d_tissue(r)) tissue.push_back(&r);
    if (tissue.empty()) return spacing_calibration(h);
    if (tissue.size() == 1) return region_calibration(h, *tissue[0]);
    if (head_centre_px) {
        // Box coordinates are pixel indices; a pixel covers its index +- 0.5.
        for (const auto* r : tissue) {
            const cv::Rect& b = r->box;
            if (head_centre_px->x >= b.x - 0.5 && head_centre_px->x <= b.x + b.width - 0.5 && head_centre_px->y >= b.y - 0.5 &&
                head_centre_px->y <= b.y + b.height - 0.5)
                return region_calibration(h, *r);
        }
        return calibration_error("the head found in DICOM '" + h.path + "' (centre " + detail::fixed_text(head_centre_px->x, 1) + ", " +
                                 detail::fixed_text(head_centre_px->y, 1) + " px) lies in none of its " + std::to_string(tissue.size()) +
                                 " tissue regions; give a pixel size to measure anyway");
    }
    // Before the head is known: one answer only when every region agrees.
    std::vector<DicomCalibration> cals;
    for (const auto* r : tissue) {
        auto c = region_calibration(h, *r);
        if (!c) return c;
        cals.push_back(*c);
    }
    DicomCalibration all = cals[0];
    for (size_t i = 1; i < cals.size(); ++i) {
        if (!same_calibration(cals[0], cals[i]))
            return calibration_error("DICOM '" + h.path + "' has " + std::to_string(cals.size()) +
                                     " tissue regions with different calibrations (dual view): the head's position decides");
        all.keep.push_back(cals[i].keep[0]);
    }
    all.source = "ultrasound regions (all " + std::to_string(cals.size()) + " agree)";
    return all;
}

std::string describe_calibration(const DicomHeader& h) {
    auto c = choose_calibration(h, std::nullopt);
    if (!c) return "none: " + c.error();
    return c->source + ": " + detail::fixed_text(c->mm_per_px_x, 5) + " x " + detail::fixed_text(c->mm_per_px_y, 5) + " mm/px" +
           (c->anisotropic() ? " (anisotropic: measured in physical space)" : "") +
           (c->region ? ", box " + box_text(c->box) : "");
}

cv::Mat mask_outside(const cv::Mat& gray8, const std::vector<cv::Rect>& keep) {
    if (keep.empty()) return gray8;
    cv::Mat out = cv::Mat::zeros(gray8.size(), gray8.type());
    const cv::Rect all(0, 0, gray8.cols, gray8.rows);
    for (const auto& k : keep) {
        const cv::Rect r = k & all;
        if (r.area() > 0) gray8(r).copyTo(out(r));
    }
    return out;
}

namespace {

std::optional<std::string> disagreement_note(const DicomHeader& h, double given, const DicomCalibration& c) {
    const double worst = std::max(std::abs(c.mm_per_px_x - given) / given, std::abs(c.mm_per_px_y - given) / given);
    if (worst <= 0.01) return std::nullopt;
    return "'" + h.path + "': the pixel size given, " + detail::fixed_text(given, 5) + " mm, differs by " + detail::fixed_text(100 * worst, 1) +
           "% from the file's calibration (" + c.source + ": " + detail::fixed_text(c.mm_per_px_x, 5) + " x " + detail::fixed_text(c.mm_per_px_y, 5) +
           " mm/px); using the pixel size given";
}

}  // namespace

Expected<DicomCalibration> calibration_for_frames(const DicomHeader& h, std::optional<double> override_mm,
                                                  std::vector<std::string>& notes) {
    auto file = choose_calibration(h, std::nullopt);
    if (!override_mm) return file;
    DicomCalibration c;
    c.mm_per_px_x = c.mm_per_px_y = *override_mm;
    c.source = kGivenPixelSizeSource;
    c.given = true;
    c.box = cv::Rect(0, 0, h.columns, h.rows);
    if (file) {
        c.keep = file->keep;
        if (auto n = disagreement_note(h, *override_mm, *file)) notes.push_back(*n);
    }
    return c;
}

std::vector<InputItem> expand_inputs_with_dicom(const std::vector<std::string>& paths) {
    std::vector<InputItem> out;
    for (const auto& p : paths) {
        std::error_code ec;
        if (!fs::is_directory(p, ec)) {
            out.push_back({p, ""});
            continue;
        }
        std::vector<std::string> files;
        for (const auto& e : fs::directory_iterator(p, ec)) {
            if (!e.is_regular_file()) continue;
            const std::string f = e.path().string();
            std::string ext = e.path().extension().string();
            std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
            const std::string stem = e.path().stem().string();
            const bool mask = stem.size() > 5 && stem.compare(stem.size() - 5, 5, "_Mask") == 0;
            if ((has_image_extension(f) && !mask) || ext == ".dcm" || (ext.empty() && is_dicom_file(f))) files.push_back(f);
        }
        std::sort(files.begin(), files.end());
        if (files.empty()) out.push_back({p, "folder '" + p + "' holds no images (.png .jpg .jpeg .bmp .tif .tiff .dcm)"});
        for (auto& f : files) out.push_back({f, ""});
    }
    return out;
}

}  // namespace fetalhc
