#include "dicom_node.h"
#include "dicomweb_client.h"

#include "service.h"

#include "fetalhc/dicom.h"
#include "fetalhc/server.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmnet/dcmlayer.h>
#include <dcmtk/dcmnet/dcmtrans.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/dulstruc.h>
#include <dcmtk/dcmnet/scp.h>
#include <dcmtk/dcmnet/scpthrd.h>
#include <dcmtk/dcmnet/scu.h>
#include <dcmtk/oflog/oflog.h>
#include <spdlog/spdlog.h>

#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

namespace fs = std::filesystem;

namespace fetalhc::server {
namespace {

using Clock = std::chrono::steady_clock;

constexpr Uint16 kStatusSuccess = kStoreSuccess;
constexpr Uint16 kStatusOutOfResources = kStoreOutOfResources;  // Refused, out of resources
constexpr Uint16 kStatusCannotUnderstand = kStoreCannotUnderstand;  // Error, cannot understand

// The storage classes an ultrasound machine sends (and Secondary Capture, which may carry a calibration).
const char* const kStorageClasses[] = {
    UID_UltrasoundImageStorage,           UID_UltrasoundMultiframeImageStorage,
    UID_RETIRED_UltrasoundImageStorage,   UID_RETIRED_UltrasoundMultiframeImageStorage,
    UID_SecondaryCaptureImageStorage,     UID_MultiframeGrayscaleByteSecondaryCaptureImageStorage,
    UID_MultiframeTrueColorSecondaryCaptureImageStorage};

// Every transfer syntax is accepted as it comes; those DCMTK cannot decode are kept and listed
// with the error that names them.
const char* const kTransferSyntaxes[] = {
    UID_LittleEndianExplicitTransferSyntax, UID_LittleEndianImplicitTransferSyntax, UID_BigEndianExplicitTransferSyntax,
    UID_RLELosslessTransferSyntax, UID_JPEGProcess1TransferSyntax, UID_JPEGProcess2_4TransferSyntax,
    UID_JPEGProcess14TransferSyntax, UID_JPEGProcess14SV1TransferSyntax, UID_JPEGLSLosslessTransferSyntax,
    UID_JPEGLSLossyTransferSyntax, UID_JPEG2000LosslessOnlyTransferSyntax, UID_JPEG2000TransferSyntax,
    UID_DeflatedExplicitVRLittleEndianTransferSyntax};

std::string random_suffix() {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    return std::to_string(rng());
}

constexpr const char* kSpoolPrefix = "fetalhc-dicom-";

// Spool folders of earlier runs that ended without cleaning up (a crash, kill -9): a folder is
// named after its process (fetalhc-dicom-<pid>-XXXXXX) and removed when that process is gone.
// Folders of the earlier naming (fetalhc-dicom-XXXXXX) are removed after a day.
void remove_stale_spools(const fs::path& base) {
    std::error_code ec;
    for (fs::directory_iterator it(base, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.rfind(kSpoolPrefix, 0) != 0 || !it->is_directory(ec)) continue;
        const std::string rest = name.substr(std::strlen(kSpoolPrefix));
        const size_t dash = rest.find('-');
        bool stale = false;
        if (dash != std::string::npos && dash > 0 && rest.find_first_not_of("0123456789") == dash) {
            const long pid = std::atol(rest.substr(0, dash).c_str());
            stale = pid != long(::getpid()) && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH;
        } else {
            const auto age = fs::file_time_type::clock::now() - fs::last_write_time(it->path(), ec);
            stale = !ec && age > std::chrono::hours(24);
        }
        if (!stale) continue;
        fs::remove_all(it->path(), ec);
        if (!ec) spdlog::info("dicom: removed the spool folder '{}' left by an earlier run", it->path().string());
    }
}

// A private folder (mode 0700) under the system's temporary folder for objects being received.
Expected<fs::path> make_spool_folder() {
    std::error_code ec;
    const fs::path base = fs::temp_directory_path(ec);
    if (ec) return make_error("no temporary folder for received DICOM objects (" + ec.message() + "); set TMPDIR to a writable folder");
    remove_stale_spools(base);
    std::string tmpl = (base / (kSpoolPrefix + std::to_string(::getpid()) + "-XXXXXX")).string();
    if (!::mkdtemp(tmpl.data()))
        return make_error("cannot create a folder for received DICOM objects in '" + base.string() + "' (" + std::strerror(errno) +
                          "); set TMPDIR to a writable folder");
    return fs::path(tmpl);
}

std::optional<std::string> read_file(const fs::path& p, size_t max_bytes) {
    std::error_code ec;
    const auto size = fs::file_size(p, ec);
    if (ec || size > max_bytes) return std::nullopt;
    std::ifstream in(p, std::ios::binary);
    std::string bytes(size, '\0');
    if (!in.read(bytes.data(), std::streamsize(size))) return std::nullopt;
    return bytes;
}

std::string trim_ae(std::string ae) {
    while (!ae.empty() && ae.back() == ' ') ae.pop_back();
    size_t i = 0;
    while (i < ae.size() && ae[i] == ' ') ++i;
    return ae.substr(i);
}

std::string peer_address(int fd) {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    char host[NI_MAXHOST] = "";
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
        ::getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0)
        return "";
    return host;
}

// ---- deadlines on every association ------------------------------------------------------------

// A TCP connection of one association with two limits DCMTK's per-read timeouts do not give: the
// whole association must end by `deadline`, and the peer must make progress: every idle window it
// must send at least kProgressBytes or be answered (a peer trickling a byte now and then resets
// DCMTK's timeouts forever). The first window, before the association request has arrived, is
// at most kRequestWindow. A read past either limit fails and the association is dropped.
class DeadlineConnection final : public DcmTCPConnection {
public:
    static constexpr size_t kProgressBytes = 1024;
    static constexpr auto kRequestWindow = std::chrono::seconds(5);

    DeadlineConnection(DcmNativeSocketType fd, double association_s, double idle_s, bool refused, const std::atomic<bool>& stopping)
        : DcmTCPConnection(fd),
          deadline_(Clock::now() + to_duration(association_s)),
          idle_(to_duration(idle_s)),
          idle_until_(Clock::now() + std::min<Clock::duration>(idle_, kRequestWindow)),
          refused_(refused),
          stopping_(stopping) {
        if (refused_) ::shutdown(fd, SHUT_RDWR);  // closed as soon as it connects
    }

    ssize_t read(void* buf, size_t nbyte) override {
        if (refused_ || !wait_readable(limit())) {
            errno = ETIMEDOUT;
            return -1;
        }
        const ssize_t n = DcmTCPConnection::read(buf, nbyte);
        if (n > 0 && (progress_ += size_t(n)) >= kProgressBytes) made_progress();
        return n;
    }
    ssize_t write(void* buf, size_t nbyte) override {
        const ssize_t n = DcmTCPConnection::write(buf, nbyte);
        if (n > 0) made_progress();  // the peer's last message was whole: it gets a new window
        return n;
    }
    OFBool networkDataAvailable(int timeout) override {
        if (refused_) return OFTrue;  // the read then fails at once
        return wait_readable(std::min(limit(), Clock::now() + std::chrono::seconds(std::max(timeout, 0)))) ? OFTrue : OFFalse;
    }

private:
    static Clock::duration to_duration(double s) {
        return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
    }
    Clock::time_point limit() const { return std::min(deadline_, idle_until_); }
    void made_progress() {
        progress_ = 0;
        idle_until_ = Clock::now() + idle_;
    }
    // Waits for data until `until`, in slices, so that a stopping node is noticed.
    bool wait_readable(Clock::time_point until) {
        for (;;) {
            const auto now = Clock::now();
            if (now >= until || stopping_) return false;
            pollfd p{getSocket(), POLLIN, 0};
            const auto slice = std::min<Clock::duration>(until - now, std::chrono::milliseconds(200));
            const int ms = std::max(1, int(std::chrono::ceil<std::chrono::milliseconds>(slice).count()));
            const int r = ::poll(&p, 1, ms);
            if (r > 0) return true;
            if (r < 0 && errno != EINTR) return false;
        }
    }

    const Clock::time_point deadline_;
    const Clock::duration idle_;
    Clock::time_point idle_until_;
    size_t progress_ = 0;
    const bool refused_;
    const std::atomic<bool>& stopping_;
};

// Hands every accepted socket to DCMTK as a DeadlineConnection; a peer that may not send at all
// (not loopback while no AE title list is set) is refused there, before it can hold a thread.
class DeadlineLayer final : public DcmTransportLayer {
public:
    explicit DeadlineLayer(DicomNode::Impl& node) : node_(node) {}
    DcmTransportConnection* createConnection(DcmNativeSocketType fd, OFBool secure) override;

private:
    DicomNode::Impl& node_;
};

}  // namespace

bool valid_ae_title(const std::string& s) {
    if (s.empty() || s.size() > 16 || s.find_first_not_of(' ') == std::string::npos) return false;
    for (unsigned char c : s)
        if (c < 0x20 || c > 0x7e || c == '\\') return false;
    return true;
}

bool is_loopback_peer(const std::string& ip) {
    return ip.rfind("127.", 0) == 0 || ip == "::1" || ip.rfind("::ffff:127.", 0) == 0 || ip == "localhost";
}

std::string log_escape(const std::string& s, size_t max) {
    std::string out;
    const size_t n = std::min(s.size(), max);
    for (size_t i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c >= 0x7f || c == '\\') {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02X", c);
            out += hex;
        } else {
            out += char(c);
        }
    }
    if (s.size() > max) out += "...";
    return out;
}

Expected<ForwardTarget> parse_forward_target(const std::string& s) {
    const auto bad = [&](const std::string& why) {
        return make_error("--dicom-forward '" + s + "': " + why + "; write AET@HOST:PORT, e.g. PACS@10.0.0.5:104");
    };
    const size_t at = s.find('@'), colon = s.rfind(':');
    if (at == std::string::npos || colon == std::string::npos || colon < at) return bad("not of the form AET@HOST:PORT");
    ForwardTarget t;
    t.aet = s.substr(0, at);
    t.host = s.substr(at + 1, colon - at - 1);
    if (t.host.size() > 2 && t.host.front() == '[' && t.host.back() == ']') t.host = t.host.substr(1, t.host.size() - 2);
    if (!valid_ae_title(t.aet)) return bad("the AE title must be 1 to 16 printable characters without '\\'");
    if (t.host.empty()) return bad("the host is empty");
    const std::string port = s.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return bad("the port is not a number");
    t.port = std::stoi(port);
    if (t.port < 1 || t.port > 65535) return bad("the port must be in 1..65535");
    return t;
}

bool node_stores_sop_class(const std::string& uid) {
    return std::any_of(std::begin(kStorageClasses), std::end(kStorageClasses), [&](const char* c) { return uid == c; });
}

// ---- the SCP ------------------------------------------------------------------------------------

// A row's forward_status from its measurement until the forwarder's first try.
const std::string kForwardQueued = "pending: not sent yet";

struct DicomNode::Impl {
    DicomNodeOptions opt;
    std::optional<ForwardTarget> forward;
    std::optional<DicomwebTarget> dicomweb;
    bool forwarding() const { return forward || dicomweb; }
    std::string user_role = "sonographer";  // opt.user's role
    // The audit entry of an object received from `aet` (DICOMweb uploads come as "DICOMWEB").
    AuditEntry audit_of(const std::string& aet, Uint16 status) const {
        AuditEntry e;
        e.user = opt.user;
        e.role = user_role;
        e.action = aet == "DICOMWEB" ? "DICOMweb STOW-RS instance" : "DICOM C-STORE";
        e.client = "AE " + log_escape(aet, 16);
        e.outcome = status;
        return e;
    }
    Engine& engine;
    Store& store;
    T_ASC_Network* net = nullptr;
    std::unique_ptr<DeadlineLayer> layer;
    DcmSharedSCPConfig config;
    std::vector<std::thread> receivers, workers;
    std::atomic<bool> stopping{false};
    std::atomic<bool> warned_no_model{false};
    std::mutex mu;
    std::condition_variable cv, idle_cv;
    struct Queued {
        DicomInstance row;
        std::optional<Clock::time_point> received;  // unknown for rows resumed at start
    };
    std::deque<Queued> queue;  // pending rows, oldest first (their objects are in the store)
    // SRs to forward (--dicom-forward), each with its tries so far and when to try next; one thread
    // sends them, so a PACS that is down delays no measurement.
    struct Forwarding {
        DicomInstance row;
        int attempts = 0;
        Clock::time_point due;
    };
    std::vector<Forwarding> forwards;
    std::condition_variable forward_cv;
    std::thread forwarder;
    int busy = 0;                     // rows being measured
    bool started = false;
    fs::path spool;  // received objects land here before they are stored (the store may keep no files)

    Impl(Engine& e, Store& s) : engine(e), store(s) {}
    ~Impl() {
        if (net) ASC_dropNetwork(&net);
        std::error_code ec;
        if (!spool.empty()) fs::remove_all(spool, ec);
    }
    Expected<bool> listen_on_host();
    void receive_loop();
    // Keeps and lists a received object; the DIMSE status of the C-STORE response.
    Uint16 accept(std::string bytes, const std::string& sop_instance, const std::string& sop_class, const std::string& aet);
    // An object refused for lack of room (A700): in the audit trail too (best effort: the store may be what failed).
    void refused_audit(const std::string& aet, const std::string& sop_instance) {
        AuditEntry e = audit_of(aet, kStatusOutOfResources);
        e.sop_instance_uid = log_escape(sop_instance, 64);
        if (auto a = store.append_audit(e); !a) spdlog::error("dicom: cannot audit a refused object: {}", a.error());
    }
    void work();
    void process(DicomInstance& row, std::optional<Clock::time_point> received);
    // Sends the objects (the SR, then its key image) in one association: "sent", or "failed: why".
    std::string send_objects(const std::vector<std::string>& objects);
    void queue_forward(const DicomInstance& row, int attempts, double wait_s = 0);
    void forward_loop();
    void forward_once(Forwarding& f);
};

namespace {

DcmTransportConnection* DeadlineLayer::createConnection(DcmNativeSocketType fd, OFBool) {
    const std::string ip = peer_address(fd);
    const bool refused = node_.opt.allow.empty() && !is_loopback_peer(ip);
    if (refused)
        spdlog::warn("dicom: connection from '{}' closed: without --dicom-allow only loopback peers may send", log_escape(ip));
    return new DeadlineConnection(fd, node_.opt.association_timeout_s, node_.opt.idle_timeout_s, refused, node_.stopping);
}

class StoreScp : public DcmThreadSCP {
public:
    explicit StoreScp(DicomNode::Impl& node) : node_(node) {}

protected:
    OFCondition handleIncomingCommand(T_DIMSE_Message* msg, const DcmPresentationContextInfo& info) override {
        if (msg->CommandField != DIMSE_C_STORE_RQ) return DcmSCP::handleIncomingCommand(msg, info);
        T_DIMSE_C_StoreRQ& rq = msg->msg.CStoreRQ;
        const T_ASC_PresentationContextID pres = info.presentationContextID;
        // Received straight to a file (never held whole in memory); notifyRECEIVEProgress aborts
        // the association once the object passes the size limit.
        const fs::path tmp = node_.spool / ("in-" + random_suffix());
        received_ = 0;
        too_large_ = false;
        OFCondition c = receiveSTORERequest(rq, pres, OFString(tmp.string().c_str()));
        std::error_code ec;
        if (too_large_ || c.bad()) {
            fs::remove(tmp, ec);
            if (too_large_) {
                spdlog::warn("dicom: an object from '{}' passed the {} byte limit; association aborted",
                             log_escape(getPeerAETitle().c_str()), node_.opt.max_object_bytes);
                return DIMSE_ILLEGALASSOCIATION;  // ends the association loop (it is already aborted)
            }
            return c;
        }
        auto bytes = read_file(tmp, node_.opt.max_object_bytes + (1u << 16));
        fs::remove(tmp, ec);
        const Uint16 status = bytes ? node_.accept(std::move(*bytes), rq.AffectedSOPInstanceUID, rq.AffectedSOPClassUID,
                                                   trim_ae(getPeerAETitle().c_str()))
                                    : kStatusOutOfResources;
        return sendSTOREResponse(pres, rq, status);
    }

    void notifyRECEIVEProgress(const unsigned long bytes) override {
        received_ = bytes;
        if (!too_large_ && received_ > node_.opt.max_object_bytes) {
            too_large_ = true;
            abortAssociation();
        }
    }

    OFBool checkCalledAETitleAccepted(const OFString& called) override {
        const std::string ae = trim_ae(called.c_str());
        if (ae == node_.opt.aet) return OFTrue;
        spdlog::warn("dicom: association called '{}' refused: this node is '{}' (--dicom-aet)", log_escape(ae), node_.opt.aet);
        return OFFalse;
    }

    OFBool checkCallingAETitleAccepted(const OFString& calling) override {
        if (node_.opt.allow.empty()) return OFTrue;  // any AE title, but loopback peers only (DeadlineLayer)
        const std::string ae = trim_ae(calling.c_str());
        for (const auto& a : node_.opt.allow)
            if (a == ae) return OFTrue;
        spdlog::warn("dicom: association from AE title '{}' refused (not in --dicom-allow)", log_escape(ae));
        return OFFalse;
    }

    OFBool checkCallingHostAccepted(const OFString& host) override {
        // DCMTK 3.6.7 passes an empty string here without host look-ups: the peer's IP address is
        // what counts (an empty one is refused).
        const std::string ip = host.empty() ? getPeerIP().c_str() : host.c_str();
        if (!node_.opt.allow.empty() || is_loopback_peer(ip)) return OFTrue;
        spdlog::warn("dicom: association from '{}' refused: without --dicom-allow only loopback peers may send", log_escape(ip));
        return OFFalse;
    }

    OFBool stopAfterConnectionTimeout() override { return node_.stopping.load(); }
    OFBool stopAfterCurrentAssociation() override { return node_.stopping.load(); }

private:
    DicomNode::Impl& node_;
    unsigned long received_ = 0;
    bool too_large_ = false;
};

}  // namespace

// DCMTK's acceptor listens on every interface; its listening socket is replaced by one bound to
// opt.host (same port), so that `--host 127.0.0.1` keeps the node off the network too. It is
// non-blocking: the receiver threads all wait on it and the one that loses a race for a new
// connection returns at once instead of blocking in accept().
Expected<bool> DicomNode::Impl::listen_on_host() {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    const std::string port = std::to_string(opt.port);
    if (int e = ::getaddrinfo(opt.host.empty() ? nullptr : opt.host.c_str(), port.c_str(), &hints, &res); e != 0 || !res)
        return make_error("cannot listen for DICOM on '" + opt.host + "': " + ::gai_strerror(e));
    auto* key = reinterpret_cast<PRIVATE_NETWORKKEY*>(net->network);
    const int old = key->networkSpecific.TCP.listenSocket;
    ::close(old);
    int fd = ::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, res->ai_protocol);
    int yes = 1;
    std::string why;
    if (fd < 0) why = std::strerror(errno);
    else if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes) != 0 || ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 ||
             ::listen(fd, 64) != 0)
        why = std::strerror(errno);
    ::freeaddrinfo(res);
    if (!why.empty()) {
        if (fd >= 0) ::close(fd);
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);  // a placeholder DCMTK may close
        key->networkSpecific.TCP.listenSocket = fd;
        return make_error("cannot listen for DICOM on " + opt.host + ":" + port + " (" + why +
                          "); choose another --dicom-port or --host");
    }
    key->networkSpecific.TCP.listenSocket = fd;
    return true;
}

// One of max_associations threads: waits for an association (a second at a time, so that stop()
// is noticed) and serves it to its end.
void DicomNode::Impl::receive_loop() {
    while (!stopping) {
        T_ASC_Association* assoc = nullptr;
        const OFCondition c = ASC_receiveAssociation(net, &assoc, long(config->getMaxReceivePDULength()), nullptr, nullptr,
                                                     OFFalse, DUL_NOBLOCK, 1);
        if (c.bad()) {
            if (assoc) {
                ASC_dropAssociation(assoc);
                ASC_destroyAssociation(&assoc);
            }
            continue;  // no connection this second, a lost race for one, or a peer that failed early
        }
        StoreScp scp(*this);
        scp.setSharedConfig(config);
        scp.run(assoc);  // negotiates, serves and ends the association
    }
}

Uint16 DicomNode::Impl::accept(std::string bytes, const std::string& sop_instance, const std::string& sop_class,
                               const std::string& aet) {
    const auto received = Clock::now();
    DicomInstance row;
    row.sop_instance_uid = sop_instance;
    row.sop_class_uid = sop_class;
    row.calling_aet = aet;
    // A UID that breaks the DICOM rules (PS3.5 9.1) would follow the result into the SR and the
    // exams: refused, and listed with the reason (the UID itself escaped and shortened).
    for (const auto* uid : {&sop_instance, &sop_class})
        if (!valid_dicom_uid(*uid)) {
            row.sop_instance_uid = log_escape(sop_instance, 64);
            row.sop_class_uid = log_escape(sop_class, 64);
            row.status = "failed";
            row.error = std::string(uid == &sop_instance ? "the SOP Instance UID" : "the SOP Class UID") + " '" +
                        log_escape(*uid, 64) +
                        "' is not a DICOM UID (1 to 64 characters, digits in dot-separated components without leading zeros); "
                        "the object was refused with status C000";
            spdlog::warn("dicom: refused an object from '{}' with status C000: {}", log_escape(aet), row.error);
            if (auto added = store.add_dicom_instance(row, audit_of(aet, kStatusCannotUnderstand)); !added)
                spdlog::error("dicom: cannot list a refused object: {}", added.error());
            return kStatusCannotUnderstand;
        }
    {
        std::lock_guard<std::mutex> lock(mu);
        if (int(queue.size()) + busy >= opt.max_pending) {
            spdlog::warn("dicom: refused an object from '{}' with status A700 (Refused: Out of Resources): {} instances are "
                         "waiting to be measured (the node's limit)",
                         log_escape(aet), queue.size() + size_t(busy));
            refused_audit(aet, sop_instance);
            return kStatusOutOfResources;
        }
    }
    auto sha = store.put_image(bytes);
    bytes.clear();
    bytes.shrink_to_fit();
    if (!sha) {
        // The store's quota (--max-store-mb) is full, or the disk: the sender may retry later.
        spdlog::warn("dicom: refused an object from '{}' with status A700 (Refused: Out of Resources): {}", log_escape(aet), sha.error());
        refused_audit(aet, sop_instance);
        return kStatusOutOfResources;
    }
    row.image_sha256 = *sha;
    auto added = store.add_dicom_instance(row, audit_of(aet, kStatusSuccess));
    if (!added) {
        spdlog::error("dicom: cannot list a received object: {}", added.error());
        return kStatusOutOfResources;
    }
    {
        std::lock_guard<std::mutex> lock(mu);
        queue.push_back({std::move(*added), received});
    }
    cv.notify_one();
    return kStatusSuccess;
}

void DicomNode::Impl::work() {
    while (true) {
        // Without a model nothing is measured: the instances stay pending (listed so, and resumed
        // at the next start, e.g. with a model that loads) instead of failing one by one.
        if (!engine.wait_ready(1.0)) {
            std::unique_lock<std::mutex> lock(mu);
            if (engine.state() == Engine::State::Failed && !queue.empty() && !warned_no_model.exchange(true))
                spdlog::error("dicom: received instances stay pending: the model did not load ({})", engine.load_error());
            cv.wait_for(lock, std::chrono::seconds(1), [&] { return stopping.load(); });
            if (stopping) return;
            continue;
        }
        Queued job;
        {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [&] { return stopping || !queue.empty(); });
            if (stopping) return;  // the rest stay listed as pending, and are resumed at the next start
            job = std::move(queue.front());
            queue.pop_front();
            ++busy;
        }
        DicomInstance& row = job.row;
        try {
            process(row, job.received);
        } catch (const std::exception& e) {  // a bug must not take the node down: record it
            row.status = "failed";
            row.error = std::string("internal error while measuring: ") + e.what();
            store.update_dicom_instance(row);
            spdlog::error("dicom: instance {}: {}", row.id, row.error);
        }
        malloc_trim(0);  // a cine's frames were freed: give the pages back
        {
            std::lock_guard<std::mutex> lock(mu);
            --busy;
        }
        idle_cv.notify_all();
    }
}

void DicomNode::Impl::process(DicomInstance& row, std::optional<Clock::time_point> received) {
    const auto t0 = received.value_or(Clock::now());
    const std::string name = "dicom instance " + std::to_string(row.id);
    auto stored = store.read_image(row.image_sha256);
    if (!stored || !*stored) {
        row.status = "failed";
        row.error = "the received object is no longer in the store" + (stored ? std::string() : " (" + stored.error() + ")");
    } else {
        const std::string& bytes = **stored;
        DicomMeasureRequest request;
        request.max_frames = kServerMaxCineFrames;
        auto r = measure_dicom(engine, bytes, name, request);
        if (!r) {
            // An image of another plane (a study holds every plane): listed, not an error of the node.
            const bool other_plane = r.error().code == ErrorCode::NotAHeadPlane;
            row.status = other_plane ? "not_measured" : "failed";
            row.error = other_plane ? "not a fetal head in the HC plane: " + r.error().message : r.error().message;
            // Its frame count, when its header can be read.
            if (auto h = read_dicom_header(std::vector<unsigned char>(bytes.begin(), bytes.end()), name)) row.frames = h->frames;
        } else {
            row.frames = r->header.frames;
            const Measurement& m = r->measurement;
            row.status = "measured";
            row.hc_mm = m.hc_mm;
            row.bpd_mm = m.bpd_mm;
            row.ofd_mm = m.ofd_mm;
            if (m.ga_hadlock.in_range) row.ga_hadlock_weeks = m.ga_hadlock.weeks;
            row.pixel_size_mm = r->calibration.mm_per_px_x;
            row.calibration_source = r->calibration.source;
            row.quality = m.quality;
            row.reasons = m.reasons;
            for (const auto& w : r->notes) row.reasons.push_back(w);
            auto sr = dicom_result_sr(*r);
            if (!sr) {
                row.error = "the SR could not be written: " + sr.error().message;
            } else if (auto sha = store.put_image(std::string(sr->begin(), sr->end()))) {
                row.sr_sha256 = *sha;
                if (forwarding()) row.forward_status = kForwardQueued;
            } else {
                row.error = "the SR could not be kept: " + sha.error();
            }
            // The key image goes with the SR; without it the SR still goes (the error says why).
            if (!row.sr_sha256.empty()) {
                auto key = dicom_result_key_image(engine, *r, bytes, name);
                if (!key) row.error = "the key image could not be written: " + key.error().message;
                else if (auto sha = store.put_image(std::string(key->begin(), key->end()))) row.key_image_sha256 = *sha;
                else row.error = "the key image could not be kept: " + sha.error();
            }
        }
    }
    if (auto u = store.update_dicom_instance(row); !u) spdlog::error("dicom: cannot record the result: {}", u.error());
    if (row.forward_status == kForwardQueued) queue_forward(row, 0);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    spdlog::info("dicom: instance {} {} {:.0f} ms after it was {}{}", row.id, row.status, ms, received ? "received" : "resumed",
                 row.forward_status.empty() ? "" : " (forward: " + row.forward_status + ")");
}

void DicomNode::Impl::queue_forward(const DicomInstance& row, int attempts, double wait_s) {
    {
        std::lock_guard<std::mutex> lock(mu);
        forwards.push_back({row, attempts, Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait_s))});
    }
    forward_cv.notify_all();
}

void DicomNode::Impl::forward_loop() {
    std::unique_lock<std::mutex> lock(mu);
    while (!stopping) {
        if (forwards.empty()) {
            forward_cv.wait(lock);
            continue;
        }
        auto next = std::min_element(forwards.begin(), forwards.end(), [](auto& a, auto& b) { return a.due < b.due; });
        if (next->due > Clock::now()) {
            forward_cv.wait_until(lock, next->due);
            continue;
        }
        Forwarding f = std::move(*next);
        forwards.erase(next);
        lock.unlock();
        forward_once(f);
        lock.lock();
    }
}

void DicomNode::Impl::forward_once(Forwarding& f) {
    DicomInstance& row = f.row;
    std::vector<std::string> objects;
    std::string result;
    bool retry = true;
    for (const auto& [sha, what] : {std::pair{row.sr_sha256, "the SR"}, std::pair{row.key_image_sha256, "the key image"}}) {
        if (sha.empty()) continue;  // rows from before key images have none
        auto obj = store.read_image(sha);
        if (!obj || !*obj) {
            result = std::string("failed: ") + what + " is no longer in the store" + (obj ? std::string() : " (" + obj.error() + ")");
            retry = false;
            break;
        }
        objects.push_back(std::move(**obj));
    }
    if (result.empty()) result = dicomweb ? stow_rs(*dicomweb, objects, 30) : send_objects(objects);
    ++f.attempts;
    const int of = std::max(1, opt.forward_attempts);
    if (result == "sent") {
        row.forward_status = "forwarded";
    } else if (retry && f.attempts < of) {
        const double wait_s = std::min(kForwardMaxWaitS, std::ldexp(1.0, f.attempts - 1));
        const std::string why = result.rfind("failed: ", 0) == 0 ? result.substr(8) : result;
        row.forward_status = "pending: try " + std::to_string(f.attempts) + " of " + std::to_string(of) + " failed (" + why +
                             "); next in " + std::to_string(int(wait_s)) + " s";
        queue_forward(row, f.attempts, wait_s);
    } else {
        row.forward_status = result + (retry ? " (after " + std::to_string(f.attempts) + " tries)" : "");
    }
    if (auto u = store.update_dicom_instance(row); !u) spdlog::error("dicom: cannot record the forward of instance {}: {}", row.id, u.error());
    spdlog::info("dicom: instance {} SR forward: {}", row.id, row.forward_status);
}

std::string DicomNode::Impl::send_objects(const std::vector<std::string>& objects) {
    std::vector<std::unique_ptr<DcmFileFormat>> files;
    for (const std::string& bytes : objects) {
        DcmInputBufferStream in;
        in.setBuffer(bytes.data(), offile_off_t(bytes.size()));
        in.setEos();
        auto file = std::make_unique<DcmFileFormat>();
        file->transferInit();
        const OFCondition c = file->read(in);
        file->transferEnd();
        if (c.bad()) return std::string("failed: cannot read back a kept object: ") + c.text();
        files.push_back(std::move(file));
    }
    DcmSCU scu;
    scu.setAETitle(opt.aet.c_str());
    scu.setPeerHostName(forward->host.c_str());
    scu.setPeerPort(Uint16(forward->port));
    scu.setPeerAETitle(forward->aet.c_str());
    scu.setACSETimeout(10);
    scu.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
    scu.setDIMSETimeout(30);
    scu.setConnectionTimeout(10);
    OFList<OFString> ts;
    ts.push_back(UID_LittleEndianExplicitTransferSyntax);
    ts.push_back(UID_LittleEndianImplicitTransferSyntax);
    for (const char* sop : {UID_ComprehensiveSRStorage, UID_SecondaryCaptureImageStorage}) scu.addPresentationContext(sop, ts);
    const std::string to = forward->aet + "@" + forward->host + ":" + std::to_string(forward->port);
    OFCondition c;
    if ((c = scu.initNetwork()).bad() || (c = scu.negotiateAssociation()).bad())
        return "failed: cannot open an association with " + to + ": " + c.text();
    std::string result = "sent";
    for (auto& file : files) {
        OFString sop;
        file->getDataset()->findAndGetOFString(DCM_SOPClassUID, sop);
        const char* name = sop == UID_ComprehensiveSRStorage ? "the SR" : "the key image";
        const T_ASC_PresentationContextID pres = scu.findPresentationContextID(sop.c_str(), "");
        Uint16 status = 0;
        if (pres == 0) result = "failed: " + to + " does not accept " + std::string(dcmFindNameOfUID(sop.c_str(), "this SOP class"));
        else if ((c = scu.sendSTORERequest(pres, OFFilename(), file->getDataset(), status)).bad())
            result = "failed: C-STORE of " + std::string(name) + " to " + to + ": " + c.text();
        else if (status != kStatusSuccess) result = "failed: " + to + " answered status " + std::to_string(status) + " to " + name;
        if (result != "sent") break;
    }
    if (scu.isConnected()) scu.releaseAssociation();
    return result;
}

}  // namespace fetalhc::server

namespace fetalhc {

Expected<double> dicom_echo(const std::string& target, const std::string& our_aet, double timeout_s) {
    auto t = server::parse_forward_target(target);
    if (!t) {
        std::string why = t.error();  // written for --dicom-forward
        if (why.rfind("--dicom-forward ", 0) == 0) why = "C-ECHO target " + why.substr(16);
        return make_error(ErrorKind::InvalidArgument, why);
    }
    if (!server::valid_ae_title(our_aet))
        return make_error(ErrorKind::InvalidArgument, "'" + our_aet + "' is not an AE title (1 to 16 printable characters, no '\\')", "aet");
    OFLog::configure(OFLogger::WARN_LOG_LEVEL);  // DCMTK's own chatter: our errors say what failed
    const auto t0 = std::chrono::steady_clock::now();
    DcmSCU scu;
    scu.setAETitle(our_aet.c_str());
    scu.setPeerHostName(t->host.c_str());
    scu.setPeerPort(Uint16(t->port));
    scu.setPeerAETitle(t->aet.c_str());
    const int to = std::max(1, int(std::ceil(timeout_s)));
    scu.setACSETimeout(Uint32(to));
    scu.setConnectionTimeout(Sint32(to));
    scu.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
    scu.setDIMSETimeout(Uint32(to));
    OFList<OFString> ts;
    ts.push_back(UID_LittleEndianImplicitTransferSyntax);
    scu.addPresentationContext(UID_VerificationSOPClass, ts);
    OFCondition c;
    if ((c = scu.initNetwork()).bad() || (c = scu.negotiateAssociation()).bad())
        return make_error(ErrorKind::Io, "C-ECHO to " + target + ": cannot open an association: " + c.text() +
                                             " (is the peer up, and does it accept the AE title " + our_aet + "?)");
    c = scu.sendECHORequest(0);
    if (scu.isConnected()) scu.releaseAssociation();
    if (c.bad()) return make_error(ErrorKind::Io, "C-ECHO to " + target + " failed: " + c.text());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace fetalhc

namespace fetalhc::server {

// ---- DicomNode ----------------------------------------------------------------------------------

DicomNode::DicomNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DicomNode::~DicomNode() { stop(); }

Expected<std::unique_ptr<DicomNode>> DicomNode::create(const DicomNodeOptions& o, Engine& engine, Store& store) {
    if (o.listen && (o.port < 1 || o.port > 65535)) return make_error("--dicom-port must be in 1..65535");
    if (!valid_ae_title(o.aet)) return make_error("--dicom-aet '" + o.aet + "' is not an AE title (1 to 16 printable characters, no '\\')");
    std::string user_role = "sonographer";
    if (o.user != "dicom-node") {  // a user of the store: it must be able to store images
        auto found = store.user(o.user);
        if (!found) return found.error_value();
        const std::optional<User>& it = *found;
        if (!it)
            return make_error("--dicom-user '" + o.user + "' is no user of the store; add it (fetalhc user add " + o.user +
                              " --role sonographer) or leave the option out (the built-in dicom-node)");
        if (it->revoked_at) return make_error("--dicom-user '" + o.user + "' was revoked; name another user");
        if (int(it->role) < int(Role::Sonographer))
            return make_error("--dicom-user '" + o.user + "' is a " + role_name(it->role) +
                              ": the DICOM node stores images, which needs the sonographer role");
        user_role = role_name(it->role);
    }
    for (const auto& a : o.allow)
        if (!valid_ae_title(a)) return make_error("--dicom-allow: '" + a + "' is not an AE title (1 to 16 printable characters, no '\\')");
    if (o.max_associations < 1 || o.max_pending < 1 || o.workers < 1 || !(o.association_timeout_s > 0) || !(o.idle_timeout_s > 0))
        return make_error("the DICOM node's limits must be positive");
    auto impl = std::make_unique<Impl>(engine, store);
    impl->opt = o;
    impl->user_role = user_role;
    auto spool = make_spool_folder();
    if (!spool) return spool.error_value();
    impl->spool = *spool;
    if (!o.forward.empty() && !o.dicomweb_forward.empty())
        return make_error("give --dicom-forward (C-STORE) or --dicomweb-forward (STOW-RS), not both");
    if (!o.forward.empty()) {
        auto t = parse_forward_target(o.forward);
        if (!t) return t.error_value();
        impl->forward = *t;
    }
    if (!o.dicomweb_forward.empty()) {
        auto t = parse_dicomweb_target(o.dicomweb_forward);
        if (!t) return t.error_value();
        impl->dicomweb = *t;
    }
    // DCMTK logs through oflog; keep its chatter (every association) to warnings and above.
    OFLog::configure(OFLogger::WARN_LOG_LEVEL);
    DcmSCPConfig& cfg = *impl->config;
    cfg.setPort(Uint16(o.port));
    cfg.setAETitle(o.aet.c_str());
    cfg.setMaxReceivePDULength(ASC_DEFAULTMAXPDU);
    cfg.setConnectionBlockingMode(DUL_NOBLOCK);
    cfg.setConnectionTimeout(1);
    cfg.setACSETimeout(30);
    cfg.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
    cfg.setDIMSETimeout(60);
    cfg.setHostLookupEnabled(OFFalse);
    cfg.setVerbosePCMode(OFFalse);
    OFList<OFString> ts;
    for (const char* t : kTransferSyntaxes) ts.push_back(t);
    for (const char* c : kStorageClasses) cfg.addPresentationContext(c, ts);
    OFList<OFString> plain;
    plain.push_back(UID_LittleEndianImplicitTransferSyntax);
    plain.push_back(UID_LittleEndianExplicitTransferSyntax);
    cfg.addPresentationContext(UID_VerificationSOPClass, plain);
    if (!o.listen) return std::unique_ptr<DicomNode>(new DicomNode(std::move(impl)));
    if (OFCondition c = ASC_initializeNetwork(NET_ACCEPTOR, o.port, 30, &impl->net); c.bad())
        return make_error("cannot listen for DICOM on port " + std::to_string(o.port) + ": " + c.text() +
                          "; choose another --dicom-port (ports below 1024 need privileges)");
    if (auto ok = impl->listen_on_host(); !ok) return ok.error_value();
    impl->layer = std::make_unique<DeadlineLayer>(*impl);
    if (OFCondition c = ASC_setTransportLayer(impl->net, impl->layer.get(), 0); c.bad())
        return make_error(std::string("cannot set up the DICOM node's connections: ") + c.text());
    return std::unique_ptr<DicomNode>(new DicomNode(std::move(impl)));
}

int DicomNode::port() const { return impl_->opt.port; }

void DicomNode::start() {
    if (impl_->started) return;
    impl_->started = true;
    // Instances acknowledged before a stop or a crash: measured now, oldest first.
    if (auto pending = impl_->store.pending_dicom_instances(1'000'000); !pending) {
        spdlog::error("dicom: cannot read the instances left pending: {}", pending.error());
    } else if (!pending->empty()) {
        std::lock_guard<std::mutex> lock(impl_->mu);
        for (auto& row : *pending) impl_->queue.push_back({std::move(row), std::nullopt});
        spdlog::info("dicom: resuming {} instance(s) received before the last stop and not measured yet", pending->size());
    }
    // SRs not yet forwarded at the last stop: sent again (their rows say "pending: ...").
    if (impl_->forwarding()) {
        if (auto rows = impl_->store.dicom_instances(1'000'000); !rows) {
            spdlog::error("dicom: cannot read the SRs left to forward: {}", rows.error());
        } else {
            int n = 0;
            for (const auto& row : *rows)
                if (row.forward_status.rfind("pending", 0) == 0 && !row.sr_sha256.empty()) impl_->queue_forward(row, 0), ++n;
            if (n) spdlog::info("dicom: forwarding {} SR(s) left unsent at the last stop", n);
        }
        impl_->forwarder = std::thread([this] { impl_->forward_loop(); });
    }
    for (int i = 0; i < impl_->opt.workers; ++i) impl_->workers.emplace_back([this] { impl_->work(); });
    if (impl_->net)
        for (int i = 0; i < impl_->opt.max_associations; ++i) impl_->receivers.emplace_back([this] { impl_->receive_loop(); });
}

void DicomNode::stop() {
    impl_->stopping = true;
    impl_->cv.notify_all();
    for (auto& t : impl_->receivers)
        if (t.joinable()) t.join();
    for (auto& t : impl_->workers)
        if (t.joinable()) t.join();
    impl_->forward_cv.notify_all();
    if (impl_->forwarder.joinable()) impl_->forwarder.join();  // unsent SRs stay "pending", sent after the next start
    impl_->idle_cv.notify_all();
}

unsigned short DicomNode::receive(const std::string& bytes, const std::string& sop_instance, const std::string& sop_class,
                                  const std::string& calling_aet) {
    return impl_->accept(bytes, sop_instance, sop_class, calling_aet);
}

bool DicomNode::wait_idle(double timeout_s) {
    std::unique_lock<std::mutex> lock(impl_->mu);
    return impl_->idle_cv.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                   [&] { return impl_->queue.empty() && impl_->busy == 0; });
}

}  // namespace fetalhc::server
