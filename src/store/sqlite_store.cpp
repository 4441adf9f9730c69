// The SQLite engine: one database file, images as files <db>.images/<sha256> whose modification
// time is the time they were stored (or last re-uploaded).
#include "store_impl.h"

#include "fetalhc/image_io.h"

#include <sqlite3.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <thread>

namespace fs = std::filesystem;

namespace fetalhc {
namespace {

using namespace store_detail;

// The schema before versioning (version 1); every statement is a no-op on a database that has it.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS pregnancies (
  id TEXT PRIMARY KEY,
  created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exams (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  pregnancy_id TEXT NOT NULL REFERENCES pregnancies(id),
  exam_date TEXT NOT NULL,
  image_sha256 TEXT NOT NULL,
  pixel_size_mm REAL NOT NULL,
  center_x REAL NOT NULL, center_y REAL NOT NULL,
  semi_axis_a REAL NOT NULL, semi_axis_b REAL NOT NULL, angle_rad REAL NOT NULL,
  hc_mm REAL NOT NULL, bpd_mm REAL NOT NULL, ofd_mm REAL NOT NULL,
  ga_hadlock_weeks REAL, ga_intergrowth_weeks REAL, ga_weeks_given REAL, centile REAL,
  quality TEXT NOT NULL,
  reasons TEXT NOT NULL,
  corrected INTEGER NOT NULL,
  accepted INTEGER NOT NULL,
  created_at TEXT NOT NULL,
  sop_instance_uid TEXT
);
CREATE INDEX IF NOT EXISTS exams_by_pregnancy ON exams(pregnancy_id, exam_date, id);
CREATE TABLE IF NOT EXISTS dicom_instances (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sop_instance_uid TEXT NOT NULL,
  sop_class_uid TEXT NOT NULL,
  calling_aet TEXT NOT NULL,
  received_at TEXT NOT NULL,
  image_sha256 TEXT NOT NULL,
  status TEXT NOT NULL,
  hc_mm REAL, bpd_mm REAL, ofd_mm REAL, ga_hadlock_weeks REAL, pixel_size_mm REAL,
  calibration_source TEXT NOT NULL,
  quality TEXT NOT NULL,
  reasons TEXT NOT NULL,
  frames INTEGER NOT NULL,
  error TEXT NOT NULL,
  forward_status TEXT NOT NULL,
  sr_sha256 TEXT NOT NULL
);
)sql";

constexpr const char* kSchemaV2 = R"sql(
ALTER TABLE exams ADD COLUMN idempotency_key TEXT;
ALTER TABLE exams ADD COLUMN idempotency_fingerprint TEXT;
CREATE UNIQUE INDEX exams_by_idempotency_key ON exams(idempotency_key);
)sql";

constexpr const char* kSchemaV3 = R"sql(
ALTER TABLE dicom_instances ADD COLUMN key_image_sha256 TEXT NOT NULL DEFAULT '';
)sql";

constexpr int kApplicationId = 0x46484331;  // "FHC1" in PRAGMA application_id
constexpr int kBusyTimeoutMs = 5000;         // how long a connection waits for another one's lock

// A prepared statement that finalizes itself; also the row reader of read_exam and friends.
class Stmt {
public:
    Stmt(sqlite3* db, const std::string& sql) { ok_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr) == SQLITE_OK; }
    ~Stmt() { sqlite3_finalize(s_); }
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;
    bool ok() const { return ok_; }
    sqlite3_stmt* get() const { return s_; }
    void bind(int i, const Value& v) {
        if (const auto* s = std::get_if<std::string>(&v)) sqlite3_bind_text(s_, i, s->c_str(), int(s->size()), SQLITE_TRANSIENT);
        else if (const auto* d = std::get_if<double>(&v)) sqlite3_bind_double(s_, i, *d);
        else if (const auto* n = std::get_if<long long>(&v)) sqlite3_bind_int64(s_, i, *n);
        else sqlite3_bind_null(s_, i);
    }
    void bind_all(const std::vector<Value>& values, int first = 1) {
        for (size_t i = 0; i < values.size(); ++i) bind(first + int(i), values[i]);
    }
    int step() { return sqlite3_step(s_); }
    std::string text(int c) const {
        const auto* p = sqlite3_column_text(s_, c);
        return p ? reinterpret_cast<const char*>(p) : "";
    }
    double real(int c) const { return sqlite3_column_double(s_, c); }
    std::optional<double> opt_real(int c) const {
        if (sqlite3_column_type(s_, c) == SQLITE_NULL) return std::nullopt;
        return real(c);
    }
    long long integer(int c) const { return sqlite3_column_int64(s_, c); }
    std::optional<std::string> opt_text(int c) const {
        if (sqlite3_column_type(s_, c) == SQLITE_NULL) return std::nullopt;
        return text(c);
    }

private:
    sqlite3_stmt* s_ = nullptr;
    bool ok_ = false;
};

// An image file's modification time (seconds), and setting it.
long long file_mtime(const fs::path& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0 ? static_cast<long long>(st.st_mtim.tv_sec) : 0;
}
bool set_file_mtime(const fs::path& p, long long seconds) {
    const struct timespec times[2] = {{seconds, 0}, {seconds, 0}};
    return ::utimensat(AT_FDCWD, p.c_str(), times, 0) == 0;
}

// Whether a folder takes a new file (create and remove a probe): 0, or the errno that refused it.
int folder_write_error(const fs::path& dir) {
    const fs::path probe = dir / (".write-probe-" + std::to_string(std::random_device{}()));
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return errno;
    int err = ::write(fd, "x", 1) == 1 ? 0 : errno;
    if (::close(fd) != 0 && !err) err = errno;
    if (::unlink(probe.c_str()) != 0 && !err) err = errno;
    return err;
}

// Whether the file system holding `p` (or its folder, when p is not there) is mounted read-only.
bool on_read_only_fs(const fs::path& p) {
    struct statvfs v{};
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    if (::statvfs(p.c_str(), &v) != 0 && ::statvfs(dir.c_str(), &v) != 0) return false;
    return (v.f_flag & ST_RDONLY) != 0;
}

// Why `what` (e.g. "the image folder 'x'") cannot be written, from the errno of the failed write.
std::string unwritable(const std::string& what, int err) {
    if (err == EROFS)
        return what + " is on a read-only file system (EROFS); remount it read-write, or give a database path on a "
                      "writable disk";
    if (err == EACCES || err == EPERM)
        return what + " is not writable: permission denied (" + (err == EACCES ? "EACCES" : "EPERM") +
               "); fix its permissions (or run as its owner)";
    return what + " cannot be written: " + std::strerror(err);
}

// Why SQLite could not read an existing file, from what SQLite and the system said: the file is
// not SQLite at all only when SQLite says so (SQLITE_NOTADB). A WAL database needs its -shm file
// beside it even to be read, so one on a read-only file system cannot be opened at all.
std::string unreadable_database(sqlite3* db, const std::string& path) {
    const int code = sqlite3_errcode(db), sys = sqlite3_system_errno(db);
    const std::string said = sqlite3_errmsg(db);
    if (code == SQLITE_NOTADB)
        return "'" + path + "' is not an SQLite database (" + said + "); give a new file name or a fetalhc database as the database path";
    if (sys == EROFS || on_read_only_fs(path)) return unwritable("the database '" + path + "'", EROFS);
    if (sys == EACCES || sys == EPERM) return unwritable("the database '" + path + "' (or its -wal/-shm files)", sys);
    return "cannot read the database '" + path + "' (" + said + (sys ? std::string(": ") + std::strerror(sys) : "") + ")";
}

// The highest applied migration (0: none, or no schema_version table).
long long sqlite_schema_version(sqlite3* db) {
    Stmt t(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'");
    if (!t.ok() || t.step() != SQLITE_ROW) return 0;
    Stmt v(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
    return v.ok() && v.step() == SQLITE_ROW ? v.integer(0) : 0;
}

// Whether an existing SQLite file is fetalhc's, of a version this program knows: our
// application_id, or (databases from before it) the pregnancies and exams tables, or no table at
// all (an empty file). Read-only: nothing is written.
Expected<bool> check_existing_database(const std::string& path) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
        sqlite3_close(db);
        return db_problem("cannot open the database '" + path + "'; check the database path");
    }
    sqlite3_busy_timeout(db, kBusyTimeoutMs);  // another connection may be setting the file up
    std::string problem;
    {
        Stmt app(db, "PRAGMA application_id");
        if (!app.ok() || app.step() != SQLITE_ROW) {
            problem = unreadable_database(db, path);
        } else {
            const long long id = app.integer(0);
            Stmt t(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'");
            std::vector<std::string> tables;
            while (t.ok() && t.step() == SQLITE_ROW) tables.push_back(t.text(0));
            const auto has = [&](const char* n) { return std::find(tables.begin(), tables.end(), n) != tables.end(); };
            const long long version = sqlite_schema_version(db);
            if (id != kApplicationId && !(id == 0 && (tables.empty() || (has("pregnancies") && has("exams")))))
                problem = "'" + path + "' is another program's SQLite database (application_id " + std::to_string(id) + ", " +
                          std::to_string(tables.size()) + " tables, no fetalhc exams table); it was left untouched; "
                          "give a new file name or a fetalhc database as the database path";
            else if (version > kSchemaVersion) {
                sqlite3_close(db);
                return storage_failed(newer_schema_message("the database '" + path + "'", int(version)));
            }
        }
    }
    sqlite3_close(db);
    if (!problem.empty()) return storage_failed(problem);
    return true;
}

class SqliteStore final : public Store::Impl {
public:
    sqlite3* db = nullptr;
    std::string path, images;
    std::mutex mu;                        // the connection
    std::mutex images_mu;                 // the image folder: quota bookkeeping, removals, exams' image check
    unsigned long long stored = 0;        // bytes in the image folder (counted at open)

    ~SqliteStore() override { sqlite3_close(db); }
    std::string engine() const override { return "sqlite"; }
    std::string error(const std::string& what) const { return what + " in '" + path + "': " + sqlite3_errmsg(db); }
    bool exec(const std::string& sql) { return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK; }
    fs::path image_file(const std::string& sha) const { return fs::path(images) / sha; }

    bool has_column(const std::string& table, const std::string& column) {
        Stmt s(db, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2");
        if (!s.ok()) return false;
        s.bind(1, table);
        s.bind(2, column);
        return s.step() == SQLITE_ROW;
    }

    bool apply(int version) {
        if (version == 1)  // databases from before exams kept the SOP Instance UID gain the column
            return exec(kSchemaV1) &&
                   (has_column("exams", "sop_instance_uid") || exec("ALTER TABLE exams ADD COLUMN sop_instance_uid TEXT"));
        if (version == 2) return exec(kSchemaV2);
        if (version == 3) return exec(kSchemaV3);
        if (version == 4) return exec(kSchemaV4) && exec(audit_table_sql("INTEGER PRIMARY KEY AUTOINCREMENT"));
        return false;
    }

    // Applies the migrations this database lacks, in one transaction; refuses a newer schema.
    Expected<bool> migrate() {
        if (!exec("BEGIN IMMEDIATE")) return storage_failed(error("cannot start the schema transaction"));
        auto fail = [&](const std::string& message) {
            exec("ROLLBACK");
            return storage_failed(message);
        };
        if (!exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, "
                  "description TEXT NOT NULL)"))
            return fail(error("cannot create the schema_version table"));
        const long long current = sqlite_schema_version(db);
        if (current > kSchemaVersion) return fail(newer_schema_message("the database '" + path + "'", int(current)));
        for (const MigrationInfo& m : kMigrations) {
            if (m.version <= current) continue;
            if (!apply(m.version)) return fail(error("cannot apply schema migration " + std::to_string(m.version)));
            Stmt s(db, "INSERT INTO schema_version(version, applied_at, description) "
                       "VALUES(?1, strftime('%Y-%m-%dT%H:%M:%SZ','now'), ?2)");
            s.bind(1, Value(static_cast<long long>(m.version)));
            s.bind(2, Value(std::string(m.what)));
            if (!s.ok() || s.step() != SQLITE_DONE) return fail(error("cannot record schema migration " + std::to_string(m.version)));
        }
        if (!exec("PRAGMA application_id=" + std::to_string(kApplicationId)) || !exec("COMMIT"))
            return fail(error("cannot commit the schema"));
        return true;
    }

    // Images no exam or DICOM instance references, oldest first (under images_mu).
    Expected<std::vector<ImageEntry>> unreferenced_images() {
        std::set<std::string> referenced;
        {
            std::lock_guard<std::mutex> lock(mu);
            Stmt s(db, "SELECT image_sha256 FROM exams UNION SELECT image_sha256 FROM dicom_instances "
                       "UNION SELECT sr_sha256 FROM dicom_instances UNION SELECT key_image_sha256 FROM dicom_instances");
            if (!s.ok()) return storage_failed(error("cannot list the referenced images"));
            while (s.step() == SQLITE_ROW) referenced.insert(s.text(0));
        }
        std::vector<ImageEntry> out;
        std::error_code ec;
        for (fs::directory_iterator it(images, ec), end; !ec && it != end; it.increment(ec)) {
            std::error_code e2;
            const std::string name = it->path().filename().string();
            if (!valid_sha256(name) || referenced.count(name) || !it->is_regular_file(e2)) continue;
            out.push_back({name, it->file_size(e2), file_mtime(it->path())});
        }
        std::sort(out.begin(), out.end(),
                  [](const ImageEntry& a, const ImageEntry& b) { return std::tie(a.stored_at, a.sha256) < std::tie(b.stored_at, b.sha256); });
        return out;
    }

    // Removes image files (under images_mu); what was removed.
    ImageSweep remove_files(const std::vector<ImageEntry>& entries) {
        ImageSweep sweep;
        for (const ImageEntry& e : entries) {
            std::error_code ec;
            if (!fs::remove(image_file(e.sha256), ec)) continue;
            stored -= std::min(stored, e.bytes);
            ++sweep.removed;
            sweep.bytes += e.bytes;
        }
        return sweep;
    }

    Expected<bool> make_room(unsigned long long incoming, unsigned long long quota, long long now) {
        if (!quota || stored + incoming <= quota) return true;
        if (incoming > quota) return store_full_error(true);
        auto candidates = unreferenced_images();
        if (!candidates) return candidates.error_value();
        const auto n = images_to_free(*candidates, stored, incoming, quota, now - kQuotaGraceSeconds);
        if (!n) return store_full_error(false);
        candidates->resize(*n);
        remove_files(*candidates);
        if (stored + incoming > quota) return store_full_error(false);
        return true;
    }

    Expected<bool> put_image(const std::string& sha, const std::string& bytes, unsigned long long quota, long long now) override {
        const fs::path dest = image_file(sha);
        std::error_code ec;
        std::lock_guard<std::mutex> images_lock(images_mu);
        if (fs::exists(dest, ec) && fs::file_size(dest, ec) == bytes.size()) {
            set_file_mtime(dest, now);
            return true;
        }
        if (auto room = make_room(bytes.size(), quota, now); !room) return room;
        // Unique temporary name in the same folder, then an atomic rename onto the final name.
        thread_local std::mt19937_64 rng{std::random_device{}()};
        const fs::path tmp = fs::path(images) / (".tmp-" + sha.substr(0, 16) + "-" + std::to_string(rng()));
        {
            std::ofstream out(tmp, std::ios::binary);
            if (!out.write(bytes.data(), std::streamsize(bytes.size())) || !out.flush()) {
                fs::remove(tmp, ec);
                return storage_failed("cannot write the image to '" + images + "'; check free disk space and permissions");
            }
        }
        set_file_mtime(tmp, now);
        fs::rename(tmp, dest, ec);
        if (ec) {
            fs::remove(tmp, ec);
            return storage_failed("cannot store the image in '" + images + "': " + ec.message());
        }
        stored += bytes.size();
        return true;
    }

    Expected<bool> has_image(const std::string& sha) override {
        std::error_code ec;
        return fs::is_regular_file(image_file(sha), ec);
    }

    Expected<std::optional<std::string>> read_image(const std::string& sha) override {
        const fs::path p = image_file(sha);
        std::error_code ec;
        if (!fs::is_regular_file(p, ec)) return std::optional<std::string>();
        std::ifstream in(p, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (!in.good() && !in.eof())
            return storage_failed("cannot read the stored image " + sha + " in '" + images + "'; check the image folder");
        return std::optional<std::string>(std::move(bytes));
    }

    Expected<unsigned long long> stored_image_bytes() override {
        std::lock_guard<std::mutex> lock(images_mu);
        return stored;
    }

    Expected<ImageSweep> remove_unreferenced_images(long long stored_before) override {
        std::lock_guard<std::mutex> images_lock(images_mu);
        auto candidates = unreferenced_images();
        if (!candidates) return candidates.error_value();
        std::vector<ImageEntry> old;
        for (const auto& c : *candidates)
            if (c.stored_at < stored_before) old.push_back(c);
        return remove_files(old);
    }

    // The exam saved earlier under `key`: (id, fingerprint), or id 0 when none.
    std::pair<long long, std::string> exam_by_key(const std::string& key) {
        Stmt s(db, "SELECT id, idempotency_fingerprint FROM exams WHERE idempotency_key = ?1");
        if (!s.ok()) return {-1, ""};
        s.bind(1, key);
        const int rc = s.step();
        if (rc == SQLITE_ROW) return {s.integer(0), s.text(1)};
        return {rc == SQLITE_DONE ? 0 : -1, ""};
    }

    Expected<Exam> read_exam_by_id(long long id) {
        Stmt q(db, std::string("SELECT ") + kExamColumns + " FROM exams WHERE id = ?1");
        if (!q.ok()) return storage_failed(error("cannot read the saved exam"));
        q.bind(1, Value(id));
        if (q.step() != SQLITE_ROW) return storage_failed(error("cannot read the saved exam"));
        return read_exam(q);
    }

    Expected<ExamWrite> add_exam(const Exam& in, const std::string& key, const std::string& fingerprint,
                                 const std::string& now, const AuditEntry* audit) override {
        // The image is checked under images_mu, so no removal can take it before the exam references it.
        std::lock_guard<std::mutex> images_lock(images_mu);
        std::error_code ec;
        if (!fs::is_regular_file(image_file(in.image_sha256), ec))
            return unknown_image(in.image_sha256);
        std::lock_guard<std::mutex> lock(mu);
        if (!exec("BEGIN IMMEDIATE")) return storage_failed(error("cannot start a transaction"));
        auto fail = [&](const std::string& message) {
            exec("ROLLBACK");
            return storage_failed(message);
        };
        if (!key.empty()) {
            const auto [id, fp] = exam_by_key(key);
            if (id < 0) return fail(error("cannot look up the idempotency key"));
            if (id > 0) {
                exec("ROLLBACK");
                if (fp != fingerprint) return idempotency_conflict(key);
                auto e = read_exam_by_id(id);
                if (!e) return e.error_value();
                return ExamWrite{std::move(*e), true};
            }
        }
        {
            Stmt p(db, "INSERT OR IGNORE INTO pregnancies(id, created_at) VALUES(?1, ?2)");
            p.bind_all({in.pregnancy_id, now});
            if (!p.ok() || p.step() != SQLITE_DONE) return fail(error("cannot save the pregnancy"));
        }
        Stmt s(db, std::string("INSERT INTO exams(") + kExamInsertColumns + ") VALUES(" + placeholders('?', 1, kExamInsertCount) + ")");
        if (!s.ok()) return fail(error("cannot prepare the exam insert"));
        s.bind_all(exam_values(in, key, fingerprint, now));
        if (s.step() != SQLITE_DONE) return fail(error("cannot save the exam"));
        const long long id = sqlite3_last_insert_rowid(db);
        if (audit) {
            Stmt q(db, audit_insert_sql('?'));
            if (!q.ok()) return fail(error("cannot prepare the audit entry"));
            q.bind_all(audit_values(exam_audit(*audit, in, id), now));
            if (q.step() != SQLITE_DONE) return fail(error("cannot append the exam's audit entry"));
        }
        if (!exec("COMMIT")) return fail(error("cannot commit the exam"));
        auto e = read_exam_by_id(id);
        if (!e) return e.error_value();
        return ExamWrite{std::move(*e), false};
    }

    Expected<History> history(const std::string& pregnancy_id) override {
        std::lock_guard<std::mutex> lock(mu);
        History h;
        Stmt p(db, "SELECT 1 FROM pregnancies WHERE id = ?1");
        if (!p.ok()) return storage_failed(error("cannot look up the pregnancy"));
        p.bind(1, pregnancy_id);
        h.found = p.step() == SQLITE_ROW;
        if (!h.found) return h;
        Stmt s(db, std::string("SELECT ") + kExamColumns + " FROM exams WHERE pregnancy_id = ?1 ORDER BY exam_date, id");
        if (!s.ok()) return storage_failed(error("cannot read the exams"));
        s.bind(1, pregnancy_id);
        int rc;
        while ((rc = s.step()) == SQLITE_ROW) h.exams.push_back(read_exam(s));
        if (rc != SQLITE_DONE) return storage_failed(error("cannot read the exams"));
        return h;
    }

    Expected<DicomInstance> add_dicom_instance(const DicomInstance& in, const std::string& now, const AuditEntry* audit) override {
        std::lock_guard<std::mutex> lock(mu);
        if (!exec("BEGIN IMMEDIATE")) return storage_failed(error("cannot start a transaction"));
        auto fail = [&](const std::string& message) {
            exec("ROLLBACK");
            return storage_failed(message);
        };
        {
            Stmt s(db, std::string("INSERT INTO dicom_instances (") + kDicomInsertColumns + ") VALUES (" +
                           placeholders('?', 1, kDicomInsertCount) + ")");
            if (!s.ok()) return fail(error("cannot record the DICOM instance"));
            s.bind_all(dicom_values(in, now));
            if (s.step() != SQLITE_DONE) return fail(error("cannot record the DICOM instance"));
        }
        const long long id = sqlite3_last_insert_rowid(db);
        if (audit) {
            Stmt a(db, audit_insert_sql('?'));
            if (!a.ok()) return fail(error("cannot prepare the audit entry"));
            a.bind_all(audit_values(*audit, now));
            if (a.step() != SQLITE_DONE) return fail(error("cannot append the DICOM instance's audit entry"));
        }
        if (!exec("COMMIT")) return fail(error("cannot commit the DICOM instance"));
        Stmt q(db, std::string("SELECT ") + kDicomColumns + " FROM dicom_instances WHERE id = ?1");
        if (!q.ok()) return storage_failed(error("cannot read back the DICOM instance"));
        q.bind(1, Value(id));
        if (q.step() != SQLITE_ROW) return storage_failed(error("cannot read back the DICOM instance"));
        return read_dicom_instance(q);
    }

    Expected<bool> update_dicom_instance(const DicomInstance& d) override {
        std::lock_guard<std::mutex> lock(mu);
        Stmt s(db, "UPDATE dicom_instances SET " + dicom_update_set('?') + " WHERE id = ?" + std::to_string(kDicomResultCount + 1));
        if (!s.ok()) return storage_failed(error("cannot update the DICOM instance"));
        s.bind_all(dicom_result_values(d));
        s.bind(kDicomResultCount + 1, Value(d.id));
        if (s.step() != SQLITE_DONE) return storage_failed(error("cannot update the DICOM instance"));
        return sqlite3_changes(db) > 0;
    }

    Expected<std::vector<TextRow>> run_sql(const std::string& what, const std::string& sql, const std::vector<Value>& params,
                                           long long* changed) override {
        std::string q = sql;
        std::replace(q.begin(), q.end(), '$', '?');
        std::lock_guard<std::mutex> lock(mu);
        Stmt s(db, q);
        if (!s.ok()) return storage_failed(error(what));
        s.bind_all(params);
        std::vector<TextRow> rows;
        int rc;
        while ((rc = s.step()) == SQLITE_ROW) {
            TextRow row;
            for (int c = 0, n = sqlite3_column_count(s.get()); c < n; ++c) row.push_back(s.opt_text(c));
            rows.push_back(std::move(row));
        }
        if (rc != SQLITE_DONE) return storage_failed(error(what));
        if (changed) *changed = sqlite3_changes(db);
        return rows;
    }

    Expected<std::vector<DicomInstance>> dicom_instances(int limit, bool pending_only) override {
        std::lock_guard<std::mutex> lock(mu);
        Stmt s(db, std::string("SELECT ") + kDicomColumns + " FROM dicom_instances " +
                       (pending_only ? "WHERE status = 'pending' ORDER BY id ASC" : "ORDER BY id DESC") + " LIMIT ?1");
        if (!s.ok()) return storage_failed(error("cannot read the DICOM instances"));
        s.bind(1, Value(static_cast<long long>(limit)));
        std::vector<DicomInstance> out;
        int rc;
        while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_dicom_instance(s));
        if (rc != SQLITE_DONE) return storage_failed(error("cannot read the DICOM instances"));
        return out;
    }
};

// The folder checks before the database is touched: the image folder exists and takes files, and
// so does the database's folder (SQLite writes its journal files there).
Expected<bool> prepare_folders(const std::string& db_path, const std::string& images) {
    std::error_code ec;
    const fs::path parent = fs::path(db_path).parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);
    fs::create_directories(images, ec);
    if (!fs::is_directory(images))
        return storage_failed("cannot create the image folder '" + images + "'" + (ec ? ": " + ec.message() : std::string()) +
                              "; check that the database's folder is writable");
    if (const int err = folder_write_error(images)) return storage_failed(unwritable("the image folder '" + images + "'", err));
    if (const int err = folder_write_error(parent.empty() ? fs::path(".") : parent))
        return storage_failed(unwritable("the folder of the database '" + db_path + "' (SQLite writes its journal files there)", err));
    return true;
}

}  // namespace

Expected<std::unique_ptr<Store::Impl>> open_sqlite_store(const std::string& db_path) {
    if (db_path.empty()) return db_problem("the database path is empty; give a file (e.g. fetalhc.db) or a postgresql:// URI");
    auto impl = std::make_unique<SqliteStore>();
    impl->path = db_path;
    impl->images = db_path + ".images";
    std::error_code ec;
    // An existing file must be fetalhc's before anything is written (no table, no WAL switch, no folder).
    if (fs::is_directory(db_path, ec)) return db_problem("the database path '" + db_path + "' is a folder; give a database file");
    // A device, a named pipe, a symlink loop or an unreadable file is named as what it is.
    if (auto p = regular_file_problem(db_path, "a database file", /*missing_ok=*/true); !p.empty()) return storage_failed(p);
    if (fs::exists(db_path, ec)) {
        if (fs::file_size(db_path, ec) > 0) {
            auto ours = check_existing_database(db_path);
            if (!ours) return ours.error_value();
        }
    }
    if (auto ok = prepare_folders(db_path, impl->images); !ok) return ok.error_value();
    if (sqlite3_open_v2(db_path.c_str(), &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) !=
        SQLITE_OK)
        return db_problem(impl->error("cannot open the database") + "; check the database path");
    if (sqlite3_db_readonly(impl->db, "main") == 1)
        return storage_failed(on_read_only_fs(db_path)
                                  ? unwritable("the database '" + db_path + "'", EROFS)
                                  : "the database '" + db_path + "' is read-only; fix its permissions (or run as its owner)");
    sqlite3_busy_timeout(impl->db, kBusyTimeoutMs);
    // WAL keeps readers and the writer apart; NORMAL sync is durable across application crashes.
    // Switching a new file to WAL needs it alone: while another process or thread opens the same new
    // file, SQLite answers BUSY at once (its busy handler is skipped there), so the switch is retried
    // within the busy timeout.
    bool wal = false;
    for (int waited_ms = 0; !(wal = impl->exec("PRAGMA journal_mode=WAL;")) && waited_ms < kBusyTimeoutMs; waited_ms += 20) {
        const int code = sqlite3_errcode(impl->db);
        if (code != SQLITE_BUSY && code != SQLITE_LOCKED) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!wal || !impl->exec("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"))
        return storage_failed(impl->error("cannot set up the database") + "; is it a fetalhc database?");
    if (auto migrated = impl->migrate(); !migrated) return migrated.error_value();
    for (fs::directory_iterator it(impl->images, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code e2;
        if (it->is_regular_file(e2)) impl->stored += it->file_size(e2);
    }
    return std::unique_ptr<Store::Impl>(std::move(impl));
}

}  // namespace fetalhc
