// Reading and checking the fields of a request: pixel size, GA, pregnancy ids, dates, image ids,
// ellipses, points, JSON bodies, multipart uploads. Each helper returns the checked value or throws
// an ApiError whose code names the kind of problem and whose message names the field and says what
// to send instead; routes::handle turns it into the error response.
//
//   const double px = form_pixel_size(req);              // throws invalid_pixel_size / missing_field
//   const json body = parse_json_body(req);               // throws bad_request
//   const Ellipse e = json_ellipse(body, "ellipse_px");   // throws invalid_ellipse / missing_field
//
// The *_problem functions do the same checks without throwing, for the services (service.h).
// Thread safety: pure functions.
#pragma once

#include "errors.h"
#include "http_types.h"

#include "fetalhc/ellipse.h"
#include "fetalhc/store.h"

#include <opencv2/core.hpp>

#include <optional>
#include <string>
#include <vector>

namespace fetalhc::server {

using nlohmann::json;

[[noreturn]] void fail(ErrorCode code, std::string message);

// Non-throwing checks: the error, or nullopt when the value is valid.
std::optional<ApiError> pixel_size_problem(double mm, const std::string& field);  // [0.01, 2] mm
std::optional<ApiError> ga_problem(double weeks, const std::string& field);       // (0, 45) weeks

// A decimal number with optional surrounding spaces; nullopt for anything else (and NaN, inf).
std::optional<double> parse_number(std::string s);

// ---- checks of single values (throw) ----------------------------------------------------------
void check_pixel_size_value(double mm, const std::string& field);
double check_ga(double weeks, const std::string& field);
void check_pregnancy_id(const std::string& id, const std::string& field);
void check_date(const std::string& date, const std::string& field);
// An image id as it appears in a URL: returned in lower case once it is 64 hex digits.
std::string check_image_id(std::string sha256);

// ---- multipart forms --------------------------------------------------------------------------
// A text field: the part sent without a file name, else a part with a file name read as text.
std::optional<std::string> form_text(const HttpRequest& req, const std::string& name);
// The file part `field`: the request must be multipart and the part present and non-empty.
const UploadedFile& require_upload(const HttpRequest& req, const std::string& field);
// The name to use for an upload in messages: its file name, else its field name.
std::string upload_name(const UploadedFile& f);
double form_pixel_size(const HttpRequest& req);                      // required
std::optional<double> form_ga(const HttpRequest& req);               // optional, empty = absent
std::optional<std::string> form_pregnancy_id(const HttpRequest& req);
std::optional<std::string> form_exam_date(const HttpRequest& req);

// ---- JSON bodies ------------------------------------------------------------------------------
json parse_json_body(const HttpRequest& req);  // a JSON object, else bad_request
// j[key] as a finite number. Absent: missing_field at the top level (`where` empty), else
// `invalid` (a key inside an object named `where`); not a finite number: `invalid`.
double json_number(const json& j, const std::string& key, ErrorCode invalid, const std::string& where = "");
std::string json_string(const json& j, const std::string& key, ErrorCode invalid);
std::optional<double> json_ga(const json& j);        // "ga_weeks", null or absent = none
Ellipse json_ellipse(const json& j, const std::string& key);  // positive semi-axes, normalised
// "points": [[x, y], ...] with at most max_points finite pairs.
std::vector<cv::Point2d> json_points(const json& body, size_t max_points);

// The body of POST /v1/exams, checked. `exam` holds the ids, date, image, pixel size, ellipse,
// corrected flag, given GA and the optional sop_instance_uid (a DICOM UID); the numbers are left
// for the route to compute. quality and reasons are the client's values when sent.
struct ExamInput {
    Exam exam;
    std::optional<std::string> quality;
    std::optional<std::vector<std::string>> reasons;
};
ExamInput parse_exam_input(const json& body);

}  // namespace fetalhc::server
