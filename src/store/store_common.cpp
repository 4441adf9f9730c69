// The Store interface over its two engines (sqlite_store.cpp, pg_store.cpp): argument checks,
// hashing, idempotency fingerprints, times, image retention, and the helpers both engines share.
#include "store_impl.h"

#include "fetalhc/csv.h"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <sstream>
#include <charconv>
#include <ctime>

namespace fetalhc {

namespace store_detail {

const char* const kExamColumns =
    "id, pregnancy_id, exam_date, image_sha256, pixel_size_mm, center_x, center_y, semi_axis_a, semi_axis_b, angle_rad, "
    "hc_mm, bpd_mm, ofd_mm, ga_hadlock_weeks, ga_intergrowth_weeks, ga_weeks_given, centile, quality, reasons, corrected, "
    "accepted, created_at, sop_instance_uid";

const char* const kExamInsertColumns =
    "pregnancy_id, exam_date, image_sha256, pixel_size_mm, center_x, center_y, semi_axis_a, semi_axis_b, angle_rad, hc_mm, "
    "bpd_mm, ofd_mm, ga_hadlock_weeks, ga_intergrowth_weeks, ga_weeks_given, centile, quality, reasons, corrected, accepted, "
    "sop_instance_uid, created_at, idempotency_key, idempotency_fingerprint";

const char* const kAuditColumns =
    "id, at, user_name, role, action, pregnancy_id, exam_id, image_sha256, sop_instance_uid, outcome, client, request_id";
const char* const kAuditInsertColumns =
    "at, user_name, role, action, pregnancy_id, exam_id, image_sha256, sop_instance_uid, outcome, client, request_id";

std::string audit_table_sql(const std::string& id_column) {
    return "CREATE TABLE audit (id " + id_column +
           ", at TEXT NOT NULL, user_name TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL, "
           "pregnancy_id TEXT NOT NULL, exam_id BIGINT, image_sha256 TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, "
           "outcome INTEGER NOT NULL, client TEXT NOT NULL, request_id TEXT NOT NULL); "
           "CREATE INDEX audit_by_time ON audit(at); CREATE INDEX audit_by_pregnancy ON audit(pregnancy_id, id);";
}

std::vector<Value> audit_values(const AuditEntry& e, const std::string& at) {
    return {at, e.user, e.role, e.action, e.pregnancy_id, e.exam_id ? Value(*e.exam_id) : Value(nullptr), e.image_sha256,
            e.sop_instance_uid, static_cast<long long>(e.outcome), e.client, e.request_id};
}

std::string audit_insert_sql(char mark) {
    return std::string("INSERT INTO audit (") + kAuditInsertColumns + ") VALUES (" + placeholders(mark, 1, kAuditInsertCount) + ")";
}

AuditEntry exam_audit(const AuditEntry& a, const Exam& exam, long long id) {
    AuditEntry out = a;
    out.exam_id = id;
    out.pregnancy_id = exam.pregnancy_id;
    if (out.image_sha256.empty()) out.image_sha256 = exam.image_sha256;
    return out;
}

AuditEntry read_audit(const std::vector<std::optional<std::string>>& r) {
    AuditEntry e;
    auto text = [&](size_t i) { return i < r.size() ? r[i].value_or("") : std::string(); };
    e.id = std::stoll(text(0).empty() ? "0" : text(0));
    e.at = text(1);
    e.user = text(2);
    e.role = text(3);
    e.action = text(4);
    e.pregnancy_id = text(5);
    if (r.size() > 6 && r[6]) e.exam_id = std::stoll(*r[6]);
    e.image_sha256 = text(7);
    e.sop_instance_uid = text(8);
    e.outcome = text(9).empty() ? 0 : std::stoi(text(9));
    e.client = text(10);
    e.request_id = text(11);
    return e;
}

const char* const kDicomColumns =
    "id, sop_instance_uid, sop_class_uid, calling_aet, received_at, image_sha256, status, hc_mm, bpd_mm, ofd_mm, "
    "ga_hadlock_weeks, pixel_size_mm, calibration_source, quality, reasons, frames, error, forward_status, sr_sha256, key_image_sha256";

const char* const kDicomInsertColumns =
    "sop_instance_uid, sop_class_uid, calling_aet, received_at, image_sha256, status, hc_mm, bpd_mm, ofd_mm, "
    "ga_hadlock_weeks, pixel_size_mm, calibration_source, quality, reasons, frames, error, forward_status, sr_sha256, key_image_sha256";

std::string dicom_update_set(char mark) {
    static const char* const columns[] = {"status", "hc_mm", "bpd_mm", "ofd_mm", "ga_hadlock_weeks", "pixel_size_mm",
                                          "calibration_source", "quality", "reasons", "frames", "error", "forward_status",
                                          "sr_sha256", "key_image_sha256"};
    std::string out;
    for (int i = 0; i < kDicomResultCount; ++i)
        out += (i ? ", " : "") + std::string(columns[i]) + " = " + mark + std::to_string(i + 1);
    return out;
}

namespace {

Value opt_value(const std::optional<double>& v) { return v ? Value(*v) : Value(nullptr); }
Value opt_value(const std::optional<std::string>& v) { return v ? Value(*v) : Value(nullptr); }
Value text_or_null(const std::string& s) { return s.empty() ? Value(nullptr) : Value(s); }

}  // namespace

std::vector<Value> exam_values(const Exam& in, const std::string& key, const std::string& fingerprint,
                               const std::string& created_at) {
    const Ellipse& e = in.ellipse_px;
    return {in.pregnancy_id, in.exam_date, in.image_sha256, in.pixel_size_mm, e.cx, e.cy, e.a, e.b, e.angle, in.hc_mm,
            in.bpd_mm, in.ofd_mm, opt_value(in.ga_hadlock_weeks), opt_value(in.ga_intergrowth_weeks),
            opt_value(in.ga_weeks_given), opt_value(in.centile), in.quality, reasons_text(in.reasons),
            static_cast<long long>(in.corrected), static_cast<long long>(in.accepted), opt_value(in.sop_instance_uid), created_at,
            text_or_null(key), text_or_null(key.empty() ? std::string() : fingerprint)};
}

std::vector<Value> dicom_result_values(const DicomInstance& d) {
    return {d.status, opt_value(d.hc_mm), opt_value(d.bpd_mm), opt_value(d.ofd_mm), opt_value(d.ga_hadlock_weeks),
            opt_value(d.pixel_size_mm), d.calibration_source, d.quality, reasons_text(d.reasons), static_cast<long long>(d.frames),
            d.error, d.forward_status, d.sr_sha256, d.key_image_sha256};
}

std::vector<Value> dicom_values(const DicomInstance& d, const std::string& received_at) {
    std::vector<Value> v{d.sop_instance_uid, d.sop_class_uid, d.calling_aet, received_at, d.image_sha256};
    for (auto& x : dicom_result_values(d)) v.push_back(std::move(x));
    return v;
}

std::string placeholders(char mark, int first, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += (i ? ", " : "") + std::string(1, mark) + std::to_string(first + i);
    return out;
}

std::string reasons_text(const std::vector<std::string>& reasons) { return nlohmann::json(reasons).dump(); }

std::vector<std::string> reasons_from(const std::string& text) {
    std::vector<std::string> out;
    auto r = nlohmann::json::parse(text, nullptr, false);
    if (r.is_array())
        for (const auto& x : r)
            if (x.is_string()) out.push_back(x.get<std::string>());
    return out;
}

std::string exam_fingerprint(const Exam& e) {
    // Shortest round-trip text of each double: equal doubles give equal text.
    const auto num = [](double v) {
        char buf[64];
        const auto r = std::to_chars(buf, buf + sizeof buf, v);
        return std::string(buf, r.ptr);
    };
    const auto opt = [&](const std::optional<double>& v) { return v ? nlohmann::json(num(*v)) : nlohmann::json(nullptr); };
    const Ellipse& el = e.ellipse_px;
    const nlohmann::json j = nlohmann::json::array(
        {e.pregnancy_id, e.exam_date, e.image_sha256, num(e.pixel_size_mm), num(el.cx), num(el.cy), num(el.a), num(el.b),
         num(el.angle), num(e.hc_mm), num(e.bpd_mm), num(e.ofd_mm), opt(e.ga_hadlock_weeks), opt(e.ga_intergrowth_weeks),
         opt(e.ga_weeks_given), opt(e.centile), e.quality, e.reasons, e.corrected, e.accepted,
         e.sop_instance_uid ? nlohmann::json(*e.sop_instance_uid) : nlohmann::json(nullptr)});
    return sha256_hex(j.dump());
}

std::optional<size_t> images_to_free(const std::vector<ImageEntry>& oldest_first, unsigned long long stored,
                                     unsigned long long incoming, unsigned long long quota, long long protect_from) {
    size_t n = 0;
    while (stored + incoming > quota) {
        if (n == oldest_first.size() || oldest_first[n].stored_at >= protect_from) return std::nullopt;
        stored -= std::min(stored, oldest_first[n++].bytes);
    }
    return n;
}

Error store_full_error(bool alone_too_large) {
    const std::string why = alone_too_large ? "the image alone is larger than the store quota"
                                            : "every stored image is referenced by an exam or was measured within the last "
                                              "hour (kept for its Accept); raise the store's quota";
    return make_error(ErrorKind::StoreFull, "the image store is full: " + why, "max_store_mb");
}

Error unknown_image(const std::string& sha256) {
    return make_error(ErrorKind::UnknownImage, "the exam's image is not stored (" + sha256 + "); upload it first", "image_sha256");
}

Error idempotency_conflict(const std::string& key) {
    return make_error(ErrorKind::Conflict,
                      "the Idempotency-Key '" + key + "' was already used for a different exam; send a new key for a new exam "
                      "(a retry must repeat the first request's body)",
                      "idempotency_key");
}

std::string newer_schema_message(const std::string& where, int version) {
    return where + " has schema version " + std::to_string(version) + ", newer than this fetalhc knows (" +
           std::to_string(kSchemaVersion) + "); it was left untouched: run a newer fetalhc, or give another database";
}

long long unix_seconds(Store::Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

std::string utc_text(Store::Clock::time_point t) {
    const std::time_t s = std::time_t(unix_seconds(t));
    std::tm tm{};
    gmtime_r(&s, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

}  // namespace store_detail

using namespace store_detail;

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Store::~Store() {
    {
        std::lock_guard<std::mutex> lock(impl_->retention_mu);
        impl_->retention_stop = true;
    }
    impl_->retention_cv.notify_all();
    if (impl_->retention.joinable()) impl_->retention.join();
}

Expected<std::unique_ptr<Store>> Store::open(const std::string& target) {
    auto impl = is_postgresql_target(target) ? open_postgresql_store(target) : open_sqlite_store(target);
    if (!impl) return impl.error_value();
    return std::unique_ptr<Store>(new Store(std::move(*impl)));
}

std::string Store::engine() const { return impl_->engine(); }
int Store::schema_version() { return kSchemaVersion; }

void Store::set_clock(std::function<Clock::time_point()> now) {
    std::lock_guard<std::mutex> lock(impl_->clock_mu);
    impl_->clock = std::move(now);
}

namespace {
Store::Clock::time_point now_of(Store::Impl& impl) {
    std::lock_guard<std::mutex> lock(impl.clock_mu);
    return impl.clock ? impl.clock() : Store::Clock::now();
}
}  // namespace

Expected<std::string> Store::put_image(const std::string& all_bytes) {
    const std::string bytes = all_bytes.substr(0, image_data_end(all_bytes));
    const std::string sha = sha256_hex(bytes);
    auto ok = impl_->put_image(sha, bytes, impl_->quota_bytes.load(), unix_seconds(now_of(*impl_)));
    if (!ok) return ok.error_value();
    return sha;
}

Expected<bool> Store::has_image(const std::string& sha256) const {
    if (!valid_sha256(sha256)) return false;
    return impl_->has_image(sha256);
}

Expected<std::optional<std::string>> Store::read_image(const std::string& sha256) const {
    if (!valid_sha256(sha256)) return std::optional<std::string>();
    return impl_->read_image(sha256);
}

void Store::set_quota_bytes(unsigned long long bytes) { impl_->quota_bytes = bytes; }

Expected<unsigned long long> Store::stored_image_bytes() const { return impl_->stored_image_bytes(); }

Expected<ImageSweep> Store::remove_unreferenced_images(Clock::time_point cutoff) {
    return impl_->remove_unreferenced_images(unix_seconds(cutoff));
}

void Store::set_image_retention(int days, std::chrono::seconds every) {
    {
        std::lock_guard<std::mutex> lock(impl_->retention_mu);
        impl_->retention_stop = true;
    }
    impl_->retention_cv.notify_all();
    if (impl_->retention.joinable()) impl_->retention.join();
    impl_->retention_stop = false;
    if (days <= 0) return;
    impl_->retention = std::thread([this, days, every] {
        Impl& im = *impl_;
        std::unique_lock<std::mutex> lock(im.retention_mu);
        while (!im.retention_stop) {
            lock.unlock();
            const auto cutoff = now_of(im) - std::chrono::hours(24) * days;
            auto swept = im.remove_unreferenced_images(unix_seconds(cutoff));
            if (!swept) spdlog::warn("image retention: {}; retrying in {} s", swept.error(), every.count());
            else if (swept->removed > 0)
                spdlog::info("image retention: removed {} unreferenced images older than {} days ({} bytes)", swept->removed, days,
                             swept->bytes);
            lock.lock();
            im.retention_cv.wait_for(lock, every, [&] { return im.retention_stop; });
        }
    });
}

Expected<Exam> Store::add_exam(const Exam& exam) {
    auto w = add_exam(exam, "");
    if (!w) return w.error_value();
    return std::move(w->exam);
}

Expected<ExamWrite> Store::add_exam(const Exam& exam, const std::string& key) { return add_exam_audited(exam, key, nullptr); }

Expected<ExamWrite> Store::add_exam(const Exam& exam, const std::string& key, const AuditEntry& audit) {
    return add_exam_audited(exam, key, &audit);
}

Expected<ExamWrite> Store::add_exam_audited(const Exam& exam, const std::string& key, const AuditEntry* audit) {
    if (!valid_pregnancy_id(exam.pregnancy_id))
        return make_error(ErrorKind::InvalidArgument, "invalid pregnancy id '" + exam.pregnancy_id + "'", "pregnancy_id");
    if (!key.empty() && !valid_idempotency_key(key))
        return make_error(ErrorKind::InvalidArgument, "invalid idempotency key: it must be 1 to 128 printable ASCII characters",
                          "idempotency_key");
    return impl_->add_exam(exam, key, key.empty() ? std::string() : exam_fingerprint(exam), utc_text(now_of(*impl_)), audit);
}

Expected<History> Store::history(const std::string& pregnancy_id) const { return impl_->history(pregnancy_id); }

Expected<DicomInstance> Store::add_dicom_instance(const DicomInstance& d) {
    return impl_->add_dicom_instance(d, utc_text(now_of(*impl_)), nullptr);
}

Expected<DicomInstance> Store::add_dicom_instance(const DicomInstance& d, const AuditEntry& audit) {
    AuditEntry a = audit;
    a.sop_instance_uid = d.sop_instance_uid;
    a.image_sha256 = d.image_sha256;
    return impl_->add_dicom_instance(d, utc_text(now_of(*impl_)), &a);
}

Expected<bool> Store::update_dicom_instance(const DicomInstance& d) { return impl_->update_dicom_instance(d); }

Expected<std::vector<DicomInstance>> Store::dicom_instances(int limit) const { return impl_->dicom_instances(limit, false); }
Expected<std::vector<DicomInstance>> Store::pending_dicom_instances(int limit) const { return impl_->dicom_instances(limit, true); }

// ---- free functions ----------------------------------------------------------------------------

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

bool valid_idempotency_key(const std::string& s) {
    if (s.empty() || s.size() > 128) return false;
    for (unsigned char c : s)
        if (c < 0x20 || c > 0x7E) return false;
    return true;
}

bool is_postgresql_target(const std::string& target) {
    return target.rfind("postgresql://", 0) == 0 || target.rfind("postgres://", 0) == 0;
}

std::string redact_uri(const std::string& uri) {
    const size_t scheme = uri.find("://");
    if (scheme == std::string::npos) return uri;
    const size_t start = scheme + 3;
    const size_t at = uri.find('@', start);
    const size_t slash = uri.find('/', start);
    std::string out = uri;
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
        const size_t colon = uri.find(':', start);
        if (colon != std::string::npos && colon < at) out = uri.substr(0, colon + 1) + "***" + uri.substr(at);
    }
    // A password may also come as a query parameter.
    const size_t q = out.find("password=");
    if (q != std::string::npos && q > 0 && (out[q - 1] == '?' || out[q - 1] == '&')) {
        const size_t end = out.find('&', q);
        out = out.substr(0, q) + "password=***" + (end == std::string::npos ? "" : out.substr(end));
    }
    return out;
}

// ---- Users ----------------------------------------------------------------------------------------

const char* role_name(Role r) {
    switch (r) {
        case Role::Viewer: return "viewer";
        case Role::Sonographer: return "sonographer";
        case Role::Admin: return "admin";
    }
    return "viewer";
}

std::optional<Role> parse_role(const std::string& s) {
    for (Role r : {Role::Viewer, Role::Sonographer, Role::Admin})
        if (s == role_name(r)) return r;
    return std::nullopt;
}

bool valid_user_name(const std::string& s) {
    if (s.empty() || s.size() > 64) return false;
    for (unsigned char c : s)
        if (!(std::isalnum(c) || c == '_' || c == '.' || c == '@' || c == '-')) return false;
    return true;
}

namespace {

constexpr const char* kUserColumns = "name, role, created_at, last_used_at, revoked_at";

Expected<std::string> new_token() {
    unsigned char bytes[32];
    if (RAND_bytes(bytes, sizeof bytes) != 1) return make_error(ErrorKind::Internal, "cannot draw random bytes for a token (OpenSSL RAND_bytes)");
    static const char hex[] = "0123456789abcdef";
    std::string t = "fhc_";
    for (unsigned char b : bytes) t += hex[b >> 4], t += hex[b & 15];
    OPENSSL_cleanse(bytes, sizeof bytes);
    return t;
}

User user_of(const Store::Impl::TextRow& r) {
    User u;
    u.name = r[0].value_or("");
    u.role = parse_role(r[1].value_or("")).value_or(Role::Viewer);
    u.created_at = r[2].value_or("");
    u.last_used_at = r[3];
    u.revoked_at = r[4];
    return u;
}

Error bad_user_name(const std::string& name) {
    return make_error(ErrorKind::InvalidArgument, "'" + name + "' is not a user name: use 1 to 64 letters, digits, '_', '.', '@' or '-'", "name");
}

}  // namespace

Expected<std::string> Store::add_user(const std::string& name, Role role) {
    if (!valid_user_name(name)) return bad_user_name(name);
    auto existing = impl_->run_sql("cannot look up the user", "SELECT name FROM users WHERE name = $1", {name});
    if (!existing) return existing.error_value();
    if (!existing->empty()) return make_error(ErrorKind::Conflict, "a user '" + name + "' exists; rotate its token or revoke it", "name");
    auto token = new_token();
    if (!token) return token;
    auto r = impl_->run_sql("cannot add the user",
                            "INSERT INTO users (name, role, token_sha256, created_at) VALUES ($1, $2, $3, $4)",
                            {name, std::string(role_name(role)), sha256_hex(*token), utc_text(now_of(*impl_))});
    if (!r) return r.error_value();
    return token;
}

Expected<std::string> Store::rotate_user_token(const std::string& name) {
    if (!valid_user_name(name)) return bad_user_name(name);
    auto token = new_token();
    if (!token) return token;
    long long changed = 0;
    auto r = impl_->run_sql("cannot rotate the token", "UPDATE users SET token_sha256 = $1 WHERE name = $2", {sha256_hex(*token), name},
                            &changed);
    if (!r) return r.error_value();
    if (changed == 0) return make_error(ErrorKind::NotFound, "no user '" + name + "' (see `fetalhc user list`)", "name");
    return token;
}

Expected<User> Store::revoke_user(const std::string& name) {
    if (!valid_user_name(name)) return bad_user_name(name);
    auto r = impl_->run_sql("cannot revoke the user", "UPDATE users SET revoked_at = COALESCE(revoked_at, $1) WHERE name = $2",
                            {utc_text(now_of(*impl_)), name});
    if (!r) return r.error_value();
    auto rows = impl_->run_sql("cannot read the user", std::string("SELECT ") + kUserColumns + " FROM users WHERE name = $1", {name});
    if (!rows) return rows.error_value();
    if (rows->empty()) return make_error(ErrorKind::NotFound, "no user '" + name + "' (see `fetalhc user list`)", "name");
    return user_of(rows->front());
}

Expected<std::vector<User>> Store::users() const {
    auto rows = impl_->run_sql("cannot list the users", std::string("SELECT ") + kUserColumns + " FROM users ORDER BY name", {});
    if (!rows) return rows.error_value();
    std::vector<User> out;
    for (const auto& r : *rows) out.push_back(user_of(r));
    return out;
}

Expected<std::optional<User>> Store::user(const std::string& name) const {
    if (!valid_user_name(name)) return std::optional<User>();
    auto rows = impl_->run_sql("cannot read the user", std::string("SELECT ") + kUserColumns + " FROM users WHERE name = $1", {name});
    if (!rows) return rows.error_value();
    if (rows->empty()) return std::optional<User>();
    return std::optional<User>(user_of(rows->front()));
}

Expected<bool> Store::has_users() const {
    auto rows = impl_->run_sql("cannot look up the users", "SELECT 1 FROM users LIMIT 1", {});
    if (!rows) return rows.error_value();
    return !rows->empty();
}

Expected<std::optional<User>> Store::authenticate(const std::string& token) {
    if (token.empty() || token.size() > 256) return std::optional<User>();
    auto rows = impl_->run_sql("cannot look up the token",
                               std::string("SELECT ") + kUserColumns + " FROM users WHERE token_sha256 = $1", {sha256_hex(token)});
    if (!rows) return rows.error_value();
    if (rows->empty()) return std::optional<User>();
    User u = user_of(rows->front());
    if (u.revoked_at) return std::optional<User>();
    const std::string now = utc_text(now_of(*impl_));
    // YYYY-MM-DDTHH:MM: a minute's resolution is enough for "last used", and spares a write per request.
    if (!u.last_used_at || u.last_used_at->compare(0, 16, now, 0, 16) != 0) {
        auto w = impl_->run_sql("cannot stamp the user's last use", "UPDATE users SET last_used_at = $1 WHERE name = $2", {now, u.name});
        if (!w) return w.error_value();
        u.last_used_at = now;
    }
    return std::optional<User>(std::move(u));
}

// ---- Audit trail -----------------------------------------------------------------------------------

Expected<AuditEntry> Store::append_audit(const AuditEntry& e) {
    const std::string at = utc_text(now_of(*impl_));
    auto rows = impl_->run_sql("cannot append to the audit trail",
                               audit_insert_sql('$') + " RETURNING id",
                               audit_values(e, at));
    if (!rows) return rows.error_value();
    AuditEntry out = e;
    out.at = at;
    if (!rows->empty() && rows->front()[0]) out.id = std::stoll(*rows->front()[0]);
    return out;
}

Expected<std::vector<AuditEntry>> Store::audit_entries(const AuditQuery& q) const {
    std::string sql = std::string("SELECT ") + kAuditColumns + " FROM audit WHERE 1 = 1";
    std::vector<Value> params;
    auto add = [&](const std::string& condition, Value v) {
        params.push_back(std::move(v));
        sql += " AND " + condition + " $" + std::to_string(params.size());
    };
    if (!q.since.empty()) add("at >=", q.since);
    // A date alone as `until` takes that whole day.
    if (!q.until.empty()) add("at <=", q.until.size() == 10 ? q.until + "T23:59:59Z" : q.until);
    if (!q.user.empty()) add("user_name =", q.user);
    if (!q.pregnancy_id.empty()) add("pregnancy_id =", q.pregnancy_id);
    if (!q.action.empty()) add("action =", q.action);
    if (q.before_id > 0) add("id <", Value(q.before_id));
    params.push_back(Value(static_cast<long long>(std::clamp(q.limit, 1, 10000))));
    sql += " ORDER BY id DESC LIMIT $" + std::to_string(params.size());
    auto rows = impl_->run_sql("cannot read the audit trail", sql, params);
    if (!rows) return rows.error_value();
    std::vector<AuditEntry> out;
    for (const auto& r : *rows) out.push_back(read_audit(r));
    return out;
}

nlohmann::json audit_json(const AuditEntry& e) {
    return {{"id", e.id},
            {"at", e.at},
            {"user", e.user},
            {"role", e.role},
            {"action", e.action},
            {"pregnancy_id", e.pregnancy_id},
            {"exam_id", e.exam_id ? nlohmann::json(*e.exam_id) : nlohmann::json(nullptr)},
            {"image_sha256", e.image_sha256},
            {"sop_instance_uid", e.sop_instance_uid},
            {"outcome", e.outcome},
            {"client", e.client},
            {"request_id", e.request_id}};
}

std::string audit_csv(const std::vector<AuditEntry>& entries) {
    std::ostringstream out;
    CsvWriter csv(out);
    for (const char* h : {"id", "at", "user", "role", "action", "pregnancy_id", "exam_id", "image_sha256", "sop_instance_uid",
                          "outcome", "client", "request_id"})
        csv.raw(h);
    csv.end_row();
    for (const auto& e : entries) {
        csv.integer(e.id).text(e.at).text(e.user).text(e.role).text(e.action).text(e.pregnancy_id);
        if (e.exam_id) csv.integer(*e.exam_id);
        else csv.empty();
        csv.text(e.image_sha256).text(e.sop_instance_uid).integer(e.outcome).text(e.client).text(e.request_id);
        csv.end_row();
    }
    return out.str();
}

bool valid_audit_time(const std::string& s) {
    if (s.size() == 10) return valid_date(s);
    return s.size() == 20 && valid_date(s.substr(0, 10)) && s[10] == 'T' && s[19] == 'Z' && std::isdigit((unsigned char)s[11]) &&
           std::isdigit((unsigned char)s[12]) && s[13] == ':' && std::isdigit((unsigned char)s[14]) &&
           std::isdigit((unsigned char)s[15]) && s[16] == ':' && std::isdigit((unsigned char)s[17]) && std::isdigit((unsigned char)s[18]);
}

}  // namespace fetalhc
