#include "dicom_node.h"

#include "fetalhc/dicom.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/scp.h>
#include <dcmtk/dcmnet/scu.h>
#include <dcmtk/oflog/oflog.h>
#include <spdlog/spdlog.h>

#include <stdlib.h>

#include <atomic>
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

constexpr Uint16 kStatusSuccess = 0x0000;
constexpr Uint16 kStatusOutOfResources = 0xA700;  // PS3.4 C.4.2.3: Refused, out of resources

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

// A private folder (mode 0700) under the system's temporary folder for objects being received.
Expected<fs::path> make_spool_folder() {
    std::error_code ec;
    const fs::path base = fs::temp_directory_path(ec);
    if (ec) return make_error("no temporary folder for received DICOM objects (" + ec.message() + "); set TMPDIR to a writable folder");
    std::string tmpl = (base / "fetalhc-dicom-XXXXXX").string();
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

struct Job {
    DicomInstance row;
    std::string bytes;
    Clock::time_point received;
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

// ---- the SCP ------------------------------------------------------------------------------------

class StoreScp;

struct DicomNode::Impl {
    DicomNodeOptions opt;
    std::optional<ForwardTarget> forward;
    Engine& engine;
    Store& store;
    std::unique_ptr<StoreScp> scp;
    std::thread listener, worker;
    std::atomic<bool> stopping{false};
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Job> queue;
    bool started = false;
    fs::path spool;  // received objects land here before they are stored (the store may keep no files)

    Impl(Engine& e, Store& s) : engine(e), store(s) {}
    ~Impl() {
        std::error_code ec;
        if (!spool.empty()) fs::remove_all(spool, ec);
    }
    // Keeps and lists a received object; the DIMSE status of the C-STORE response.
    Uint16 accept(std::string bytes, const std::string& sop_instance, const std::string& sop_class, const std::string& aet);
    void work();
    void process(Job& job);
    std::string send_sr(const std::vector<unsigned char>& sr);
};

class StoreScp : public DcmSCP {
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
                spdlog::warn("dicom: an object from '{}' passed the {} byte limit; association aborted", getPeerAETitle().c_str(),
                             node_.opt.max_object_bytes);
                return DIMSE_ILLEGALASSOCIATION;  // ends the association loop (it is already aborted)
            }
            return c;
        }
        auto bytes = read_file(tmp, node_.opt.max_object_bytes + (1u << 16));
        fs::remove(tmp, ec);
        const Uint16 status = bytes ? node_.accept(std::move(*bytes), rq.AffectedSOPInstanceUID, rq.AffectedSOPClassUID,
                                                   getPeerAETitle().c_str())
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

    OFBool checkCallingAETitleAccepted(const OFString& calling) override {
        if (node_.opt.allow.empty()) return OFTrue;  // any AE title, but loopback peers only (below)
        std::string ae = calling.c_str();
        while (!ae.empty() && ae.back() == ' ') ae.pop_back();
        for (const auto& a : node_.opt.allow)
            if (a == ae) return OFTrue;
        spdlog::warn("dicom: association from AE title '{}' refused (not in --dicom-allow)", ae);
        return OFFalse;
    }

    OFBool checkCallingHostAccepted(const OFString& host) override {
        // DCMTK 3.6.7 passes an empty string here without host look-ups: the peer's IP address is
        // what counts (an empty one is refused).
        const std::string ip = host.empty() ? getPeerIP().c_str() : host.c_str();
        if (!node_.opt.allow.empty() || is_loopback_peer(ip)) return OFTrue;
        spdlog::warn("dicom: association from '{}' refused: without --dicom-allow only loopback peers may send", ip);
        return OFFalse;
    }

    OFBool stopAfterConnectionTimeout() override { return node_.stopping.load(); }
    OFBool stopAfterCurrentAssociation() override { return node_.stopping.load(); }

private:
    DicomNode::Impl& node_;
    unsigned long received_ = 0;
    bool too_large_ = false;
};

Uint16 DicomNode::Impl::accept(std::string bytes, const std::string& sop_instance, const std::string& sop_class,
                               const std::string& aet) {
    const auto received = Clock::now();
    auto sha = store.put_image(bytes);
    if (!sha) {
        // The store's quota (--max-store-mb) is full, or the disk: the sender may retry later.
        spdlog::warn("dicom: refused an object from '{}' with status A700 (Refused: Out of Resources): {}", aet, sha.error());
        return kStatusOutOfResources;
    }
    DicomInstance row;
    row.sop_instance_uid = sop_instance;
    row.sop_class_uid = sop_class;
    row.calling_aet = aet;
    row.image_sha256 = *sha;
    auto added = store.add_dicom_instance(row);
    if (!added) {
        spdlog::error("dicom: cannot list a received object: {}", added.error());
        return kStatusOutOfResources;
    }
    {
        std::lock_guard<std::mutex> lock(mu);
        queue.push_back({std::move(*added), std::move(bytes), received});
    }
    cv.notify_one();
    return kStatusSuccess;
}

void DicomNode::Impl::work() {
    while (true) {
        Job job;
        {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [&] { return stopping || !queue.empty(); });
            if (stopping) return;  // the rest stay listed as pending
            job = std::move(queue.front());
            queue.pop_front();
        }
        try {
            process(job);
        } catch (const std::exception& e) {  // a bug must not take the node down: record it
            job.row.status = "failed";
            job.row.error = std::string("internal error while measuring: ") + e.what();
            store.update_dicom_instance(job.row);
            spdlog::error("dicom: instance {}: {}", job.row.id, job.row.error);
        }
    }
}

void DicomNode::Impl::process(Job& job) {
    DicomInstance& row = job.row;
    const std::string name = "dicom instance " + std::to_string(row.id);
    if (auto h = read_dicom_header(std::vector<unsigned char>(job.bytes.begin(), job.bytes.end()), name)) row.frames = h->frames;
    engine.wait_ready(600);  // received while the model loads: measure once it is there
    auto r = measure_dicom(engine, job.bytes, name, {});
    if (!r) {
        row.status = "failed";
        row.error = r.error().message;
    } else {
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
        for (const auto& w : r->warnings) row.reasons.push_back(w);
        auto sr = dicom_result_sr(*r);
        if (!sr) {
            row.error = "the SR could not be written: " + sr.error().message;
        } else if (auto sha = store.put_image(std::string(sr->begin(), sr->end()))) {
            row.sr_sha256 = *sha;
            if (forward) row.forward_status = send_sr(*sr);
        } else {
            row.error = "the SR could not be kept: " + sha.error();
        }
    }
    if (auto u = store.update_dicom_instance(row); !u) spdlog::error("dicom: cannot record the result: {}", u.error());
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - job.received).count();
    spdlog::info("dicom: instance {} {} {:.0f} ms after it was received{}", row.id, row.status, ms,
                 row.forward_status.empty() ? "" : " (forward: " + row.forward_status + ")");
}

std::string DicomNode::Impl::send_sr(const std::vector<unsigned char>& sr) {
    DcmInputBufferStream in;
    in.setBuffer(sr.data(), offile_off_t(sr.size()));
    in.setEos();
    DcmFileFormat file;
    file.transferInit();
    OFCondition c = file.read(in);
    file.transferEnd();
    if (c.bad()) return std::string("failed: cannot read back the SR: ") + c.text();
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
    scu.addPresentationContext(UID_ComprehensiveSRStorage, ts);
    const std::string to = forward->aet + "@" + forward->host + ":" + std::to_string(forward->port);
    if ((c = scu.initNetwork()).bad() || (c = scu.negotiateAssociation()).bad())
        return "failed: cannot open an association with " + to + ": " + c.text();
    const T_ASC_PresentationContextID pres = scu.findPresentationContextID(UID_ComprehensiveSRStorage, "");
    std::string result;
    Uint16 status = 0;
    if (pres == 0) result = "failed: " + to + " does not accept Comprehensive SR Storage";
    else if ((c = scu.sendSTORERequest(pres, OFFilename(), file.getDataset(), status)).bad())
        result = "failed: C-STORE to " + to + ": " + c.text();
    else if (status != kStatusSuccess) result = "failed: " + to + " answered status " + std::to_string(status);
    else result = "sent";
    if (scu.isConnected()) scu.releaseAssociation();
    return result;
}

// ---- DicomNode ----------------------------------------------------------------------------------

DicomNode::DicomNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DicomNode::~DicomNode() { stop(); }

Expected<std::unique_ptr<DicomNode>> DicomNode::create(const DicomNodeOptions& o, Engine& engine, Store& store) {
    if (o.port < 1 || o.port > 65535) return make_error("--dicom-port must be in 1..65535");
    if (!valid_ae_title(o.aet)) return make_error("--dicom-aet '" + o.aet + "' is not an AE title (1 to 16 printable characters, no '\\')");
    for (const auto& a : o.allow)
        if (!valid_ae_title(a)) return make_error("--dicom-allow: '" + a + "' is not an AE title (1 to 16 printable characters, no '\\')");
    auto impl = std::make_unique<Impl>(engine, store);
    impl->opt = o;
    auto spool = make_spool_folder();
    if (!spool) return make_error(spool.error());
    impl->spool = *spool;
    if (!o.forward.empty()) {
        auto t = parse_forward_target(o.forward);
        if (!t) return make_error(t.error());
        impl->forward = *t;
    }
    // DCMTK logs through oflog; keep its chatter (every association) to warnings and above.
    OFLog::configure(OFLogger::WARN_LOG_LEVEL);
    impl->scp = std::make_unique<StoreScp>(*impl);
    StoreScp& scp = *impl->scp;
    scp.setPort(Uint16(o.port));
    scp.setAETitle(o.aet.c_str());
    scp.setMaxReceivePDULength(ASC_DEFAULTMAXPDU);
    scp.setConnectionBlockingMode(DUL_NOBLOCK);  // so that listen() checks for stop() every second
    scp.setConnectionTimeout(1);
    scp.setACSETimeout(30);
    scp.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
    scp.setDIMSETimeout(60);
    scp.setHostLookupEnabled(OFFalse);
    scp.setVerbosePCMode(OFFalse);
    OFList<OFString> ts;
    for (const char* t : kTransferSyntaxes) ts.push_back(t);
    for (const char* c : kStorageClasses) scp.addPresentationContext(c, ts);
    OFList<OFString> plain;
    plain.push_back(UID_LittleEndianImplicitTransferSyntax);
    plain.push_back(UID_LittleEndianExplicitTransferSyntax);
    scp.addPresentationContext(UID_VerificationSOPClass, plain);
    if (OFCondition c = scp.openListenPort(); c.bad())
        return make_error("cannot listen for DICOM on port " + std::to_string(o.port) + ": " + c.text() +
                          "; choose another --dicom-port (ports below 1024 need privileges)");
    return std::unique_ptr<DicomNode>(new DicomNode(std::move(impl)));
}

int DicomNode::port() const { return impl_->opt.port; }

void DicomNode::start() {
    if (impl_->started) return;
    impl_->started = true;
    impl_->worker = std::thread([this] { impl_->work(); });
    impl_->listener = std::thread([this] {
        OFCondition c = impl_->scp->acceptAssociations();
        if (c.bad() && !impl_->stopping) spdlog::error("dicom: the node stopped: {}", c.text());
    });
}

void DicomNode::stop() {
    impl_->stopping = true;
    impl_->cv.notify_all();
    if (impl_->listener.joinable()) impl_->listener.join();
    if (impl_->worker.joinable()) impl_->worker.join();
}

}  // namespace fetalhc::server
