// Internal: FNV-1a, 64 bit, a stable hash of a string (std::hash may differ between standard
// libraries), for splits that must be the same on every machine: HC18 examinations
// (src/hc18.cpp) and the planes patients of the head-check trainer (src/train/head_check_data.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace fetalhc::detail {

inline uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

}  // namespace fetalhc::detail
