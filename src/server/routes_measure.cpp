// Routes that measure: the whole pipeline (POST /v1/measure) and its stages on their own
// (segment, fit-ellipse, perimeter).
#include "routes.h"
#include "service.h"
#include "request_fields.h"

#include "fetalhc/dicom.h"
#include "fetalhc/measure.h"
#include "fetalhc/report.h"
#include "fetalhc/segmenter.h"

#include <opencv2/imgcodecs.hpp>

namespace fetalhc::server {
namespace {

constexpr size_t kMaxFitPoints = 20000;  // a head boundary needs hundreds; bounds the RANSAC cost
// Boundary pixels a mask may have before it is traced (issue 22 row 5: a 522 KB 6300 x 6300 line
// pattern gave 19 M boundary points, 34 s and 4.1 GB). A filled head 6000 pixels wide has about
// 20,000; the count is made on the 8-bit mask, in place, before anything grows with it.
constexpr long long kMaxMaskBoundaryPixels = 200'000;

// Pixels whose right or lower neighbour is on the other side of the mask's 128 threshold.
long long mask_boundary_pixels(const cv::Mat& mask8) {
    long long n = 0;
    for (int y = 0; y < mask8.rows; ++y) {
        const unsigned char* row = mask8.ptr<unsigned char>(y);
        const unsigned char* below = y + 1 < mask8.rows ? mask8.ptr<unsigned char>(y + 1) : nullptr;
        for (int x = 0; x < mask8.cols; ++x) {
            const bool in = row[x] >= 128;
            if (x + 1 < mask8.cols && in != (row[x + 1] >= 128)) ++n;
            if (below && in != (below[x] >= 128)) ++n;
        }
    }
    return n;
}

// format=json (default), sr (the DICOM SR, application/dicom), key-image (a DICOM Secondary Capture
// with the measurement burned in, application/dicom) or fhir (a FHIR R4 Bundle).
std::string form_format(const HttpRequest& req) {
    const std::string format = form_text(req, "format").value_or("json");
    if (format != "json" && format != "sr" && format != "key-image" && format != "fhir")
        fail(ErrorCode::InvalidField, "'format' must be 'json' (the measurement), 'sr' (a DICOM Structured Report), "
                                      "'key-image' (a DICOM Secondary Capture of the image with the measurement drawn on it) "
                                      "or 'fhir' (a FHIR R4 Bundle of Observations)");
    return format;
}

// A DICOM object (the SR or the key image) as the body.
HttpResponse dicom_response(const std::vector<unsigned char>& sr) {
    HttpResponse r;
    r.content_type = "application/dicom";
    r.body.assign(sr.begin(), sr.end());
    return r;
}

// A DICOM upload: calibrated from the file unless pixel_size_mm is sent.
HttpResponse measure_dicom_route(const HttpRequest& req, Services& s, const UploadedFile& up, const std::string& format) {
    DicomMeasureRequest o;
    o.shed_when_busy = true;
    o.max_frames = kServerMaxCineFrames;
    if (form_text(req, "pixel_size_mm").value_or("").find_first_not_of(" \t") != std::string::npos) o.pixel_size_mm = form_pixel_size(req);
    o.ga_weeks = form_ga(req);
    const auto pid = form_pregnancy_id(req);
    const auto date = form_exam_date(req);
    auto stored = measure_dicom_and_store(s.engine, s.store, up.bytes, upload_name(up), o).value_or_throw();
    const DicomMeasured& r = stored.result;
    auto touched = [&](HttpResponse res) {  // for the audit trail
        res.audit.image_sha256 = stored.image_sha256;
        res.audit.sop_instance_uid = r.header.sop_instance_uid.substr(0, 64);
        res.audit.pregnancy_id = pid.value_or("");
        return res;
    };
    if (format == "sr") return touched(dicom_response(dicom_result_sr(r).value_or_throw()));
    if (format == "key-image") return touched(dicom_response(dicom_result_key_image(s.engine, r, up.bytes, upload_name(up)).value_or_throw()));
    if (format == "fhir") return touched(json_response(200, fhir_bundle({{r.measurement, r.header}})));
    // The library's JSON of the result (the CLI's --format json entry too), and the server's own keys.
    json j = to_json(static_cast<const DicomResult&>(r), kGivenPixelSizeField);
    j["timings_ms"]["queue"] = r.queue_ms;
    j["image_sha256"] = stored.image_sha256;
    j["image_url"] = "/v1/images/" + stored.image_sha256;
    // The .dcm bytes are no image a browser shows: the measured frame (the summary's estimate for a
    // multi-frame file) as a PNG, in the same pixel coordinates as ellipse_px.
    const int preview_frame = r.summary && r.summary->estimate_frame > 0 ? r.summary->estimate_frame : 0;
    j["preview_url"] = "/v1/images/" + stored.image_sha256 + "/preview.png" +
                       (preview_frame > 0 ? "?frame=" + std::to_string(preview_frame) : std::string());
    j["preview_frame"] = preview_frame;
    if (pid) j["pregnancy_id"] = *pid;
    if (date) j["exam_date"] = *date;
    return touched(json_response(200, j));
}

HttpResponse measure(const HttpRequest& req, Services& s) {
    const UploadedFile& up = require_upload(req, "image");
    const std::string format = form_format(req);
    if (is_dicom(std::vector<unsigned char>(up.bytes.begin(), up.bytes.end())))
        return measure_dicom_route(req, s, up, format);
    MeasureOptions o;
    o.pixel_size_mm = form_pixel_size(req);
    o.ga_weeks = form_ga(req);
    const auto pid = form_pregnancy_id(req);
    const auto date = form_exam_date(req);
    auto r = measure_and_store(s.engine, s.store, up.bytes, upload_name(up), o);
    const StoredMeasurement& m = r.value_or_throw();
    auto touched = [&](HttpResponse res) {  // for the audit trail
        res.audit.image_sha256 = m.image_sha256;
        res.audit.pregnancy_id = pid.value_or("");
        return res;
    };
    if (format == "sr") {
        auto sr = write_biometry_sr(m.measurement, nullptr);
        if (!sr) throw api_error(sr.error_value());
        return touched(dicom_response(*sr));
    }
    if (format == "key-image") {
        auto key = write_key_image(m.measurement, m.image, nullptr);
        if (!key) throw api_error(key.error_value());
        return touched(dicom_response(*key));
    }
    if (format == "fhir") return touched(json_response(200, fhir_bundle({{m.measurement, std::nullopt}})));
    json j = to_json(m.measurement);
    j["timings_ms"]["queue"] = m.queue_ms;  // waiting for a network slot (not part of total)
    j["image_sha256"] = m.image_sha256;
    j["image_url"] = "/v1/images/" + m.image_sha256;
    j["calibration"] = {{"source", "pixel_size_mm"}, {"mm_per_px_x", m.measurement.pixel_size_mm},
                        {"mm_per_px_y", m.measurement.pixel_size_mm}};
    if (pid) j["pregnancy_id"] = *pid;
    if (date) j["exam_date"] = *date;
    return touched(json_response(200, j));
}

HttpResponse mask_png(const Segmentation& seg, const Boundary& b) {
    const cv::Mat mask = seg.probability_full() >= 0.5f;
    std::vector<unsigned char> png;
    cv::imencode(".png", mask, png);
    HttpResponse r;
    r.content_type = "image/png";
    r.body.assign(png.begin(), png.end());
    r.headers = {{"X-Detection-Score", std::to_string(seg.presence)}, {"X-Confidence", std::to_string(b.mean_confidence)}};
    return r;
}

HttpResponse segment(const HttpRequest& req, Services& s) {
    const UploadedFile& up = require_upload(req, "image");
    const std::string format = form_text(req, "format").value_or("png");
    if (format != "png" && format != "json")
        fail(ErrorCode::InvalidField, "'format' must be 'png' (mask image) or 'json' (contour)");
    Segmentation seg;
    cv::Mat gray;
    {
        // Shed like /v1/measure (--max-queue-ms): the slot first, so a refused request costs no decode.
        Admission admission;
        SlotGuard slot(s.engine.slots(), admission);
        if (!admission.admitted) throw overloaded_error(admission, s.engine.slots());
        gray = decode_image(s.engine.decode_slots(), up.bytes, upload_name(up)).value_or_throw();
        const auto model = s.engine.measurer().value_or_throw();
        seg = model->segmenter().segment(gray);
    }
    const Boundary b = extract_boundary(seg, gray);
    if (!b.found)
        fail(ErrorCode::NoHeadFound, "no fetal head found in '" + upload_name(up) + "' (detection score " +
                                         std::to_string(seg.presence) + "); check that the image is a head in the standard HC plane");
    if (format == "png") return mask_png(seg, b);
    json pts = json::array();
    for (const cv::Point& p : mask_outline(seg.probability_full() >= 0.5f)) pts.push_back({p.x, p.y});
    return json_response(200, {{"contour", pts}, {"confidence", b.mean_confidence}, {"detection_score", seg.presence},
                               {"area_px", b.area_px}});
}

HttpResponse fit_ellipse_route(const HttpRequest& req, Services& s) {
    std::vector<cv::Point2d> pts;
    std::string what;
    if (req.multipart) {
        const UploadedFile& up = require_upload(req, req.files.count("mask") ? "mask" : "image");
        cv::Mat mask = decode_image(s.engine.decode_slots(), up.bytes, upload_name(up)).value_or_throw();
        Boundary b;
        {
            SlotGuard slot(s.engine.decode_slots());  // tracing a large mask costs several times its size
            if (const long long edge = mask_boundary_pixels(mask); edge > kMaxMaskBoundaryPixels)
                fail(ErrorCode::MaskTooComplex, "the mask '" + upload_name(up) + "' has " + std::to_string(edge) +
                                                    " boundary pixels, over the " + std::to_string(kMaxMaskBoundaryPixels) +
                                                    " a head's outline could have; send a mask of one filled head (white, 255)");
            b = mask_boundary(mask);
            mask.release();
        }
        if (!b.found)
            fail(ErrorCode::EmptyMask,
                 "the mask '" + upload_name(up) + "' has no white region to fit; send a mask with the head in white (255)");
        pts = b.points;
        what = "the mask '" + upload_name(up) + "'";
    } else {
        pts = json_points(parse_json_body(req), kMaxFitPoints);
        what = std::to_string(pts.size()) + " points";
    }
    const EllipseFit f = fit_ellipse(pts);
    if (!f.ok) fail(ErrorCode::NoEllipseFit, "cannot fit an ellipse to " + what + ": " + f.message);
    return json_response(200, {{"ellipse_px", ellipse_json(f.ellipse)}, {"rms_px", f.rms_px}, {"inliers", f.inliers},
                               {"points", f.points}});
}

// The head check alone (a stage of /v1/measure): the score of an outline on an image, e.g. an
// ellipse corrected by hand, with the thresholds and the verdict they give.
HttpResponse head_check_route(const HttpRequest& req, Services& s) {
    const UploadedFile& up = require_upload(req, "image");
    const std::optional<std::string> text = form_text(req, "ellipse_px");
    if (!text) fail(ErrorCode::MissingField, "the form field 'ellipse_px' (a JSON object: center_x, center_y, semi_axis_a, "
                                             "semi_axis_b, angle_rad, in pixels) is required");
    const json body = {{"ellipse_px", json::parse(*text, nullptr, false)}};
    const Ellipse e = json_ellipse(body, "ellipse_px");
    HeadCheckResult r;
    double refuse = 0, review = 0;
    {
        Admission admission;
        SlotGuard slot(s.engine.slots(), admission);
        if (!admission.admitted) throw overloaded_error(admission, s.engine.slots());
        const cv::Mat gray = decode_image(s.engine.decode_slots(), up.bytes, upload_name(up)).value_or_throw();
        const auto model = s.engine.measurer().value_or_throw();
        const HeadCheck* check = model->head_check();
        if (!check)
            fail(ErrorCode::ModelUnavailable, "this server measures without a head check (serve --head-check none, or no " +
                                                  std::string(kHeadCheckFileName) + " beside the model)");
        r = check->score(gray, e);
        refuse = check->refuse_below();
        review = check->review_below();
    }
    json planes = json::object();
    for (int i = 0; i < kHeadCheckPlaneCount; ++i) planes[kHeadCheckPlanes[size_t(i)]] = r.plane_probability[size_t(i)];
    const char* verdict = r.score < refuse ? "not_a_head_plane" : r.score < review ? "review" : "head";
    return json_response(200, {{"head_check", r.score}, {"head_check_other", kHeadCheckPlanes[size_t(r.likely_other)]},
                               {"plane_probabilities", planes}, {"refuse_below", refuse}, {"review_below", review},
                               {"verdict", verdict}});
}

HttpResponse perimeter(const HttpRequest& req, Services&) {
    const json body = parse_json_body(req);
    const Ellipse e = json_ellipse(body, "ellipse_px");
    const double px = json_number(body, "pixel_size_mm", ErrorCode::InvalidPixelSize);
    check_pixel_size_value(px, "pixel_size_mm");
    const json all = to_json(measurement_from_ellipse(e, px, json_ga(body)));
    json out;
    for (const char* k : {"pixel_size_mm", "hc_mm", "bpd_mm", "ofd_mm", "cephalic_index", "ellipse_px", "ellipse_mm", "ga_hadlock",
                          "ga_intergrowth", "ga_weeks_given", "centile", "quality", "reasons"})
        if (all.contains(k)) out[k] = all[k];
    return json_response(200, out);
}

}  // namespace

std::vector<Route> measure_routes() {
    return {{"POST", "/v1/measure", measure},
            {"POST", "/v1/segment", segment},
            {"POST", "/v1/fit-ellipse", fit_ellipse_route},
            {"POST", "/v1/perimeter", perimeter},
            {"POST", "/v1/head-check", head_check_route}};
}

}  // namespace fetalhc::server
