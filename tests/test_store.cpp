// The store (include/fetalhc/store.h) on its own. StoreEngines runs each case on both engines: an
// SQLite file in a temporary folder, and a new database in a throw-away PostgreSQL server that the
// test process starts itself (tests/pg_cluster.h; those cases skip, with the reason, when the
// PostgreSQL server binaries are not installed). The SQLite-only cases cover what only a file has:
// databases written before schema versioning, foreign files, read-only files and folders.
#include "child_process.h"
#include "pg_cluster.h"

#include "fetalhc/dicom_store.h"
#include "fetalhc/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace fs = std::filesystem;
using namespace fetalhc;
using fetalhc::test::PgCluster;
using Clock = Store::Clock;

namespace {

fs::path temp_dir(const std::string& tag) {
    static std::mt19937_64 rng{std::random_device{}()};
    const fs::path p = fs::temp_directory_path() / ("fetalhc_store_test_" + tag + "_" + std::to_string(rng()));
    fs::create_directories(p);
    return p;
}

Exam sample_exam(const std::string& pregnancy, const std::string& sha, const std::string& date = "2026-01-10") {
    Exam e;
    e.pregnancy_id = pregnancy;
    e.exam_date = date;
    e.image_sha256 = sha;
    e.pixel_size_mm = 0.1;
    e.ellipse_px = {10, 20, 30, 25, 0.5};
    e.hc_mm = 17.3;
    e.quality = "ok";
    return e;
}

// A settable clock for the store (seconds resolution is what both engines keep).
struct FakeClock {
    std::atomic<long long> seconds{1'800'000'000};  // 2027-01-15
    std::function<Clock::time_point()> fn() {
        return [this] { return Clock::time_point(std::chrono::seconds(seconds.load())); };
    }
    Clock::time_point now() const { return Clock::time_point(std::chrono::seconds(seconds.load())); }
};

// One engine's store: a fresh SQLite file or a fresh PostgreSQL database per test.
class StoreEngines : public ::testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        if (GetParam() == "postgresql") {
            std::string why;
            pg_ = PgCluster::get(&why);
            if (!pg_) GTEST_SKIP() << why;
            target_ = pg_->create_database(&why);
            ASSERT_FALSE(target_.empty()) << why;
        } else {
            dir_ = temp_dir("engine");
            target_ = (dir_ / "fetalhc.db").string();
        }
    }
    void TearDown() override {
        if (pg_ && !target_.empty()) pg_->drop_database(target_);
        std::error_code ec;
        if (!dir_.empty()) fs::remove_all(dir_, ec);
    }

    std::unique_ptr<Store> open() {
        auto s = Store::open(target_);
        if (!s) throw std::runtime_error("Store::open: " + s.error());
        return std::move(*s);
    }

    // Runs SQL on the store's database directly, as another program (or an older fetalhc) would.
    void exec_sql(const std::string& sql) {
        if (pg_) {
            const std::string e = pg_->exec(target_, sql);
            ASSERT_EQ(e, "") << sql;
            return;
        }
        sqlite3* h = nullptr;
        ASSERT_EQ(sqlite3_open(target_.c_str(), &h), SQLITE_OK);
        char* err = nullptr;
        const int rc = sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err);
        const std::string message = err ? err : "";
        sqlite3_free(err);
        sqlite3_close(h);
        ASSERT_EQ(rc, SQLITE_OK) << sql << ": " << message;
    }

    // The first column of the first row, as text.
    std::string query_value(const std::string& sql) {
        if (pg_) return pg_->query_value(target_, sql);
        sqlite3* h = nullptr;
        std::string out;
        if (sqlite3_open(target_.c_str(), &h) == SQLITE_OK) {
            sqlite3_stmt* st = nullptr;
            if (sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
                sqlite3_column_text(st, 0))
                out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
            sqlite3_finalize(st);
        }
        sqlite3_close(h);
        return out;
    }

    PgCluster* pg_ = nullptr;
    fs::path dir_;
    std::string target_;
};

INSTANTIATE_TEST_SUITE_P(, StoreEngines, ::testing::Values("sqlite", "postgresql"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// Random bytes of a given size: an "image" the quota counts byte for byte.
std::string blob(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = char(rng() & 0xFF);
    return s;
}

}  // namespace

// ---- both engines ------------------------------------------------------------------------------

TEST_P(StoreEngines, KeepsExamsAndImagesAcrossReopen) {
    Exam e;
    {
        auto s = open();
        EXPECT_EQ(s->engine(), GetParam());
        auto sha = s->put_image("image bytes");
        ASSERT_TRUE(sha) << sha.error();
        EXPECT_EQ(*sha, sha256_hex("image bytes"));
        EXPECT_EQ(*s->put_image("image bytes"), *sha);  // idempotent
        e = sample_exam("P.1_a-b", *sha);
        e.ga_hadlock_weeks = 19.5;
        e.ellipse_px.angle = 1.0 / 3.0;  // doubles come back bit for bit
        e.centile = 1e-300;
        e.quality = "review";
        e.reasons = {"poor ellipse fit", "with, a comma", "quote \" and ' and \\"};
        e.corrected = true;
        e.sop_instance_uid = "1.2.826.0.1.3680043.8.498.1";
        auto saved = s->add_exam(e);
        ASSERT_TRUE(saved) << saved.error();
        EXPECT_GT(saved->id, 0);
        EXPECT_EQ(saved->created_at.size(), 20u);
        Exam earlier = e;
        earlier.exam_date = "2025-12-01";
        earlier.sop_instance_uid.reset();
        ASSERT_TRUE(s->add_exam(earlier));
    }
    auto s = open();
    auto img = s->read_image(sha256_hex("image bytes"));
    ASSERT_TRUE(img) << img.error();
    ASSERT_TRUE(*img);
    EXPECT_EQ(**img, "image bytes");
    auto h = s->history("P.1_a-b");
    ASSERT_TRUE(h) << h.error();
    ASSERT_TRUE(h->found);
    ASSERT_EQ(h->exams.size(), 2u);
    EXPECT_EQ(h->exams[0].exam_date, "2025-12-01");
    EXPECT_FALSE(h->exams[0].sop_instance_uid);
    const Exam& back = h->exams[1];
    EXPECT_EQ(back.ellipse_px.cx, 10);
    EXPECT_EQ(back.ellipse_px.angle, 1.0 / 3.0);
    EXPECT_EQ(back.hc_mm, 17.3);
    EXPECT_EQ(back.pixel_size_mm, 0.1);
    EXPECT_EQ(back.ga_hadlock_weeks, std::optional<double>(19.5));
    EXPECT_EQ(back.centile, std::optional<double>(1e-300));
    EXPECT_FALSE(back.ga_intergrowth_weeks.has_value());
    EXPECT_EQ(back.reasons, e.reasons);
    EXPECT_EQ(back.quality, "review");
    EXPECT_TRUE(back.corrected);
    EXPECT_TRUE(back.accepted);
    EXPECT_EQ(back.sop_instance_uid, e.sop_instance_uid);
    auto none = s->history("nobody");
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->found);
}

TEST_P(StoreEngines, ImagesAreTrimmedHashedAndLookedUpByValidHashOnly) {
    auto s = open();
    // A PNG's bytes after IEND are not stored (nor hashed).
    const std::string png = std::string("\x89PNG\r\n\x1a\n", 8) + std::string("\0\0\0\0IEND\xae\x42\x60\x82", 12);
    auto sha = s->put_image(png + "trailing junk");
    ASSERT_TRUE(sha) << sha.error();
    EXPECT_EQ(*sha, sha256_hex(png));
    EXPECT_EQ(**s->read_image(*sha), png);
    EXPECT_TRUE(*s->has_image(*sha));
    EXPECT_EQ(*s->stored_image_bytes(), png.size());
    const std::string zeros(200000, '\0');  // binary bytes, NULs included, survive the round trip
    auto big = s->put_image(zeros + blob(100000, 1));
    ASSERT_TRUE(big) << big.error();
    EXPECT_EQ(**s->read_image(*big), zeros + blob(100000, 1));
    EXPECT_FALSE(*s->has_image(std::string(64, 'f')));
    EXPECT_FALSE(*s->read_image(std::string(64, 'f')));
    for (const std::string bad : {std::string("../fetalhc.db"), std::string(64, 'A'), std::string("")}) {
        EXPECT_FALSE(*s->has_image(bad)) << bad;
        EXPECT_FALSE(*s->read_image(bad)) << bad;
    }
}

TEST_P(StoreEngines, AnExamNeedsItsImageStored) {
    auto s = open();
    auto saved = s->add_exam(sample_exam("P1", std::string(64, 'a')));
    ASSERT_FALSE(saved);
    EXPECT_EQ(saved.error_kind(), ErrorKind::UnknownImage) << saved.error();
    EXPECT_FALSE(s->history("P1")->found);  // nothing saved, not even the pregnancy
    auto bad = s->add_exam(sample_exam("a/b", *s->put_image("x")));
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().find("pregnancy id"), std::string::npos) << bad.error();
}

// Users (issue 26): tokens shown once and kept only as their SHA-256; rotation and revocation take
// effect at the next authenticate; names and roles checked.
TEST_P(StoreEngines, UsersHaveRolesAndTokensKeptOnlyAsHashes) {
    FakeClock clock;
    auto s = open();
    s->set_clock(clock.fn());
    EXPECT_FALSE(*s->has_users());
    auto alice = s->add_user("alice", Role::Sonographer);
    ASSERT_TRUE(alice) << alice.error();
    EXPECT_EQ(alice->size(), 4u + 64u);
    EXPECT_EQ(alice->rfind("fhc_", 0), 0u);
    auto bob = s->add_user("bob@ward-3", Role::Viewer);
    ASSERT_TRUE(bob) << bob.error();
    EXPECT_NE(*alice, *bob);
    EXPECT_TRUE(*s->has_users());
    // Refusals: a taken name, an invalid one; no token in any message.
    auto again = s->add_user("alice", Role::Admin);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error_value().kind, ErrorKind::Conflict);
    auto bad = s->add_user("a b", Role::Admin);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error_value().field, "name");
    EXPECT_EQ(s->rotate_user_token("carol").error_value().kind, ErrorKind::NotFound);
    EXPECT_EQ(s->revoke_user("carol").error_value().kind, ErrorKind::NotFound);
    // authenticate: the user behind a token, stamping last use; nothing for a wrong one.
    auto who = s->authenticate(*alice);
    ASSERT_TRUE(who && *who) << (who ? "no user" : who.error());
    EXPECT_EQ((*who)->name, "alice");
    EXPECT_EQ((*who)->role, Role::Sonographer);
    EXPECT_TRUE((*who)->last_used_at);
    EXPECT_FALSE(s->authenticate(*alice + "0")->has_value());
    EXPECT_FALSE(s->authenticate("")->has_value());
    // The database holds the hash, never the token.
    EXPECT_EQ(query_value("SELECT token_sha256 FROM users WHERE name = 'alice'"), sha256_hex(*alice));
    EXPECT_EQ(query_value("SELECT count(*) FROM users WHERE token_sha256 LIKE '%" + alice->substr(4, 16) + "%'"), "0");
    // Rotation: the old token stops, the new one works.
    auto rotated = s->rotate_user_token("alice");
    ASSERT_TRUE(rotated) << rotated.error();
    EXPECT_FALSE(s->authenticate(*alice)->has_value());
    EXPECT_TRUE(s->authenticate(*rotated)->has_value());
    // Revocation: at once; the user stays listed with the time.
    clock.seconds += 120;
    auto revoked = s->revoke_user("bob@ward-3");
    ASSERT_TRUE(revoked) << revoked.error();
    ASSERT_TRUE(revoked->revoked_at);
    EXPECT_FALSE(s->authenticate(*bob)->has_value());
    auto list = s->users();
    ASSERT_TRUE(list) << list.error();
    ASSERT_EQ(list->size(), 2u);
    EXPECT_EQ((*list)[0].name, "alice");
    EXPECT_EQ((*list)[1].name, "bob@ward-3");
    EXPECT_EQ((*list)[1].role, Role::Viewer);
    EXPECT_TRUE((*list)[1].revoked_at);
    EXPECT_FALSE((*list)[0].revoked_at);
    EXPECT_TRUE(*s->has_users());  // a revoked user still counts: revoking everyone does not open the server
}

// The audit trail: entries appended and read back newest first, filtered and paged; an exam's
// entry is written in the exam's transaction (with its id), a replay or a refused exam adds none.
TEST_P(StoreEngines, AuditTrailIsAppendOnlyAndWrittenWithTheExam) {
    FakeClock clock;
    auto s = open();
    s->set_clock(clock.fn());
    AuditEntry read;
    read.user = "vera";
    read.role = "viewer";
    read.action = "GET /v1/pregnancies/{id}";
    read.pregnancy_id = "P-1";
    read.outcome = 200;
    read.client = "127.0.0.1";
    read.request_id = "r1";
    auto a1 = s->append_audit(read);
    ASSERT_TRUE(a1) << a1.error();
    EXPECT_GT(a1->id, 0);
    EXPECT_EQ(a1->at, "2027-01-15T08:00:00Z");
    clock.seconds += 86400;
    const std::string sha = *s->put_image("image bytes");
    AuditEntry write = read;
    write.user = "sam";
    write.role = "sonographer";
    write.action = "POST /v1/exams";
    write.outcome = 201;
    write.request_id = "r2";
    auto saved = s->add_exam(sample_exam("P-2", sha), "key-1", write);
    ASSERT_TRUE(saved) << saved.error();
    auto replay = s->add_exam(sample_exam("P-2", sha), "key-1", write);
    ASSERT_TRUE(replay && replay->replayed);
    auto refused = s->add_exam(sample_exam("P-3", std::string(64, 'a')), "", write);
    ASSERT_FALSE(refused);
    auto all = s->audit_entries({});
    ASSERT_TRUE(all) << all.error();
    ASSERT_EQ(all->size(), 2u);  // the read and the one saved exam: nothing for the replay or the refusal
    const AuditEntry& e = all->front();
    EXPECT_EQ(e.action, "POST /v1/exams");
    EXPECT_EQ(e.user, "sam");
    EXPECT_EQ(e.pregnancy_id, "P-2");
    EXPECT_EQ(e.exam_id, std::optional<long long>(saved->exam.id));
    EXPECT_EQ(e.image_sha256, sha);
    EXPECT_EQ(e.outcome, 201);
    EXPECT_EQ(e.request_id, "r2");
    EXPECT_EQ(e.at, "2027-01-16T08:00:00Z");
    EXPECT_EQ((*all)[1].user, "vera");
    EXPECT_FALSE((*all)[1].exam_id);
    // Filters and pages.
    AuditQuery q;
    q.user = "vera";
    EXPECT_EQ(s->audit_entries(q)->size(), 1u);
    q = {};
    q.pregnancy_id = "P-2";
    EXPECT_EQ(s->audit_entries(q)->size(), 1u);
    q = {};
    q.since = "2027-01-16";
    EXPECT_EQ(s->audit_entries(q)->size(), 1u);
    q = {};
    q.until = "2027-01-15";
    ASSERT_EQ(s->audit_entries(q)->size(), 1u);
    EXPECT_EQ(s->audit_entries(q)->front().user, "vera");
    q = {};
    q.limit = 1;
    auto first = s->audit_entries(q);
    ASSERT_EQ(first->size(), 1u);
    q.before_id = first->front().id;
    auto second = s->audit_entries(q);
    ASSERT_EQ(second->size(), 1u);
    EXPECT_EQ(second->front().user, "vera");
    // Image retention leaves the trail alone.
    clock.seconds += 400 * 86400;
    ASSERT_TRUE(s->remove_unreferenced_images(clock.now()));
    EXPECT_EQ(s->audit_entries({})->size(), 2u);
    const std::string csv = audit_csv(*all);
    EXPECT_EQ(csv.substr(0, csv.find('\n')), "id,at,user,role,action,pregnancy_id,exam_id,image_sha256,sop_instance_uid,outcome,client,request_id");
}

TEST_P(StoreEngines, DicomInstancesAreAddedUpdatedAndListedNewestFirst) {
    FakeClock clock;
    auto s = open();
    s->set_clock(clock.fn());
    DicomInstance d;
    d.sop_instance_uid = "1.2.3";
    d.sop_class_uid = "1.2.840.10008.5.1.4.1.1.6.1";
    d.calling_aet = "US1";
    d.image_sha256 = *s->put_image("dicom bytes");
    auto first = s->add_dicom_instance(d);
    ASSERT_TRUE(first) << first.error();
    EXPECT_EQ(first->received_at, "2027-01-15T08:00:00Z");
    EXPECT_EQ(first->status, "pending");
    EXPECT_FALSE(first->hc_mm);
    d.sop_instance_uid = "1.2.4";
    auto second = s->add_dicom_instance(d);
    ASSERT_TRUE(second);
    DicomInstance u = *first;
    u.status = "measured";
    u.hc_mm = 171.25;
    u.pixel_size_mm = 0.123456789;
    u.reasons = {"low detection score"};
    u.frames = 12;
    u.forward_status = "failed: no route";
    u.sr_sha256 = *s->put_image("sr bytes");
    u.key_image_sha256 = *s->put_image("key image bytes");
    ASSERT_TRUE(*s->update_dicom_instance(u));
    DicomInstance missing = u;
    missing.id = 9999;
    EXPECT_FALSE(*s->update_dicom_instance(missing));
    auto list = s->dicom_instances(10);
    ASSERT_TRUE(list) << list.error();
    ASSERT_EQ(list->size(), 2u);
    EXPECT_EQ((*list)[0].sop_instance_uid, "1.2.4");
    const DicomInstance& back = (*list)[1];
    EXPECT_EQ(back.status, "measured");
    EXPECT_EQ(back.hc_mm, std::optional<double>(171.25));
    EXPECT_EQ(back.pixel_size_mm, std::optional<double>(0.123456789));
    EXPECT_EQ(back.reasons, u.reasons);
    EXPECT_EQ(back.frames, 12);
    EXPECT_EQ(back.forward_status, "failed: no route");
    EXPECT_EQ(back.sr_sha256, u.sr_sha256);
    EXPECT_EQ(back.key_image_sha256, u.key_image_sha256);
    EXPECT_EQ(back.calling_aet, "US1");
    EXPECT_EQ(s->dicom_instances(1)->size(), 1u);
}

// The quota: the oldest images nothing references go first; when every image is referenced, the
// error is ErrorKind::StoreFull and nothing is removed.
TEST_P(StoreEngines, QuotaRemovesTheOldestUnreferencedImagesThenRefuses) {
    FakeClock clock;
    constexpr long long kHours2 = 7200;  // apart by more than the quota's grace period (1 h)
    auto s = open();
    s->set_clock(clock.fn());
    const size_t n = 1000;
    s->set_quota_bytes(3 * n);
    std::vector<std::string> shas;
    for (unsigned k = 0; k < 3; ++k) {
        clock.seconds += kHours2;
        auto sha = s->put_image(blob(n, k));
        ASSERT_TRUE(sha) << sha.error();
        shas.push_back(*sha);
    }
    ASSERT_TRUE(s->add_exam(sample_exam("quota-1", shas[0])));  // the oldest is referenced
    clock.seconds += kHours2;
    auto sha3 = s->put_image(blob(n, 3));
    ASSERT_TRUE(sha3) << sha3.error();
    EXPECT_TRUE(*s->has_image(shas[0]));
    EXPECT_FALSE(*s->has_image(shas[1]));  // the oldest unreferenced one went
    EXPECT_TRUE(*s->has_image(shas[2]));
    EXPECT_EQ(*s->stored_image_bytes(), 3 * n);
    // A re-upload refreshes an image's time: image 2 is now the newest, so image 3 goes first.
    clock.seconds += kHours2;
    ASSERT_TRUE(s->put_image(blob(n, 2)));
    clock.seconds += kHours2;
    ASSERT_TRUE(s->put_image(blob(n, 4)));
    EXPECT_TRUE(*s->has_image(shas[2]));
    EXPECT_FALSE(*s->has_image(*sha3));
    // Everything referenced: refused, nothing removed.
    ASSERT_TRUE(s->add_exam(sample_exam("quota-1", shas[2])));
    DicomInstance d;
    d.sop_instance_uid = "1.2.3";
    d.image_sha256 = sha256_hex(blob(n, 4));
    ASSERT_TRUE(s->add_dicom_instance(d));
    auto full = s->put_image(blob(n, 5));
    ASSERT_FALSE(full);
    EXPECT_EQ(full.error_kind(), ErrorKind::StoreFull) << full.error();
    EXPECT_EQ(full.error_value().field, "max_store_mb") << "the front end names its own quota option";
    EXPECT_EQ(full.error().find("--"), std::string::npos) << "no option named in a library message: " << full.error();
    auto huge = s->put_image(blob(4 * n, 6));
    ASSERT_FALSE(huge);
    EXPECT_NE(huge.error().find("larger than the store quota"), std::string::npos) << huge.error();
    EXPECT_EQ(*s->stored_image_bytes(), 3 * n);
    s->set_quota_bytes(0);  // no quota: stored
    EXPECT_TRUE(s->put_image(blob(n, 5)));
}

// Issue 22 row 12: an image measured within the grace period (one hour) is not removed to make
// room, so that its Accept does not fail on a missing image; once the hour has passed it may go.
TEST_P(StoreEngines, QuotaKeepsRecentlyMeasuredImagesForTheirAccept) {
    FakeClock clock;
    auto s = open();
    s->set_clock(clock.fn());
    const size_t n = 1000;
    s->set_quota_bytes(2 * n);
    auto measured = s->put_image(blob(n, 10));
    ASSERT_TRUE(measured) << measured.error();
    clock.seconds += 600;
    ASSERT_TRUE(s->put_image(blob(n, 11)));
    clock.seconds += 600;  // 20 minutes after the first: both within the hour
    auto full = s->put_image(blob(n, 12));
    ASSERT_FALSE(full) << "an image measured 20 minutes ago was removed to make room";
    EXPECT_NE(full.error().find("within the last hour"), std::string::npos) << full.error();
    EXPECT_TRUE(*s->has_image(*measured));
    clock.seconds += 3600;  // past the grace period: the oldest goes
    ASSERT_TRUE(s->put_image(blob(n, 12)));
    EXPECT_FALSE(*s->has_image(*measured));
}

// Retention: images stored before the cut-off that nothing references go; referenced ones (by an
// exam, a DICOM instance or its SR) and newer ones stay.
TEST_P(StoreEngines, RetentionRemovesOnlyOldUnreferencedImages) {
    FakeClock clock;
    auto s = open();
    s->set_clock(clock.fn());
    const std::vector<std::string> names{"old-free", "old-exam", "old-dicom", "old-sr", "old-key", "new-free"};
    std::map<std::string, std::string> sha;
    for (const auto& name : names) {
        if (name == "new-free") clock.seconds += 10 * 86400;
        sha[name] = *s->put_image("bytes of " + name);
    }
    ASSERT_TRUE(s->add_exam(sample_exam("R1", sha["old-exam"])));
    DicomInstance d;
    d.sop_instance_uid = "1.2.3";
    d.image_sha256 = sha["old-dicom"];
    auto added = s->add_dicom_instance(d);
    ASSERT_TRUE(added);
    added->sr_sha256 = sha["old-sr"];
    added->key_image_sha256 = sha["old-key"];
    ASSERT_TRUE(*s->update_dicom_instance(*added));
    auto swept = s->remove_unreferenced_images(clock.now() - std::chrono::hours(24 * 5));
    ASSERT_TRUE(swept) << swept.error();
    EXPECT_EQ(swept->removed, 1);
    EXPECT_EQ(swept->bytes, std::string("bytes of old-free").size());
    for (const auto& name : names) EXPECT_EQ(*s->has_image(sha[name]), name != "old-free") << name;
    // A cut-off after everything: only unreferenced images go, however new.
    swept = s->remove_unreferenced_images(clock.now() + std::chrono::hours(1));
    ASSERT_TRUE(swept);
    EXPECT_EQ(swept->removed, 1);
    EXPECT_FALSE(*s->has_image(sha["new-free"]));
    EXPECT_TRUE(*s->has_image(sha["old-sr"]));
    EXPECT_TRUE(*s->has_image(sha["old-key"]));
}

// set_image_retention sweeps at once on its own thread (then periodically); 0 stops it.
TEST_P(StoreEngines, RetentionThreadSweepsAtStart) {
    FakeClock clock;
    auto s = open();
    s->set_clock(clock.fn());
    const std::string sha = *s->put_image("short-lived");
    clock.seconds += 3 * 86400;
    s->set_image_retention(2, std::chrono::seconds(3600));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (*s->has_image(sha) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(*s->has_image(sha));
    s->set_image_retention(0);
    const std::string kept = *s->put_image("kept");
    clock.seconds += 30 * 86400;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(*s->has_image(kept));
}

TEST_P(StoreEngines, IdempotencyKeySavesOnceAndRefusesAnotherExam) {
    auto s = open();
    const Exam e = sample_exam("IK-1", *s->put_image("scan"));
    auto first = s->add_exam(e, "key-0001");
    ASSERT_TRUE(first) << first.error();
    EXPECT_FALSE(first->replayed);
    auto again = s->add_exam(e, "key-0001");
    ASSERT_TRUE(again) << again.error();
    EXPECT_TRUE(again->replayed);
    EXPECT_EQ(again->exam.id, first->exam.id);
    EXPECT_EQ(again->exam.created_at, first->exam.created_at);
    Exam other = e;
    other.ellipse_px.a += 1e-9;  // any field differs: another exam
    auto conflict = s->add_exam(other, "key-0001");
    ASSERT_FALSE(conflict);
    EXPECT_EQ(conflict.error_kind(), ErrorKind::Conflict) << conflict.error();
    EXPECT_NE(conflict.error().find("key-0001"), std::string::npos) << conflict.error();
    auto bad = s->add_exam(e, std::string(129, 'k'));
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().find("idempotency key"), std::string::npos) << bad.error();
    auto plain = s->add_exam(e);  // no key: a new exam each time
    ASSERT_TRUE(plain);
    EXPECT_NE(plain->id, first->exam.id);
    EXPECT_EQ(s->history("IK-1")->exams.size(), 2u);
    // The key is in the database: it holds for another store on it (a restart, another replica).
    auto s2 = open();
    auto replay = s2->add_exam(e, "key-0001");
    ASSERT_TRUE(replay) << replay.error();
    EXPECT_TRUE(replay->replayed);
    EXPECT_EQ(replay->exam.id, first->exam.id);
    EXPECT_FALSE(s2->add_exam(other, "key-0001"));
    EXPECT_EQ(s2->history("IK-1")->exams.size(), 2u);
}

// Several stores on one database (replicas), several threads each, released at once, a few
// rounds: the same image stored by all never fails, the same idempotency key saves one exam,
// distinct exams all land.
TEST_P(StoreEngines, ConcurrentWritersFromSeveralStoresAgree) {
    constexpr int kStores = 3, kThreads = 3, kExamsEach = 3, kRounds = 4;
    std::vector<std::unique_ptr<Store>> stores;
    for (int i = 0; i < kStores; ++i) stores.push_back(open());
    std::atomic<int> failures{0};
    std::mutex err_mu;
    std::string first_error;
    const auto note = [&](const std::string& e) {
        ++failures;
        std::lock_guard<std::mutex> lock(err_mu);
        if (first_error.empty()) first_error = e;
    };
    for (int round = 0; round < kRounds; ++round) {
        const std::string image = blob(50000, 100 + unsigned(round));
        const std::string key = "same-key-" + std::to_string(round);
        std::vector<long long> keyed_ids(kStores * kThreads, -1);
        std::atomic<int> ready{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> threads;
        for (int i = 0; i < kStores * kThreads; ++i)
            threads.emplace_back([&, i] {
                Store& st = *stores[size_t(i % kStores)];
                ++ready;
                while (!go) std::this_thread::yield();
                auto sha = st.put_image(image);
                if (!sha) return note(sha.error());
                auto w = st.add_exam(sample_exam("C-1", *sha), key);
                if (!w) return note(w.error());
                keyed_ids[size_t(i)] = w->exam.id;
                for (int k = 0; k < kExamsEach; ++k)
                    if (auto e = st.add_exam(sample_exam("C-2", *sha)); !e) return note(e.error());
            });
        while (ready < kStores * kThreads) std::this_thread::yield();
        go = true;
        for (auto& t : threads) t.join();
        ASSERT_EQ(failures.load(), 0) << "round " << round << ": " << first_error;
        EXPECT_EQ(std::set<long long>(keyed_ids.begin(), keyed_ids.end()).size(), 1u) << "round " << round;
    }
    EXPECT_EQ(stores[0]->history("C-1")->exams.size(), size_t(kRounds));
    EXPECT_EQ(stores[0]->history("C-2")->exams.size(), size_t(kRounds * kStores * kThreads * kExamsEach));
    EXPECT_EQ(*open()->stored_image_bytes(), size_t(kRounds) * 50000);  // each image stored once
}

// Stores opening one new database at once apply each migration once.
TEST_P(StoreEngines, ConcurrentOpensMigrateOnce) {
    constexpr int kOpeners = 4;
    std::vector<std::string> errors(kOpeners);
    std::vector<std::thread> threads;
    for (int i = 0; i < kOpeners; ++i)
        threads.emplace_back([&, i] {
            auto s = Store::open(target_);
            if (!s) errors[size_t(i)] = s.error();
        });
    for (auto& t : threads) t.join();
    for (const auto& e : errors) EXPECT_EQ(e, "");
    EXPECT_EQ(query_value("SELECT count(*) FROM schema_version"), std::to_string(Store::schema_version()));
    EXPECT_EQ(query_value("SELECT max(version) FROM schema_version"), std::to_string(Store::schema_version()));
}

TEST_P(StoreEngines, NewerSchemaIsRefused) {
    {
        auto s = open();
        ASSERT_TRUE(s->add_exam(sample_exam("N1", *s->put_image("img"))));
    }
    exec_sql("INSERT INTO schema_version(version, applied_at, description) VALUES (99, '2030-01-01T00:00:00Z', 'from the future')");
    auto s = Store::open(target_);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("schema version 99"), std::string::npos) << s.error();
    EXPECT_NE(s.error().find("newer"), std::string::npos) << s.error();
    EXPECT_EQ(query_value("SELECT count(*) FROM exams"), "1");
}

// ---- SQLite only -------------------------------------------------------------------------------

namespace {

// The schema fetalhc wrote before versioning (no schema_version table), with or without the parts
// that older versions lacked.
void write_unversioned_database(const std::string& db, bool dicom_table, bool sop_uid_column) {
    std::string sql = std::string(R"sql(
PRAGMA journal_mode=WAL;
CREATE TABLE pregnancies (id TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE exams (
  id INTEGER PRIMARY KEY AUTOINCREMENT, pregnancy_id TEXT NOT NULL REFERENCES pregnancies(id), exam_date TEXT NOT NULL,
  image_sha256 TEXT NOT NULL, pixel_size_mm REAL NOT NULL, center_x REAL NOT NULL, center_y REAL NOT NULL,
  semi_axis_a REAL NOT NULL, semi_axis_b REAL NOT NULL, angle_rad REAL NOT NULL, hc_mm REAL NOT NULL, bpd_mm REAL NOT NULL,
  ofd_mm REAL NOT NULL, ga_hadlock_weeks REAL, ga_intergrowth_weeks REAL, ga_weeks_given REAL, centile REAL,
  quality TEXT NOT NULL, reasons TEXT NOT NULL, corrected INTEGER NOT NULL, accepted INTEGER NOT NULL,
  created_at TEXT NOT NULL)sql") + (sop_uid_column ? ", sop_instance_uid TEXT" : "") + R"sql();
CREATE INDEX exams_by_pregnancy ON exams(pregnancy_id, exam_date, id);
INSERT INTO pregnancies VALUES ('P1', '2026-01-10T09:00:00Z');
INSERT INTO exams (pregnancy_id, exam_date, image_sha256, pixel_size_mm, center_x, center_y, semi_axis_a, semi_axis_b,
  angle_rad, hc_mm, bpd_mm, ofd_mm, quality, reasons, corrected, accepted, created_at)
  VALUES ('P1', '2026-01-10', ')sql" + sha256_hex("old image") + R"sql(', 0.1, 10, 20, 30, 25, 0.5, 17.3, 5, 6, 'ok',
          '["a reason"]', 0, 1, '2026-01-10T09:00:00Z');
)sql";
    if (dicom_table)
        sql += R"sql(
CREATE TABLE dicom_instances (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
  calling_aet TEXT NOT NULL, received_at TEXT NOT NULL, image_sha256 TEXT NOT NULL, status TEXT NOT NULL,
  hc_mm REAL, bpd_mm REAL, ofd_mm REAL, ga_hadlock_weeks REAL, pixel_size_mm REAL, calibration_source TEXT NOT NULL,
  quality TEXT NOT NULL, reasons TEXT NOT NULL, frames INTEGER NOT NULL, error TEXT NOT NULL, forward_status TEXT NOT NULL,
  sr_sha256 TEXT NOT NULL);
INSERT INTO dicom_instances (sop_instance_uid, sop_class_uid, calling_aet, received_at, image_sha256, status, calibration_source,
  quality, reasons, frames, error, forward_status, sr_sha256)
  VALUES ('1.2.3', '1.2.4', 'US1', '2026-01-10T09:00:00Z', '', 'failed', '', '', '[]', 0, 'no head', '', '');
)sql";
    sql += "PRAGMA application_id=" + std::to_string(0x46484331) + ";";  // "FHC1", as fetalhc set it
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
    char* err = nullptr;
    const int rc = sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err);
    const std::string message = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(h);
    ASSERT_EQ(rc, SQLITE_OK) << message;
    fs::create_directories(db + ".images");
    std::ofstream(db + ".images/" + sha256_hex("old image"), std::ios::binary) << "old image";
}

}  // namespace

// Databases written before schema versioning (the current code's, and older ones without the
// DICOM table or the SOP Instance UID column) open with their rows intact and are upgraded.
TEST(SqliteStore, UnversionedDatabaseIsUpgradedKeepingItsRows) {
    struct Variant {
        bool dicom_table, sop_uid_column;
    };
    for (const Variant v : {Variant{true, true}, Variant{false, true}, Variant{true, false}}) {
        SCOPED_TRACE(std::string("dicom table ") + (v.dicom_table ? "yes" : "no") + ", sop uid column " +
                     (v.sop_uid_column ? "yes" : "no"));
        const fs::path dir = temp_dir("unversioned");
        const std::string db = (dir / "old.db").string();
        write_unversioned_database(db, v.dicom_table, v.sop_uid_column);
        for (int reopen = 0; reopen < 2; ++reopen) {  // the second open finds it already upgraded
            auto s = Store::open(db);
            ASSERT_TRUE(s) << s.error();
            auto h = (*s)->history("P1");
            ASSERT_TRUE(h && h->found);
            ASSERT_EQ(h->exams.size(), size_t(1 + reopen));
            EXPECT_EQ(h->exams[0].hc_mm, 17.3);
            EXPECT_EQ(h->exams[0].reasons, std::vector<std::string>{"a reason"});
            EXPECT_FALSE(h->exams[0].sop_instance_uid);
            EXPECT_EQ(**(*s)->read_image(sha256_hex("old image")), "old image");
            EXPECT_EQ((*s)->dicom_instances(10)->size(), v.dicom_table ? 1u : 0u);
            if (v.dicom_table) EXPECT_EQ((*s)->dicom_instances(10)->front().key_image_sha256, "");  // older rows: none
            if (reopen == 0) {
                Exam e = sample_exam("P1", sha256_hex("old image"), "2026-02-10");
                e.sop_instance_uid = "1.2.826.0.1.3680043.8.498.1";
                auto w = (*s)->add_exam(e, "after-upgrade");  // the new columns work
                ASSERT_TRUE(w) << w.error();
                EXPECT_EQ(w->exam.sop_instance_uid, e.sop_instance_uid);
            }
        }
        sqlite3* h = nullptr;
        ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
        sqlite3_stmt* st = nullptr;
        ASSERT_EQ(sqlite3_prepare_v2(h, "SELECT group_concat(version) FROM schema_version", -1, &st, nullptr), SQLITE_OK);
        ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
        EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "1,2,3,4");
        sqlite3_finalize(st);
        sqlite3_close(h);
        fs::remove_all(dir);
    }
}

// A foreign SQLite file is refused before anything is written to it or next to it.
TEST(SqliteStore, ForeignDatabaseIsRefusedUntouched) {
    const fs::path dir = temp_dir("foreign");
    const std::string db = (dir / "other.db").string();
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(h, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(h);
    const auto before = fs::file_size(db);
    auto s = Store::open(db);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("another program"), std::string::npos) << s.error();
    EXPECT_FALSE(fs::exists(db + ".images"));
    EXPECT_FALSE(fs::exists(db + "-wal"));
    EXPECT_EQ(fs::file_size(db), before);
    ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(h, "SELECT count(*) FROM sqlite_master WHERE type = 'table'", -1, &st, nullptr);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_EQ(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, nullptr);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "delete");
    sqlite3_finalize(st);
    sqlite3_close(h);
    // A file that is not SQLite at all is refused too; a new file becomes a fetalhc database.
    std::ofstream(dir / "text.db") << "hello, not a database at all, long enough to be a header............................";
    EXPECT_FALSE(Store::open((dir / "text.db").string()));
    EXPECT_FALSE(fs::exists(dir / "text.db.images"));
    EXPECT_TRUE(Store::open((dir / "new.db").string()));
    EXPECT_TRUE(Store::open((dir / "new.db").string()));  // and is recognised when opened again
    fs::remove_all(dir);
}

namespace {

// Runs the permission checks in a child process. As root (CI), the child drops to the unprivileged
// uid/gid 65534 ("nobody") before touching anything, since permissions do not stop root: the check
// stays a real one.
std::string readonly_checks_as_unprivileged(const fs::path& dir) {
    const std::string db = (dir / "hc.db").string();
    std::string err;
    auto fail = [&](const std::string& m) { err += m + "\n"; };
    if (!Store::open(db)) {
        fail("fresh database did not open");
        return err;
    }
    fs::permissions(db + ".images", fs::perms::owner_read | fs::perms::owner_exec);
    auto s = Store::open(db);
    if (s) fail("read-only image folder was accepted");
    else if (s.error().find("not writable") == std::string::npos) fail("image folder error: " + s.error());
    fs::permissions(db + ".images", fs::perms::owner_all);
    fs::permissions(db, fs::perms::owner_read);
    s = Store::open(db);
    if (s) fail("read-only database was accepted");
    else if (s.error().find("read-only") == std::string::npos) fail("database error: " + s.error());
    fs::permissions(db, fs::perms::owner_all);
    return err;
}

}  // namespace

// A database or image folder that cannot be written is found when the store opens.
TEST(SqliteStore, ReadOnlyDatabaseOrImageFolderIsRefusedAtStart) {
    const fs::path dir = temp_dir("readonly");
    constexpr uid_t kNobody = 65534;
    if (::geteuid() == 0) {
        ASSERT_EQ(::chown(dir.c_str(), kNobody, kNobody), 0) << std::strerror(errno);
        ::chmod(dir.c_str(), 0700);
    }
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(fds[0]);
        std::string err;
        if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0))
            err = std::string("cannot drop to uid 65534: ") + std::strerror(errno) + "\n";
        else if (::geteuid() == 0)
            err = "still root after setuid\n";
        else
            err = readonly_checks_as_unprivileged(dir);
        if (::write(fds[1], err.data(), err.size()) < 0) {}
        ::_exit(err.empty() ? 0 : 1);
    }
    ::close(fds[1]);
    std::string out;
    char buf[512];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
    EXPECT_EQ(out, "");
    fs::remove_all(dir);
}

// ---- PostgreSQL only ---------------------------------------------------------------------------

// A database holding another program's tables is refused untouched.
TEST(PostgresStore, ForeignDatabaseIsRefusedUntouched) {
    std::string why;
    PgCluster* pg = PgCluster::get(&why);
    if (!pg) GTEST_SKIP() << why;
    const std::string uri = pg->create_database(&why);
    ASSERT_FALSE(uri.empty()) << why;
    ASSERT_EQ(pg->exec(uri, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5)"), "");
    auto s = Store::open(uri);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("holds 1 tables"), std::string::npos) << s.error();
    EXPECT_NE(s.error().find("left untouched"), std::string::npos) << s.error();
    EXPECT_EQ(pg->query_value(uri, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"), "1");
    EXPECT_EQ(pg->query_value(uri, "SELECT total FROM invoices"), "9.5");
    pg->drop_database(uri);
}

// No server there: a clear error naming the URI without its password; no crash, no hang.
TEST(PostgresStore, UnreachableServerIsAClearErrorWithoutThePassword) {
    auto s = Store::open("postgresql://fetalhc:s3cret-pw@127.0.0.1:1/fetalhc?connect_timeout=5");
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("cannot connect to PostgreSQL at 'postgresql://fetalhc:***@127.0.0.1:1/fetalhc"), std::string::npos)
        << s.error();
    EXPECT_EQ(s.error().find("s3cret-pw"), std::string::npos) << s.error();
    EXPECT_EQ(s.error_value().field, "db") << "the front end names its database option: " << s.error();
    s = Store::open("postgresql://fetalhc@127.0.0.1:1/fetalhc?password=s3cret-pw&connect_timeout=5");
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().find("?password=***&connect_timeout=5"), std::string::npos) << s.error();
    EXPECT_EQ(s.error().find("s3cret-pw"), std::string::npos) << s.error();
}

// ---- validation helpers ------------------------------------------------------------------------

TEST(StoreValidation, IdsDatesHashesUidsAndKeys) {
    EXPECT_TRUE(valid_pregnancy_id("A-1.b_2"));
    EXPECT_FALSE(valid_pregnancy_id(""));
    EXPECT_FALSE(valid_pregnancy_id("a/b"));
    EXPECT_FALSE(valid_pregnancy_id(std::string(65, 'a')));
    EXPECT_TRUE(valid_date("2024-02-29"));
    EXPECT_FALSE(valid_date("2023-02-29"));
    EXPECT_FALSE(valid_date("2024-13-01"));
    EXPECT_FALSE(valid_date("2024-1-01"));
    EXPECT_TRUE(valid_sha256(sha256_hex("")));
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");  // FIPS 180-2 empty-message digest
    EXPECT_FALSE(valid_sha256(std::string(64, 'A')));
    for (const char* ok : {"1", "1.2.840.10008.5.1.4.1.1.6.1", "2.25.329800735698586629295641978511506172918"})
        EXPECT_TRUE(valid_dicom_uid(ok)) << ok;
    for (const std::string bad : {std::string(), std::string("1..2"), std::string(".1"), std::string("1."), std::string("1.2a"),
                                  std::string("1 2"), std::string(65, '1')})
        EXPECT_FALSE(valid_dicom_uid(bad)) << bad;
    EXPECT_TRUE(valid_dicom_uid(std::string(64, '1')));
    EXPECT_TRUE(valid_idempotency_key("3f2b8c1e-7d4a-4b6e-9a1f-0c2d3e4f5a6b"));
    EXPECT_TRUE(valid_idempotency_key(std::string(128, '~')));
    EXPECT_TRUE(valid_idempotency_key("a b"));
    EXPECT_FALSE(valid_idempotency_key(""));
    EXPECT_FALSE(valid_idempotency_key(std::string(129, 'k')));
    EXPECT_FALSE(valid_idempotency_key("tab\there"));
    EXPECT_FALSE(valid_idempotency_key("caf\xc3\xa9"));
    EXPECT_TRUE(is_postgresql_target("postgresql://h/db"));
    EXPECT_TRUE(is_postgresql_target("postgres://h/db"));
    EXPECT_FALSE(is_postgresql_target("postgresql.db"));
    EXPECT_FALSE(is_postgresql_target("/var/lib/fetalhc/postgresql://x"));
}

// ---- issue 22: what stands at --db is named (SQLite) -------------------------------------------------------

namespace {


std::string open_error(const std::string& db) {
    auto s = Store::open(db);
    return s ? "opened" : s.error();
}

// Makes `dir` a read-only mount in a new mount namespace of this (child) process: as root directly,
// else inside a new user namespace. Returns "" or why it could not (the test is then skipped).
std::string remount_read_only(const fs::path& dir) {
    const uid_t uid = ::geteuid();
    const gid_t gid = ::getegid();
    if (::unshare(uid == 0 ? CLONE_NEWNS : CLONE_NEWUSER | CLONE_NEWNS) != 0)
        return std::string("unshare: ") + std::strerror(errno);
    if (uid != 0) {
        std::ofstream("/proc/self/setgroups") << "deny";
        std::ofstream("/proc/self/uid_map") << "0 " << uid << " 1";
        std::ofstream("/proc/self/gid_map") << "0 " << gid << " 1";
    }
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        return std::string("making mounts private: ") + std::strerror(errno);
    if (::mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr) != 0) return std::string("bind mount: ") + std::strerror(errno);
    // A remount must keep the flags the mount already has (locked in a user namespace).
    struct statvfs v{};
    ::statvfs(dir.c_str(), &v);
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY;
    if (v.f_flag & ST_NOSUID) flags |= MS_NOSUID;
    if (v.f_flag & ST_NODEV) flags |= MS_NODEV;
    if (v.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
    if (v.f_flag & ST_NOATIME) flags |= MS_NOATIME;
    if (v.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (v.f_flag & ST_RELATIME) flags |= MS_RELATIME;
    if (::mount(nullptr, dir.c_str(), nullptr, flags, nullptr) != 0) return std::string("read-only remount: ") + std::strerror(errno);
    if (::access(dir.c_str(), W_OK) == 0 || errno != EROFS) return "the remount did not make the folder read-only";
    return "";
}

}  // namespace

// A fetalhc database on a read-only file system was called "not an SQLite database" (a WAL database
// needs its -shm file even to be read); it is now said to be on a read-only file system.
TEST(SqliteStore, DatabaseOnAReadOnlyFileSystemIsSaidToBeSo) {
    const fs::path dir = temp_dir("erofs");
    const std::string db = (dir / "hc.db").string();
    ASSERT_TRUE(Store::open(db));  // a fetalhc database, in WAL mode, closed again
    const std::string out = in_child([&] {
        if (auto why = remount_read_only(dir); !why.empty()) return "SKIP: " + why;
        return open_error(db);
    });
    fs::remove_all(dir);
    if (out.rfind("SKIP: ", 0) == 0) GTEST_SKIP() << "cannot mount a read-only folder here (" << out.substr(6) << ")";
    EXPECT_NE(out.find("'" + db + "' is on a read-only file system (EROFS)"), std::string::npos) << out;
    EXPECT_EQ(out.find("not an SQLite database"), std::string::npos) << out;
}

// A database file the server cannot read was also "not an SQLite database"; it is now permission
// denied. As root (CI) the child drops to uid/gid 65534 first, since permissions do not stop root.
TEST(SqliteStore, UnreadableDatabaseIsPermissionDenied) {
    const fs::path dir = temp_dir("eacces");
    const std::string db = (dir / "hc.db").string();
    constexpr uid_t kNobody = 65534;
    if (::geteuid() == 0) ASSERT_EQ(::chown(dir.c_str(), kNobody, kNobody), 0) << std::strerror(errno);
    const std::string out = in_child([&] {
        if (::geteuid() == 0 && (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0))
            return std::string("cannot drop to uid 65534: ") + std::strerror(errno);
        if (!Store::open(db)) return std::string("fresh database did not open");
        fs::permissions(db, fs::perms::none);
        return open_error(db);
    });
    fs::remove_all(dir);
    EXPECT_NE(out.find("permission denied (EACCES)"), std::string::npos) << out;
    EXPECT_EQ(out.find("not an SQLite database"), std::string::npos) << out;
}

// A device, a named pipe or a symlink loop at --db is named as what it is, before SQLite opens it
// (a named pipe blocked the open) and before any folder is made beside it.
TEST(SqliteStore, DeviceNamedPipeOrSymlinkLoopAsDatabaseIsNamed) {
    const std::string zero = in_child([] { return open_error("/dev/zero"); });
    EXPECT_NE(zero.find("'/dev/zero' is a character device, not a regular file"), std::string::npos) << zero;
    const fs::path dir = temp_dir("special");
    const std::string fifo = (dir / "pipe.db").string();
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const std::string pipe = in_child([&] { return open_error(fifo); });
    EXPECT_NE(pipe.find("named pipe (FIFO)"), std::string::npos) << pipe;
    fs::create_symlink(dir / "b.db", dir / "a.db");
    fs::create_symlink(dir / "a.db", dir / "b.db");
    const std::string loop = open_error((dir / "a.db").string());
    EXPECT_NE(loop.find("symbolic link loop (ELOOP"), std::string::npos) << loop;
    EXPECT_FALSE(fs::exists(dir / "pipe.db.images"));
    EXPECT_FALSE(fs::exists(dir / "a.db.images"));
    fs::remove_all(dir);
}
