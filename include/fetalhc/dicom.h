// fetalhc/dicom.h - DICOM ultrasound input: the header, the calibration, the frames (DCMTK inside,
// OpenJPEG for JPEG 2000 frames).
//
//   auto h = fetalhc::read_dicom_header("scan.dcm");          // header only: works on any file
//   if (!h) { std::cerr << h.error(); return; }
//   auto frames = fetalhc::decode_dicom_frames("scan.dcm");   // 8-bit gray frames
//   auto cal = fetalhc::choose_calibration(*h, std::nullopt); // mm per pixel from the file
//
// Calibration (DICOM PS3.3 C.8.5.5, Sequence of Ultrasound Regions (0018,6011)): a region counts
// when its spatial format is 2D (1), its data type tissue (1) and both physical units are cm (3);
// mm per pixel = PhysicalDeltaX/Y x 10. Region boxes are inclusive pixel coordinates
// (RegionLocationMinX0 .. MaxX1), origin at the top-left pixel, x right, y down (the project's
// convention). Without any region, PixelSpacing (0028,0030) or ImagerPixelSpacing (0018,1164)
// (row spacing \ column spacing, mm) is used. Anything else is refused with an error that says what
// is wrong and what to do (ErrorKind::InvalidCalibration, field "pixel_size": a pixel size given
// by the caller overrides).
// Frames: decode_dicom_frames decodes whole files; the limits below are checked from the header
// first, so a lying header (60000 x 60000, a frame count the pixel data does not hold) is an error.
// Thread safety: pure functions; DCMTK's decoders are registered once, thread-safely.
#pragma once

#include "fetalhc/expected.h"
#include "fetalhc/image_io.h"
#include "fetalhc/measure.h"
#include "fetalhc/video.h"

#include <opencv2/core.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

// One item of the Sequence of Ultrasound Regions.
struct UltrasoundRegion {
    int index = 0;                      // position in the sequence
    cv::Rect box;                       // inclusive min/max converted to x, y, width, height (px)
    int spatial_format = 0;             // (0018,6012): 1 = 2D
    int data_type = 0;                  // (0018,6014): 1 = tissue
    int units_x = 0, units_y = 0;       // (0018,6024/6026): 3 = cm
    double delta_x = 0, delta_y = 0;    // PhysicalDeltaX/Y (0018,602C/602E) in the region's units
    bool is_tissue_2d_cm() const { return spatial_format == 1 && data_type == 1 && units_x == 3 && units_y == 3; }
};

struct DicomHeader {
    std::string path;                   // file name, for messages
    std::string transfer_syntax_uid, transfer_syntax_name;
    std::string sop_class_uid, sop_class_name, sop_instance_uid;
    std::string study_instance_uid, series_instance_uid;
    std::string patient_name, patient_id, patient_birth_date, patient_sex;
    std::string study_date, study_time, study_id, accession_number, referring_physician;
    std::string series_number, instance_number, content_date, content_time, modality;
    std::string photometric_interpretation;
    int rows = 0, columns = 0, frames = 1, samples_per_pixel = 1, bits_allocated = 0, bits_stored = 0;
    std::vector<UltrasoundRegion> regions;
    std::optional<cv::Vec2d> pixel_spacing_mm;         // (row spacing, column spacing), (0028,0030)
    std::optional<cv::Vec2d> imager_pixel_spacing_mm;  // (0018,1164)
    bool can_decode = false;            // this build decodes the transfer syntax (DCMTK, or OpenJPEG for JPEG 2000)
    bool has_pixel_data = false;        // (7FE0,0010) present
    double frame_time_ms = 0;           // (0018,1063) FrameTime, else 1000 / CineRate; 0 when unknown
};

// Limits checked from the header before any pixel is allocated.
constexpr long long kDicomMaxFramePixels = 40'000'000;  // Rows x Columns
constexpr int kDicomMaxFrames = 2000;
constexpr long long kDicomMaxTotalPixels = 2'000'000'000;  // Rows x Columns x Frames (8-bit output)
// Nested sequences a file may hold before it is refused unread (DCMTK reads nesting by recursion:
// thousands of levels overflow its stack; real objects, SR content trees included, stay far below).
constexpr int kDicomMaxNesting = 128;

// True when `bytes` look like a DICOM Part 10 file ("DICM" at offset 128).
bool is_dicom(const std::vector<unsigned char>& bytes);
bool is_dicom_file(const std::string& path);
// A DICOM UID (PS3.5 9.1): 1..64 characters, dot-separated components of digits, none empty and
// none with a leading zero (but "0" itself).
bool valid_dicom_uid(const std::string& s);

// Reads the header only (no pixel data is decoded), from a file or from bytes in memory (`name`
// is used in messages). Errors name the file: not DICOM, truncated, no image.
Expected<DicomHeader> read_dicom_header(const std::string& path);
Expected<DicomHeader> read_dicom_header(const std::vector<unsigned char>& bytes, const std::string& name);

// Every frame as 8-bit grayscale (CV_8UC1, the image's size): MONOCHROME1 inverted, 16-bit scaled
// by the frame's maximum, colour (RGB, YBR_*, PALETTE COLOR) to luminance. An undecodable
// transfer syntax is an error that names it.
Expected<std::vector<cv::Mat>> decode_dicom_frames(const std::string& path);
Expected<std::vector<cv::Mat>> decode_dicom_frames(const std::vector<unsigned char>& bytes, const std::string& name);
// One frame (from 0) the same way, decoding only that frame whatever its number: the same work for
// frame 0 and frame 1999. A frame past the last is an error that says how many there are.
Expected<cv::Mat> decode_dicom_frame(const std::vector<unsigned char>& bytes, const std::string& name, int frame);

// A file read once (header checked, budgets applied) whose frames are then decoded one at a time,
// on demand: a long cine is measured holding one decoded frame, not all of them. Not thread-safe;
// one reader per thread.
class DicomFrameReader {
public:
    static Expected<std::unique_ptr<DicomFrameReader>> open(const std::vector<unsigned char>& bytes, const std::string& name);
    // The same from `size` bytes at `data` (not copied: they are written to the memory file).
    static Expected<std::unique_ptr<DicomFrameReader>> open(const unsigned char* data, size_t size, const std::string& name);
    ~DicomFrameReader();
    DicomFrameReader(const DicomFrameReader&) = delete;
    DicomFrameReader& operator=(const DicomFrameReader&) = delete;
    const DicomHeader& header() const;
    Expected<cv::Mat> frame(int index);  // 8-bit gray, as decode_dicom_frames gives it

    struct Impl;

private:
    explicit DicomFrameReader(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// The calibration measure uses for an image.
// DicomCalibration::source of a pixel size given by the caller (calibration_for_frames).
inline constexpr const char* kGivenPixelSizeSource = "pixel size given";

struct DicomCalibration {
    double mm_per_px_x = 0, mm_per_px_y = 0;
    std::string source;                 // "ultrasound region 0", "PixelSpacing", "ImagerPixelSpacing",
                                        // kGivenPixelSizeSource (the caller's pixel size)
    bool given = false;                 // the caller's pixel size, not the file's (front ends name it:
                                        // the CLI "--pixel-size", HTTP "pixel_size_mm")
    std::optional<int> region;          // index of the region used
    cv::Rect box;                       // the pixels that belong to it (the whole image without a region)
    std::vector<cv::Rect> keep;         // pixels measured (the rest is set to 0); empty: the whole image
    bool anisotropic() const;           // x and y differ by more than 0.5%
};

// The tissue regions that could hold a head, and the calibration for a head whose centre is at
// `head_centre_px` (nullopt: before measuring; then the only tissue region, or an error asking for
// the head when there are several with different calibrations).
Expected<DicomCalibration> choose_calibration(const DicomHeader& h, std::optional<cv::Point2d> head_centre_px);

// Text for `dicom info`: why `choose_calibration(h, nullopt)` gives what it gives.
std::string describe_calibration(const DicomHeader& h);

// A copy of `gray8` with every pixel outside `keep` set to 0 (keep empty: unchanged).
cv::Mat mask_outside(const cv::Mat& gray8, const std::vector<cv::Rect>& keep);

// Measuring one DICOM frame: the calibration from the file (or `pixel_size_mm` when given), only
// the tissue region's pixels segmented, the region chosen by the head's centre when there are
// several, and an error when the fitted ellipse leaves the region by more than a pixel (its
// calibration does not hold outside). `notes` gets the messages for a user (a pixel size given
// that disagrees with the file by more than 1%).
struct DicomMeasureOptions {
    MeasureOptions measure;              // pixel_size_mm / pixel_size_y_mm are set here
    std::optional<double> pixel_size_mm; // the user's override of the file's calibration
};
struct DicomMeasurement {
    Measurement m;
    DicomCalibration calibration;        // what was used (`given` for an override)
    std::vector<std::string> notes;
};
Expected<DicomMeasurement> measure_dicom_frame(const Measurer& measurer, const DicomHeader& h, const cv::Mat& gray8,
                                               const DicomMeasureOptions& opt, const std::string& source);

// The calibration to use for every frame of a file before any head is known (multi-frame): the
// file's own, or the override with a note when they disagree by more than 1%.
Expected<DicomCalibration> calibration_for_frames(const DicomHeader& h, std::optional<double> override_mm,
                                                  std::vector<std::string>& notes);

// Measuring a whole DICOM file with its own calibration, for every front end (CLI, HTTP, the DICOM
// node). One frame as an image (measure_dicom_frame). Several frames through the video path
// (video.h), with one calibration for every frame (calibration_for_frames): every frame masked to
// the region, and, unless the pixel size was given, a frame whose head reaches more than a pixel
// out of its region is that frame's error (left out of the summary). A cine of more than
// `max_frames` frames is measured on that many, evenly spaced from the first to the last
// (frames_to_measure), with a note. Frames are decoded one at a time as they are measured. The
// result is the same for any `workers` (video.h).
// Errors: InvalidArgument (pixel size given out of range), InvalidCalibration (no usable
// calibration and none given, or the one head leaves its region), ImageUnreadable (a frame cannot
// be decoded), NoHeadFound (and the measurer's other errors) for a single frame. A multi-frame
// file whose frames were all measured without an ok one is no error: summary->has_estimate is
// false and the summary's estimate says why.
struct DicomRequest {
    MeasureOptions measure;              // GA and quality thresholds; the pixel size is set from the calibration
    std::optional<double> pixel_size_mm; // overrides the file's calibration (a note when they differ by over 1%)
    int max_frames = 0;                  // a cine's frames measured at most (0: all)
    int workers = 1;                     // a cine's frames measured at once (VideoOptions::workers)
    int redetect_every = 10;             // VideoOptions::redetect_every
};
struct DicomResult {
    DicomHeader header;
    DicomCalibration calibration;        // what was used (`given` for the pixel size given)
    std::vector<std::string> notes;      // for the user: a given pixel size that disagrees, frames thinned
    Measurement measurement;             // the image's; a multi-frame file's summary (summary->estimate)
    std::optional<VideoSummary> summary; // multi-frame files only (frame numbers are the file's)
    std::vector<VideoFrame> frames;      // multi-frame files only, in frame order
    cv::Mat image;                       // single-frame files: the frame measured (8-bit gray), e.g. for an overlay
};
// What measure_dicom tells while it works (either may be empty).
struct DicomEvents {
    std::function<void(const std::string& note)> on_note;  // each note once known (also in DicomResult::notes)
    std::function<void(const VideoFrame& f)> on_frame;      // each frame of a cine, in frame order
};
Expected<DicomResult> measure_dicom(const Measurer& measurer, DicomFrameReader& reader, const DicomRequest& request,
                                    const DicomEvents& events = {});

// A multi-frame result without an estimate as an error naming `name` (summary_without_estimate,
// video.h). nullopt when the result has an estimate or is a single frame.
std::optional<Error> cine_without_estimate(const DicomResult& r, const std::string& name);

// Why the file cannot be measured with its own calibration (or the pixel size given) before any
// frame is measured: no usable calibration and none given (InvalidCalibration, field
// "pixel_size"); a single frame with several tissue regions is left to measure_dicom_frame, which
// picks the region by the head. measure_dicom checks it too; a server asks it before it needs the
// model. nullopt when the file can be measured.
std::optional<Error> dicom_calibration_problem(const DicomHeader& h, std::optional<double> pixel_size_mm);

// The frames of a cine that are measured: every one, or `max_frames` evenly spaced from the first
// to the last when it has more (0: no limit).
std::vector<int> frames_to_measure(int frames, int max_frames);

// JSON of a calibration: "source" (`given_source` for a pixel size given: each front end names
// its own, "--pixel-size" or "pixel_size_mm"), "mm_per_px_x", "mm_per_px_y", "region" (when one).
// Of a result: to_json(measurement) with "calibration", "warnings" (the notes), "dicom" (SOP
// instance, SOP class and study UIDs, transfer syntax, frames) and, for a multi-frame file,
// "frames" (to_json of each) and "summary" (video.h).
nlohmann::json to_json(const DicomCalibration& c, const std::string& given_source);
nlohmann::json to_json(const DicomResult& r, const std::string& given_source);

// expand_inputs (image_io.h) that also takes DICOM: inside folders, files named *.dcm and files
// without an extension whose content is DICOM.
std::vector<InputItem> expand_inputs_with_dicom(const std::vector<std::string>& paths);

}  // namespace fetalhc
