// Routes of the DICOM node (`serve --dicom-port`): what it received and what became of it, and
// DICOMweb STOW-RS (PS3.18 10.5) into it.
#include "routes.h"
#include "dicom_node.h"
#include "request_fields.h"

#include "fetalhc/dicom.h"
#include "fetalhc/dicom_store.h"

#include <algorithm>
#include <cctype>

namespace fetalhc::server {
namespace {

constexpr int kDefaultListed = 100, kMaxListed = 1000;

json optional_number(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

json instance_json(const DicomInstance& d) {
    json j{{"id", d.id},
           {"sop_instance_uid", d.sop_instance_uid},
           {"sop_class_uid", d.sop_class_uid},
           {"calling_aet", d.calling_aet},
           {"received_at", d.received_at},
           {"status", d.status},
           {"image_sha256", d.image_sha256.empty() ? json(nullptr) : json(d.image_sha256)},
           {"image_url", d.image_sha256.empty() ? json(nullptr) : json("/v1/images/" + d.image_sha256)},
           {"frames", d.frames},
           {"hc_mm", optional_number(d.hc_mm)},
           {"bpd_mm", optional_number(d.bpd_mm)},
           {"ofd_mm", optional_number(d.ofd_mm)},
           {"ga_hadlock_weeks", optional_number(d.ga_hadlock_weeks)},
           {"pixel_size_mm", optional_number(d.pixel_size_mm)},
           {"calibration_source", d.calibration_source},
           {"quality", d.quality.empty() ? json(nullptr) : json(d.quality)},
           {"reasons", d.reasons},
           {"error", d.error.empty() ? json(nullptr) : json(d.error)},
           {"forward_status", d.forward_status.empty() ? json(nullptr) : json(d.forward_status)}};
    if (!d.sr_sha256.empty()) j["sr_url"] = "/v1/images/" + d.sr_sha256;
    if (!d.key_image_sha256.empty()) j["key_image_url"] = "/v1/images/" + d.key_image_sha256;
    return j;
}

HttpResponse list_instances(const HttpRequest& req, Services& s) {
    int limit = kDefaultListed;
    if (auto it = req.query.find("limit"); it != req.query.end()) {
        const auto n = parse_number(it->second);
        if (!n || *n < 1 || *n > kMaxListed || *n != double(int(*n)))
            fail(ErrorCode::InvalidField, "'limit' must be a whole number from 1 to " + std::to_string(kMaxListed));
        limit = int(*n);
    }
    auto rows = s.store.dicom_instances(limit);
    if (!rows) throw api_error(rows.error_value());
    json list = json::array();
    for (const DicomInstance& d : *rows) list.push_back(instance_json(d));
    return json_response(200, {{"instances", list}});
}

// ---- STOW-RS ------------------------------------------------------------------------------------

constexpr size_t kMaxStowParts = 1000, kMaxBoundary = 200;
// FailureReason (0008,1197) values (PS3.18 10.5.3, from PS3.4 C.4.2.3 and Annex GG).
constexpr unsigned kReasonClassNotSupported = 0x0122;

std::string lower_ascii(std::string s) {
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// A parameter of a Content-Type value (`name=value` or `name="value"`), "" when absent.
std::string type_parameter(const std::string& type, const std::string& name) {
    const std::string low = lower_ascii(type);
    size_t at = 0;
    while ((at = low.find(';', at)) != std::string::npos) {
        size_t k = low.find_first_not_of(" \t", at + 1);
        at += 1;
        if (k == std::string::npos || low.compare(k, name.size(), name) != 0) continue;
        size_t eq = low.find_first_not_of(" \t", k + name.size());
        if (eq == std::string::npos || low[eq] != '=') continue;
        size_t v = low.find_first_not_of(" \t", eq + 1);
        if (v == std::string::npos) return "";
        if (type[v] == '"') {
            const size_t end = type.find('"', v + 1);
            return end == std::string::npos ? "" : type.substr(v + 1, end - v - 1);
        }
        const size_t end = type.find_first_of("; \t", v);
        return type.substr(v, end == std::string::npos ? std::string::npos : end - v);
    }
    return "";
}

// A DICOM JSON element (PS3.18 F.2) of one value.
json dicom_json(const char* vr, json value) { return {{"vr", vr}, {"Value", json::array({std::move(value)})}}; }

// One item of ReferencedSOPSequence or FailedSOPSequence.
json sop_item(const std::string& cls, const std::string& uid, std::optional<unsigned> reason) {
    json item = json::object();
    if (!cls.empty()) item["00081150"] = dicom_json("UI", cls);
    if (!uid.empty()) item["00081155"] = dicom_json("UI", uid);
    if (reason) item["00081197"] = dicom_json("US", *reason);
    return item;
}

// POST /dicomweb/studies[/{study}]: each application/dicom part goes the C-STORE path of the node
// (UID checks, pending limit, store, list, queue); the answer lists what was taken and what was
// not, with PS3.18's statuses: 200 all taken, 202 some, 409 none.
HttpResponse stow(const HttpRequest& req, Services& s) {
    if (!s.dicom)
        fail(ErrorCode::NotFound, "this server takes no DICOMweb uploads; start serve with --dicomweb (or --dicom-port)");
    const std::string type = req.header("content-type");
    if (lower_ascii(type).rfind("multipart/related", 0) != 0)
        fail(ErrorCode::BadRequest, "STOW-RS takes Content-Type: multipart/related; type=\"application/dicom\"; boundary=...; got '" +
                                        type.substr(0, 100) + "'");
    if (const std::string t = lower_ascii(type_parameter(type, "type")); !t.empty() && t != "application/dicom")
        fail(ErrorCode::BadRequest, "STOW-RS here takes DICOM files (type=\"application/dicom\"), not '" + t.substr(0, 60) +
                                        "'; send the Part 10 files themselves");
    const auto parts = split_multipart_related(type, req.body, kMaxStowParts);
    const auto study = req.path_params.find("study");
    json referenced = json::array(), failed = json::array();
    for (size_t i = 0; i < parts.size(); ++i) {
        const RelatedPart& p = parts[i];
        const std::string part_type = lower_ascii(p.content_type.substr(0, p.content_type.find(';')));
        auto h = part_type.empty() || part_type == "application/dicom"
                     ? read_dicom_header(std::vector<unsigned char>(p.body.begin(), p.body.end()), "STOW-RS part " + std::to_string(i + 1))
                     : Expected<DicomHeader>(make_error(ErrorKind::InvalidArgument, "not application/dicom"));
        if (!h) {
            failed.push_back(sop_item("", "", kStoreCannotUnderstand));
            continue;
        }
        if (!node_stores_sop_class(h->sop_class_uid)) {
            failed.push_back(sop_item(h->sop_class_uid, h->sop_instance_uid, kReasonClassNotSupported));
            continue;
        }
        if (study != req.path_params.end() && h->study_instance_uid != study->second) {
            failed.push_back(sop_item(h->sop_class_uid, h->sop_instance_uid, kStoreCannotUnderstand));
            continue;
        }
        const unsigned short status = s.dicom->receive(p.body, h->sop_instance_uid, h->sop_class_uid, "DICOMWEB");
        if (status == kStoreSuccess) referenced.push_back(sop_item(h->sop_class_uid, h->sop_instance_uid, std::nullopt));
        else failed.push_back(sop_item(h->sop_class_uid, h->sop_instance_uid, status));  // the C-STORE status: A700 or C000
    }
    json answer = json::object();
    if (!referenced.empty()) answer["00081199"] = {{"vr", "SQ"}, {"Value", referenced}};
    if (!failed.empty()) answer["00081198"] = {{"vr", "SQ"}, {"Value", failed}};
    HttpResponse r = json_response(failed.empty() ? 200 : referenced.empty() ? 409 : 202, answer);
    r.content_type = "application/dicom+json";
    return r;
}

}  // namespace

std::vector<RelatedPart> split_multipart_related(const std::string& content_type, const std::string& body, size_t max_parts) {
    const std::string boundary = type_parameter(content_type, "boundary");
    // RFC 2046 allows 70 characters; some senders use more (Orthanc's DICOMweb client: 73).
    if (boundary.empty() || boundary.size() > kMaxBoundary)
        fail(ErrorCode::BadRequest, "the multipart/related Content-Type has no boundary parameter (1 to " +
                                        std::to_string(kMaxBoundary) + " characters)");
    const std::string delim = "--" + boundary;
    size_t at = body.find(delim);
    if (at == std::string::npos) fail(ErrorCode::BadRequest, "the body holds no '--" + boundary + "' delimiter");
    std::vector<RelatedPart> parts;
    while (true) {
        at += delim.size();
        if (body.compare(at, 2, "--") == 0) break;  // the closing delimiter
        const size_t line_end = body.find("\r\n", at);
        if (line_end == std::string::npos) fail(ErrorCode::BadRequest, "a multipart/related delimiter line does not end");
        const size_t headers_end = body.find("\r\n\r\n", line_end);
        if (headers_end == std::string::npos && body.compare(line_end, 4, "\r\n\r\n") != 0)
            fail(ErrorCode::BadRequest, "part " + std::to_string(parts.size() + 1) + " has no blank line after its headers");
        const size_t content = headers_end + 4;
        const size_t next = body.find("\r\n" + delim, headers_end);
        if (next == std::string::npos)
            fail(ErrorCode::BadRequest, "part " + std::to_string(parts.size() + 1) + " is not closed by a '--" + boundary + "' delimiter");
        if (parts.size() == max_parts)
            fail(ErrorCode::BadRequest, "more than " + std::to_string(max_parts) + " parts in one request; send them in several");
        RelatedPart p;
        const std::string headers = body.substr(line_end + 2, headers_end > line_end + 2 ? headers_end - line_end - 2 : 0);
        for (size_t h = 0; h < headers.size();) {
            const size_t e = std::min(headers.find("\r\n", h), headers.size());
            const std::string line = headers.substr(h, e - h);
            const size_t colon = line.find(':');
            if (colon != std::string::npos && lower_ascii(line.substr(0, colon)) == "content-type")
                p.content_type = line.substr(line.find_first_not_of(" \t", colon + 1) == std::string::npos ? line.size() : line.find_first_not_of(" \t", colon + 1));
            h = e + 2;
        }
        p.body = body.substr(content, next - content);
        parts.push_back(std::move(p));
        at = next + 2;
    }
    return parts;
}

std::vector<Route> dicom_routes() {
    return {{"GET", "/v1/dicom/instances", list_instances},
            {"POST", "/dicomweb/studies", stow},
            {"POST", "/dicomweb/studies/{study}", stow}};
}

}  // namespace fetalhc::server
