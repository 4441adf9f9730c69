// `measure --shard I/N`: the I-th of N parts of the input list, so that N processes (a Kubernetes
// indexed Job, N shell jobs) measure an archive between them, each input exactly once.
//
//   auto s = fetalhc_cli::parse_shard("2/8");   // s->index == 2, s->count == 8
//   if (!s) error(s.error);                      // "--shard '2/x' ..."
//   items = fetalhc_cli::take_shard(items, *s);   // items 2, 10, 18, ... of the list
//
// The parts interleave: input k (counted from 0 in the expanded list) belongs to part k mod N. So
// the parts differ in size by at most one, and a list sorted by name (folders are expanded in byte
// order of their file names, never in file system order) spreads each examination's files and any
// run of large files over the parts. The assignment depends only on the expanded list: the same
// arguments over the same files give the same parts on every run and machine. A file added to a
// folder shifts the files after it to other parts, so run every part over the same snapshot.
//
// Header-only (no library needed): tests/test_shard.cpp checks it on its own.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace fetalhc_cli {

struct Shard {
    long long index = 0;  // I, 0 <= I < N
    long long count = 1;  // N >= 1
};

struct ShardParse {
    bool ok = false;
    Shard shard;
    std::string error;  // set when !ok: names the value and says what is expected
    explicit operator bool() const { return ok; }
};

// The largest N accepted: far above any real number of workers, small enough to read without
// overflow.
constexpr long long kMaxShards = 1000000;

namespace shard_detail {
// A decimal number of 1 to 7 digits (no sign, no spaces); -1 otherwise.
inline long long parse_count(const std::string& s) {
    if (s.empty() || s.size() > 7) return -1;
    long long v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    return v;
}
}  // namespace shard_detail

// Reads "I/N" as given to --shard.
inline ShardParse parse_shard(const std::string& text) {
    ShardParse r;
    const std::string shown = "--shard '" + text.substr(0, 40) + "'";
    const size_t slash = text.find('/');
    const long long i = slash == std::string::npos ? -1 : shard_detail::parse_count(text.substr(0, slash));
    const long long n = slash == std::string::npos ? -1 : shard_detail::parse_count(text.substr(slash + 1));
    if (i < 0 || n < 0) {
        r.error = shown + " must be I/N, two whole numbers: part I (counted from 0) of N parts, e.g. --shard 0/4";
    } else if (n < 1 || n > kMaxShards) {
        r.error = shown + ": N, the number of parts, must be in 1.." + std::to_string(kMaxShards);
    } else if (i >= n) {
        r.error = shown + ": I must be below N (the parts of " + std::to_string(n) + " are numbered 0 to " +
                  std::to_string(n - 1) + ")";
    } else {
        r.ok = true;
        r.shard = {i, n};
    }
    return r;
}

// The items of part `s` (index mod N == I), in their order.
template <class T>
std::vector<T> take_shard(const std::vector<T>& items, const Shard& s) {
    std::vector<T> out;
    for (size_t k = 0; k < items.size(); ++k)
        if (static_cast<long long>(k % static_cast<size_t>(s.count)) == s.index) out.push_back(items[k]);
    return out;
}

}  // namespace fetalhc_cli
