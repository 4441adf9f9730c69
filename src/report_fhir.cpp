// FHIR R4 Observations and Bundle of a fetal biometry measurement. Structure: report.h.
#include "fetalhc/report.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <random>

#ifndef FETALHC_VERSION
#define FETALHC_VERSION "dev"
#endif

namespace fetalhc {
namespace {

using nlohmann::json;

// A version 4 (random) UUID, RFC 4122 section 4.4.
std::string uuid4() {
    thread_local std::mt19937_64 rng{std::random_device{}() ^ (static_cast<std::uint64_t>(std::random_device{}()) << 32)};
    std::uint64_t hi = rng(), lo = rng();
    hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
    lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // variant 10
    char buf[40];
    std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                  static_cast<unsigned>((hi >> 16) & 0xFFFF), static_cast<unsigned>(hi & 0xFFFF),
                  static_cast<unsigned>(lo >> 48), static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFULL));
    return buf;
}

std::string now_utc() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

bool digits(const std::string& s, size_t from, size_t n) {
    if (s.size() < from + n) return false;
    for (size_t i = from; i < from + n; ++i)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

// DICOM DA (YYYYMMDD) and TM (HH[MM[SS[.F]]]) to a FHIR dateTime; empty when the date is unusable.
// The time is given with this machine's UTC offset for that moment (DICOM times carry no zone).
std::string fhir_datetime(const std::string& da, const std::string& tm_in) {
    if (da.size() != 8 || !digits(da, 0, 8)) return "";
    const std::string date = da.substr(0, 4) + "-" + da.substr(4, 2) + "-" + da.substr(6, 2);
    std::string tm;
    for (char c : tm_in)
        if (c != ' ' && c != ':') tm += c;  // ACR-NEMA style "HH:MM:SS" is still seen
    if (tm.size() < 4 || !digits(tm, 0, 4)) return date;
    const int hh = std::stoi(tm.substr(0, 2)), mm = std::stoi(tm.substr(2, 2));
    const int ss = digits(tm, 4, 2) ? std::stoi(tm.substr(4, 2)) : 0;
    if (hh > 23 || mm > 59 || ss > 59) return date;
    std::tm local{};
    local.tm_year = std::stoi(da.substr(0, 4)) - 1900;
    local.tm_mon = std::stoi(da.substr(4, 2)) - 1;
    local.tm_mday = std::stoi(da.substr(6, 2));
    local.tm_hour = hh;
    local.tm_min = mm;
    local.tm_sec = ss;
    local.tm_isdst = -1;
    if (std::mktime(&local) == -1) return date;
    const int off = static_cast<int>(local.tm_gmtoff);  // seconds east of UTC, |off| <= 14 h
    char zone[32];
    std::snprintf(zone, sizeof zone, "%c%02d:%02d", off < 0 ? '-' : '+', (std::abs(off) / 3600) % 100,
                  (std::abs(off) % 3600) / 60);
    char clock[48];
    std::snprintf(clock, sizeof clock, "T%02d:%02d:%02d", hh, mm, ss);
    return date + clock + zone;
}

json dicom_uid_reference(const std::string& uid, const std::string& type, const std::string& display) {
    json r{{"identifier", {{"system", "urn:dicom:uid"}, {"value", "urn:oid:" + uid}}}, {"display", display}};
    if (!type.empty()) r["type"] = type;
    return r;
}

double tenth(double v) { return std::round(v * 10.0) / 10.0; }

}  // namespace

json fhir_observations(const Measurement& m, const DicomHeader* source, const FhirOptions& opt) {
    std::string effective;
    if (source) effective = fhir_datetime(source->study_date, source->study_time);
    if (effective.empty()) effective = opt.measured_at.empty() ? now_utc() : opt.measured_at;

    std::string quality = m.quality.empty() ? "not assessed" : m.quality;
    for (size_t i = 0; i < m.reasons.size(); ++i) quality += (i ? "; " : ": ") + m.reasons[i];

    struct Item {
        const char* loinc;
        const char* display;
        double mm;
    };
    const Item items[] = {{kLoincHeadCircumference, "Head Circumference", m.hc_mm},
                          {kLoincBiparietalDiameter, "Biparietal Diameter", m.bpd_mm},
                          {kLoincOccipitoFrontalDiameter, "Occipital-Frontal Diameter", m.ofd_mm}};
    json out = json::array();
    for (const auto& it : items) {
        json obs{
            {"resourceType", "Observation"},
            {"status", "final"},
            {"category",
             json::array({{{"coding", json::array({{{"system", "http://terminology.hl7.org/CodeSystem/observation-category"},
                                                    {"code", "imaging"},
                                                    {"display", "Imaging"}}})}}})},
            {"code", {{"coding", json::array({{{"system", "http://loinc.org"}, {"code", it.loinc}}})},
                      {"text", it.display}}},
            {"effectiveDateTime", effective},
            {"valueQuantity",
             {{"value", tenth(it.mm)}, {"unit", "mm"}, {"system", "http://unitsofmeasure.org"}, {"code", "mm"}}},
            {"device", {{"display", "fetalhc " FETALHC_VERSION}}},
            {"note", json::array({{{"text", "fetalhc quality " + quality + " (source: " + m.source + ")"}}})},
        };
        if (source) {
            if (!source->patient_id.empty()) obs["subject"] = {{"identifier", {{"value", source->patient_id}}}};
            json derived = json::array();
            if (!source->sop_instance_uid.empty())
                derived.push_back(dicom_uid_reference(source->sop_instance_uid, "", "source image (DICOM SOP Instance UID)"));
            if (!source->study_instance_uid.empty())
                derived.push_back(dicom_uid_reference(source->study_instance_uid, "ImagingStudy", "source study"));
            if (!derived.empty()) obs["derivedFrom"] = derived;
        }
        out.push_back(std::move(obs));
    }
    return out;
}

json fhir_bundle(const std::vector<FhirInput>& inputs, const FhirOptions& opt) {
    json entries = json::array();
    for (const auto& in : inputs)
        for (auto& obs : fhir_observations(in.measurement, in.source ? &*in.source : nullptr, opt))
            entries.push_back({{"fullUrl", "urn:uuid:" + uuid4()}, {"resource", std::move(obs)}});
    return {{"resourceType", "Bundle"},
            {"identifier", {{"system", "urn:ietf:rfc:3986"}, {"value", "urn:uuid:" + uuid4()}}},
            {"type", "collection"},
            {"timestamp", now_utc()},
            {"entry", std::move(entries)}};
}

}  // namespace fetalhc
