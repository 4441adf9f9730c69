// fetalhc/dicom_store.h - the DICOM node's record of each object it received, as the store keeps
// it (Store::add_dicom_instance, update_dicom_instance, dicom_instances, pending_dicom_instances in
// fetalhc/store.h).
//
//   fetalhc::DicomInstance d;
//   d.sop_instance_uid = "1.2.3"; d.image_sha256 = *(*store)->put_image(bytes);
//   auto row = (*store)->add_dicom_instance(d);   // row->id and row->received_at set
//
// Thread safety: a plain value type.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace fetalhc {

// One object received by the DICOM node (`serve --dicom-port`): what came in and what became of it.
// The object itself is kept like any uploaded image (put_image, by content hash).
struct DicomInstance {
    long long id = 0;                    // set by add_dicom_instance
    std::string sop_instance_uid, sop_class_uid;
    std::string calling_aet;             // the sender's AE title
    std::string received_at;             // UTC, YYYY-MM-DDTHH:MM:SSZ; set by add_dicom_instance
    std::string image_sha256;            // the received file (Part 10), kept by put_image
    // "pending" (not measured yet), "measured", "not_measured" (read, but refused as not a fetal
    // head in the HC plane: `error` says so and what it looks like; no SR), "failed"
    std::string status = "pending";
    // Figures (mm) of the measurement, or of the summary of a multi-frame file (medians).
    std::optional<double> hc_mm, bpd_mm, ofd_mm, ga_hadlock_weeks, pixel_size_mm;
    std::string calibration_source;      // e.g. "ultrasound region 0"
    std::string quality;                 // "ok" or "review" (empty when not measured)
    std::vector<std::string> reasons;
    int frames = 0;                      // frames in the file (0 before decoding)
    std::string error;                   // why it could not be measured ("" when measured)
    std::string forward_status;          // "" (no forwarding), "sent", or "failed: why"
    std::string sr_sha256;               // the SR written for it, kept by put_image ("" without one)
    std::string key_image_sha256;        // its key image (report.h), kept the same way ("" without one)
};

}  // namespace fetalhc
