// fetalhc/expected.h - a value or an error, the library's one error policy.
//
//   fetalhc::Expected<cv::Mat> img = fetalhc::load_grayscale("scan.png");
//   if (!img) { std::cerr << "error: " << img.error() << "\n"; return 1; }
//   use(*img);
//
// Expected failures (unreadable image, no head found, bad pixel size) are returned as an Error: a
// kind (what the caller must do, below), the field it concerns ("pixel_size", ...; empty when it
// concerns none) and a message that names the input and says what to do. Exceptions from OpenCV
// and LibTorch are caught at the library edge and turned into such errors. A message never names
// a front end's option (a CLI flag, an HTTP field): each front end names its own from `field`
// (the CLI adds --pixel-size, the server pixel_size_mm). Front ends map the kind, never the
// message's words: tools/cli.h to an exit code, src/server/errors.h to an HTTP status and code.
// Thread safety: plain value types.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace fetalhc {

// What went wrong, as what the caller must do about it. Append new kinds before the end: the
// front ends' tables are checked against every kind (kErrorKinds).
enum class ErrorKind {
    Internal,            // not the caller's doing (a bug, an unexpected exception below): report it with the message
    InvalidArgument,     // a value the caller gave (named by `field`) is malformed or out of range: correct it
    ImageUnreadable,     // the image, DICOM or video given cannot be read or decoded (missing, not an image,
                         // damaged, too small or too large, unsupported encoding): give another file
    InvalidCalibration,  // the file's own calibration is missing, implausible, ambiguous or does not hold where
                         // the head is: give a pixel size (field "pixel_size")
    NoHeadFound,         // the image was read but no fetal head was found in it: give a head in the HC plane
    NotAHeadPlane,       // an outline was found but the head check says it is not a fetal head in the HC plane
                         // (another plane: abdomen, femur, ...; fetalhc/head_check.h): give a head in the HC plane
    NoEllipseFit,        // a head, mask or points were found but no ellipse fits them
    EmptyMask,           // a mask has no white (head) region to fit
    MaskTooComplex,      // a mask has more boundary than one head's outline could
    ModelUnavailable,    // the model (or ensemble) cannot be read, loaded or used as asked: give a good model
    NotFound,            // a file, folder or record the caller named does not exist (check the name)
    UnknownImage,        // store: the exam names an image that is not stored: store the image first
    Conflict,            // store: the idempotency key was used for a different exam: send a new key
    StoreFull,           // store: the image quota is reached and nothing can be removed: free space or raise it
    StorageFailed,       // store: the database or the image folder could not be opened, read or written
    Io,                  // a file could not be read or written (not the image measured): check path, space, rights
};

// Every kind, in the order of the enum (for tables that must cover them all).
inline constexpr ErrorKind kErrorKinds[] = {
    ErrorKind::Internal,       ErrorKind::InvalidArgument,  ErrorKind::ImageUnreadable, ErrorKind::InvalidCalibration,
    ErrorKind::NoHeadFound,    ErrorKind::NotAHeadPlane,    ErrorKind::NoEllipseFit,    ErrorKind::EmptyMask,
    ErrorKind::MaskTooComplex, ErrorKind::ModelUnavailable, ErrorKind::NotFound,        ErrorKind::UnknownImage,
    ErrorKind::Conflict,       ErrorKind::StoreFull,        ErrorKind::StorageFailed,   ErrorKind::Io,
};
inline constexpr int kErrorKindCount = int(sizeof(kErrorKinds) / sizeof(kErrorKinds[0]));
static_assert(int(ErrorKind::Io) + 1 == kErrorKindCount, "kErrorKinds must list every ErrorKind");

// The kind's name in the enum ("InvalidArgument"), for logs and tests.
inline const char* error_kind_name(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::Internal: return "Internal";
        case ErrorKind::InvalidArgument: return "InvalidArgument";
        case ErrorKind::ImageUnreadable: return "ImageUnreadable";
        case ErrorKind::InvalidCalibration: return "InvalidCalibration";
        case ErrorKind::NoHeadFound: return "NoHeadFound";
        case ErrorKind::NotAHeadPlane: return "NotAHeadPlane";
        case ErrorKind::NoEllipseFit: return "NoEllipseFit";
        case ErrorKind::EmptyMask: return "EmptyMask";
        case ErrorKind::MaskTooComplex: return "MaskTooComplex";
        case ErrorKind::ModelUnavailable: return "ModelUnavailable";
        case ErrorKind::NotFound: return "NotFound";
        case ErrorKind::UnknownImage: return "UnknownImage";
        case ErrorKind::Conflict: return "Conflict";
        case ErrorKind::StoreFull: return "StoreFull";
        case ErrorKind::StorageFailed: return "StorageFailed";
        case ErrorKind::Io: return "Io";
    }
    return "?";
}

struct Error {
    ErrorKind kind = ErrorKind::Internal;
    std::string message;
    std::string field;  // the option or value it concerns: "pixel_size", "ga_weeks", ... ("" when none)

    // The same error with `context` put before its message (e.g. the file it happened in).
    Error prefixed(const std::string& context) const { return Error{kind, context + message, field}; }
};

template <class T>
class Expected {
public:
    Expected(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
    Expected(Error e) : v_(std::move(e)) {}      // NOLINT(google-explicit-constructor)

    bool has_value() const { return v_.index() == 0; }
    explicit operator bool() const { return has_value(); }

    T& value() {
        if (!has_value()) throw std::runtime_error(error());
        return std::get<0>(v_);
    }
    const T& value() const {
        if (!has_value()) throw std::runtime_error(error());
        return std::get<0>(v_);
    }
    T& operator*() { return value(); }
    const T& operator*() const { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    // The error's message, its kind, the whole error (call only when !has_value()).
    const std::string& error() const { return std::get<1>(v_).message; }
    ErrorKind error_kind() const { return std::get<1>(v_).kind; }
    const Error& error_value() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

inline Error make_error(ErrorKind kind, std::string message, std::string field = {}) {
    return Error{kind, std::move(message), std::move(field)};
}
// An error of kind Internal. Library code states the kind (the overload above); this form is left
// to the server's start-up checks (src/server/server.cpp, dicom_node.cpp, transport.cpp), whose
// errors `fetalhc serve` reports as usage errors whatever their kind.
inline Error make_error(std::string message) { return Error{ErrorKind::Internal, std::move(message), {}}; }

}  // namespace fetalhc
