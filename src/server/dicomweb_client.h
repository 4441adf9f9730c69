// DICOMweb STOW-RS client of the DICOM node's forwarder (`serve --dicomweb-forward URL`): the SR
// and key image of a result sent to a DICOMweb archive (PS3.18 10.5, a cloud PACS or Orthanc's
// DICOMweb plugin) in one multipart/related POST to URL/studies.
//
//   auto t = parse_dicomweb_target("http://10.0.0.5:8042/dicom-web");
//   std::string r = stow_rs(*t, {sr_bytes, key_bytes}, 30);   // "sent", or "failed: why"
//
// Thread safety: stow_rs may run on several threads at once (one HTTP client per call).
#pragma once

#include "fetalhc/expected.h"

#include <string>
#include <vector>

namespace fetalhc::server {

struct DicomwebTarget {
    std::string origin;  // "http://host:port" or "https://host:port"
    std::string path;    // the DICOMweb root's path, without a trailing '/' ("" or "/dicom-web")
    std::string shown;   // the URL for messages
};
// "http[s]://HOST[:PORT][/PATH]" (HOST may be [v6]); no user, query or fragment. Errors say what is
// wrong, for --dicomweb-forward.
Expected<DicomwebTarget> parse_dicomweb_target(const std::string& url);

// POSTs `objects` (DICOM Part 10 files) to target.path + "/studies" as multipart/related;
// type="application/dicom". "sent" when the archive answers 200 (every instance stored); else
// "failed: " and why (no connection, the status and what the answer says, at most 200 characters).
// The answer is read up to 1 MiB; a longer one is cut off and counts as a failure.
std::string stow_rs(const DicomwebTarget& target, const std::vector<std::string>& objects, double timeout_s);

}  // namespace fetalhc::server
