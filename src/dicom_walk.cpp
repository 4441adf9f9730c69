// The element walk that runs before DCMTK reads a file: declared lengths and sequence nesting
// (see dicom_walk.h).
#include "dicom_walk.h"

#include "fetalhc/dicom.h"

#include <dcmtk/config/osconfig.h>  // must come first among the DCMTK headers
#include <dcmtk/dcmdata/dctag.h>

#include <zlib.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace fetalhc::detail {
namespace {

// Raw DEFLATE (RFC 1951, no zlib header: PS3.5 A.5) of p[0..n), inflated into at most `cap` bytes.
// Returns "" and the bytes, or why not (damaged stream, larger than the cap).
std::string inflate_raw(const unsigned char* p, size_t n, size_t cap, std::vector<unsigned char>& out) {
    z_stream z{};
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK) return "cannot start inflating";
    z.next_in = const_cast<unsigned char*>(p);
    z.avail_in = uInt(std::min<size_t>(n, UINT32_MAX));
    std::string why;
    unsigned char chunk[1 << 16];
    for (;;) {
        z.next_out = chunk;
        z.avail_out = sizeof chunk;
        const int r = inflate(&z, Z_NO_FLUSH);
        const size_t got = sizeof chunk - z.avail_out;
        if (out.size() + got > cap) {
            why = "the deflated data set inflates past " + std::to_string(cap >> 20) + " MB";
            break;
        }
        out.insert(out.end(), chunk, chunk + got);
        if (r == Z_STREAM_END) break;
        if (r != Z_OK) {
            why = "the deflated data set is damaged (" + std::string(z.msg ? z.msg : "inflate error") + ")";
            break;
        }
        if (got == 0 && z.avail_in == 0) {
            why = "the deflated data set ends early";
            break;
        }
    }
    inflateEnd(&z);
    return why;
}

// One pass over the elements of a Part 10 file. The meta header is read as DCMTK reads it: in the
// encoding it guesses from the first element (explicit VR when the two bytes after the tag are
// capital letters, big endian when the group reads 0x0002 so), and, after a leading group length
// (0002,0000), for as many bytes as that says whatever the tags inside; without one, while the
// tags are of group 0002. The data set then follows in the meta header's transfer syntax.
class ElementWalk {
public:
    ElementWalk(const unsigned char* p, size_t n) : p_(p), n_(n) {}
    std::string run();

private:
    struct Element {
        unsigned group = 0, element = 0;
        uint32_t length = 0;
        size_t header = 8;      // bytes of tag, VR and length
        bool sequence = false;  // VR SQ (explicit), or SQ in DCMTK's dictionary (implicit)
    };
    // An open sequence or item: where it ends (kOpenEnded: at its delimiter). An element of
    // undefined length other than pixel data counts as a sequence (DCMTK reads such an element of
    // unknown VR as one).
    struct Open {
        size_t end;
        bool sequence;
    };
    static constexpr size_t kOpenEnded = SIZE_MAX;
    static constexpr uint32_t kUndefinedLength = 0xFFFFFFFF;

    unsigned u16(size_t i) const { return big_ ? unsigned(p_[i]) << 8 | p_[i + 1] : unsigned(p_[i + 1]) << 8 | p_[i]; }
    uint32_t u32(size_t i) const {
        return big_ ? uint32_t(p_[i]) << 24 | uint32_t(p_[i + 1]) << 16 | uint32_t(p_[i + 2]) << 8 | p_[i + 3]
                    : uint32_t(p_[i + 3]) << 24 | uint32_t(p_[i + 2]) << 16 | uint32_t(p_[i + 1]) << 8 | p_[i];
    }
    bool vr_is(size_t i, const char* v) const { return p_[i] == v[0] && p_[i + 1] == v[1]; }

    void read_meta_encoding();
    bool meta_ends_at(size_t pos) const { return meta_end_ ? pos >= meta_end_ : u16(pos) != 0x0002; }
    void set_data_set_encoding(size_t pos);
    std::string walk_inflated(size_t data_start) const;
    bool read_element(size_t pos, Element& e) const;
    std::string item_or_delimiter(const Element& e, size_t& pos);
    std::string element_value(const Element& e, size_t& pos);
    std::string enter_sequence(const Element& e, size_t end);
    std::string tag(const Element& e) const;
    std::string too_long(const Element& e, size_t pos) const;
    void enter(size_t end, bool sequence) {
        open_.push_back({end, sequence});
        sequences_ += sequence;
    }
    void leave() {
        sequences_ -= open_.back().sequence;
        open_.pop_back();
    }

    const unsigned char* p_;
    size_t n_;
    bool big_ = false, explicit_vr_ = true, in_meta_ = true, in_fragments_ = false;
    size_t meta_end_ = 0;
    std::string xfer_;
    size_t xfer_pos_ = 0, xfer_len_ = 0;  // where the transfer syntax value lies (a deflated file is rewritten there)
    std::vector<Open> open_;
    int sequences_ = 0;
};

std::string ElementWalk::run() {
    if (n_ < 140) return "";
    read_meta_encoding();
    for (size_t pos = 132; pos + 8 <= n_;) {
        if (in_meta_ && meta_ends_at(pos)) {
            in_meta_ = false;
            while (!xfer_.empty() && (xfer_.back() == '\0' || xfer_.back() == ' ')) xfer_.pop_back();
            if (xfer_ == "1.2.840.10008.1.2.1.99") return walk_inflated(pos);  // lengths are inside the stream
            set_data_set_encoding(pos);
        }
        while (!open_.empty() && open_.back().end != kOpenEnded && pos >= open_.back().end) leave();
        Element e;
        if (!read_element(pos, e)) break;
        pos += e.header;
        std::string problem = e.group == 0xFFFE ? item_or_delimiter(e, pos) : element_value(e, pos);
        if (!problem.empty()) return problem;
    }
    return "";
}

void ElementWalk::read_meta_encoding() {
    big_ = p_[132] == 0x00 && p_[133] == 0x02;
    explicit_vr_ = std::isupper(p_[136]) && std::isupper(p_[137]);
    if (n_ >= 144 && u16(132) == 0x0002 && u16(134) == 0x0000 &&
        (explicit_vr_ ? vr_is(136, "UL") && u16(138) == 4 : u32(136) == 4))
        meta_end_ = 144 + size_t(u32(140));
}

// The data set's encoding is the meta header's transfer syntax (DICOM PS3.5 A); without one, as
// DCMTK guesses it.
void ElementWalk::set_data_set_encoding(size_t pos) {
    big_ = false, explicit_vr_ = true;
    if (xfer_ == "1.2.840.10008.1.2") explicit_vr_ = false;
    else if (xfer_ == "1.2.840.10008.1.2.2") big_ = true;
    else if (xfer_.empty()) explicit_vr_ = std::isupper(p_[pos + 4]) && std::isupper(p_[pos + 5]);
}

// The file with its deflated data set inflated and its transfer syntax rewritten in place (same
// value length, padded with NULs) to explicit VR little endian, the encoding inside the stream.
std::string ElementWalk::walk_inflated(size_t data_start) const {
    static const char kExplicitLittle[] = "1.2.840.10008.1.2.1";
    const size_t k = sizeof kExplicitLittle - 1;
    if (xfer_len_ < k) return "transfer syntax value too short";
    std::vector<unsigned char> plain(p_, p_ + data_start);
    std::memcpy(plain.data() + xfer_pos_, kExplicitLittle, k);
    std::memset(plain.data() + xfer_pos_ + k, 0, xfer_len_ - k);
    if (auto why = inflate_raw(p_ + data_start, n_ - data_start, kDicomMaxInflatedBytes, plain); !why.empty()) return why;
    return dicom_walk_problem(plain.data(), plain.size());
}

// False when the element's header runs past the end (the walk then stops: DCMTK reports that).
bool ElementWalk::read_element(size_t pos, Element& e) const {
    e.group = u16(pos);
    e.element = u16(pos + 2);
    if (e.group == 0xFFFE) {  // item and delimiters: no VR in any encoding
        e.length = u32(pos + 4);
    } else if (explicit_vr_) {
        // The VRs with a 2-byte length (PS3.5 7.1.2); every other one, a VR DCMTK does not know
        // included, has 2 reserved bytes and a 4-byte length, as DCMTK reads it.
        static const char* const kShort[] = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                                             "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"};
        const bool short_form = std::any_of(std::begin(kShort), std::end(kShort), [&](const char* v) { return vr_is(pos + 4, v); });
        if (short_form) {
            e.length = u16(pos + 6);
        } else {
            if (pos + 12 > n_) return false;
            e.length = u32(pos + 8), e.header = 12;
        }
        e.sequence = vr_is(pos + 4, "SQ");
    } else {
        e.length = u32(pos + 4);
        e.sequence = DcmTag(Uint16(e.group), Uint16(e.element)).getEVR() == EVR_SQ;
    }
    return true;
}

// Group FFFE: an item (entered, or skipped as a fragment of encapsulated pixel data), a delimiter
// (closes the innermost open-ended sequence or item), or another tag DCMTK reads as an element.
std::string ElementWalk::item_or_delimiter(const Element& e, size_t& pos) {
    const uint32_t len = e.length;
    if (e.element != 0xE000 && e.element != 0xE00D && e.element != 0xE0DD) {
        if (len != kUndefinedLength && len > n_ - pos) return too_long(e, pos);
        if (len != kUndefinedLength) pos += len;
        return "";
    }
    if (e.element != 0xE000) {
        if (e.element == 0xE0DD && in_fragments_) in_fragments_ = false;
        else if (!open_.empty() && open_.back().end == kOpenEnded) leave();
        return "";
    }
    if (len == kUndefinedLength) {
        if (!in_fragments_) enter(kOpenEnded, false);
        return "";
    }
    if (len > n_ - pos) return "item " + too_long(e, pos);
    if (in_fragments_) pos += len;
    else enter(pos + len, false);
    return "";
}

// Any other element: skipped by its length, a sequence entered, encapsulated pixel data marked.
std::string ElementWalk::element_value(const Element& e, size_t& pos) {
    const uint32_t len = e.length;
    if (len == kUndefinedLength) {  // a sequence, or encapsulated pixel data, ended by a delimiter
        if (e.group == 0x7FE0 && e.element == 0x0010 && !e.sequence) {
            in_fragments_ = true;
            return "";
        }
        return enter_sequence(e, kOpenEnded);
    }
    if (len > n_ - pos) return too_long(e, pos);
    if (e.sequence) return enter_sequence(e, pos + len);
    if (in_meta_ && e.group == 0x0002 && e.element == 0x0010) {
        xfer_.assign(reinterpret_cast<const char*>(p_ + pos), len);
        xfer_pos_ = pos, xfer_len_ = len;
    }
    pos += len;
    return "";
}

std::string ElementWalk::enter_sequence(const Element& e, size_t end) {
    enter(end, true);
    if (sequences_ > kDicomMaxNesting)
        return tag(e) + ": sequences nested more than " + std::to_string(kDicomMaxNesting) + " levels deep";
    return "";
}

std::string ElementWalk::tag(const Element& e) const {
    char t[16];
    std::snprintf(t, sizeof t, "(%04X,%04X)", e.group, e.element);
    return t;
}

std::string ElementWalk::too_long(const Element& e, size_t pos) const {
    return tag(e) + ": " + std::to_string(e.length) + " bytes declared, " + std::to_string(n_ - pos) + " left";
}

}  // namespace

std::string dicom_walk_problem(const unsigned char* p, size_t n) { return ElementWalk(p, n).run(); }

std::string dicom_walk_file_problem(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "";
    struct stat st{};
    std::string problem;
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
        void* m = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
        if (m != MAP_FAILED) {
            problem = dicom_walk_problem(static_cast<const unsigned char*>(m), size_t(st.st_size));
            ::munmap(m, size_t(st.st_size));
        }
    }
    ::close(fd);
    return problem;
}

}  // namespace fetalhc::detail
