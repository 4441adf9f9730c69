// fetalhc/expected.h - a value or an error message, the library's one error policy.
//
//   fetalhc::Expected<cv::Mat> img = fetalhc::load_grayscale("scan.png");
//   if (!img) { std::cerr << "error: " << img.error() << "\n"; return 1; }
//   use(*img);
//
// Expected failures (unreadable image, no head found, bad pixel size) are returned as an error
// message that names the input and says what to do. Exceptions from OpenCV and LibTorch are caught
// at the library edge and turned into such messages. Thread safety: a plain value type.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace fetalhc {

struct Error {
    std::string message;
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

    const std::string& error() const { return std::get<1>(v_).message; }

private:
    std::variant<T, Error> v_;
};

inline Error make_error(std::string message) { return Error{std::move(message)}; }

}  // namespace fetalhc
