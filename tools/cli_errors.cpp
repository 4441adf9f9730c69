// The CLI's two tables for library errors (cli.h): ErrorKind -> exit code, field -> option. On
// their own (no other CLI code) so that tests/test_errors.cpp checks them against every kind.
#include "cli.h"

#include <utility>

namespace fetalhc_cli {

int exit_code(fetalhc::ErrorKind kind) {
    using K = fetalhc::ErrorKind;
    switch (kind) {
        case K::InvalidArgument:
        case K::ModelUnavailable:
        case K::NotFound: return kExitUsage;
        case K::Internal:
        case K::ImageUnreadable:
        case K::InvalidCalibration:
        case K::NoHeadFound:
        case K::NotAHeadPlane:
        case K::NoEllipseFit:
        case K::EmptyMask:
        case K::MaskTooComplex:
        case K::UnknownImage:
        case K::Conflict:
        case K::StoreFull:
        case K::StorageFailed:
        case K::Io: return kExitSomeFailed;
    }
    return kExitSomeFailed;
}

std::string option_for_field(const std::string& field) {
    static const std::pair<const char*, const char*> kOptions[] = {
        {"pixel_size", "--pixel-size MM"}, {"pixel_sizes", "--pixel-sizes"}, {"ga_weeks", "--ga-weeks"},
        {"data", "--data"},                {"config", "--config"},           {"out", "--out"},
        {"folds", "--kfold"},              {"resume", "--resume"},           {"ensemble", "--ensemble"},
        {"coverage", "--coverage"},        {"edges", "--edges"},             {"db", "--db"}, {"max_store_mb", "--max-store-mb"},
        {"head_check", "--head-check"},
    };
    for (const auto& [f, option] : kOptions)
        if (field == f) return option;
    return "";
}

std::string cli_message(const fetalhc::Error& e) {
    const std::string option = option_for_field(e.field);
    return option.empty() ? e.message : e.message + " (" + option + ")";
}

}  // namespace fetalhc_cli
