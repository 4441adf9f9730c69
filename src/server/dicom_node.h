// The DICOM node behind `fetalhc serve --dicom-port N`: a C-STORE SCP (DCMTK dcmnet) beside the
// HTTP server. Every object received is kept in the store by content hash (put_image) and listed
// "pending" (Store::add_dicom_instance, GET /v1/dicom/instances) before the C-STORE response is
// sent; worker threads then measure it through the same service as HTTP (measure_dicom,
// service.h, on the engine's network slots: the queue of queue.h, waited for without a limit),
// record the figures or the error, keep the SR, and send the SR on by C-STORE when a forward
// target is set. A file that cannot be measured stays stored and listed with its error. The queue
// is the store itself: only the rows are held in memory, and at start every instance still pending
// (acknowledged before a stop or a crash) is measured. With max_pending instances waiting, a
// C-STORE is refused with A700 (out of resources).
//
//   DicomNodeOptions o; o.port = 11112; o.forward = "PACS@127.0.0.1:11113";
//   auto node = DicomNode::create(o, engine, store);  // checks the options, binds the port
//   if (!node) fail(node.error());
//   (*node)->start(); ...; (*node)->stop();
//
// Security: the node listens on `host` only. Associations are accepted only from the allowed
// calling AE titles (`allow`), or, when none are listed, from any AE title on a loopback peer
// (other peers are closed as soon as they connect), and only when called by our own AE title.
// An object larger than max_object_bytes aborts its association while it is being received (it is
// never held whole). Up to max_associations associations run at once; each must end within
// association_timeout_s, and one whose peer sends under 1 KiB in idle_timeout_s (a trickle) is
// cut. SOP Instance UIDs must follow the DICOM UID rules. Every peer-supplied string in a log line
// is escaped (log_escape). Only ultrasound, secondary capture and verification presentation
// contexts are accepted.
// Thread safety: create/start/stop from one thread; the node runs its own threads.
#pragma once

#include "engine.h"

#include "fetalhc/expected.h"
#include "fetalhc/dicom_store.h"
#include "fetalhc/store.h"

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace fetalhc::server {

struct DicomNodeOptions {
    int port = 0;                         // TCP port (1..65535)
    std::string host = "127.0.0.1";       // the address to listen on (as serve --host)
    std::string aet = "FETALHC";          // our AE title (1..16 characters, no backslash)
    std::string forward;                  // "AET@HOST:PORT" to send each SR (and key image) to; empty: keep it only
    std::string dicomweb_forward;         // or a DICOMweb root URL to STOW-RS them to (dicomweb_client.h); not both
    // Who the node's received objects are audited as: the built-in "dicom-node" (sonographer's
    // rights), or a user of the store with at least the sonographer role (not revoked).
    std::string user = "dicom-node";
    // Tries per SR: a failed send is retried after 1 s, then 2, 4, ... (at most kForwardMaxWaitS) while
    // the row is listed "pending: ..."; then "failed: ...". Sent: "forwarded". Rows still pending at a
    // stop are sent again after the next start (at least once: a PACS may get an SR twice).
    int forward_attempts = 8;
    std::vector<std::string> allow;       // calling AE titles accepted; empty: any, loopback peers only
    size_t max_object_bytes = 20u << 20;  // larger objects abort the association
    int max_associations = 4;             // associations served at once (more wait in the backlog)
    int max_pending = 64;                 // received, not yet measured: more are refused with A700
    int workers = 2;                      // instances measured at once (each on a network slot)
    double association_timeout_s = 300;   // a whole association, from its connection
    double idle_timeout_s = 20;           // a peer must send 1 KiB (or get an answer) this often
    bool listen = true;                   // false: no network at all, objects come through receive() (fuzzing)
};

inline constexpr double kForwardMaxWaitS = 60;

struct ForwardTarget {
    std::string aet, host;
    int port = 0;
};
// "AET@HOST:PORT" (HOST may be [v6]); errors say what is wrong.
Expected<ForwardTarget> parse_forward_target(const std::string& s);
// The SOP classes the node stores and measures (ultrasound and secondary capture images).
bool node_stores_sop_class(const std::string& uid);
// A C-STORE status the node answers (PS3.4 C.4.2.3).
inline constexpr unsigned short kStoreSuccess = 0x0000, kStoreOutOfResources = 0xA700, kStoreCannotUnderstand = 0xC000;
// An AE title as DICOM allows it: 1..16 characters, printable ASCII, no backslash, not all spaces.
bool valid_ae_title(const std::string& s);
// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses.
bool is_loopback_peer(const std::string& ip);
// A peer-supplied string made safe for a log line: control, non-ASCII and backslash bytes as \xNN,
// at most `max` bytes of the input (then "...").
std::string log_escape(const std::string& s, size_t max = 80);

class DicomNode {
public:
    static Expected<std::unique_ptr<DicomNode>> create(const DicomNodeOptions& options, Engine& engine, Store& store);
    ~DicomNode();  // stops and joins
    DicomNode(const DicomNode&) = delete;
    DicomNode& operator=(const DicomNode&) = delete;

    void start();  // accept associations and measure on background threads
    void stop();   // stop accepting (within about a second); the objects being measured are finished
    int port() const;
    // Receives one C-STORE data set as the network path does (UID checks, pending limit, store,
    // list, queue) and returns the DIMSE status it would answer; for tests and fuzz_dicom_node.
    unsigned short receive(const std::string& bytes, const std::string& sop_instance, const std::string& sop_class,
                           const std::string& calling_aet);
    // Blocks until no instance is queued or being measured (or the timeout passes); true when idle.
    bool wait_idle(double timeout_s);

    struct Impl;

private:
    explicit DicomNode(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace fetalhc::server
