// fetalhc/store.h - pregnancies, exams, DICOM bookkeeping and uploaded images, in SQLite or PostgreSQL.
// The DICOM bookkeeping's record, DicomInstance, is in fetalhc/dicom_store.h.
//
//   auto store = fetalhc::Store::open("fetalhc.db");           // SQLite; images go to fetalhc.db.images/
//   auto pg = fetalhc::Store::open("postgresql://fetalhc@db.example.org/fetalhc");  // PostgreSQL; images in the database
//   auto sha = (*store)->put_image(bytes);                       // idempotent, returns the SHA-256 hex
//   auto img = (*store)->read_image(*sha);                       // the bytes, or nullopt when unknown
//   fetalhc::Exam e; e.pregnancy_id = "P-0042"; ...; auto saved = (*store)->add_exam(e);
//   auto again = (*store)->add_exam(e, "client-key-1");          // idempotent write: again->replayed on a retry
//   auto h = (*store)->history("P-0042");                        // h->found, h->exams by exam_date
//
// Engines. `open` takes a libpq connection URI (postgresql://... or postgres://...) for PostgreSQL;
// anything else is an SQLite file path. SQLite keeps images as files <db>.images/<sha256> (written to
// a temporary file, then renamed, so a crash never leaves a partial image under its final name).
// PostgreSQL keeps them in the database (bytea), so several server replicas can share one database
// and no disk: every write is safe under concurrent writers from several processes (the same image
// stored at once by two replicas is stored once, an idempotency key saves one exam).
// Schema. Both engines keep a schema_version table and apply an ordered list of migrations at open,
// each once, in a transaction (PostgreSQL: under an advisory lock, so replicas starting together
// migrate once). An SQLite database written before versioning is recognised and upgraded in place;
// a database whose version is newer than this program knows is refused, as is an SQLite file or a
// PostgreSQL database that holds another program's tables (left untouched).
// Pregnancies are identified by a pseudonymous id chosen by the user (1..64 chars of [A-Za-z0-9_.-],
// see valid_pregnancy_id); no other personal data is stored. An exam keeps the accepted ellipse
// (pixels, project conventions, see ellipse.h), the numbers derived from it, whether a clinician
// corrected it, and the SOP Instance UID of a DICOM image.
// Times are UTC; the store's clock (set_clock) stamps exams, DICOM instances and images.
// Thread safety: every member may be called concurrently (one connection per store, behind a mutex).
#pragma once

#include "fetalhc/ellipse.h"
#include "fetalhc/expected.h"

#include <nlohmann/json_fwd.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

// The DICOM node's record of a received object (fetalhc/dicom_store.h): the store keeps it (the
// *_dicom_instance members below) but only the node and its routes need its fields.
struct DicomInstance;

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

// What add_exam with an idempotency key did: saved the exam now, or found it saved by an earlier
// call with the same key and the same exam (replayed: nothing new was saved).
struct ExamWrite {
    Exam exam;
    bool replayed = false;
};

struct History {
    bool found = false;                  // false: no such pregnancy
    std::vector<Exam> exams;             // sorted by exam_date, then id
};

// Users of the HTTP API and what they may do (issue 26): a viewer reads pregnancies, exams, images
// and DICOM lists; a sonographer also measures, saves and corrects exams and exports; an admin also
// manages the server (and reads the audit trail). Each role has the rights of those before it.
enum class Role { Viewer = 0, Sonographer = 1, Admin = 2 };
const char* role_name(Role r);                                   // "viewer", "sonographer", "admin"
std::optional<Role> parse_role(const std::string& s);            // the inverse; nullopt for anything else
bool valid_user_name(const std::string& s);                      // 1..64 chars of [A-Za-z0-9_.@-]

struct User {
    std::string name;
    Role role = Role::Viewer;
    std::string created_at;                  // UTC, YYYY-MM-DDTHH:MM:SSZ
    std::optional<std::string> last_used_at; // the last request with its token (stamped at most once a minute)
    std::optional<std::string> revoked_at;   // set by revoke_user: its token no longer works
};

// One entry of the audit trail: who did what to which patient data, and how it ended. Append-only:
// the store has no member that changes or removes an entry, and image retention leaves them.
struct AuditEntry {
    long long id = 0;                    // set by the store, increasing
    std::string at;                      // UTC, YYYY-MM-DDTHH:MM:SSZ; set by the store
    std::string user, role;              // who ("" on a server without users or tokens: "anonymous")
    std::string action;                  // "GET /v1/pregnancies/{id}" (method and route), "dicom C-STORE", ...
    std::string pregnancy_id, image_sha256, sop_instance_uid;  // the objects touched ("" when none)
    std::optional<long long> exam_id;
    int outcome = 0;                     // the HTTP status answered (or 0 when none applies)
    std::string client;                  // the client's address
    std::string request_id;              // the X-Request-Id the server answered with
};
struct AuditQuery {
    std::string since, until;            // UTC times or dates (YYYY-MM-DD[THH:MM:SSZ]); "" = open
    std::string user, pregnancy_id;      // "" = any
    std::string action;                  // "" = any, else exactly this action ("POST /v1/exams")
    int limit = 100;                     // at most this many, newest first
    long long before_id = 0;             // > 0: only entries older than this id (the next page)
};

// An entry as JSON (keys as AuditEntry's fields; exam_id null when none), and entries as CSV
// (header first; every cell through the one CSV writer, so client text cannot become a formula).
nlohmann::json audit_json(const AuditEntry& e);
std::string audit_csv(const std::vector<AuditEntry>& entries);
// A time bound of AuditQuery: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
bool valid_audit_time(const std::string& s);

// What remove_unreferenced_images removed.
struct ImageSweep {
    int removed = 0;
    unsigned long long bytes = 0;
};

class Store {
public:
    using Clock = std::chrono::system_clock;

    // Opens or creates the store: a PostgreSQL database when `target` is a libpq connection URI
    // (postgresql://user@host:port/dbname?...; the database must exist), else an SQLite file
    // (created with its image folder <target>.images/). Errors name the target (a URI's password
    // is never shown) and say what to do.
    static Expected<std::unique_ptr<Store>> open(const std::string& target);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // "sqlite" or "postgresql".
    std::string engine() const;
    // The schema version this program writes; open() upgrades older stores to it.
    static int schema_version();

    // Stores image bytes under their SHA-256; when already present nothing is rewritten, only its
    // time is refreshed (a re-upload counts as new for the quota and retention). A PNG or JPEG is
    // stored up to its end (IEND / EOI): bytes after it are dropped and not hashed. With a quota
    // set, the oldest images no exam or DICOM instance references are removed first to make room;
    // when that is not enough the error is ErrorKind::StoreFull. Database or folder failures are
    // ErrorKind::StorageFailed (as for every member).
    Expected<std::string> put_image(const std::string& bytes);
    // Whether an image is stored (false for anything that is not 64 lower-case hex digits).
    Expected<bool> has_image(const std::string& sha256) const;
    // The stored bytes, or nullopt when no image has this hash (or it is not a SHA-256).
    Expected<std::optional<std::string>> read_image(const std::string& sha256) const;
    // Store quota in bytes for the images (0 = none). With PostgreSQL the quota is the whole
    // database's: replicas that set it take turns to store images.
    void set_quota_bytes(unsigned long long bytes);
    Expected<unsigned long long> stored_image_bytes() const;
    // Removes the images that no exam or DICOM instance references and that were stored (or last
    // re-uploaded) before `cutoff`.
    Expected<ImageSweep> remove_unreferenced_images(Clock::time_point cutoff);
    // Keeps images for `days` days (0 = forever, the default): remove_unreferenced_images(now -
    // days) runs now and then every `every` on a background thread (stopped with the store).
    // Failures of a sweep are logged and retried at the next one.
    void set_image_retention(int days, std::chrono::seconds every = std::chrono::hours(1));
    // Replaces the clock (tests; the default is Clock::now).
    void set_clock(std::function<Clock::time_point()> now);

    // The audit trail: one entry appended (id and at set by the store), and entries read back.
    Expected<AuditEntry> append_audit(const AuditEntry& e);
    Expected<std::vector<AuditEntry>> audit_entries(const AuditQuery& q) const;

    // Saves an exam, creating its pregnancy when new; returns it with id and created_at set. The
    // exam's image must be stored (else ErrorKind::UnknownImage); an invalid pregnancy id is
    // ErrorKind::InvalidArgument (field "pregnancy_id").
    Expected<Exam> add_exam(const Exam& exam);
    // The same, idempotent: the first call with a key saves the exam; a later call with the same
    // key and the same exam (every field but id and created_at) returns the saved one with
    // replayed set, and saves nothing; the same key with another exam is refused with
    // ErrorKind::Conflict (field "idempotency_key"). An empty key is a plain add_exam. Keys are kept in
    // the store (they hold across restarts and replicas); see valid_idempotency_key.
    Expected<ExamWrite> add_exam(const Exam& exam, const std::string& idempotency_key);
    // The same, with its audit entry appended in the same transaction (its exam_id and
    // pregnancy_id set from the exam saved): no exam without its entry, no entry without its exam.
    // A replayed write saves nothing and appends nothing.
    Expected<ExamWrite> add_exam(const Exam& exam, const std::string& idempotency_key, const AuditEntry& audit);
    Expected<History> history(const std::string& pregnancy_id) const;

    // DICOM node bookkeeping: add returns the row with id and received_at set; update rewrites
    // every field but id, received_at and the identity (by id); list gives the newest first.
    Expected<DicomInstance> add_dicom_instance(const DicomInstance& d);
    // The same with its audit entry in the same transaction (its SOP Instance UID and image hash
    // set from the row): every received object is traced to the node's user.
    Expected<DicomInstance> add_dicom_instance(const DicomInstance& d, const AuditEntry& audit);
    Expected<bool> update_dicom_instance(const DicomInstance& d);
    Expected<std::vector<DicomInstance>> dicom_instances(int limit) const;
    // The instances still "pending" (received and acknowledged, not yet measured), oldest first:
    // what the node resumes at start.
    Expected<std::vector<DicomInstance>> pending_dicom_instances(int limit) const;

    // Users. A token is 256 random bits as "fhc_" + 64 hex digits, returned once by add_user and
    // rotate_user_token; the store keeps only its SHA-256 (a token of that entropy needs no slow
    // hash), so neither the database nor any message holds it. Errors: an invalid name
    // (InvalidArgument, field "name"), a name taken (Conflict), an unknown name (NotFound).
    Expected<std::string> add_user(const std::string& name, Role role);
    Expected<std::string> rotate_user_token(const std::string& name);  // the old token stops working
    Expected<User> revoke_user(const std::string& name);               // at once; the user stays listed
    Expected<std::vector<User>> users() const;                          // by name
    Expected<std::optional<User>> user(const std::string& name) const;  // nullopt: no such user
    // Whether any user was ever added (revoked ones count: revoking every user does not open the server).
    Expected<bool> has_users() const;
    // The user a token belongs to, unless revoked (nullopt: no such user, or revoked). Stamps
    // last_used_at when it is a minute old or more.
    Expected<std::optional<User>> authenticate(const std::string& token);

    struct Impl;

private:
    explicit Store(std::unique_ptr<Impl> impl);
    Expected<ExamWrite> add_exam_audited(const Exam& exam, const std::string& key, const AuditEntry* audit);
    std::unique_ptr<Impl> impl_;
};

// Length of the image at the start of `bytes`: a PNG up to its IEND chunk, a JPEG up to its EOI
// marker; bytes.size() for other data or when no end is found.
size_t image_data_end(const std::string& bytes);

// Lower-case hex SHA-256 of the bytes.
std::string sha256_hex(const std::string& bytes);
bool valid_sha256(const std::string& s);            // 64 lower-case hex digits
bool valid_pregnancy_id(const std::string& s);      // 1..64 chars of [A-Za-z0-9_.-]
bool valid_date(const std::string& s);              // a real calendar date as YYYY-MM-DD
// A DICOM UID (PS3.5 9.1): see dicom.h (defined there, in the core library).
bool valid_dicom_uid(const std::string& s);
// An idempotency key: 1..128 printable ASCII characters (space to tilde).
bool valid_idempotency_key(const std::string& s);
// Whether `target` names a PostgreSQL database (a postgresql:// or postgres:// URI).
bool is_postgresql_target(const std::string& target);

}  // namespace fetalhc
