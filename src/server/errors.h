// Errors of the service: stable snake_case codes, each with one HTTP status and a meaning.
//
//   return ApiError{ErrorCode::InvalidPixelSize, "'pixel_size_mm' must be in [0.01, 2] mm"};
//   HttpResponse r = error_response(e);   // e.g. 400 {"error": {"code": "invalid_pixel_size", "message": "..."}}
//
// Every error body is {"error": {"code": "...", "message": "..."}}: `code` is for programs (it
// never changes meaning; the list is in the OpenAPI document's Error schema), `message` is for
// people (what was wrong and what to do; its wording may change). The catalog below is the one
// place a code, its status and its meaning are written down; transports that are not HTTP (the
// DICOM node) map the same codes to their own statuses.
//
// A library failure (fetalhc::Error) becomes an ApiError through api_error: its kind picks the
// code in one table (error_code_for; never the message's words), and the field it concerns is
// named as HTTP clients send it ("pixel_size" -> pixel_size_mm).
//
// One style per layer:
//   - routes (routes*.cpp) and the request-field helpers (request_fields.h) THROW ApiError (fail,
//     value_or_throw); routes::handle is the one place that catches it and answers with it;
//   - services (service.h) and the library RETURN their failures (Result<T>, Expected<T>) and
//     never throw them; a route turns a service's Result into a throw with value_or_throw.
// Thread safety: plain values and constant tables.
#pragma once

#include "http_types.h"

#include "fetalhc/expected.h"

#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace fetalhc::server {

enum class ErrorCode {
    BadRequest,          // 400
    MissingField,        // 400
    InvalidField,        // 400
    InvalidPixelSize,    // 400
    InvalidGa,           // 400
    InvalidPregnancyId,  // 400
    InvalidDate,         // 400
    InvalidEllipse,      // 400
    InvalidPoints,       // 400
    InvalidImageId,      // 400
    UnknownImage,        // 400
    ImageUnreadable,     // 400
    Unauthorized,        // 401
    Forbidden,           // 403
    NotFound,            // 404
    PregnancyNotFound,   // 404
    ImageNotFound,       // 404
    LengthRequired,      // 411
    PayloadTooLarge,     // 413
    NoHeadFound,         // 422
    NotAHeadPlane,       // 422
    NoEllipseFit,        // 422
    InvalidCalibration,  // 422
    EmptyMask,           // 422
    MaskTooComplex,      // 422
    IdempotencyKeyReused,  // 422
    StorageFailed,       // 500
    StoreFull,           // 507
    Internal,            // 500
    ModelLoading,        // 503
    ModelUnavailable,    // 503
    Overloaded,          // 503, with Retry-After
};

struct ErrorInfo {
    ErrorCode code;
    const char* name;     // the snake_case code sent to clients
    int http_status;
    const char* meaning;  // one line, for the OpenAPI document
};

// Every code, in the order of the enum.
const std::vector<ErrorInfo>& error_catalog();
const ErrorInfo& error_info(ErrorCode code);

// A failed request or service call: thrown by the request-field helpers (request_fields.h) and caught by
// routes::handle; returned (not thrown) by the services (service.h).
struct ApiError {
    ErrorCode code;
    std::string message;
    int retry_after_s = 0;  // > 0: sent as the Retry-After header (seconds); overloaded always has one
};

// The code of a library error of this kind (the one table from ErrorKind to ErrorCode).
ErrorCode error_code_for(ErrorKind kind);
// The name HTTP clients give a library field a message asks for ("pixel_size" -> "pixel_size_mm"),
// or "" when none is added.
std::string http_field_name(const std::string& field);
// A library error as the service's error: error_code_for(kind), and the message followed by the
// HTTP name of its field when it has one ("...; give a pixel size (pixel_size_mm)").
ApiError api_error(const Error& e);

// {"error": {"code": ..., "message": ...}}
nlohmann::json error_body(const ApiError& e);
// The error as a response with the code's HTTP status.
HttpResponse error_response(const ApiError& e);

// A value or an ApiError (the services' result type: the library's Expected<T> carries an
// ErrorKind, the transports need the service's code; api_error converts).
template <class T>
class Result {
public:
    Result(T value) : v_(std::move(value)) {}   // NOLINT(google-explicit-constructor)
    Result(ApiError e) : v_(std::move(e)) {}    // NOLINT(google-explicit-constructor)
    explicit operator bool() const { return v_.index() == 0; }
    T& operator*() { return std::get<0>(v_); }
    const T& operator*() const { return std::get<0>(v_); }
    T* operator->() { return &std::get<0>(v_); }
    const T* operator->() const { return &std::get<0>(v_); }
    const ApiError& error() const { return std::get<1>(v_); }
    // The value, or the error thrown (for HTTP routes, where routes::handle catches it).
    T& value_or_throw() {
        if (v_.index() != 0) throw std::get<1>(v_);
        return std::get<0>(v_);
    }

private:
    std::variant<T, ApiError> v_;
};

}  // namespace fetalhc::server
