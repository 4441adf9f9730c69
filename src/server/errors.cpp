#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include "errors.h"

#include <stdexcept>

namespace fetalhc::server {

const std::vector<ErrorInfo>& error_catalog() {
    using E = ErrorCode;
    static const std::vector<ErrorInfo> catalog{
        {E::BadRequest, "bad_request", 400,
         "the request is not in the form the endpoint reads (not multipart/form-data, not a JSON object, malformed HTTP)"},
        {E::MissingField, "missing_field", 400, "a required form field, file or JSON key is absent"},
        {E::InvalidField, "invalid_field", 400, "a field has the wrong type or a value outside those listed for it"},
        {E::InvalidPixelSize, "invalid_pixel_size", 400, "the pixel size is not a number of mm per pixel in [0.01, 2]"},
        {E::InvalidGa, "invalid_ga", 400, "the gestational age is not a number of weeks in (0, 45)"},
        {E::InvalidPregnancyId, "invalid_pregnancy_id", 400, "the pregnancy id is not 1 to 64 characters of A-Z a-z 0-9 _ . -"},
        {E::InvalidDate, "invalid_date", 400, "the date is not a calendar date written YYYY-MM-DD"},
        {E::InvalidEllipse, "invalid_ellipse", 400, "the ellipse lacks a finite centre, positive semi-axes or an angle"},
        {E::InvalidPoints, "invalid_points", 400, "the points are not an array of [x, y] pairs, or there are too many"},
        {E::InvalidImageId, "invalid_image_id", 400, "an image id is not a SHA-256 (64 hex digits)"},
        {E::UnknownImage, "unknown_image", 400, "the exam names an image that was never uploaded (POST /v1/measure first)"},
        {E::ImageUnreadable, "image_unreadable", 400,
         "the upload is empty, not a PNG, JPEG, BMP or TIFF image, corrupt, or too small to hold a head"},
        {E::Unauthorized, "unauthorized", 401,
         "the bearer token is missing, wrong or revoked (servers with users or a token file)"},
        {E::Forbidden, "forbidden", 403,
         "refused before routing: the user's role is below the route's (viewer < sonographer < admin), a Host header that is not this server's address (DNS rebinding), an Origin not allowed "
         "(--allow-origin), or a write a web page on another site could send (POST needs Content-Type application/json, "
         "or X-Fetalhc-Request: 1 / Authorization for multipart)"},
        {E::NotFound, "not_found", 404, "no endpoint or web page file at this path"},
        {E::PregnancyNotFound, "pregnancy_not_found", 404, "no exam was ever saved for this pregnancy id"},
        {E::ImageNotFound, "image_not_found", 404, "no stored image has this SHA-256"},
        {E::LengthRequired, "length_required", 411, "a request body was sent without Content-Length (chunked uploads are refused)"},
        {E::PayloadTooLarge, "payload_too_large", 413, "the request body is larger than the server's upload limit"},
        {E::NoHeadFound, "no_head_found", 422, "no fetal head was found in the image"},
        {E::NotAHeadPlane, "not_a_head_plane", 422,
         "the outline found is not a fetal head in the HC plane (the head check judged it another plane: abdomen, femur, "
         "thorax, cervix or another structure; the message names the most likely): send a head in the trans-thalamic plane"},
        {E::NoEllipseFit, "no_ellipse_fit", 422, "no ellipse fits the head found, or the points or the mask sent"},
        {E::InvalidCalibration, "invalid_calibration", 422,
         "the DICOM file carries no usable calibration (no region in cm, a region box outside the image, absurd deltas) "
         "and no pixel_size_mm was sent"},
        {E::EmptyMask, "empty_mask", 422, "the mask has no white (head) region to fit"},
        {E::MaskTooComplex, "mask_too_complex", 422,
         "the mask's white regions have more boundary pixels than a head's outline could (over 200,000): send one filled head"},
        {E::IdempotencyKeyReused, "idempotency_key_reused", 422,
         "the Idempotency-Key was already used for a different exam (a retry must repeat the first request's body)"},
        {E::StorageFailed, "storage_failed", 500, "the database or the image folder could not be read or written"},
        {E::StoreFull, "store_full", 507, "the image store is at its quota (--max-store-mb) and every stored image is referenced by an exam"},
        {E::Internal, "internal", 500, "an unexpected failure inside the server (a bug: report it with the server log)"},
        {E::ModelLoading, "model_loading", 503, "the model is still loading; retry in a few seconds (GET /health says when)"},
        {E::ModelUnavailable, "model_unavailable", 503, "the model failed to load; the server must be restarted with a good --model"},
        {E::Overloaded, "overloaded", 503,
         "the server is busy: the request would have waited for the network longer than --max-queue-ms; it was not run, "
         "retry after the Retry-After header's seconds"},
    };
    return catalog;
}

const ErrorInfo& error_info(ErrorCode code) {
    const auto& all = error_catalog();
    const size_t i = size_t(code);
    if (i >= all.size() || all[i].code != code) throw std::logic_error("error_catalog is out of step with ErrorCode");
    return all[i];
}

ErrorCode error_code_for(ErrorKind kind) {
    using K = ErrorKind;
    using E = ErrorCode;
    switch (kind) {
        case K::Internal: return E::Internal;
        case K::InvalidArgument: return E::InvalidField;
        case K::ImageUnreadable: return E::ImageUnreadable;
        case K::InvalidCalibration: return E::InvalidCalibration;
        case K::NoHeadFound: return E::NoHeadFound;
        case K::NotAHeadPlane: return E::NotAHeadPlane;
        case K::NoEllipseFit: return E::NoEllipseFit;
        case K::EmptyMask: return E::EmptyMask;
        case K::MaskTooComplex: return E::MaskTooComplex;
        case K::ModelUnavailable: return E::ModelUnavailable;
        case K::NotFound: return E::NotFound;
        case K::UnknownImage: return E::UnknownImage;
        case K::Conflict: return E::IdempotencyKeyReused;
        case K::StoreFull: return E::StoreFull;
        case K::StorageFailed: return E::StorageFailed;
        case K::Io: return E::Internal;  // a file of the server's own
    }
    return E::Internal;
}

std::string http_field_name(const std::string& field) {
    // Only the fields a library message asks the client to give; the store's messages name their
    // own (the image, the Idempotency-Key).
    static const std::pair<const char*, const char*> kNames[] = {{"pixel_size", "pixel_size_mm"}, {"ga_weeks", "ga_weeks"}};
    for (const auto& [f, name] : kNames)
        if (field == f) return name;
    return "";
}

ApiError api_error(const Error& e) {
    const std::string name = http_field_name(e.field);
    return ApiError{error_code_for(e.kind), name.empty() ? e.message : e.message + " (" + name + ")"};
}

nlohmann::json error_body(const ApiError& e) {
    return {{"error", {{"code", error_info(e.code).name}, {"message", e.message}}}};
}

HttpResponse error_response(const ApiError& e) {
    const ErrorInfo& info = error_info(e.code);
    // A 500's own message may name a file, a folder or a database detail: clients get an id, the
    // log gets the message (messages already of the form "internal error (id ...)" pass).
    if (info.http_status >= 500 && info.http_status < 503 && info.code != ErrorCode::StoreFull && e.message.rfind("internal error (id ", 0) != 0) {
        static std::atomic<unsigned long long> next_id{1};
        const std::string id = "s" + std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                                        std::chrono::system_clock::now().time_since_epoch()).count()) +
                               "-" + std::to_string(next_id++);
        spdlog::error("{} (error id {}): {}", info.name, id, e.message);
        return json_response(info.http_status, error_body({e.code, std::string(info.code == ErrorCode::StorageFailed ? "storage error" : "internal error") +
                                                                       " (id " + id + "); the server log has the details"}));
    }
    HttpResponse r = json_response(info.http_status, error_body(e));
    if (e.retry_after_s > 0 || e.code == ErrorCode::Overloaded)
        r.headers.emplace_back("Retry-After", std::to_string(std::max(1, e.retry_after_s)));
    return r;
}

}  // namespace fetalhc::server
