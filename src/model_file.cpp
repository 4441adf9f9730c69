#include "model_file.h"

#include <libdeflate.h>

#include <cstdint>
#include <fstream>
#include <vector>

namespace fetalhc::detail {
namespace {

uint16_t le16(const unsigned char* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t le32(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

constexpr uint32_t kEndOfCentralDirectory = 0x06054b50, kCentralHeader = 0x02014b50, kLocalHeader = 0x04034b50;
constexpr size_t kEocdSize = 22, kCentralSize = 46, kLocalSize = 30;

// The end-of-central-directory record: the last 22 bytes, or earlier when a comment follows it.
long find_eocd(const std::vector<unsigned char>& f) {
    if (f.size() < kEocdSize) return -1;
    const size_t lowest = f.size() > kEocdSize + 65535 ? f.size() - kEocdSize - 65535 : 0;
    for (size_t i = f.size() - kEocdSize + 1; i-- > lowest;)
        if (le32(&f[i]) == kEndOfCentralDirectory) return long(i);
    return -1;
}

}  // namespace

std::string check_model_archive(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return "it cannot be opened";
    const std::streamoff size = in.tellg();
    std::vector<unsigned char> f(size > 0 ? size_t(size) : 0);
    in.seekg(0);
    if (!f.empty() && !in.read(reinterpret_cast<char*>(f.data()), size)) return "it could not be read to its end";
    const long eocd = find_eocd(f);
    if (eocd < 0) return "it is not a model archive (no ZIP directory at its end): truncated, or another kind of file";
    const size_t entries = le16(&f[size_t(eocd) + 10]);
    size_t p = le32(&f[size_t(eocd) + 16]);
    for (size_t e = 0; e < entries; ++e) {
        if (p + kCentralSize > f.size() || le32(&f[p]) != kCentralHeader) return "its ZIP directory is damaged";
        const uint16_t method = le16(&f[p + 10]);
        const uint32_t crc = le32(&f[p + 16]), csize = le32(&f[p + 20]);
        const size_t name_len = le16(&f[p + 28]), extra_len = le16(&f[p + 30]), comment_len = le16(&f[p + 32]);
        const size_t local = le32(&f[p + 42]);
        const std::string name(f.begin() + long(p + kCentralSize), f.begin() + long(std::min(f.size(), p + kCentralSize + name_len)));
        p += kCentralSize + name_len + extra_len + comment_len;
        if (local + kLocalSize > f.size() || le32(&f[local]) != kLocalHeader) return "entry '" + name + "' is missing";
        const size_t data = local + kLocalSize + le16(&f[local + 26]) + le16(&f[local + 28]);
        if (data > f.size() || csize > f.size() - data) return "entry '" + name + "' is truncated";
        if (method != 0) continue;  // compressed entries: LibTorch writes none; its own reader checks them
        if (libdeflate_crc32(0, &f[data], csize) != crc) return "entry '" + name + "' is damaged (CRC-32 mismatch)";
    }
    return "";
}

}  // namespace fetalhc::detail
