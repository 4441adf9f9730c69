// Library errors carry a kind and a field (fetalhc/expected.h); the server maps the kind to an HTTP
// code (src/server/errors.cpp) and the CLI to an exit code (tools/cli_errors.cpp). Pinned here:
// every kind has both, the HTTP code is one the OpenAPI document's Error schema lists, and a
// library message never names a front end's option (the front ends add their own from the field).
#include "cli.h"     // tools/
#include "errors.h"  // src/server/
#include "openapi.h"

#include "fetalhc/dicom.h"
#include "fetalhc/measure.h"
#include "fetalhc/segmentation.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>
#include <string>

using fetalhc::Error;
using fetalhc::ErrorKind;
using fetalhc::kErrorKinds;
using fetalhc::server::ErrorCode;

namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A 640 x 480 DICOM header with no calibration of its own.
fetalhc::DicomHeader header(const std::string& path) {
    fetalhc::DicomHeader h;
    h.path = path;
    h.rows = 480, h.columns = 640;
    return h;
}

// The codes the OpenAPI document lists in its Error schema.
std::set<std::string> documented_codes() {
    const auto doc = nlohmann::json::parse(fetalhc::server::openapi_json("test", 1 << 20));
    const auto& codes = doc.at("components").at("schemas").at("Error").at("properties").at("error").at("properties").at("code").at("enum");
    return {codes.begin(), codes.end()};
}

}  // namespace

TEST(ErrorKinds, ListInEnumOrder) {
    ASSERT_EQ(fetalhc::kErrorKindCount, int(std::size(kErrorKinds)));
    for (int i = 0; i < fetalhc::kErrorKindCount; ++i) EXPECT_EQ(int(kErrorKinds[i]), i) << fetalhc::error_kind_name(kErrorKinds[i]);
}

TEST(ErrorKinds, EveryKindHasAnHttpCodeTheOpenApiErrorSchemaLists) {
    const auto codes = documented_codes();
    for (ErrorKind k : kErrorKinds) {
        const auto& info = fetalhc::server::error_info(fetalhc::server::error_code_for(k));
        EXPECT_TRUE(codes.count(info.name)) << fetalhc::error_kind_name(k) << " -> " << info.name << " is not in the Error schema";
        EXPECT_GE(info.http_status, 400) << fetalhc::error_kind_name(k);
    }
    // The store's refusals keep the codes clients test for.
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::StoreFull), ErrorCode::StoreFull);
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::Conflict), ErrorCode::IdempotencyKeyReused);
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::UnknownImage), ErrorCode::UnknownImage);
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::StorageFailed), ErrorCode::StorageFailed);
    // A library failure is no longer reported as a missing head whatever it was.
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::ImageUnreadable), ErrorCode::ImageUnreadable);
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::InvalidCalibration), ErrorCode::InvalidCalibration);
    EXPECT_EQ(fetalhc::server::error_code_for(ErrorKind::NoHeadFound), ErrorCode::NoHeadFound);
}

// README: 1 some inputs failed, 2 usage error (a model file that cannot be read included).
TEST(ErrorKinds, EveryKindHasADocumentedCliExitCode) {
    for (ErrorKind k : kErrorKinds) {
        const int code = fetalhc_cli::exit_code(k);
        EXPECT_TRUE(code == fetalhc_cli::kExitSomeFailed || code == fetalhc_cli::kExitUsage) << fetalhc::error_kind_name(k) << ": " << code;
    }
    for (ErrorKind k : {ErrorKind::InvalidArgument, ErrorKind::ModelUnavailable, ErrorKind::NotFound})
        EXPECT_EQ(fetalhc_cli::exit_code(k), fetalhc_cli::kExitUsage) << fetalhc::error_kind_name(k);
    for (ErrorKind k : {ErrorKind::ImageUnreadable, ErrorKind::InvalidCalibration, ErrorKind::NoHeadFound, ErrorKind::Io})
        EXPECT_EQ(fetalhc_cli::exit_code(k), fetalhc_cli::kExitSomeFailed) << fetalhc::error_kind_name(k);
}

TEST(ErrorFields, FrontEndsNameTheFieldTheirOwnWay) {
    const Error e = fetalhc::make_error(ErrorKind::InvalidCalibration, "no calibration; give a pixel size", "pixel_size");
    EXPECT_EQ(fetalhc_cli::cli_message(e), "no calibration; give a pixel size (--pixel-size MM)");
    const auto api = fetalhc::server::api_error(e);
    EXPECT_EQ(api.code, ErrorCode::InvalidCalibration);
    EXPECT_EQ(api.message, "no calibration; give a pixel size (pixel_size_mm)");
    // No field, or one a front end has no name for: the message alone.
    EXPECT_EQ(fetalhc_cli::cli_message(fetalhc::make_error(ErrorKind::NoHeadFound, "no head")), "no head");
    EXPECT_EQ(fetalhc::server::api_error(fetalhc::make_error(ErrorKind::Conflict, "key reused", "idempotency_key")).message, "key reused");
}

TEST(ErrorFields, BadPixelSizeIsAnInvalidArgumentOfThePixelSize) {
    fetalhc::MeasureOptions o;
    o.pixel_size_mm = 3;  // over 2 mm/pixel: a unit mistake
    auto r = fetalhc::measure_from_segmentation(fetalhc::Segmentation{}, cv::Mat(), o, "scan.png");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error_kind(), ErrorKind::InvalidArgument) << fetalhc::error_kind_name(r.error_kind());
    EXPECT_EQ(r.error_value().field, "pixel_size");
    EXPECT_TRUE(has(r.error(), "pixel size")) << r.error();
    EXPECT_FALSE(has(r.error(), "--")) << r.error();
}

TEST(ErrorFields, UncalibratedDicomAsksForAPixelSizeWithoutNamingAnOption) {
    auto c = fetalhc::choose_calibration(header("uncalibrated.dcm"), std::nullopt);
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error_kind(), ErrorKind::InvalidCalibration);
    EXPECT_EQ(c.error_value().field, "pixel_size");
    EXPECT_TRUE(has(c.error(), "give a pixel size")) << c.error();
    EXPECT_FALSE(has(c.error(), "--")) << c.error();
}

TEST(ErrorFields, GivenPixelSizeIsMarkedGivenAndItsNoteNamesNoOption) {
    fetalhc::DicomHeader h = header("spaced.dcm");
    h.pixel_spacing_mm = cv::Vec2d(0.2, 0.2);
    std::vector<std::string> notes;
    auto c = fetalhc::calibration_for_frames(h, 0.1, notes);  // disagrees with the file by 50%
    ASSERT_TRUE(c) << c.error();
    EXPECT_TRUE(c->given);
    EXPECT_EQ(c->source, fetalhc::kGivenPixelSizeSource);
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_TRUE(has(notes[0], "differs by")) << notes[0];
    EXPECT_FALSE(has(notes[0], "--")) << notes[0];
    auto file = fetalhc::calibration_for_frames(h, std::nullopt, notes);
    ASSERT_TRUE(file);
    EXPECT_FALSE(file->given);
}
