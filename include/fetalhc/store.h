// fetalhc/store.h - pregnancies, exams and uploaded images (embedded SQLite + files by content hash).
//
//   auto store = fetalhc::Store::open("fetalhc.db");         // images go to fetalhc.db.images/
//   auto sha = (*store)->put_image(bytes);                     // idempotent, returns the SHA-256 hex
//   fetalhc::Exam e; e.pregnancy_id = "P-0042"; ...; auto saved = (*store)->add_exam(e);
//   auto h = (*store)->history("P-0042");                      // h->found, h->exams by exam_date
//
// Pregnancies are identified by a pseudonymous id chosen by the user (1..64 chars of
// [A-Za-z0-9_.-], see valid_pregnancy_id); no other personal data is stored. An exam keeps the
// accepted ellipse (pixels, project conventions, see ellipse.h), the numbers derived from it and
// whether a clinician corrected it, and the SOP Instance UID of a DICOM image (a nullable column
// that databases from before it gain when opened). Images are written once to
// <db>.images/<sha256> (write to a temporary file, then rename), so a crash never leaves a partial
// image under its final name.
// Thread safety: every member may be called concurrently (one connection behind a mutex).
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

struct Exam {
    long long id = 0;                    // set by add_exam
    std::string pregnancy_id;
    std::string exam_date;               // YYYY-MM-DD
    std::string image_sha256;            // lower-case hex of a stored image
    double pixel_size_mm = 0;
    Ellipse ellipse_px;
    double hc_mm = 0, bpd_mm = 0, ofd_mm = 0;
    std::optional<double> ga_hadlock_weeks, ga_intergrowth_weeks, ga_weeks_given, centile;
    std::string quality;                 // "ok" or "review"
    std::vector<std::string> reasons;
    bool corrected = false;              // the clinician moved the ellipse before accepting
    bool accepted = true;
    std::string created_at;              // UTC, YYYY-MM-DDTHH:MM:SSZ; set by add_exam
    // The SOP Instance UID of the DICOM image measured (nullopt: not a DICOM image, or an exam
    // saved before the store kept it). A DICOM UID: see valid_dicom_uid.
    std::optional<std::string> sop_instance_uid;
};

// One object received by the DICOM node (`serve --dicom-port`): what came in and what became of it.
// The object itself is kept like any uploaded image (put_image, by content hash).
struct DicomInstance {
    long long id = 0;                    // set by add_dicom_instance
    std::string sop_instance_uid, sop_class_uid;
    std::string calling_aet;             // the sender's AE title
    std::string received_at;             // UTC, YYYY-MM-DDTHH:MM:SSZ; set by add_dicom_instance
    std::string image_sha256;            // the received file (Part 10), kept by put_image
    std::string status = "pending";      // "pending" (not measured yet), "measured", "failed"
    // Figures (mm) of the measurement, or of the summary of a multi-frame file (medians).
    std::optional<double> hc_mm, bpd_mm, ofd_mm, ga_hadlock_weeks, pixel_size_mm;
    std::string calibration_source;      // e.g. "ultrasound region 0"
    std::string quality;                 // "ok" or "review" (empty when not measured)
    std::vector<std::string> reasons;
    int frames = 0;                      // frames in the file (0 before decoding)
    std::string error;                   // why it could not be measured ("" when measured)
    std::string forward_status;          // "" (no forwarding), "sent", or "failed: why"
    std::string sr_sha256;               // the SR written for it, kept by put_image ("" without one)
};

struct History {
    bool found = false;                  // false: no such pregnancy
    std::vector<Exam> exams;             // sorted by exam_date, then id
};

class Store {
public:
    // Opens or creates the database (and its image folder <db_path>.images/).
    static Expected<std::unique_ptr<Store>> open(const std::string& db_path);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // Stores image bytes under their SHA-256 (nothing is rewritten when already present). A PNG or
    // JPEG is stored up to its end (IEND / EOI): bytes after it are dropped and not hashed. With a
    // quota set, the oldest images no exam or DICOM instance references are removed first to make
    // room; when that is not enough the error starts with kStoreFullError.
    Expected<std::string> put_image(const std::string& bytes);
    // Store quota in bytes for the image folder (0 = none).
    void set_quota_bytes(unsigned long long bytes);
    unsigned long long stored_image_bytes() const;
    // Path of a stored image, or nullopt when unknown (sha256 must be 64 lower-case hex digits).
    std::optional<std::string> image_path(const std::string& sha256) const;

    // Saves an exam, creating its pregnancy when new; returns it with id and created_at set.
    Expected<Exam> add_exam(const Exam& exam);
    Expected<History> history(const std::string& pregnancy_id) const;

    // DICOM node bookkeeping: add returns the row with id and received_at set; update rewrites
    // every field but id, received_at and the identity (by id); list gives the newest first.
    Expected<DicomInstance> add_dicom_instance(const DicomInstance& d);
    Expected<bool> update_dicom_instance(const DicomInstance& d);
    Expected<std::vector<DicomInstance>> dicom_instances(int limit) const;

    const std::string& image_dir() const;

    struct Impl;

private:
    explicit Store(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

inline constexpr const char* kStoreFullError = "the image store is full";
// Length of the image at the start of `bytes`: a PNG up to its IEND chunk, a JPEG up to its EOI
// marker; bytes.size() for other data or when no end is found.
size_t image_data_end(const std::string& bytes);

// Lower-case hex SHA-256 of the bytes.
std::string sha256_hex(const std::string& bytes);
bool valid_sha256(const std::string& s);            // 64 lower-case hex digits
bool valid_pregnancy_id(const std::string& s);      // 1..64 chars of [A-Za-z0-9_.-]
bool valid_date(const std::string& s);              // a real calendar date as YYYY-MM-DD
// A DICOM UID (PS3.5 9.1): 1..64 characters, dot-separated components of digits, none empty.
bool valid_dicom_uid(const std::string& s);

}  // namespace fetalhc
