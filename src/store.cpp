#include "fetalhc/store.h"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <tuple>
#include <vector>

namespace fs = std::filesystem;

namespace fetalhc {

namespace {

constexpr const char* kSchema = R"sql(
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

constexpr const char* kNow = "strftime('%Y-%m-%dT%H:%M:%SZ','now')";

// A prepared statement that finalizes itself.
class Stmt {
public:
    Stmt(sqlite3* db, const std::string& sql) { ok_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr) == SQLITE_OK; }
    ~Stmt() { sqlite3_finalize(s_); }
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;
    bool ok() const { return ok_; }
    sqlite3_stmt* get() { return s_; }
    void bind(int i, const std::string& v) { sqlite3_bind_text(s_, i, v.c_str(), int(v.size()), SQLITE_TRANSIENT); }
    void bind(int i, double v) { sqlite3_bind_double(s_, i, v); }
    void bind(int i, const std::optional<double>& v) { v ? bind(i, *v) : void(sqlite3_bind_null(s_, i)); }
    void bind(int i, const std::optional<std::string>& v) { v ? bind(i, *v) : void(sqlite3_bind_null(s_, i)); }
    void bind_int(int i, long long v) { sqlite3_bind_int64(s_, i, v); }
    int step() { return sqlite3_step(s_); }
    std::string text(int c) {
        const auto* p = sqlite3_column_text(s_, c);
        return p ? reinterpret_cast<const char*>(p) : "";
    }
    double real(int c) { return sqlite3_column_double(s_, c); }
    std::optional<double> opt(int c) {
        if (sqlite3_column_type(s_, c) == SQLITE_NULL) return std::nullopt;
        return real(c);
    }
    long long integer(int c) { return sqlite3_column_int64(s_, c); }
    std::optional<std::string> opt_text(int c) {
        if (sqlite3_column_type(s_, c) == SQLITE_NULL) return std::nullopt;
        return text(c);
    }

private:
    sqlite3_stmt* s_ = nullptr;
    bool ok_ = false;
};

const char* kExamColumns =
    "id, pregnancy_id, exam_date, image_sha256, pixel_size_mm, center_x, center_y, semi_axis_a, semi_axis_b, angle_rad, "
    "hc_mm, bpd_mm, ofd_mm, ga_hadlock_weeks, ga_intergrowth_weeks, ga_weeks_given, centile, quality, reasons, corrected, "
    "accepted, created_at, sop_instance_uid";

// Reasons are stored as a JSON array of strings (exams and DICOM instances alike).
std::string reasons_text(const std::vector<std::string>& reasons) { return nlohmann::json(reasons).dump(); }

std::vector<std::string> reasons_from(const std::string& text) {
    std::vector<std::string> out;
    auto r = nlohmann::json::parse(text, nullptr, false);
    if (r.is_array())
        for (const auto& x : r)
            if (x.is_string()) out.push_back(x.get<std::string>());
    return out;
}

Exam read_exam(Stmt& s) {
    Exam e;
    e.id = s.integer(0);
    e.pregnancy_id = s.text(1);
    e.exam_date = s.text(2);
    e.image_sha256 = s.text(3);
    e.pixel_size_mm = s.real(4);
    e.ellipse_px = {s.real(5), s.real(6), s.real(7), s.real(8), s.real(9)};
    e.hc_mm = s.real(10);
    e.bpd_mm = s.real(11);
    e.ofd_mm = s.real(12);
    e.ga_hadlock_weeks = s.opt(13);
    e.ga_intergrowth_weeks = s.opt(14);
    e.ga_weeks_given = s.opt(15);
    e.centile = s.opt(16);
    e.quality = s.text(17);
    e.reasons = reasons_from(s.text(18));
    e.corrected = s.integer(19) != 0;
    e.accepted = s.integer(20) != 0;
    e.created_at = s.text(21);
    e.sop_instance_uid = s.opt_text(22);
    return e;
}

const char* kDicomColumns =
    "id, sop_instance_uid, sop_class_uid, calling_aet, received_at, image_sha256, status, hc_mm, bpd_mm, ofd_mm, "
    "ga_hadlock_weeks, pixel_size_mm, calibration_source, quality, reasons, frames, error, forward_status, sr_sha256";

DicomInstance read_dicom_instance(Stmt& s) {
    DicomInstance d;
    d.id = s.integer(0);
    d.sop_instance_uid = s.text(1);
    d.sop_class_uid = s.text(2);
    d.calling_aet = s.text(3);
    d.received_at = s.text(4);
    d.image_sha256 = s.text(5);
    d.status = s.text(6);
    d.hc_mm = s.opt(7);
    d.bpd_mm = s.opt(8);
    d.ofd_mm = s.opt(9);
    d.ga_hadlock_weeks = s.opt(10);
    d.pixel_size_mm = s.opt(11);
    d.calibration_source = s.text(12);
    d.quality = s.text(13);
    d.reasons = reasons_from(s.text(14));
    d.frames = int(s.integer(15));
    d.error = s.text(16);
    d.forward_status = s.text(17);
    d.sr_sha256 = s.text(18);
    return d;
}

// Binds the fields that update_dicom_instance rewrites, from parameter `first` on.
void bind_dicom_result(Stmt& s, int first, const DicomInstance& d) {
    s.bind(first, d.status);
    s.bind(first + 1, d.hc_mm);
    s.bind(first + 2, d.bpd_mm);
    s.bind(first + 3, d.ofd_mm);
    s.bind(first + 4, d.ga_hadlock_weeks);
    s.bind(first + 5, d.pixel_size_mm);
    s.bind(first + 6, d.calibration_source);
    s.bind(first + 7, d.quality);
    s.bind(first + 8, reasons_text(d.reasons));
    s.bind_int(first + 9, d.frames);
    s.bind(first + 10, d.error);
    s.bind(first + 11, d.forward_status);
    s.bind(first + 12, d.sr_sha256);
}

}  // namespace

struct Store::Impl {
    sqlite3* db = nullptr;
    std::string path, images;
    mutable std::mutex mu;
    std::mutex images_mu;                 // the image folder's quota bookkeeping
    unsigned long long quota = 0;         // bytes, 0 = none
    unsigned long long stored = 0;        // bytes in the image folder (counted at open)

    ~Impl() { sqlite3_close(db); }
    std::string error(const std::string& what) const { return what + " in '" + path + "': " + sqlite3_errmsg(db); }
    bool exec(const std::string& sql) { return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK; }

    bool has_column(const std::string& table, const std::string& column) {
        Stmt s(db, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2");
        if (!s.ok()) return false;
        s.bind(1, table);
        s.bind(2, column);
        return s.step() == SQLITE_ROW;
    }

    // Databases written before a column existed gain it (nullable: their rows read as "none").
    bool migrate() {
        if (!has_column("exams", "sop_instance_uid") && !exec("ALTER TABLE exams ADD COLUMN sop_instance_uid TEXT")) return false;
        return true;
    }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

const std::string& Store::image_dir() const { return impl_->images; }

namespace {

constexpr int kApplicationId = 0x46484331;  // "FHC1" in PRAGMA application_id

// Whether an existing SQLite file is fetalhc's: our application_id, or (databases from before it)
// the pregnancies and exams tables, or no table at all (an empty file). Read-only: nothing written.
Expected<bool> is_fetalhc_database(const std::string& path) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
        sqlite3_close(db);
        return make_error("cannot open the database '" + path + "'; check --db");
    }
    bool ok = false;
    std::string problem;
    {
        Stmt app(db, "PRAGMA application_id");
        if (!app.ok() || app.step() != SQLITE_ROW) {
            problem = "'" + path + "' is not an SQLite database (" + sqlite3_errmsg(db) + ")";
        } else {
            const long long id = app.integer(0);
            Stmt t(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'");
            std::vector<std::string> tables;
            while (t.ok() && t.step() == SQLITE_ROW) tables.push_back(t.text(0));
            const auto has = [&](const char* n) { return std::find(tables.begin(), tables.end(), n) != tables.end(); };
            if (id == kApplicationId || (id == 0 && (tables.empty() || (has("pregnancies") && has("exams"))))) ok = true;
            else problem = "'" + path + "' is another program's SQLite database (application_id " + std::to_string(id) + ", " +
                           std::to_string(tables.size()) + " tables, no fetalhc exams table); it was left untouched";
        }
    }
    sqlite3_close(db);
    if (!ok) return make_error(problem + "; pass --db with a new file name or a fetalhc database");
    return true;
}

// Whether a folder takes a new file (create and remove a probe).
bool folder_writable(const fs::path& dir) {
    const fs::path probe = dir / (".write-probe-" + std::to_string(std::random_device{}()));
    {
        std::ofstream out(probe, std::ios::binary);
        if (!out || !(out << "x") || !out.flush()) {
            std::error_code ec;
            fs::remove(probe, ec);
            return false;
        }
    }
    std::error_code ec;
    return fs::remove(probe, ec) && !ec;
}

}  // namespace

Expected<std::unique_ptr<Store>> Store::open(const std::string& db_path) {
    if (db_path.empty()) return make_error("the database path is empty; pass --db PATH (e.g. fetalhc.db)");
    auto impl = std::make_unique<Impl>();
    impl->path = db_path;
    impl->images = db_path + ".images";
    std::error_code ec;
    // An existing file must be fetalhc's before anything is written (no table, no WAL switch, no folder).
    if (fs::exists(db_path, ec)) {
        if (fs::is_directory(db_path, ec)) return make_error("--db '" + db_path + "' is a folder; pass a database file");
        if (fs::file_size(db_path, ec) > 0) {
            auto ours = is_fetalhc_database(db_path);
            if (!ours) return make_error(ours.error());
        }
    }
    const fs::path parent = fs::path(db_path).parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);
    fs::create_directories(impl->images, ec);
    if (!fs::is_directory(impl->images))
        return make_error("cannot create the image folder '" + impl->images + "'" + (ec ? ": " + ec.message() : std::string()) +
                          "; check that the folder of --db is writable");
    if (!folder_writable(impl->images))
        return make_error("the image folder '" + impl->images + "' is not writable; fix its permissions (or run as its owner)");
    if (!folder_writable(parent.empty() ? fs::path(".") : parent))
        return make_error("the folder of the database '" + db_path + "' is not writable (SQLite needs its journal files there); "
                          "fix its permissions");
    if (sqlite3_open_v2(db_path.c_str(), &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) !=
        SQLITE_OK)
        return make_error(impl->error("cannot open the database") + "; check --db");
    if (sqlite3_db_readonly(impl->db, "main") == 1)
        return make_error("the database '" + db_path + "' is read-only; fix its permissions (or run as its owner)");
    sqlite3_busy_timeout(impl->db, 5000);
    // WAL keeps readers and the writer apart; NORMAL sync is durable across application crashes.
    if (!impl->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;") || !impl->exec(kSchema) ||
        !impl->migrate() || !impl->exec("PRAGMA application_id=" + std::to_string(kApplicationId)))
        return make_error(impl->error("cannot set up the database") + "; is it a fetalhc database?");
    for (fs::directory_iterator it(impl->images, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code e2;
        if (it->is_regular_file(e2)) impl->stored += it->file_size(e2);
    }
    return std::unique_ptr<Store>(new Store(std::move(impl)));
}

size_t image_data_end(const std::string& b) {
    const auto u = [&](size_t i) { return static_cast<unsigned char>(b[i]); };
    if (b.size() >= 8 && b.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) == 0) {
        size_t p = 8;
        while (p + 12 <= b.size()) {
            const unsigned long long len = (u(p) << 24) | (u(p + 1) << 16) | (u(p + 2) << 8) | u(p + 3);
            if (len > b.size() - p - 12) break;
            const size_t next = p + 12 + size_t(len);
            if (b.compare(p + 4, 4, "IEND") == 0) return next;
            p = next;
        }
        return b.size();
    }
    if (b.size() >= 4 && u(0) == 0xFF && u(1) == 0xD8) {
        size_t p = 2;
        bool entropy = false;  // inside entropy-coded data after SOS
        while (p + 1 < b.size()) {
            if (entropy) {
                if (u(p) != 0xFF) { ++p; continue; }
                const unsigned char m = u(p + 1);
                if (m == 0x00 || (m >= 0xD0 && m <= 0xD7) || m == 0xFF) { p += (m == 0xFF ? 1 : 2); continue; }
                entropy = false;  // a marker: fall through to the segment parser
            }
            if (u(p) != 0xFF) return b.size();
            const unsigned char m = u(p + 1);
            if (m == 0xFF) { ++p; continue; }  // fill byte
            if (m == 0xD9) return p + 2;       // EOI
            if ((m >= 0xD0 && m <= 0xD7) || m == 0x01) { p += 2; continue; }
            if (p + 4 > b.size()) return b.size();
            const size_t len = (size_t(u(p + 2)) << 8) | u(p + 3);
            if (len < 2) return b.size();
            p += 2 + len;
            if (m == 0xDA) entropy = true;
        }
        return b.size();
    }
    return b.size();
}

void Store::set_quota_bytes(unsigned long long bytes) {
    std::lock_guard<std::mutex> lock(impl_->images_mu);
    impl_->quota = bytes;
}

unsigned long long Store::stored_image_bytes() const {
    std::lock_guard<std::mutex> lock(impl_->images_mu);
    return impl_->stored;
}

Expected<std::string> Store::put_image(const std::string& all_bytes) {
    const std::string bytes = all_bytes.substr(0, image_data_end(all_bytes));
    const std::string sha = sha256_hex(bytes);
    const fs::path dest = fs::path(impl_->images) / sha;
    std::error_code ec;
    std::lock_guard<std::mutex> images_lock(impl_->images_mu);
    if (fs::exists(dest, ec) && fs::file_size(dest, ec) == bytes.size()) return sha;
    if (impl_->quota && impl_->stored + bytes.size() > impl_->quota) {
        if (bytes.size() > impl_->quota)
            return make_error(std::string(kStoreFullError) + ": the image alone is larger than the store quota");
        // Images referenced by an exam or a DICOM instance are kept; the others go, oldest first.
        std::set<std::string> referenced;
        {
            std::lock_guard<std::mutex> lock(impl_->mu);
            Stmt s(impl_->db, "SELECT image_sha256 FROM exams UNION SELECT image_sha256 FROM dicom_instances "
                              "UNION SELECT sr_sha256 FROM dicom_instances WHERE sr_sha256 IS NOT NULL");
            if (!s.ok()) return make_error(impl_->error("cannot list the referenced images"));
            while (s.step() == SQLITE_ROW) referenced.insert(s.text(0));
        }
        std::vector<std::tuple<fs::file_time_type, unsigned long long, fs::path>> candidates;
        for (fs::directory_iterator it(impl_->images, ec), end; !ec && it != end; it.increment(ec)) {
            std::error_code e2;
            const std::string name = it->path().filename().string();
            if (!valid_sha256(name) || referenced.count(name) || !it->is_regular_file(e2)) continue;
            candidates.emplace_back(it->last_write_time(e2), it->file_size(e2), it->path());
        }
        std::sort(candidates.begin(), candidates.end());
        for (const auto& [t, size, path] : candidates) {
            if (impl_->stored + bytes.size() <= impl_->quota) break;
            std::error_code e2;
            if (fs::remove(path, e2)) impl_->stored -= std::min(impl_->stored, size);
        }
        if (impl_->stored + bytes.size() > impl_->quota)
            return make_error(std::string(kStoreFullError) + ": every stored image is referenced by an exam; raise --max-store-mb");
    }
    // Unique temporary name in the same folder, then an atomic rename onto the final name.
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const fs::path tmp = fs::path(impl_->images) / (".tmp-" + sha.substr(0, 16) + "-" + std::to_string(rng()));
    {
        std::ofstream out(tmp, std::ios::binary);
        if (!out.write(bytes.data(), std::streamsize(bytes.size())) || !out.flush()) {
            fs::remove(tmp, ec);
            return make_error("cannot write the image to '" + impl_->images + "'; check free disk space and permissions");
        }
    }
    fs::rename(tmp, dest, ec);
    if (ec) {
        fs::remove(tmp, ec);
        return make_error("cannot store the image in '" + impl_->images + "': " + ec.message());
    }
    impl_->stored += bytes.size();
    return sha;
}

std::optional<std::string> Store::image_path(const std::string& sha256) const {
    if (!valid_sha256(sha256)) return std::nullopt;
    const fs::path p = fs::path(impl_->images) / sha256;
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) return std::nullopt;
    return p.string();
}

Expected<Exam> Store::add_exam(const Exam& in) {
    if (!valid_pregnancy_id(in.pregnancy_id)) return make_error("invalid pregnancy id");
    std::lock_guard<std::mutex> lock(impl_->mu);
    sqlite3* db = impl_->db;
    if (!impl_->exec("BEGIN IMMEDIATE")) return make_error(impl_->error("cannot start a transaction"));
    auto fail = [&](const std::string& what) {
        Error e = make_error(impl_->error(what));
        impl_->exec("ROLLBACK");
        return e;
    };
    {
        Stmt p(db, std::string("INSERT OR IGNORE INTO pregnancies(id, created_at) VALUES(?1, ") + kNow + ")");
        if (!p.ok()) return fail("cannot prepare the pregnancy insert");
        p.bind(1, in.pregnancy_id);
        if (p.step() != SQLITE_DONE) return fail("cannot save the pregnancy");
    }
    long long id = 0;
    {
        Stmt s(db, std::string("INSERT INTO exams(pregnancy_id, exam_date, image_sha256, pixel_size_mm, center_x, center_y, "
                               "semi_axis_a, semi_axis_b, angle_rad, hc_mm, bpd_mm, ofd_mm, ga_hadlock_weeks, "
                               "ga_intergrowth_weeks, ga_weeks_given, centile, quality, reasons, corrected, accepted, "
                               "sop_instance_uid, created_at) "
                               "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,") +
                       kNow + ")");
        if (!s.ok()) return fail("cannot prepare the exam insert");
        const Ellipse& e = in.ellipse_px;
        s.bind(1, in.pregnancy_id);
        s.bind(2, in.exam_date);
        s.bind(3, in.image_sha256);
        s.bind(4, in.pixel_size_mm);
        s.bind(5, e.cx);
        s.bind(6, e.cy);
        s.bind(7, e.a);
        s.bind(8, e.b);
        s.bind(9, e.angle);
        s.bind(10, in.hc_mm);
        s.bind(11, in.bpd_mm);
        s.bind(12, in.ofd_mm);
        s.bind(13, in.ga_hadlock_weeks);
        s.bind(14, in.ga_intergrowth_weeks);
        s.bind(15, in.ga_weeks_given);
        s.bind(16, in.centile);
        s.bind(17, in.quality);
        s.bind(18, reasons_text(in.reasons));
        s.bind_int(19, in.corrected);
        s.bind_int(20, in.accepted);
        s.bind(21, in.sop_instance_uid);
        if (s.step() != SQLITE_DONE) return fail("cannot save the exam");
        id = sqlite3_last_insert_rowid(db);
    }
    if (!impl_->exec("COMMIT")) return fail("cannot commit the exam");
    Stmt q(db, std::string("SELECT ") + kExamColumns + " FROM exams WHERE id = ?1");
    if (!q.ok()) return make_error(impl_->error("cannot read the saved exam"));
    q.bind_int(1, id);
    if (q.step() != SQLITE_ROW) return make_error(impl_->error("cannot read the saved exam"));
    return read_exam(q);
}

Expected<History> Store::history(const std::string& pregnancy_id) const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    History h;
    Stmt p(impl_->db, "SELECT 1 FROM pregnancies WHERE id = ?1");
    if (!p.ok()) return make_error(impl_->error("cannot look up the pregnancy"));
    p.bind(1, pregnancy_id);
    h.found = p.step() == SQLITE_ROW;
    if (!h.found) return h;
    Stmt s(impl_->db, std::string("SELECT ") + kExamColumns + " FROM exams WHERE pregnancy_id = ?1 ORDER BY exam_date, id");
    if (!s.ok()) return make_error(impl_->error("cannot read the exams"));
    s.bind(1, pregnancy_id);
    int rc;
    while ((rc = s.step()) == SQLITE_ROW) h.exams.push_back(read_exam(s));
    if (rc != SQLITE_DONE) return make_error(impl_->error("cannot read the exams"));
    return h;
}

Expected<DicomInstance> Store::add_dicom_instance(const DicomInstance& in) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Stmt s(impl_->db, std::string("INSERT INTO dicom_instances (sop_instance_uid, sop_class_uid, calling_aet, received_at, "
                                  "image_sha256, status, hc_mm, bpd_mm, ofd_mm, ga_hadlock_weeks, pixel_size_mm, "
                                  "calibration_source, quality, reasons, frames, error, forward_status, sr_sha256) "
                                  "VALUES (?1, ?2, ?3, ") + kNow + ", ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)");
    if (!s.ok()) return make_error(impl_->error("cannot record the DICOM instance"));
    s.bind(1, in.sop_instance_uid);
    s.bind(2, in.sop_class_uid);
    s.bind(3, in.calling_aet);
    s.bind(4, in.image_sha256);
    bind_dicom_result(s, 5, in);
    if (s.step() != SQLITE_DONE) return make_error(impl_->error("cannot record the DICOM instance"));
    const long long id = sqlite3_last_insert_rowid(impl_->db);
    Stmt q(impl_->db, std::string("SELECT ") + kDicomColumns + " FROM dicom_instances WHERE id = ?1");
    if (!q.ok()) return make_error(impl_->error("cannot read back the DICOM instance"));
    q.bind_int(1, id);
    if (q.step() != SQLITE_ROW) return make_error(impl_->error("cannot read back the DICOM instance"));
    return read_dicom_instance(q);
}

Expected<bool> Store::update_dicom_instance(const DicomInstance& d) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Stmt s(impl_->db, "UPDATE dicom_instances SET status = ?1, hc_mm = ?2, bpd_mm = ?3, ofd_mm = ?4, ga_hadlock_weeks = ?5, "
                      "pixel_size_mm = ?6, calibration_source = ?7, quality = ?8, reasons = ?9, frames = ?10, error = ?11, "
                      "forward_status = ?12, sr_sha256 = ?13 WHERE id = ?14");
    if (!s.ok()) return make_error(impl_->error("cannot update the DICOM instance"));
    bind_dicom_result(s, 1, d);
    s.bind_int(14, d.id);
    if (s.step() != SQLITE_DONE) return make_error(impl_->error("cannot update the DICOM instance"));
    return sqlite3_changes(impl_->db) > 0;
}

Expected<std::vector<DicomInstance>> Store::dicom_instances(int limit) const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Stmt s(impl_->db, std::string("SELECT ") + kDicomColumns + " FROM dicom_instances ORDER BY id DESC LIMIT ?1");
    if (!s.ok()) return make_error(impl_->error("cannot read the DICOM instances"));
    s.bind_int(1, limit);
    std::vector<DicomInstance> out;
    int rc;
    while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_dicom_instance(s));
    if (rc != SQLITE_DONE) return make_error(impl_->error("cannot read the DICOM instances"));
    return out;
}

std::string sha256_hex(const std::string& bytes) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < n; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
    return out;
}

bool valid_sha256(const std::string& s) {
    return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

bool valid_pregnancy_id(const std::string& s) {
    if (s.empty() || s.size() > 64) return false;
    for (unsigned char c : s)
        if (!std::isalnum(c) && c != '_' && c != '.' && c != '-') return false;
    return true;
}

bool valid_dicom_uid(const std::string& s) {
    if (s.empty() || s.size() > 64 || s.front() == '.' || s.back() == '.') return false;
    if (s.find("..") != std::string::npos) return false;
    return s.find_first_not_of("0123456789.") == std::string::npos;
}

bool valid_date(const std::string& s) {
    if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
    for (int i : {0, 1, 2, 3, 5, 6, 8, 9})
        if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    const int y = std::stoi(s.substr(0, 4)), m = std::stoi(s.substr(5, 2)), d = std::stoi(s.substr(8, 2));
    if (y < 1900 || m < 1 || m > 12 || d < 1) return false;
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= days[m - 1] + (m == 2 && leap);
}

}  // namespace fetalhc
