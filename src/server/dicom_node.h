// The DICOM node behind `fetalhc serve --dicom-port N`: a C-STORE SCP (DCMTK dcmnet) beside the
// HTTP server. Every object received is kept in the store by content hash (put_image) and listed
// (Store::add_dicom_instance, GET /v1/dicom/instances) before the C-STORE response is sent; a
// worker thread then measures it through the same service as HTTP (measure_dicom, service.h),
// records the figures or the error, keeps the SR, and sends the SR on by C-STORE when a forward
// target is set. A file that cannot be measured stays stored and listed with its error.
//
//   DicomNodeOptions o; o.port = 11112; o.forward = "PACS@127.0.0.1:11113";
//   auto node = DicomNode::create(o, engine, store);  // checks the options, binds the port
//   if (!node) fail(node.error());
//   (*node)->start(); ...; (*node)->stop();
//
// Security: associations are accepted only from the allowed calling AE titles (`allow`), or, when
// none are listed, from any AE title on a loopback peer. An object larger than max_object_bytes
// aborts its association while it is being received (it is never held whole). Only ultrasound,
// secondary capture and verification presentation contexts are accepted.
// Thread safety: create/start/stop from one thread; the node runs its own two threads.
#pragma once

#include "service.h"

#include "fetalhc/expected.h"
#include "fetalhc/store.h"

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace fetalhc::server {

struct DicomNodeOptions {
    int port = 0;                         // TCP port (1..65535)
    std::string aet = "FETALHC";          // our AE title (1..16 characters, no backslash)
    std::string forward;                  // "AET@HOST:PORT" to send each SR to; empty: keep it only
    std::vector<std::string> allow;       // calling AE titles accepted; empty: any, loopback peers only
    size_t max_object_bytes = 20u << 20;  // larger objects abort the association
};

struct ForwardTarget {
    std::string aet, host;
    int port = 0;
};
// "AET@HOST:PORT" (HOST may be [v6]); errors say what is wrong.
Expected<ForwardTarget> parse_forward_target(const std::string& s);
// An AE title as DICOM allows it: 1..16 characters, printable ASCII, no backslash, not all spaces.
bool valid_ae_title(const std::string& s);
// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses.
bool is_loopback_peer(const std::string& ip);

class DicomNode {
public:
    static Expected<std::unique_ptr<DicomNode>> create(const DicomNodeOptions& options, Engine& engine, Store& store);
    ~DicomNode();  // stops and joins
    DicomNode(const DicomNode&) = delete;
    DicomNode& operator=(const DicomNode&) = delete;

    void start();  // accept associations and measure on background threads
    void stop();   // stop accepting (within about a second); the object being measured is finished
    int port() const;

    struct Impl;

private:
    explicit DicomNode(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace fetalhc::server
