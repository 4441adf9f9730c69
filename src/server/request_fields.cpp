#include "request_fields.h"

#include "fetalhc/image_io.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

namespace fetalhc::server {

void fail(ErrorCode code, std::string message) { throw ApiError{code, std::move(message)}; }

std::optional<ApiError> pixel_size_problem(double mm, const std::string& field) {
    const std::string e = check_pixel_size(mm, "'" + field + "'");
    if (e.empty()) return std::nullopt;
    return ApiError{ErrorCode::InvalidPixelSize, e};
}

std::optional<ApiError> ga_problem(double weeks, const std::string& field) {
    if (weeks > 0 && weeks < 45) return std::nullopt;
    return ApiError{ErrorCode::InvalidGa, "'" + field + "' must be a gestational age in weeks between 0 and 45 (e.g. 20.5)"};
}

std::optional<double> parse_number(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    if (i == s.size()) return std::nullopt;
    char* end = nullptr;
    const double v = std::strtod(s.c_str() + i, &end);
    if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
    return v;
}

// ---- single values ----------------------------------------------------------------------------

void check_pixel_size_value(double mm, const std::string& field) {
    if (auto p = pixel_size_problem(mm, field)) throw *p;
}

double check_ga(double weeks, const std::string& field) {
    if (auto p = ga_problem(weeks, field)) throw *p;
    return weeks;
}

void check_pregnancy_id(const std::string& id, const std::string& field) {
    if (!valid_pregnancy_id(id))
        fail(ErrorCode::InvalidPregnancyId, "'" + field + "' must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' or '-' "
                                            "(a pseudonymous id, never a name or a hospital number)");
}

void check_date(const std::string& date, const std::string& field) {
    if (!valid_date(date)) fail(ErrorCode::InvalidDate, "'" + field + "' must be a calendar date as YYYY-MM-DD (e.g. 2026-03-14)");
}

std::string check_image_id(std::string sha256) {
    std::transform(sha256.begin(), sha256.end(), sha256.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (!valid_sha256(sha256))
        fail(ErrorCode::InvalidImageId, "an image is named by its SHA-256: 64 hex digits, as in 'image_url'");
    return sha256;
}

// ---- multipart forms --------------------------------------------------------------------------

std::optional<std::string> form_text(const HttpRequest& req, const std::string& name) {
    if (auto it = req.form.find(name); it != req.form.end()) return it->second;
    if (auto it = req.files.find(name); it != req.files.end()) return it->second.bytes;
    return std::nullopt;
}

const UploadedFile& require_upload(const HttpRequest& req, const std::string& field) {
    if (!req.multipart) fail(ErrorCode::BadRequest, "send the image as multipart/form-data with a file field '" + field + "'");
    auto it = req.files.find(field);
    if (it == req.files.end())
        fail(ErrorCode::MissingField, "the form has no file field '" + field + "'; attach the image as '" + field + "'");
    if (it->second.bytes.empty())
        fail(ErrorCode::ImageUnreadable, "the file field '" + field + "' is empty (0 bytes); attach an image file");
    return it->second;
}

std::string upload_name(const UploadedFile& f) { return f.filename.empty() ? f.name : f.filename; }

double form_pixel_size(const HttpRequest& req) {
    auto v = form_text(req, "pixel_size_mm");
    if (!v)
        fail(ErrorCode::MissingField,
             "the form field 'pixel_size_mm' is missing; send the pixel size in mm per pixel (e.g. 0.13)");
    auto x = parse_number(*v);
    if (!x) fail(ErrorCode::InvalidPixelSize, "the form field 'pixel_size_mm' is not a number; send mm per pixel, e.g. 0.13");
    check_pixel_size_value(*x, "pixel_size_mm");
    return *x;
}

std::optional<double> form_ga(const HttpRequest& req) {
    auto v = form_text(req, "ga_weeks");
    if (!v || v->empty()) return std::nullopt;
    auto x = parse_number(*v);
    if (!x) fail(ErrorCode::InvalidGa, "the form field 'ga_weeks' is not a number; send weeks, e.g. 20.5, or leave it out");
    return check_ga(*x, "ga_weeks");
}

std::optional<std::string> form_pregnancy_id(const HttpRequest& req) {
    auto v = form_text(req, "pregnancy_id");
    if (v) check_pregnancy_id(*v, "pregnancy_id");
    return v;
}

std::optional<std::string> form_exam_date(const HttpRequest& req) {
    auto v = form_text(req, "exam_date");
    if (v) check_date(*v, "exam_date");
    return v;
}

// ---- JSON bodies ------------------------------------------------------------------------------

json parse_json_body(const HttpRequest& req) {
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        fail(ErrorCode::BadRequest,
             "the request body must be a JSON object (Content-Type: application/json); see /openapi.json");
    return j;
}

double json_number(const json& j, const std::string& key, ErrorCode invalid, const std::string& where) {
    const std::string name = where.empty() ? key : where + "." + key;
    if (!j.contains(key)) fail(where.empty() ? ErrorCode::MissingField : invalid, "'" + name + "' is missing");
    if (!j[key].is_number() || !std::isfinite(j[key].get<double>())) fail(invalid, "'" + name + "' must be a finite number");
    return j[key].get<double>();
}

std::string json_string(const json& j, const std::string& key, ErrorCode invalid) {
    if (!j.contains(key)) fail(ErrorCode::MissingField, "'" + key + "' is missing");
    if (!j[key].is_string()) fail(invalid, "'" + key + "' must be a string");
    return j[key].get<std::string>();
}

std::optional<double> json_ga(const json& j) {
    if (!j.contains("ga_weeks") || j["ga_weeks"].is_null()) return std::nullopt;
    return check_ga(json_number(j, "ga_weeks", ErrorCode::InvalidGa), "ga_weeks");
}

Ellipse json_ellipse(const json& j, const std::string& key) {
    if (!j.contains(key) || !j[key].is_object())
        fail(j.contains(key) ? ErrorCode::InvalidEllipse : ErrorCode::MissingField,
             "'" + key + "' must be an object {center_x, center_y, semi_axis_a, semi_axis_b, angle_rad} in pixels");
    const json& e = j[key];
    const auto num = [&](const char* k) { return json_number(e, k, ErrorCode::InvalidEllipse, key); };
    Ellipse el{num("center_x"), num("center_y"), num("semi_axis_a"), num("semi_axis_b"), num("angle_rad")};
    if (!(el.a > 0 && el.b > 0)) fail(ErrorCode::InvalidEllipse, "'" + key + "' semi-axes must be positive (pixels)");
    return el.normalized();
}

std::vector<cv::Point2d> json_points(const json& body, size_t max_points) {
    if (!body.contains("points") || !body["points"].is_array())
        fail(body.contains("points") ? ErrorCode::InvalidPoints : ErrorCode::MissingField,
             "'points' must be an array of [x, y] pixel coordinates (or send a mask image as multipart)");
    const json& pts = body["points"];
    if (pts.size() > max_points)
        fail(ErrorCode::InvalidPoints, "'points' has " + std::to_string(pts.size()) + " entries; send at most " +
                                           std::to_string(max_points) + " boundary points");
    std::vector<cv::Point2d> out;
    out.reserve(pts.size());
    for (const auto& p : pts) {
        if (!p.is_array() || p.size() != 2 || !p[0].is_number() || !p[1].is_number() || !std::isfinite(p[0].get<double>()) ||
            !std::isfinite(p[1].get<double>()))
            fail(ErrorCode::InvalidPoints, "every entry of 'points' must be [x, y] with two finite numbers (pixels)");
        out.emplace_back(p[0].get<double>(), p[1].get<double>());
    }
    return out;
}

namespace {

std::optional<std::string> exam_quality(const json& body) {
    if (!body.contains("quality") || body["quality"].is_null()) return std::nullopt;
    const json& q = body["quality"];
    if (!q.is_string() || (q != "ok" && q != "review"))
        fail(ErrorCode::InvalidField, "'quality' must be \"ok\" or \"review\" (as returned by /v1/measure)");
    return q.get<std::string>();
}

std::optional<std::vector<std::string>> exam_reasons(const json& body) {
    if (!body.contains("reasons") || body["reasons"].is_null()) return std::nullopt;
    const json& r = body["reasons"];
    if (!r.is_array() || r.size() > 50) fail(ErrorCode::InvalidField, "'reasons' must be an array of at most 50 strings");
    std::vector<std::string> out;
    for (const auto& s : r) {
        if (!s.is_string() || s.get<std::string>().size() > 500)
            fail(ErrorCode::InvalidField, "'reasons' must be an array of strings of at most 500 characters");
        out.push_back(s.get<std::string>());
    }
    return out;
}

}  // namespace

ExamInput parse_exam_input(const json& body) {
    ExamInput in;
    Exam& ex = in.exam;
    ex.pregnancy_id = json_string(body, "pregnancy_id", ErrorCode::InvalidPregnancyId);
    check_pregnancy_id(ex.pregnancy_id, "pregnancy_id");
    ex.exam_date = json_string(body, "exam_date", ErrorCode::InvalidDate);
    check_date(ex.exam_date, "exam_date");
    ex.image_sha256 = json_string(body, "image_sha256", ErrorCode::InvalidImageId);
    if (!valid_sha256(ex.image_sha256))
        fail(ErrorCode::InvalidImageId, "'image_sha256' must be the 64 lower-case hex digits returned by POST /v1/measure");
    ex.pixel_size_mm = json_number(body, "pixel_size_mm", ErrorCode::InvalidPixelSize);
    check_pixel_size_value(ex.pixel_size_mm, "pixel_size_mm");
    ex.ellipse_px = json_ellipse(body, "ellipse_px");
    if (!body.contains("corrected") || !body["corrected"].is_boolean())
        fail(body.contains("corrected") ? ErrorCode::InvalidField : ErrorCode::MissingField,
             "'corrected' must be true (the clinician moved the ellipse) or false");
    ex.corrected = body["corrected"].get<bool>();
    ex.ga_weeks_given = json_ga(body);
    in.quality = exam_quality(body);
    in.reasons = exam_reasons(body);
    if (body.contains("sop_instance_uid") && !body["sop_instance_uid"].is_null()) {
        const json& uid = body["sop_instance_uid"];
        if (!uid.is_string() || !valid_dicom_uid(uid.get<std::string>()))
            fail(ErrorCode::InvalidField, "'sop_instance_uid' must be the DICOM SOP Instance UID of the image measured (digits "
                                          "and dots, e.g. 1.2.840.113619.2.55.3.1234, at most 64 characters), or left out");
        ex.sop_instance_uid = uid.get<std::string>();
    }
    return in;
}

}  // namespace fetalhc::server
