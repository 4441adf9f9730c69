// The OpenAPI 3 document, built from small pieces: schemas by area, one function per endpoint (or
// group of GET endpoints), and error responses generated from the error catalog (errors.h), so that
// every code an endpoint can answer is listed under its status.
#include "openapi.h"

#include "errors.h"

#include <nlohmann/json.hpp>

#include <map>

namespace fetalhc::server {
namespace {

using nlohmann::json;
using E = ErrorCode;

json ref(const std::string& name) { return {{"$ref", "#/components/schemas/" + name}}; }
json num(const std::string& d) { return {{"type", "number"}, {"description", d}}; }
json nullable_num(const std::string& d) { return {{"type", "number"}, {"nullable", true}, {"description", d}}; }
json str() { return {{"type", "string"}}; }
json date() { return {{"type", "string"}, {"format", "date"}}; }
json boolean() { return {{"type", "boolean"}}; }
json integer() { return {{"type", "integer"}}; }
json array_of(const json& items) { return {{"type", "array"}, {"items", items}}; }
json object(const json& props) { return {{"type", "object"}, {"properties", props}}; }
json pregnancy_id_schema() { return {{"type", "string"}, {"pattern", "^[A-Za-z0-9_.-]{1,64}$"}}; }
json uid_schema(const std::string& d) {
    return {{"type", "string"}, {"pattern", "^[0-9]+(\\.[0-9]+)*$"}, {"maxLength", 64}, {"description", d}};
}
json quality_schema() { return {{"type", "string"}, {"enum", {"ok", "review"}}}; }

json json_response(const std::string& d, const json& schema) {
    return {{"description", d}, {"content", {{"application/json", {{"schema", schema}}}}}};
}

json json_body(const json& schema) { return {{"required", true}, {"content", {{"application/json", {{"schema", schema}}}}}}; }

json image_form(const json& extra_props, const json& required) {
    json props{{"image", {{"type", "string"}, {"format", "binary"}, {"description", "PNG, JPEG, BMP or TIFF; 8/16-bit; gray or colour"}}}};
    if (extra_props.contains("format"))  // POST /v1/measure also reads DICOM
        props["image"]["description"] =
            "PNG, JPEG, BMP, TIFF (8/16-bit, gray or colour), or a DICOM Part 10 file (ultrasound or secondary capture; "
            "uncompressed, RLE, JPEG, JPEG-LS), calibrated from its Sequence of Ultrasound Regions (else PixelSpacing)";
    props.update(extra_props);
    return {{"required", true},
            {"content", {{"multipart/form-data", {{"schema", {{"type", "object"}, {"required", required}, {"properties", props}}}}}}}};
}

// Adds the error responses of `codes` (plus internal) to `responses`, one per HTTP status, each
// naming the codes it can carry.
void add_errors(json& responses, std::vector<ErrorCode> codes) {
    codes.push_back(E::Internal);
    std::map<int, std::vector<std::string>> by_status;
    for (ErrorCode c : codes) by_status[error_info(c).http_status].push_back(error_info(c).name);
    for (const auto& [status, names] : by_status) {
        std::string d = "error; code one of:";
        for (const auto& n : names) d += " " + n;
        responses[std::to_string(status)] = json_response(d, ref("Error"));
    }
}

// The 503 of a route that sheds load (overloaded) carries Retry-After.
json overload_header(json responses) {
    responses["503"]["headers"]["Retry-After"] = {
        {"description", "with code overloaded: seconds to wait before retrying (an integer, at least 1)"},
        {"schema", {{"type", "integer"}, {"minimum", 1}}}};
    return responses;
}

json responses_with(const json& ok, std::vector<ErrorCode> codes) {
    json r = ok;
    add_errors(r, std::move(codes));
    return r;
}

// ---- schemas ----------------------------------------------------------------------------------

void error_schemas(json& s) {
    json codes = json::array();
    std::string meanings = "Stable error codes (programs test these; the message is for people):";
    for (const ErrorInfo& e : error_catalog()) {
        codes.push_back(e.name);
        meanings += std::string("\n- ") + e.name + " (" + std::to_string(e.http_status) + "): " + e.meaning;
    }
    s["Error"] = {{"type", "object"},
                  {"required", {"error"}},
                  {"properties",
                   {{"error",
                     {{"type", "object"},
                      {"required", {"code", "message"}},
                      {"properties",
                       {{"code", {{"type", "string"}, {"enum", codes}, {"description", meanings}}},
                        {"message", {{"type", "string"}, {"description", "what is wrong and what to do"}}}}}}}}}};
    s["HealthNotReady"] = {
        {"allOf", {ref("Error"), object({{"status", {{"type", "string"}, {"enum", {"loading", "failed"}}}}})}}};
}

void geometry_schemas(json& s) {
    s["Ellipse"] = {{"type", "object"},
                    {"description", "Centre with origin at the top-left pixel centre, x right, y down; a >= b; angle in [0, pi) "
                                    "from +x towards +y"},
                    {"required", {"center_x", "center_y", "semi_axis_a", "semi_axis_b", "angle_rad"}},
                    {"properties",
                     {{"center_x", num("x of the centre")},
                      {"center_y", num("y of the centre")},
                      {"semi_axis_a", num("semi-major axis")},
                      {"semi_axis_b", num("semi-minor axis")},
                      {"angle_rad", num("radians from +x towards +y to the major axis")}}}};
    s["Point"] = {{"type", "array"}, {"items", {{"type", "number"}}}, {"minItems", 2}, {"maxItems", 2}};
}

void estimate_schemas(json& s) {
    s["GaEstimate"] = object({{"in_range", boolean()},
                              {"weeks", nullable_num("gestational age; null outside the formula's range")},
                              {"text", {{"type", "string"}, {"description", "e.g. 20w3d"}}},
                              {"note", str()}});
    s["Centile"] = object({{"in_range", boolean()},
                           {"median_mm", num("median HC at the GA")},
                           {"sd_mm", num("SD at the GA")},
                           {"z", num("z-score")},
                           {"centile", num("0..100")},
                           {"below_3rd", boolean()},
                           {"above_97th", boolean()},
                           {"note", str()}});
    s["Centile"]["description"] = "INTERGROWTH-21st HC-for-GA centile (present when a GA was given)";
}

void measurement_schemas(json& s) {
    s["Numbers"] = object({{"pixel_size_mm", num("mm per pixel")},
                           {"hc_mm", num("head circumference (Ramanujan II perimeter x pixel size)")},
                           {"bpd_mm", num("biparietal diameter (2b)")},
                           {"ofd_mm", num("occipito-frontal diameter (2a)")},
                           {"cephalic_index", num("100 b / a")},
                           {"ellipse_px", ref("Ellipse")},
                           {"ellipse_mm", ref("Ellipse")},
                           {"ga_hadlock", ref("GaEstimate")},
                           {"ga_intergrowth", ref("GaEstimate")},
                           {"ga_weeks_given", num("the GA sent with the request")},
                           {"centile", ref("Centile")},
                           {"quality", quality_schema()},
                           {"reasons", array_of(str())}});
    s["Numbers"]["required"] = {"hc_mm", "bpd_mm", "ofd_mm", "ellipse_px", "ellipse_mm", "ga_hadlock", "ga_intergrowth"};
    const json timings = {{"type", "object"},
                          {"description", "decode, network, postprocess, fit, total; queue = wait for a network slot"},
                          {"additionalProperties", {{"type", "number"}}}};
    s["Measurement"] = {{"allOf",
                         {ref("Numbers"), object({{"source", str()},
                                                  {"image_width", integer()},
                                                  {"image_height", integer()},
                                                  {"detection_score", num("0..1")},
                                                  {"segmentation_certainty", num("mean |2p-1| in the head, 0..1")},
                                                  {"fit_rms_px", num("RMS orthogonal residual of the ellipse fit")},
                                                  {"boundary_points", integer()},
                                                  {"inliers", integer()},
                                                  {"cut_points", integer()},
                                                  {"timings_ms", timings},
                                                  {"image_sha256", str()},
                                                  {"image_url", {{"type", "string"}, {"description", "/v1/images/<sha256>"}}},
                                                  {"preview_url",
                                                   {{"type", "string"},
                                                    {"description", "DICOM uploads: the measured frame as an 8-bit gray PNG "
                                                                    "(/v1/images/<sha256>/preview.png[?frame=N]), in the "
                                                                    "pixel coordinates of ellipse_px"}}},
                                                  {"preview_frame", {{"type", "integer"}, {"description", "DICOM: the frame shown by preview_url"}}},
                                                  {"calibration", ref("Calibration")},
                                                  {"warnings", {{"type", "array"}, {"items", str()},
                                                                {"description", "DICOM: e.g. pixel_size_mm disagreeing with the file by over 1%"}}},
                                                  {"dicom", object({{"sop_instance_uid", str()},
                                                                    {"sop_class_uid", str()},
                                                                    {"study_instance_uid", str()},
                                                                    {"transfer_syntax", str()},
                                                                    {"frames", integer()}})},
                                                  {"frames", {{"type", "array"}, {"items", {{"type", "object"}}},
                                                              {"description", "multi-frame DICOM: one measurement (or error) per frame"}}},
                                                  {"summary", {{"type", "object"},
                                                               {"description", "multi-frame DICOM: frames, measured, ok_frames, has_estimate, "
                                                                               "seconds, frames_per_second, the medians over the "
                                                                               "ok frames (hc/bpd/ofd_median_mm, hc_iqr_mm), "
                                                                               "estimate_frame (the frame of ellipse_px) and "
                                                                               "estimate: the summary as one measurement (GA, "
                                                                               "centile, interval and quality of the median HC), "
                                                                               "whose figures the response's top level carries"}}},
                                                  {"pregnancy_id", str()},
                                                  {"exam_date", date()}})}}};
    s["Calibration"] = object({{"source", {{"type", "string"},
                                           {"description", "where the pixel size came from: pixel_size_mm (given by the client), "
                                                           "ultrasound region N, PixelSpacing or ImagerPixelSpacing"}}},
                               {"mm_per_px_x", num("mm per pixel across")},
                               {"mm_per_px_y", num("mm per pixel down")},
                               {"region", {{"type", "integer"}, {"description", "index of the ultrasound region used"}}}});
}

void exam_schemas(json& s) {
    s["ExamInput"] = object({{"pregnancy_id", pregnancy_id_schema()},
                             {"exam_date", date()},
                             {"image_sha256", {{"type", "string"}, {"pattern", "^[0-9a-f]{64}$"}}},
                             {"pixel_size_mm", num("mm per pixel, [0.01, 2]")},
                             {"ellipse_px", ref("Ellipse")},
                             {"corrected", boolean()},
                             {"ga_weeks", num("known GA in weeks, for the centile")},
                             {"quality", quality_schema()},
                             {"reasons", array_of(str())},
                             {"sop_instance_uid", uid_schema("the SOP Instance UID of the DICOM image measured "
                                                             "(dicom.sop_instance_uid of POST /v1/measure); taken from the "
                                                             "stored file when left out, refused when it differs from it")}});
    s["ExamInput"]["required"] = {"pregnancy_id", "exam_date", "image_sha256", "pixel_size_mm", "ellipse_px", "corrected"};
    s["Exam"] = object({{"id", integer()},
                        {"pregnancy_id", str()},
                        {"exam_date", date()},
                        {"image_sha256", str()},
                        {"pixel_size_mm", num("mm per pixel")},
                        {"ellipse_px", ref("Ellipse")},
                        {"hc_mm", num("")},
                        {"bpd_mm", num("")},
                        {"ofd_mm", num("")},
                        {"ga_hadlock_weeks", nullable_num("")},
                        {"ga_intergrowth_weeks", nullable_num("")},
                        {"ga_weeks_given", nullable_num("")},
                        {"centile", nullable_num("INTERGROWTH-21st centile when a GA was given")},
                        {"quality", str()},
                        {"reasons", array_of(str())},
                        {"corrected", boolean()},
                        {"accepted", boolean()},
                        {"created_at", {{"type", "string"}, {"format", "date-time"}}},
                        {"sop_instance_uid", {{"type", "string"}, {"nullable", true},
                                              {"description", "the DICOM image's SOP Instance UID; null for other images"}}},
                        {"saved_by", {{"type", "string"}, {"nullable", true},
                                      {"description", "in a history: the user who saved (and, when corrected, corrected) the exam, "
                                                      "from the audit trail; null when unknown (saved before users existed)"}}}});
    s["History"] = object({{"pregnancy_id", str()}, {"exams", array_of(ref("Exam"))}});
}

json schemas() {
    json s;
    error_schemas(s);
    geometry_schemas(s);
    estimate_schemas(s);
    measurement_schemas(s);
    exam_schemas(s);
    return s;
}

// ---- paths ------------------------------------------------------------------------------------

const json kSecured = json::array({{{"bearerAuth", json::array()}}});

void site_paths(json& paths) {
    json health_responses{{"200", json_response("ready", {{"type", "object"}})},
                          {"503", json_response("not ready; code model_loading or model_unavailable", ref("HealthNotReady"))}};
    paths["/health"]["get"] = {{"summary", "Readiness: 200 once the model is loaded (with head_check: its thresholds, or null when "
                                           "the server runs without one), 503 while loading or after a load failure"},
                               {"responses", health_responses}};
    paths["/metrics"]["get"] = {{"summary", "Prometheus metrics: requests by route and status, latency histogram, errors"},
                                {"security", kSecured},
                                {"responses", {{"200", {{"description", "text/plain; version=0.0.4"}}}}}};
    paths["/openapi.json"]["get"] = {{"summary", "This document"}, {"responses", {{"200", {{"description", "OpenAPI 3"}}}}}};
    paths["/"]["get"] = {{"summary", "The web page"}, {"responses", {{"200", {{"description", "text/html"}}}}}};
    paths["/static/{file}"]["get"] = {
        {"summary", "Files of the web page (embedded in the binary), and chart.umd.min.js"},
        {"parameters", {{{"name", "file"}, {"in", "path"}, {"required", true}, {"schema", str()}}}},
        {"responses", responses_with({{"200", {{"description", "the file"}}}}, {E::NotFound})}};
    json curves = object({{"ga_weeks", array_of({{"type", "number"}})},
                          {"p3", array_of({{"type", "number"}})},
                          {"p50", array_of({{"type", "number"}})},
                          {"p97", array_of({{"type", "number"}})}});
    paths["/v1/growth-curve"]["get"] = {
        {"summary", "INTERGROWTH-21st HC standard: 3rd, 50th and 97th centiles (mm) for GA 14..40 weeks in 0.5-week steps"},
        {"security", kSecured},
        {"responses", {{"200", json_response("the curves", curves)}}}};
    paths["/v1/me"]["get"] = {
        {"summary", "Who the bearer token belongs to: the user's name (null on a server without users or tokens) and role "
                    "(viewer, sonographer or admin; the --token-file token is the admin 'service')"},
        {"security", kSecured},
        {"responses", responses_with({{"200", json_response("the user", object({{"user", {{"type", {"string", "null"}}}},
                                                                                 {"role", {{"type", "string"}, {"enum", {"viewer", "sonographer", "admin"}}}}}))}},
                                     {E::Unauthorized})}};
}

json measure_path() {
    const json form = image_form(
        {{"pixel_size_mm", num("mm per pixel, [0.01, 2]; required for images, optional for DICOM (overrides the file's "
                               "calibration; a disagreement over 1% adds a warning)")},
         {"ga_weeks", num("known GA in weeks (0, 45), for the centile")},
         {"pregnancy_id", pregnancy_id_schema()},
         {"exam_date", date()},
         {"format", {{"type", "string"}, {"enum", {"json", "sr", "key-image", "fhir"}}, {"default", "json"},
                     {"description", "json: the measurement; sr: a DICOM Comprehensive SR (TID 5000, application/dicom); "
                                     "key-image: a DICOM Secondary Capture of the image with the ellipse and numbers burned in "
                                     "(application/dicom); fhir: a FHIR R4 Bundle (collection) of HC, BPD and OFD Observations"}}}},
        {"image"});
    const json ok = {{"description", "the measurement (format json), the SR (format sr), the key image (format key-image) or the Bundle (format fhir)"},
                     {"content", {{"application/json", {{"schema", ref("Measurement")}}},
                                  {"application/dicom", {{"schema", {{"type", "string"}, {"format", "binary"}}}}}}}};
    return {{"summary", "Measure HC, BPD, OFD, GA and centile on an image or a DICOM file; stores the upload by content hash "
                        "(no exam is created). A multi-frame DICOM is measured frame by frame with a median summary"},
            {"security", kSecured},
            {"requestBody", form},
            {"responses", overload_header(responses_with({{"200", ok}},
                                         {E::BadRequest, E::MissingField, E::InvalidField, E::InvalidPixelSize, E::InvalidGa,
                                          E::InvalidPregnancyId, E::InvalidDate, E::ImageUnreadable, E::Unauthorized,
                                          E::PayloadTooLarge, E::NoHeadFound, E::NotAHeadPlane, E::NoEllipseFit, E::InvalidCalibration,
                                          E::StorageFailed, E::StoreFull, E::ModelLoading, E::ModelUnavailable, E::Overloaded}))}};
}

// POST /dicomweb/studies[/{study}]: STOW-RS (PS3.18 10.5).
json stow_path(bool with_study) {
    json item = {{"type", "object"}, {"description", "DICOM JSON: 00081150 ReferencedSOPClassUID, 00081155 "
                                                     "ReferencedSOPInstanceUID, 00081197 FailureReason (failed ones only)"}};
    json answer = {{"type", "object"},
                   {"description", "DICOM JSON (PS3.18 F.2): 00081199 ReferencedSOPSequence (taken: measured and listed "
                                   "by GET /v1/dicom/instances), 00081198 FailedSOPSequence with each FailureReason "
                                   "(A700 out of resources, C000 cannot understand or another study than the URL's, "
                                   "0122 SOP class not taken)"},
                   {"properties", {{"00081199", item}, {"00081198", item}}}};
    json op{{"summary", std::string("DICOMweb STOW-RS: DICOM files (multipart/related; type=\"application/dicom\") into the DICOM "
                                    "node, measured and listed as C-STOREs are") +
                            (with_study ? "; every instance must belong to the study in the URL" : "")},
            {"security", kSecured},
            {"requestBody",
             {{"required", true}, {"content", {{"multipart/related", {{"schema", {{"type", "string"}, {"format", "binary"}}}}}}}}},
            {"responses", responses_with({{"200", {{"description", "every instance taken"}, {"content", {{"application/dicom+json", {{"schema", answer}}}}}}},
                                          {"202", {{"description", "some taken, some failed"}, {"content", {{"application/dicom+json", {{"schema", answer}}}}}}},
                                          {"409", {{"description", "none taken"}, {"content", {{"application/dicom+json", {{"schema", answer}}}}}}}},
                                         {E::BadRequest, E::Unauthorized, E::NotFound, E::PayloadTooLarge})}};
    if (with_study)
        op["parameters"] = json::array({{{"name", "study"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}}},
                                          {"description", "Study Instance UID"}}});
    return op;
}

json dicom_instances_path() {
    const json instance = object({{"id", integer()},
                                  {"sop_instance_uid", str()},
                                  {"sop_class_uid", str()},
                                  {"calling_aet", str()},
                                  {"received_at", {{"type", "string"}, {"format", "date-time"}}},
                                  {"status", {{"type", "string"},
                                              {"enum", {"pending", "measured", "not_measured", "failed"}},
                                              {"description", "not_measured: the image is not a fetal head in the HC plane "
                                                              "(error says what it looks like); no SR is written for it"}}},
                                  {"image_sha256", str()},
                                  {"image_url", str()},
                                  {"sr_url", {{"type", "string"}, {"description", "the SR written for it, when measured"}}},
                                  {"key_image_url", {{"type", "string"}, {"description", "its key image (a DICOM Secondary Capture with the measurement drawn on the image), when measured"}}},
                                  {"frames", integer()},
                                  {"hc_mm", nullable_num("HC (median over the ok frames for a multi-frame file)")},
                                  {"bpd_mm", nullable_num("BPD")},
                                  {"ofd_mm", nullable_num("OFD")},
                                  {"ga_hadlock_weeks", nullable_num("GA from HC (Hadlock 1984), when in range")},
                                  {"pixel_size_mm", nullable_num("mm per pixel used")},
                                  {"calibration_source", str()},
                                  {"quality", {{"type", "string"}, {"nullable", true}, {"enum", {"ok", "review"}}}},
                                  {"reasons", array_of(str())},
                                  {"error", {{"type", "string"}, {"nullable", true}}},
                                  {"forward_status", {{"type", "string"}, {"nullable", true},
                                                      {"description", "with --dicom-forward: forwarded; pending: why the last try failed and when the next is; or failed: why (after the last try)"}}}});
    const json limit = {{"name", "limit"}, {"in", "query"}, {"required", false},
                        {"schema", {{"type", "integer"}, {"minimum", 1}, {"maximum", 1000}, {"default", 100}}}};
    return {{"summary", "What the DICOM node (serve --dicom-port) received, newest first, with its figures or its error"},
            {"security", kSecured},
            {"parameters", {limit}},
            {"responses", responses_with({{"200", json_response("the instances", object({{"instances", array_of(instance)}}))}},
                                         {E::InvalidField, E::Unauthorized, E::StorageFailed})}};
}

json segment_path() {
    const json contour = object({{"contour", {{"type", "array"}, {"items", ref("Point")}, {"description", "closed polygon, px"}}},
                                 {"confidence", num("mean |2p-1| in the head")},
                                 {"detection_score", num("0..1")},
                                 {"area_px", num("head area")}});
    const json ok{{"description", "the mask or the contour"},
                  {"content",
                   {{"image/png", {{"schema", {{"type", "string"}, {"format", "binary"}}}}},
                    {"application/json", {{"schema", contour}}}}}};
    return {{"summary", "Segment the head: a mask PNG (255 = head; headers X-Detection-Score, X-Confidence) or JSON contour"},
            {"security", kSecured},
            {"requestBody", image_form({{"format", {{"type", "string"}, {"enum", {"png", "json"}}, {"default", "png"}}}}, {"image"})},
            {"responses", overload_header(responses_with({{"200", ok}},
                                                         {E::BadRequest, E::MissingField, E::InvalidField, E::ImageUnreadable,
                                                          E::Unauthorized, E::PayloadTooLarge, E::NoHeadFound, E::ModelLoading,
                                                          E::ModelUnavailable, E::Overloaded}))}};
}

json fit_path() {
    const json points = object({{"points", {{"type", "array"}, {"items", ref("Point")}, {"maxItems", 20000}}}});
    json points_body = points;
    points_body["required"] = {"points"};
    const json body{{"required", true},
                    {"content",
                     {{"application/json", {{"schema", points_body}}},
                      {"multipart/form-data", {{"schema", object({{"mask", {{"type", "string"}, {"format", "binary"}}}})}}}}}};
    const json fitted = object({{"ellipse_px", ref("Ellipse")},
                                {"rms_px", num("RMS orthogonal residual of the inliers")},
                                {"inliers", integer()},
                                {"points", integer()}});
    return {{"summary", "Fit an ellipse to a mask image (multipart field mask or image; white = head) or to points"},
            {"security", kSecured},
            {"requestBody", body},
            {"responses", responses_with({{"200", json_response("the fitted ellipse", fitted)}},
                                         {E::BadRequest, E::MissingField, E::InvalidPoints, E::ImageUnreadable, E::Unauthorized,
                                          E::PayloadTooLarge, E::NoEllipseFit, E::EmptyMask, E::MaskTooComplex})}};
}

json head_check_path() {
    const json checked = object({{"head_check", num("0..1: 1 = a fetal head in the HC plane")},
                                 {"head_check_other", {{"type", "string"}, {"description", "the most likely class other than a head"}}},
                                 {"plane_probabilities", {{"type", "object"}, {"additionalProperties", num("0..1")}}},
                                 {"refuse_below", num("/v1/measure refuses below this (not_a_head_plane)")},
                                 {"review_below", num("/v1/measure flags below this")},
                                 {"verdict", {{"type", "string"}, {"enum", {"head", "review", "not_a_head_plane"}}}}});
    return {{"summary", "The head check alone: is the outline ellipse_px (form field, JSON Ellipse in pixels) on the image a "
                        "fetal head in the HC plane? Score, thresholds and verdict (e.g. for an ellipse corrected by hand)"},
            {"security", kSecured},
            {"requestBody", image_form({{"ellipse_px", {{"type", "string"}, {"description", "JSON Ellipse (px)"}}}},
                                       {"image", "ellipse_px"})},
            {"responses", overload_header(responses_with({{"200", json_response("the check's answer", checked)}},
                                                         {E::BadRequest, E::MissingField, E::InvalidEllipse, E::ImageUnreadable,
                                                          E::Unauthorized, E::PayloadTooLarge, E::ModelLoading,
                                                          E::ModelUnavailable, E::Overloaded}))}};
}

json perimeter_path() {
    json body = object({{"ellipse_px", ref("Ellipse")}, {"pixel_size_mm", num("mm per pixel")}, {"ga_weeks", num("known GA")}});
    body["required"] = {"ellipse_px", "pixel_size_mm"};
    return {{"summary", "HC, BPD, OFD, cephalic index, GA and centile from an ellipse and a pixel size"},
            {"security", kSecured},
            {"requestBody", json_body(body)},
            {"responses", responses_with({{"200", json_response("the numbers", ref("Numbers"))}},
                                         {E::BadRequest, E::MissingField, E::InvalidEllipse, E::InvalidPixelSize, E::InvalidGa,
                                          E::Unauthorized, E::PayloadTooLarge})}};
}

void history_paths(json& paths) {
    paths["/v1/exams"]["post"] = {
        {"summary", "Save an accepted (possibly corrected) measurement as an exam; the numbers are recomputed from the ellipse"},
        {"security", kSecured},
        {"parameters",
         {{{"name", "Idempotency-Key"},
           {"in", "header"},
           {"required", false},
           {"description", "Makes the write safe to retry: the first request with a key saves the exam; a retry with the "
                           "same key and the same body saves nothing and answers 201 with the exam saved first (and the "
                           "header Idempotent-Replayed: true); the same key with another body is refused with "
                           "idempotency_key_reused (422). Keys are kept in the database, across restarts and replicas."},
           {"schema", {{"type", "string"}, {"minLength", 1}, {"maxLength", 128}, {"pattern", "^[ -~]+$"}}}}}},
        {"requestBody", json_body(ref("ExamInput"))},
        {"responses", responses_with({{"201", json_response("the stored exam (or, on a retry, the exam saved first)", ref("Exam"))}},
                                     {E::BadRequest, E::MissingField, E::InvalidField, E::InvalidPregnancyId, E::InvalidDate,
                                      E::InvalidImageId, E::UnknownImage, E::InvalidPixelSize, E::InvalidEllipse, E::InvalidGa,
                                      E::Unauthorized, E::PayloadTooLarge, E::IdempotencyKeyReused, E::StorageFailed})}};
    const json id_param = {{"name", "id"}, {"in", "path"}, {"required", true}, {"schema", str()}};
    const std::vector<ErrorCode> pregnancy_errors{E::InvalidPregnancyId, E::PregnancyNotFound, E::StorageFailed};
    paths["/v1/pregnancies/{id}"]["get"] = {
        {"summary", "Exam history of a pregnancy, sorted by exam date"},
        {"security", kSecured},
        {"parameters", {id_param}},
        {"responses", responses_with({{"200", json_response("the history", ref("History"))}}, pregnancy_errors)}};
    paths["/v1/pregnancies/{id}/export.csv"]["get"] = {
        {"summary", "The history as CSV with a header row (text cells quoted as needed and formula-neutralised)"},
        {"security", kSecured},
        {"parameters", {id_param}},
        {"responses", responses_with({{"200", {{"description", "text/csv"}}}}, pregnancy_errors)}};
    const json sha_param = {
        {"name", "sha256"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}, {"pattern", "^[0-9a-f]{64}$"}}}};
    paths["/v1/images/{sha256}"]["get"] = {
        {"summary", "A stored image by its SHA-256"},
        {"security", kSecured},
        {"parameters", {sha_param}},
        {"responses", responses_with({{"200", {{"description", "the image bytes"}}}},
                                     {E::InvalidImageId, E::ImageNotFound, E::StorageFailed})}};
    const json frame_param = {{"name", "frame"},
                              {"in", "query"},
                              {"required", false},
                              {"schema", {{"type", "integer"}, {"minimum", 0}, {"default", 0}}},
                              {"description", "the frame of a multi-frame DICOM file (0 = the first)"}};
    paths["/v1/images/{sha256}/preview.png"]["get"] = {
        {"summary", "A stored image as an 8-bit gray PNG a browser can show: a DICOM file's frame, any other image decoded"},
        {"security", kSecured},
        {"parameters", {sha_param, frame_param}},
        {"responses", responses_with({{"200", {{"description", "image/png"}}}},
                                     {E::InvalidImageId, E::InvalidField, E::ImageNotFound, E::ImageUnreadable, E::StorageFailed})}};
}

json audit_path() {
    auto query = [](const char* name, const char* description) {
        return json{{"name", name}, {"in", "query"}, {"required", false}, {"schema", {{"type", "string"}}}, {"description", description}};
    };
    const json entry = object({{"id", integer()},
                               {"at", {{"type", "string"}, {"format", "date-time"}}},
                               {"user", str()},
                               {"role", str()},
                               {"action", {{"type", "string"}, {"description", "METHOD and route, e.g. GET /v1/pregnancies/{id}"}}},
                               {"pregnancy_id", str()},
                               {"exam_id", {{"type", {"integer", "null"}}}},
                               {"image_sha256", str()},
                               {"sop_instance_uid", str()},
                               {"outcome", {{"type", "integer"}, {"description", "the HTTP status answered"}}},
                               {"client", str()},
                               {"request_id", {{"type", "string"}, {"description", "the X-Request-Id answered"}}}});
    return {{"summary", "The audit trail (admin): every read or write of patient data and every refusal for lack of rights, "
                        "newest first; append-only"},
            {"security", kSecured},
            {"parameters", {query("since", "from this UTC date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)"),
                            query("until", "up to this UTC date (the whole day) or time"), query("user", "one user's entries"),
                            query("pregnancy_id", "one pregnancy's entries"), query("limit", "at most this many (1..1000, default 100)"),
                            query("before", "entries older than this id: next_before of the previous page")}},
            {"responses", responses_with({{"200", json_response("a page of entries", object({{"entries", array_of(entry)},
                                                                                             {"next_before", {{"type", {"integer", "null"}}}}}))}},
                                         {E::InvalidField, E::Unauthorized, E::Forbidden, E::StorageFailed})}};
}

}  // namespace

std::string openapi_json(const std::string& version, size_t max_upload_bytes) {
    json paths;
    site_paths(paths);
    paths["/v1/measure"]["post"] = measure_path();
    paths["/v1/segment"]["post"] = segment_path();
    paths["/v1/fit-ellipse"]["post"] = fit_path();
    paths["/v1/perimeter"]["post"] = perimeter_path();
    paths["/v1/head-check"]["post"] = head_check_path();
    history_paths(paths);
    paths["/v1/dicom/instances"]["get"] = dicom_instances_path();
    paths["/v1/audit"]["get"] = audit_path();
    paths["/dicomweb/studies"]["post"] = stow_path(false);
    paths["/dicomweb/studies/{study}"]["post"] = stow_path(true);
    const std::string description =
        "Fetal head circumference from 2D ultrasound: segmentation, ellipse fit, HC/BPD/OFD, GA and centiles, with a "
        "per-pregnancy history. Lengths in mm unless a name ends in _px. Every operation marked with bearerAuth (all but "
        "/, /static/*, /health and /openapi.json) needs a bearer token when the server runs with a token file (always "
        "when bound to a non-loopback address) or its store has users (each with a role: viewer, sonographer, admin; "
        "403 forbidden when the role is too low); reads may carry it as the page's cookie. Requests that touch patient "
        "data are kept in an audit trail (GET /v1/audit). Request bodies over " +
        std::to_string(max_upload_bytes) + " bytes get 413 payload_too_large. Every error is {\"error\": {\"code\", "
        "\"message\"}} (schema Error, which lists the codes).";
    json doc{{"openapi", "3.0.3"},
             {"info", {{"title", "fetalhc"}, {"version", version}, {"description", description}}},
             {"paths", paths},
             {"components",
              {{"schemas", schemas()}, {"securitySchemes", {{"bearerAuth", {{"type", "http"}, {"scheme", "bearer"}}}}}}}};
    return doc.dump(2);
}

}  // namespace fetalhc::server
