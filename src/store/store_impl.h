// Internal to the store: what the SQLite and PostgreSQL engines share (Store::Impl, the column
// lists, rows as plain values, the quota arithmetic) and their two entry points. Not installed.
#pragma once

#include "fetalhc/dicom_store.h"
#include "fetalhc/store.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <variant>

namespace fetalhc {

namespace store_detail {

// One SQL parameter: NULL, an integer, a double or text. Both engines bind these, so that the
// column lists and the order of values are written once (below).
using Value = std::variant<std::nullptr_t, long long, double, std::string>;

// Migrations: version numbers shared by both engines (each engine has its own SQL for them).
struct MigrationInfo {
    int version;
    const char* what;
};
inline constexpr MigrationInfo kMigrations[] = {
    {1, "pregnancies, exams and DICOM instances (the schema before versioning)"},
    {2, "idempotency keys of exam writes"},
    {3, "the key image written with each DICOM instance's SR"},
    {4, "users, their roles and token hashes; the audit trail"},
};
inline constexpr int kSchemaVersion = 4;

// Migration 4, the same SQL for both engines.
inline constexpr const char* kSchemaV4 = R"sql(
CREATE TABLE users (
  name TEXT PRIMARY KEY,
  role TEXT NOT NULL,
  token_sha256 TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  last_used_at TEXT,
  revoked_at TEXT
);
)sql";

// A store whose schema is newer than this program: the message that refuses it.
std::string newer_schema_message(const std::string& where, int version);

// Exam columns as read back (read_exam's order) and as written by add_exam (exam_values' order).
extern const char* const kExamColumns;
extern const char* const kExamInsertColumns;
inline constexpr int kExamInsertCount = 24;
std::vector<Value> exam_values(const Exam& e, const std::string& key, const std::string& fingerprint, const std::string& created_at);

// Migration 4's audit table, with the engine's auto-increment id column ("INTEGER PRIMARY KEY
// AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"). Append-only: no statement of fetalhc updates or deletes it.
std::string audit_table_sql(const std::string& id_column);

// Audit columns as read back and as inserted (audit_values' order: the insert columns).
extern const char* const kAuditColumns;
extern const char* const kAuditInsertColumns;
inline constexpr int kAuditInsertCount = 11;
std::vector<Value> audit_values(const AuditEntry& e, const std::string& at);
// "INSERT INTO audit (...) VALUES (?1, ...)" with the engine's parameter mark ('?' or '$').
std::string audit_insert_sql(char mark);
// An exam's audit entry once the exam is saved with `id`: its id, pregnancy and (unless set) image.
AuditEntry exam_audit(const AuditEntry& a, const Exam& exam, long long id);
AuditEntry read_audit(const std::vector<std::optional<std::string>>& row);

extern const char* const kDicomColumns;
extern const char* const kDicomInsertColumns;
inline constexpr int kDicomInsertCount = 19;
// The identity (sop_instance_uid, sop_class_uid, calling_aet, received_at, image_sha256), then
// dicom_result_values.
std::vector<Value> dicom_values(const DicomInstance& d, const std::string& received_at);
// The fields update_dicom_instance rewrites, in the order of its SET list: "status = ?1, ...,
// key_image_sha256 = ?14" (mark '?', SQLite) or with "$1" (mark '$', PostgreSQL); the id is parameter 15.
inline constexpr int kDicomResultCount = 14;
std::vector<Value> dicom_result_values(const DicomInstance& d);
std::string dicom_update_set(char mark);

// Placeholders for n parameters from `first` on: "?1, ?2" (SQLite) or "$1, $2" (PostgreSQL).
std::string placeholders(char mark, int first, int n);

// Reasons are stored as a JSON array of strings (exams and DICOM instances alike).
std::string reasons_text(const std::vector<std::string>& reasons);
std::vector<std::string> reasons_from(const std::string& text);

// A row of either engine, read by column index (Row: text, real, opt_real, integer, opt_text).
template <class Row>
Exam read_exam(const Row& r) {
    Exam e;
    e.id = r.integer(0);
    e.pregnancy_id = r.text(1);
    e.exam_date = r.text(2);
    e.image_sha256 = r.text(3);
    e.pixel_size_mm = r.real(4);
    e.ellipse_px = {r.real(5), r.real(6), r.real(7), r.real(8), r.real(9)};
    e.hc_mm = r.real(10);
    e.bpd_mm = r.real(11);
    e.ofd_mm = r.real(12);
    e.ga_hadlock_weeks = r.opt_real(13);
    e.ga_intergrowth_weeks = r.opt_real(14);
    e.ga_weeks_given = r.opt_real(15);
    e.centile = r.opt_real(16);
    e.quality = r.text(17);
    e.reasons = reasons_from(r.text(18));
    e.corrected = r.integer(19) != 0;
    e.accepted = r.integer(20) != 0;
    e.created_at = r.text(21);
    e.sop_instance_uid = r.opt_text(22);
    return e;
}

template <class Row>
DicomInstance read_dicom_instance(const Row& r) {
    DicomInstance d;
    d.id = r.integer(0);
    d.sop_instance_uid = r.text(1);
    d.sop_class_uid = r.text(2);
    d.calling_aet = r.text(3);
    d.received_at = r.text(4);
    d.image_sha256 = r.text(5);
    d.status = r.text(6);
    d.hc_mm = r.opt_real(7);
    d.bpd_mm = r.opt_real(8);
    d.ofd_mm = r.opt_real(9);
    d.ga_hadlock_weeks = r.opt_real(10);
    d.pixel_size_mm = r.opt_real(11);
    d.calibration_source = r.text(12);
    d.quality = r.text(13);
    d.reasons = reasons_from(r.text(14));
    d.frames = int(r.integer(15));
    d.error = r.text(16);
    d.forward_status = r.text(17);
    d.sr_sha256 = r.text(18);
    d.key_image_sha256 = r.text(19);
    return d;
}

// What an idempotency key is checked against: a hash of every field of the exam but its id and
// created_at (doubles written so that equal values give equal text).
std::string exam_fingerprint(const Exam& e);

// A stored image nothing references: a candidate for the quota and for retention.
struct ImageEntry {
    std::string sha256;
    unsigned long long bytes = 0;
    long long stored_at = 0;  // seconds since the epoch
};
// How many of `oldest_first` to remove so that stored + incoming fits the quota; nullopt when
// removing them all is not enough.
// How many of the oldest images to remove so that `incoming` fits; none stored at or after
// `protect_from` (seconds since the epoch) is removed: an image measured within the grace period
// (kQuotaGraceSeconds) waits for its Accept. nullopt: not enough can go.
std::optional<size_t> images_to_free(const std::vector<ImageEntry>& oldest_first, unsigned long long stored,
                                     unsigned long long incoming, unsigned long long quota, long long protect_from);
// Images stored (measured) this recently are not removed to make room (issue 22 row 12).
constexpr long long kQuotaGraceSeconds = 3600;
// The put_image refusal at the quota (ErrorKind::StoreFull): the image alone is larger than the
// quota, or not enough can be removed.
Error store_full_error(bool alone_too_large);
// The add_exam refusal of a key already used for another exam (ErrorKind::Conflict).
Error idempotency_conflict(const std::string& key);
// The add_exam refusal of an exam whose image is not stored (ErrorKind::UnknownImage).
Error unknown_image(const std::string& sha256);
// The database or the image folder failed (ErrorKind::StorageFailed).
inline Error storage_failed(std::string message) { return make_error(ErrorKind::StorageFailed, std::move(message)); }
// The store cannot be opened at the database path it was given (field "db": each front end names its option).
inline Error db_problem(std::string message) { return make_error(ErrorKind::StorageFailed, std::move(message), "db"); }

// Seconds since the epoch, and the same time as YYYY-MM-DDTHH:MM:SSZ.
long long unix_seconds(Store::Clock::time_point t);
std::string utc_text(Store::Clock::time_point t);

}  // namespace store_detail

// One engine. Store checks its arguments, hashes, fingerprints and stamps times; the engine stores.
struct Store::Impl {
    virtual ~Impl() = default;
    virtual std::string engine() const = 0;
    // Stores the image unless present (then refreshes its time); `quota` 0 = none.
    virtual Expected<bool> put_image(const std::string& sha, const std::string& bytes, unsigned long long quota, long long now) = 0;
    virtual Expected<bool> has_image(const std::string& sha) = 0;
    virtual Expected<std::optional<std::string>> read_image(const std::string& sha) = 0;
    virtual Expected<unsigned long long> stored_image_bytes() = 0;
    virtual Expected<ImageSweep> remove_unreferenced_images(long long stored_before) = 0;
    // `key` empty: no idempotency key.
    // `audit` (when given) is appended in the exam's transaction, with the exam's id.
    virtual Expected<ExamWrite> add_exam(const Exam& e, const std::string& key, const std::string& fingerprint,
                                         const std::string& now, const AuditEntry* audit) = 0;
    virtual Expected<History> history(const std::string& pregnancy_id) = 0;
    virtual Expected<DicomInstance> add_dicom_instance(const DicomInstance& d, const std::string& now, const AuditEntry* audit) = 0;
    virtual Expected<bool> update_dicom_instance(const DicomInstance& d) = 0;
    virtual Expected<std::vector<DicomInstance>> dicom_instances(int limit, bool pending_only) = 0;
    // One statement with parameters $1, $2, ... (the SQLite engine reads them as ?1, ?2, ...): its
    // rows as text cells (nullopt: NULL); `changed` (when given) gets the rows it changed. For the
    // small tables whose SQL is written once for both engines (users).
    using TextRow = std::vector<std::optional<std::string>>;
    virtual Expected<std::vector<TextRow>> run_sql(const std::string& what, const std::string& sql,
                                                   const std::vector<store_detail::Value>& params, long long* changed = nullptr) = 0;

    // Shared by both engines (store_common.cpp).
    std::atomic<unsigned long long> quota_bytes{0};
    std::mutex clock_mu;
    std::function<Clock::time_point()> clock;
    std::mutex retention_mu;
    std::condition_variable retention_cv;
    std::thread retention;
    bool retention_stop = false;
};

Expected<std::unique_ptr<Store::Impl>> open_sqlite_store(const std::string& path);
Expected<std::unique_ptr<Store::Impl>> open_postgresql_store(const std::string& uri);
// The URI with its password replaced by "***" (for messages and logs).
std::string redact_uri(const std::string& uri);

}  // namespace fetalhc
