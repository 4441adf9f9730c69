#include "openapi.h"

#include <nlohmann/json.hpp>

namespace fetalhc::server {
namespace {

using nlohmann::json;

json ref(const std::string& name) { return {{"$ref", "#/components/schemas/" + name}}; }
json num(const std::string& d) { return {{"type", "number"}, {"description", d}}; }
json nullable_num(const std::string& d) { return {{"type", "number"}, {"nullable", true}, {"description", d}}; }

json error_response(const std::string& d) {
    return {{"description", d}, {"content", {{"application/json", {{"schema", ref("Error")}}}}}};
}

json json_response(const std::string& d, const json& schema) {
    return {{"description", d}, {"content", {{"application/json", {{"schema", schema}}}}}};
}

json json_body(const json& schema) { return {{"required", true}, {"content", {{"application/json", {{"schema", schema}}}}}}; }

json image_form(const json& extra_props, const json& required) {
    json props{{"image", {{"type", "string"}, {"format", "binary"}, {"description", "PNG, JPEG, BMP or TIFF; 8/16-bit; gray or colour"}}}};
    props.update(extra_props);
    return {{"required", true},
            {"content", {{"multipart/form-data", {{"schema", {{"type", "object"}, {"required", required}, {"properties", props}}}}}}}};
}

json schemas() {
    json s;
    s["Error"] = {{"type", "object"},
                  {"required", {"error"}},
                  {"properties", {{"error", {{"type", "string"}, {"description", "what is wrong and what to do"}}}}}};
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
    s["GaEstimate"] = {{"type", "object"},
                       {"properties",
                        {{"in_range", {{"type", "boolean"}}},
                         {"weeks", nullable_num("gestational age; null outside the formula's range")},
                         {"text", {{"type", "string"}, {"description", "e.g. 20w3d"}}},
                         {"note", {{"type", "string"}}}}}};
    s["Centile"] = {{"type", "object"},
                    {"description", "INTERGROWTH-21st HC-for-GA centile (present when a GA was given)"},
                    {"properties",
                     {{"in_range", {{"type", "boolean"}}},
                      {"median_mm", num("median HC at the GA")},
                      {"sd_mm", num("SD at the GA")},
                      {"z", num("z-score")},
                      {"centile", num("0..100")},
                      {"below_3rd", {{"type", "boolean"}}},
                      {"above_97th", {{"type", "boolean"}}},
                      {"note", {{"type", "string"}}}}}};
    s["Numbers"] = {{"type", "object"},
                    {"required", {"hc_mm", "bpd_mm", "ofd_mm", "ellipse_px", "ellipse_mm", "ga_hadlock", "ga_intergrowth"}},
                    {"properties",
                     {{"pixel_size_mm", num("mm per pixel")},
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
                      {"quality", {{"type", "string"}, {"enum", {"ok", "review"}}}},
                      {"reasons", {{"type", "array"}, {"items", {{"type", "string"}}}}}}}};
    s["Measurement"] = {
        {"allOf",
         {ref("Numbers"),
          {{"type", "object"},
           {"properties",
            {{"source", {{"type", "string"}}},
             {"image_width", {{"type", "integer"}}},
             {"image_height", {{"type", "integer"}}},
             {"detection_score", num("0..1")},
             {"segmentation_certainty", num("mean |2p-1| in the head, 0..1")},
             {"fit_rms_px", num("RMS orthogonal residual of the ellipse fit")},
             {"boundary_points", {{"type", "integer"}}},
             {"inliers", {{"type", "integer"}}},
             {"cut_points", {{"type", "integer"}}},
             {"timings_ms", {{"type", "object"}, {"description", "decode, network, postprocess, fit, total; queue = wait for a network slot"}, {"additionalProperties", {{"type", "number"}}}}},
             {"image_sha256", {{"type", "string"}}},
             {"image_url", {{"type", "string"}, {"description", "/v1/images/<sha256>"}}},
             {"pregnancy_id", {{"type", "string"}}},
             {"exam_date", {{"type", "string"}, {"format", "date"}}}}}}}}};
    s["ExamInput"] = {{"type", "object"},
                      {"required", {"pregnancy_id", "exam_date", "image_sha256", "pixel_size_mm", "ellipse_px", "corrected"}},
                      {"properties",
                       {{"pregnancy_id", {{"type", "string"}, {"pattern", "^[A-Za-z0-9_.-]{1,64}$"}}},
                        {"exam_date", {{"type", "string"}, {"format", "date"}}},
                        {"image_sha256", {{"type", "string"}, {"pattern", "^[0-9a-f]{64}$"}}},
                        {"pixel_size_mm", num("mm per pixel, (0, 2]")},
                        {"ellipse_px", ref("Ellipse")},
                        {"corrected", {{"type", "boolean"}}},
                        {"ga_weeks", num("known GA in weeks, for the centile")},
                        {"quality", {{"type", "string"}, {"enum", {"ok", "review"}}}},
                        {"reasons", {{"type", "array"}, {"items", {{"type", "string"}}}}}}}};
    s["Exam"] = {{"type", "object"},
                 {"properties",
                  {{"id", {{"type", "integer"}}},
                   {"pregnancy_id", {{"type", "string"}}},
                   {"exam_date", {{"type", "string"}, {"format", "date"}}},
                   {"image_sha256", {{"type", "string"}}},
                   {"pixel_size_mm", num("mm per pixel")},
                   {"ellipse_px", ref("Ellipse")},
                   {"hc_mm", num("")},
                   {"bpd_mm", num("")},
                   {"ofd_mm", num("")},
                   {"ga_hadlock_weeks", nullable_num("")},
                   {"ga_intergrowth_weeks", nullable_num("")},
                   {"ga_weeks_given", nullable_num("")},
                   {"centile", nullable_num("INTERGROWTH-21st centile when a GA was given")},
                   {"quality", {{"type", "string"}}},
                   {"reasons", {{"type", "array"}, {"items", {{"type", "string"}}}}},
                   {"corrected", {{"type", "boolean"}}},
                   {"accepted", {{"type", "boolean"}}},
                   {"created_at", {{"type", "string"}, {"format", "date-time"}}}}}};
    s["History"] = {{"type", "object"},
                    {"properties",
                     {{"pregnancy_id", {{"type", "string"}}}, {"exams", {{"type", "array"}, {"items", ref("Exam")}}}}}};
    s["Point"] = {{"type", "array"}, {"items", {{"type", "number"}}}, {"minItems", 2}, {"maxItems", 2}};
    return s;
}

}  // namespace

std::string openapi_json(const std::string& version, size_t max_upload_bytes) {
    const json bad = error_response("invalid input (the message names the field)");
    const json unauthorized = error_response("missing or wrong bearer token (only when the server requires one)");
    const json too_large = error_response("request body over the upload cap of " + std::to_string(max_upload_bytes) + " bytes");
    const json unprocessable = error_response("no head found, or no ellipse fits");
    const json loading = error_response("the model is still loading (see /health)");
    const json secured = json::array({{{"bearerAuth", json::array()}}});
    json paths;
    paths["/health"]["get"] = {
        {"summary", "Readiness: 200 once the model is loaded, 503 while loading or after a load failure"},
        {"responses", {{"200", json_response("ready", {{"type", "object"}})}, {"503", error_response("not ready")}}}};
    paths["/metrics"]["get"] = {{"summary", "Prometheus metrics: requests by route and status, latency histogram, errors"},
                                {"responses", {{"200", {{"description", "text/plain; version=0.0.4"}}}}}};
    paths["/openapi.json"]["get"] = {{"summary", "This document"}, {"responses", {{"200", {{"description", "OpenAPI 3"}}}}}};
    paths["/"]["get"] = {{"summary", "The web page"}, {"responses", {{"200", {{"description", "text/html"}}}}}};
    paths["/static/{file}"]["get"] = {
        {"summary", "Files of the web page (embedded in the binary), and chart.umd.min.js"},
        {"parameters", {{{"name", "file"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}}}}}},
        {"responses", {{"200", {{"description", "the file"}}}, {"404", error_response("no such file")}}}};
    paths["/v1/measure"]["post"] = {
        {"summary", "Measure HC, BPD, OFD, GA and centile on an image; stores the image by content hash (no exam is created)"},
        {"security", secured},
        {"requestBody", image_form({{"pixel_size_mm", num("mm per pixel, (0, 2]")},
                                    {"ga_weeks", num("known GA in weeks (0, 45), for the centile")},
                                    {"pregnancy_id", {{"type", "string"}, {"pattern", "^[A-Za-z0-9_.-]{1,64}$"}}},
                                    {"exam_date", {{"type", "string"}, {"format", "date"}}}},
                                   {"image", "pixel_size_mm"})},
        {"responses",
         {{"200", json_response("the measurement", ref("Measurement"))},
          {"400", bad},
          {"401", unauthorized},
          {"413", too_large},
          {"422", unprocessable},
          {"503", loading}}}};
    paths["/v1/segment"]["post"] = {
        {"summary", "Segment the head: a mask PNG (255 = head; headers X-Detection-Score, X-Confidence) or JSON contour"},
        {"security", secured},
        {"requestBody", image_form({{"format", {{"type", "string"}, {"enum", {"png", "json"}}, {"default", "png"}}}}, {"image"})},
        {"responses",
         {{"200",
           {{"description", "the mask or the contour"},
            {"content",
             {{"image/png", {{"schema", {{"type", "string"}, {"format", "binary"}}}}},
              {"application/json",
               {{"schema",
                 {{"type", "object"},
                  {"properties",
                   {{"contour", {{"type", "array"}, {"items", ref("Point")}, {"description", "closed polygon, px"}}},
                    {"confidence", num("mean |2p-1| in the head")},
                    {"detection_score", num("0..1")},
                    {"area_px", num("head area")}}}}}}}}}}},
          {"400", bad},
          {"401", unauthorized},
          {"413", too_large},
          {"422", unprocessable},
          {"503", loading}}}};
    paths["/v1/fit-ellipse"]["post"] = {
        {"summary", "Fit an ellipse to a mask image (multipart field mask or image; white = head) or to points"},
        {"security", secured},
        {"requestBody",
         {{"required", true},
          {"content",
           {{"application/json",
             {{"schema", {{"type", "object"}, {"required", {"points"}}, {"properties", {{"points", {{"type", "array"}, {"items", ref("Point")}, {"maxItems", 20000}}}}}}}}},
            {"multipart/form-data",
             {{"schema", {{"type", "object"}, {"properties", {{"mask", {{"type", "string"}, {"format", "binary"}}}}}}}}}}}}},
        {"responses",
         {{"200",
           json_response("the fitted ellipse",
                         {{"type", "object"},
                          {"properties",
                           {{"ellipse_px", ref("Ellipse")},
                            {"rms_px", num("RMS orthogonal residual of the inliers")},
                            {"inliers", {{"type", "integer"}}},
                            {"points", {{"type", "integer"}}}}}})},
          {"400", bad},
          {"401", unauthorized},
          {"413", too_large},
          {"422", unprocessable}}}};
    paths["/v1/perimeter"]["post"] = {
        {"summary", "HC, BPD, OFD, cephalic index, GA and centile from an ellipse and a pixel size"},
        {"security", secured},
        {"requestBody", json_body({{"type", "object"},
                                   {"required", {"ellipse_px", "pixel_size_mm"}},
                                   {"properties", {{"ellipse_px", ref("Ellipse")}, {"pixel_size_mm", num("mm per pixel")}, {"ga_weeks", num("known GA")}}}})},
        {"responses", {{"200", json_response("the numbers", ref("Numbers"))}, {"400", bad}, {"401", unauthorized}}}};
    paths["/v1/exams"]["post"] = {
        {"summary", "Save an accepted (possibly corrected) measurement as an exam; the numbers are recomputed from the ellipse"},
        {"security", secured},
        {"requestBody", json_body(ref("ExamInput"))},
        {"responses", {{"201", json_response("the stored exam", ref("Exam"))}, {"400", bad}, {"401", unauthorized}}}};
    const json id_param = {{"name", "id"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}}}};
    paths["/v1/pregnancies/{id}"]["get"] = {
        {"summary", "Exam history of a pregnancy, sorted by exam date"},
        {"parameters", {id_param}},
        {"responses", {{"200", json_response("the history", ref("History"))}, {"400", bad}, {"404", error_response("unknown pregnancy")}}}};
    paths["/v1/pregnancies/{id}/export.csv"]["get"] = {
        {"summary", "The history as CSV with a header row"},
        {"parameters", {id_param}},
        {"responses", {{"200", {{"description", "text/csv"}}}, {"400", bad}, {"404", error_response("unknown pregnancy")}}}};
    paths["/v1/images/{sha256}"]["get"] = {
        {"summary", "A stored image by its SHA-256"},
        {"parameters", {{{"name", "sha256"}, {"in", "path"}, {"required", true}, {"schema", {{"type", "string"}, {"pattern", "^[0-9a-f]{64}$"}}}}}},
        {"responses", {{"200", {{"description", "the image bytes"}}}, {"400", bad}, {"404", error_response("unknown image")}}}};
    paths["/v1/growth-curve"]["get"] = {
        {"summary", "INTERGROWTH-21st HC standard: 3rd, 50th and 97th centiles (mm) for GA 14..40 weeks in 0.5-week steps"},
        {"responses",
         {{"200",
           json_response("the curves", {{"type", "object"},
                                        {"properties",
                                         {{"ga_weeks", {{"type", "array"}, {"items", {{"type", "number"}}}}},
                                          {"p3", {{"type", "array"}, {"items", {{"type", "number"}}}}},
                                          {"p50", {{"type", "array"}, {"items", {{"type", "number"}}}}},
                                          {"p97", {{"type", "array"}, {"items", {{"type", "number"}}}}}}}})}}}};
    json doc{{"openapi", "3.0.3"},
             {"info",
              {{"title", "fetalhc"},
               {"version", version},
               {"description", "Fetal head circumference from 2D ultrasound: segmentation, ellipse fit, HC/BPD/OFD, GA and "
                               "centiles, with a per-pregnancy history. Lengths in mm unless a name ends in _px. Every POST "
                               "needs a bearer token when the server runs with a token file (always when bound to a "
                               "non-loopback address)."}}},
             {"paths", paths},
             {"components",
              {{"schemas", schemas()}, {"securitySchemes", {{"bearerAuth", {{"type", "http"}, {"scheme", "bearer"}}}}}}}};
    return doc.dump(2);
}

}  // namespace fetalhc::server
