// Routes of the history: accepted exams, a pregnancy's exams (JSON and CSV) and stored images.
#include "routes.h"
#include "service.h"
#include "request_fields.h"

#include "fetalhc/csv.h"
#include "fetalhc/dicom.h"

#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <ctime>
#include <sstream>

namespace fetalhc::server {
namespace {

json opt_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

json exam_json(const Exam& e) {
    return {{"id", e.id},
            {"pregnancy_id", e.pregnancy_id},
            {"exam_date", e.exam_date},
            {"image_sha256", e.image_sha256},
            {"image_url", "/v1/images/" + e.image_sha256},
            {"pixel_size_mm", e.pixel_size_mm},
            {"ellipse_px", ellipse_json(e.ellipse_px)},
            {"hc_mm", e.hc_mm},
            {"bpd_mm", e.bpd_mm},
            {"ofd_mm", e.ofd_mm},
            {"ga_hadlock_weeks", opt_json(e.ga_hadlock_weeks)},
            {"ga_intergrowth_weeks", opt_json(e.ga_intergrowth_weeks)},
            {"ga_weeks_given", opt_json(e.ga_weeks_given)},
            {"centile", opt_json(e.centile)},
            {"quality", e.quality},
            {"reasons", e.reasons},
            {"corrected", e.corrected},
            {"accepted", e.accepted},
            {"created_at", e.created_at},
            {"sop_instance_uid", e.sop_instance_uid ? json(*e.sop_instance_uid) : json(nullptr)}};
}

// A stored image's bytes; fails with `missing` when the store has no such image, storage_failed
// when it cannot be read.
std::string stored_image(Services& s, const std::string& sha, ErrorCode missing, const std::string& message) {
    auto bytes = s.store.read_image(sha);
    if (!bytes) throw api_error(bytes.error_value());
    if (!*bytes) fail(missing, message);
    return std::move(**bytes);
}

// Image type from its first bytes (stored images keep no extension).
std::string sniff_image_type(const std::string& b) {
    auto starts = [&](const std::string& magic) { return b.compare(0, magic.size(), magic) == 0; };
    if (starts("\x89PNG")) return "image/png";
    if (starts("\xFF\xD8")) return "image/jpeg";
    if (starts("BM")) return "image/bmp";
    if (starts(std::string("II*\0", 4)) || starts(std::string("MM\0*", 4))) return "image/tiff";
    return "application/octet-stream";
}

void optional_number(CsvWriter& w, const std::optional<double>& v, int digits) {
    if (v) w.number(*v, digits);
    else w.empty();
}

// One row per exam; ids, dates, hashes, quality and reasons are text cells (quoted and
// formula-neutralised by CsvWriter: a reason or id may be chosen by a client).
std::string history_csv(const History& h) {
    std::ostringstream out;
    CsvWriter w(out);
    for (const char* name :
         {"exam_id", "pregnancy_id", "exam_date", "image_sha256", "pixel_size_mm", "center_x_px", "center_y_px", "semi_axis_a_px",
          "semi_axis_b_px", "angle_rad", "hc_mm", "bpd_mm", "ofd_mm", "ga_hadlock_weeks", "ga_intergrowth_weeks", "ga_weeks_given",
          "centile", "quality", "reasons", "corrected", "accepted", "created_at", "sop_instance_uid"})
        w.raw(name);
    w.end_row();
    for (const Exam& e : h.exams) {
        std::string reasons;
        for (size_t i = 0; i < e.reasons.size(); ++i) reasons += (i ? "; " : "") + e.reasons[i];
        const Ellipse& el = e.ellipse_px;
        w.integer(e.id).text(e.pregnancy_id).text(e.exam_date).text(e.image_sha256).number(e.pixel_size_mm, 6);
        w.number(el.cx, 3).number(el.cy, 3).number(el.a, 3).number(el.b, 3).number(el.angle, 6);
        w.number(e.hc_mm, 2).number(e.bpd_mm, 2).number(e.ofd_mm, 2);
        optional_number(w, e.ga_hadlock_weeks, 2);
        optional_number(w, e.ga_intergrowth_weeks, 2);
        optional_number(w, e.ga_weeks_given, 2);
        optional_number(w, e.centile, 1);
        w.text(e.quality).text(reasons).raw(e.corrected ? "true" : "false").raw(e.accepted ? "true" : "false").text(e.created_at);
        if (e.sop_instance_uid) w.text(*e.sop_instance_uid);
        else w.empty();
        w.end_row();
    }
    return out.str();
}

// Today's date (UTC) as YYYY-MM-DD, plus `days`.
std::string utc_date(int days) {
    const std::time_t t = std::time(nullptr) + std::time_t(days) * 86400;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[16];
    std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
    return buf;
}

// An exam must describe a possible head: finite positive axes, a pixel size in [0.01, 2] mm, a date
// between 1900 and today (one day of slack for time zones), and an HC within 40..400 mm (the range
// measure's quality check uses).
void check_exam_plausible(const Exam& ex, const Measurement& m) {
    const Ellipse& e = ex.ellipse_px;
    if (!(std::isfinite(e.cx) && std::isfinite(e.cy) && std::isfinite(e.a) && std::isfinite(e.b) && std::isfinite(e.angle)) ||
        !(e.a > 0 && e.b > 0) || e.a > 1e6 || e.b > 1e6 || std::abs(e.cx) > 1e6 || std::abs(e.cy) > 1e6)
        fail(ErrorCode::InvalidEllipse, "'ellipse_px' must have finite coordinates and positive semi-axes of at most 1e6 pixels");
    if (auto p = pixel_size_problem(ex.pixel_size_mm, "pixel_size_mm")) fail(p->code, "an exam's " + p->message);
    if (ex.exam_date < "1900-01-01" || ex.exam_date > utc_date(1))
        fail(ErrorCode::InvalidDate, "'exam_date' must be between 1900-01-01 and today");
    if (!(std::isfinite(m.hc_mm) && m.hc_mm >= 40 && m.hc_mm <= 400))
        fail(ErrorCode::InvalidEllipse, "the ellipse gives a head circumference outside 40..400 mm with this pixel size; check "
                                        "'ellipse_px' (pixels) and 'pixel_size_mm'");
}

// The Idempotency-Key header of POST /v1/exams ("" when absent).
std::string idempotency_key(const HttpRequest& req) {
    if (req.headers.find("idempotency-key") == req.headers.end()) return "";
    const std::string key = req.header("Idempotency-Key");
    if (!valid_idempotency_key(key))
        fail(ErrorCode::InvalidField, "the Idempotency-Key header must be 1 to 128 printable ASCII characters (e.g. a UUID); "
                                      "send the same key again only to retry the same exam");
    return key;
}

HttpResponse add_exam(const HttpRequest& req, Services& s) {
    const std::string key = idempotency_key(req);
    ExamInput in = parse_exam_input(parse_json_body(req));
    Exam& ex = in.exam;
    check_exam_plausible(ex, measurement_from_ellipse(ex.ellipse_px, ex.pixel_size_mm, ex.ga_weeks_given));
    const std::string stored = stored_image(s, ex.image_sha256, ErrorCode::UnknownImage,
                                            "'image_sha256' names no stored image; upload the image with POST /v1/measure first");
    // A DICOM image names itself: its SOP Instance UID is kept with the exam (taken from the file
    // when the client sends none, and a different one is refused).
    const std::vector<unsigned char> raw(stored.begin(), stored.end());
    if (is_dicom(raw)) {
        auto h = read_dicom_header(raw, "the stored image");
        if (h && valid_dicom_uid(h->sop_instance_uid)) {
            if (ex.sop_instance_uid && *ex.sop_instance_uid != h->sop_instance_uid)
                fail(ErrorCode::InvalidField, "'sop_instance_uid' " + *ex.sop_instance_uid + " is not the SOP Instance UID of the "
                                              "stored image (" + h->sop_instance_uid + "); send the one POST /v1/measure returned "
                                              "in dicom.sop_instance_uid, or leave it out");
            ex.sop_instance_uid = h->sop_instance_uid;
        }
    }
    Measurement m = measurement_from_ellipse(ex.ellipse_px, ex.pixel_size_mm, ex.ga_weeks_given);
    ex.hc_mm = m.hc_mm;
    ex.bpd_mm = m.bpd_mm;
    ex.ofd_mm = m.ofd_mm;
    if (m.ga_hadlock.in_range) ex.ga_hadlock_weeks = m.ga_hadlock.weeks;
    if (m.ga_intergrowth.in_range) ex.ga_intergrowth_weeks = m.ga_intergrowth.weeks;
    if (m.centile && m.centile->in_range) ex.centile = m.centile->centile;
    // The quality is recomputed from the ellipse; a client's "review" (e.g. from the image checks
    // of /v1/measure) and its reasons are kept, a client's "ok" never overrides the numbers.
    keep_earlier_review(m, in.quality.value_or("ok") == "review", in.reasons.value_or(std::vector<std::string>{}));
    ex.quality = m.quality;
    ex.reasons = m.reasons;
    ex.accepted = true;
    // The audit entry is written in the exam's own transaction (a replay saves nothing and is
    // audited like any other request, by handle()).
    AuditEntry audit = audit_entry_for(req, *match_route("POST", "/v1/exams")->route);
    audit.outcome = 201;
    auto saved = s.store.add_exam(ex, key, audit);
    if (!saved) throw api_error(saved.error_value());  // idempotency_key_reused, unknown_image, storage_failed
    HttpResponse r = json_response(201, exam_json(saved->exam));
    if (saved->replayed) r.headers.emplace_back("Idempotent-Replayed", "true");
    r.audit.pregnancy_id = saved->exam.pregnancy_id;
    r.audit.exam_id = saved->exam.id;
    r.audit.image_sha256 = saved->exam.image_sha256;
    r.audit.written = !saved->replayed;
    return r;
}

HttpResponse image(const HttpRequest& req, Services& s) {
    const std::string sha = check_image_id(req.path_params.at("sha256"));
    std::string bytes = stored_image(s, sha, ErrorCode::ImageNotFound, "no stored image with this SHA-256; upload it with POST /v1/measure");
    HttpResponse r;
    r.content_type = sniff_image_type(bytes);
    r.body = std::move(bytes);
    r.headers = {{"Cache-Control", "private, max-age=31536000, immutable"}};
    return r;
}

// The stored image as an 8-bit gray PNG a browser can show: a DICOM file's frame (query `frame`,
// default 0), any other image decoded as POST /v1/measure decodes it.
HttpResponse image_preview(const HttpRequest& req, Services& s) {
    const std::string sha = check_image_id(req.path_params.at("sha256"));
    const std::string bytes =
        stored_image(s, sha, ErrorCode::ImageNotFound, "no stored image with this SHA-256; upload it with POST /v1/measure");
    int frame = 0;
    if (auto q = req.query.find("frame"); q != req.query.end()) {
        const auto v = parse_number(q->second);
        if (!v || *v < 0 || *v != double(int(*v)) || *v >= kDicomMaxFrames)
            fail(ErrorCode::InvalidField, "'frame' must be a frame number from 0 (the first frame)");
        frame = int(*v);
    }
    cv::Mat gray;
    const std::vector<unsigned char> raw(bytes.begin(), bytes.end());
    if (is_dicom(raw)) {
        // Only the frame asked for is decoded (issue 22 row 6: frame 1999 cost 2000 decodes).
        SlotGuard slot(s.engine.decode_slots());
        auto reader = DicomFrameReader::open(raw, "the stored image");
        if (!reader) throw api_error(reader.error_value());
        if (frame >= (*reader)->header().frames)
            fail(ErrorCode::InvalidField, "'frame' " + std::to_string(frame) + " is past the last frame of the stored image (it has " +
                                              std::to_string((*reader)->header().frames) + ")");
        auto f = (*reader)->frame(frame);
        if (!f) throw api_error(f.error_value());
        gray = std::move(*f);
    } else {
        if (frame != 0) fail(ErrorCode::InvalidField, "'frame' is only for multi-frame DICOM images; this image has one frame");
        gray = decode_image(s.engine.decode_slots(), bytes, "the stored image").value_or_throw();
    }
    std::vector<unsigned char> png;
    if (gray.empty() || !cv::imencode(".png", gray, png)) fail(ErrorCode::Internal, "cannot encode the preview PNG");
    HttpResponse r;
    r.content_type = "image/png";
    r.body.assign(png.begin(), png.end());
    r.headers = {{"Cache-Control", "private, max-age=31536000, immutable"}};
    return r;
}

// The history of the pregnancy in the path; pregnancy_not_found when it has no exam.
History pregnancy_history(const HttpRequest& req, Services& s) {
    const std::string& id = req.path_params.at("id");
    check_pregnancy_id(id, "pregnancy id");
    auto h = s.store.history(id);
    if (!h) throw api_error(h.error_value());
    if (!h->found) fail(ErrorCode::PregnancyNotFound, "no pregnancy with this id; exams are saved with POST /v1/exams");
    return std::move(*h);
}

// GET /v1/audit?since=&until=&user=&pregnancy_id=&limit=&before= (admin): the audit trail, newest
// first; `next_before` gives the next page's `before` (null on the last page).
HttpResponse audit(const HttpRequest& req, Services& s) {
    AuditQuery q;
    auto text = [&](const char* name) {
        auto it = req.query.find(name);
        return it == req.query.end() ? std::string() : it->second;
    };
    q.since = text("since");
    q.until = text("until");
    for (const auto* t : {&q.since, &q.until})
        if (!t->empty() && !valid_audit_time(*t))
            fail(ErrorCode::InvalidField, "'since' and 'until' must be dates (YYYY-MM-DD) or UTC times (YYYY-MM-DDTHH:MM:SSZ)");
    q.user = text("user");
    if (!q.user.empty() && !valid_user_name(q.user)) fail(ErrorCode::InvalidField, "'user' is not a user name");
    q.pregnancy_id = text("pregnancy_id");
    if (!q.pregnancy_id.empty() && !valid_pregnancy_id(q.pregnancy_id)) fail(ErrorCode::InvalidField, "'pregnancy_id' is not a pregnancy id");
    auto integer = [&](const char* name, long long lo, long long hi, long long fallback) {
        const std::string v = text(name);
        if (v.empty()) return fallback;
        if (v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos || std::stoll(v) < lo || std::stoll(v) > hi)
            fail(ErrorCode::InvalidField, "'" + std::string(name) + "' must be a whole number from " + std::to_string(lo) + " to " +
                                              std::to_string(hi));
        return std::stoll(v);
    };
    q.limit = int(integer("limit", 1, 1000, 100));
    q.before_id = integer("before", 1, std::numeric_limits<long long>::max() / 2, 0);
    auto entries = s.store.audit_entries(q);
    if (!entries) throw api_error(entries.error_value());
    json list = json::array();
    for (const auto& e : *entries) list.push_back(audit_json(e));
    const bool more = int(entries->size()) == q.limit;
    HttpResponse r = json_response(200, {{"entries", list}, {"next_before", more ? json(entries->back().id) : json(nullptr)}});
    r.audit.pregnancy_id = q.pregnancy_id;
    return r;
}

HttpResponse pregnancy(const HttpRequest& req, Services& s) {
    const History h = pregnancy_history(req, s);
    json exams = json::array();
    // Who saved each exam (and so corrected it, when it is corrected): its audit entry.
    AuditQuery q;
    q.pregnancy_id = req.path_params.at("id");
    q.action = "POST /v1/exams";
    q.limit = 10000;
    auto saves = s.store.audit_entries(q);
    if (!saves) throw api_error(saves.error_value());
    std::map<long long, std::string> saved_by;
    for (const auto& a : *saves)
        if (a.exam_id && a.outcome == 201) saved_by.emplace(*a.exam_id, a.user);
    for (const auto& e : h.exams) {
        json j = exam_json(e);
        auto it = saved_by.find(e.id);
        j["saved_by"] = it == saved_by.end() ? json(nullptr) : json(it->second);
        exams.push_back(std::move(j));
    }
    return json_response(200, {{"pregnancy_id", req.path_params.at("id")}, {"exams", exams}});
}

HttpResponse pregnancy_csv(const HttpRequest& req, Services& s) {
    const History h = pregnancy_history(req, s);
    HttpResponse r;
    r.content_type = "text/csv; charset=utf-8";
    r.body = history_csv(h);
    // The id is checked: only [A-Za-z0-9_.-], safe inside the quoted file name.
    r.headers = {{"Content-Disposition", "attachment; filename=\"pregnancy-" + req.path_params.at("id") + ".csv\""}};
    return r;
}

}  // namespace

std::vector<Route> exam_routes() {
    return {{"POST", "/v1/exams", add_exam},
            {"GET", "/v1/audit", audit},
            {"GET", "/v1/images/{sha256}", image},
            {"GET", "/v1/images/{sha256}/preview.png", image_preview},
            {"GET", "/v1/pregnancies/{id}", pregnancy},
            {"GET", "/v1/pregnancies/{id}/export.csv", pregnancy_csv}};
}

}  // namespace fetalhc::server
