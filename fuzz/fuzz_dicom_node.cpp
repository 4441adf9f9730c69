// libFuzzer target: the DICOM node's receive-and-store path (dicom_node.h, DicomNode::receive: the
// UID checks, the pending limit, the store and the list), then what its worker runs on the stored
// object (the header, measure_dicom up to the model, which is never loaded here). No network: the
// node is created with listen = false.
//
// Input layout: "SOP_INSTANCE_UID\0SOP_CLASS_UID\0CALLING_AET\0" then the data set bytes (a missing
// separator leaves the field empty). The node must answer 0000, A700 or C000, list what it kept,
// and never crash.
#include "dicom_node.h"
#include "service.h"

#include "fetalhc/dicom.h"
#include "fetalhc/store.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

namespace {

using namespace fetalhc;
using namespace fetalhc::server;

struct World {
    std::filesystem::path dir;
    std::unique_ptr<Store> store;
    Engine engine{1};
    std::unique_ptr<DicomNode> node;
    World() {
        char tmpl[] = "/tmp/fetalhc_fuzz_dicom_node_XXXXXX";
        if (!mkdtemp(tmpl)) std::abort();
        dir = tmpl;
        auto s = Store::open((dir / "fuzz.db").string());
        if (!s) {
            std::fprintf(stderr, "fuzz_dicom_node: cannot open the store: %s\n", s.error().c_str());
            std::abort();
        }
        store = std::move(*s);
        DicomNodeOptions o;
        o.listen = false;
        o.max_pending = 1 << 20;  // never the limit here: every input reaches the store
        auto n = DicomNode::create(o, engine, *store);
        if (!n) {
            std::fprintf(stderr, "fuzz_dicom_node: cannot create the node: %s\n", n.error().c_str());
            std::abort();
        }
        node = std::move(*n);  // not started: the rows stay pending, the worker's steps run below
    }
    ~World() {
        node.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

World& world() {
    static World w;
    return w;
}

std::string take_field(const std::string& in, size_t& at) {
    const size_t end = in.find('\0', at);
    const std::string field = in.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? in.size() : end + 1;
    return field;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    World& w = world();
    const std::string in(reinterpret_cast<const char*>(data), size);
    size_t at = 0;
    const std::string sop_instance = take_field(in, at), sop_class = take_field(in, at), aet = take_field(in, at);
    const std::string bytes = in.substr(at);
    const unsigned short status = w.node->receive(bytes, sop_instance, sop_class, aet);
    if (status != 0x0000 && status != 0xA700 && status != 0xC000) {
        std::fprintf(stderr, "fuzz_dicom_node: status %04X\n", status);
        std::abort();
    }
    if (status == 0x0000 && !(valid_dicom_uid(sop_instance) && valid_dicom_uid(sop_class))) {
        std::fprintf(stderr, "fuzz_dicom_node: an invalid UID was accepted\n");
        std::abort();
    }
    if (status != 0x0000) return 0;
    // What the worker does with the stored object (without a model: up to the model).
    auto stored = w.store->read_image(sha256_hex(bytes));
    if (!stored || !*stored) {
        std::fprintf(stderr, "fuzz_dicom_node: an accepted object is not in the store\n");
        std::abort();
    }
    const std::vector<unsigned char> raw((*stored)->begin(), (*stored)->end());
    (void)read_dicom_header(raw, "fuzz instance");
    DicomMeasureRequest request;
    request.max_frames = kServerMaxCineFrames;
    (void)measure_dicom(w.engine, **stored, "fuzz instance", request);
    return 0;
}
