// Routes of the DICOM node (`serve --dicom-port`): what it received and what became of it.
#include "routes.h"
#include "request_fields.h"

#include "fetalhc/dicom_store.h"

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

}  // namespace

std::vector<Route> dicom_routes() { return {{"GET", "/v1/dicom/instances", list_instances}}; }

}  // namespace fetalhc::server
