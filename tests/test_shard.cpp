// `measure --shard I/N` (tools/shard.h): which inputs a part holds, and the values refused.
// tests/shard_test.sh runs the same option through the CLI on files in a folder.
#include "shard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

using fetalhc_cli::parse_shard;
using fetalhc_cli::Shard;
using fetalhc_cli::take_shard;

TEST(ParseShard, ReadsPartAndCount) {
    auto s = parse_shard("2/8");
    ASSERT_TRUE(s) << s.error;
    EXPECT_EQ(s.shard.index, 2);
    EXPECT_EQ(s.shard.count, 8);
    s = parse_shard("0/1");
    ASSERT_TRUE(s) << s.error;
    EXPECT_EQ(s.shard.index, 0);
    EXPECT_EQ(s.shard.count, 1);
    s = parse_shard("999999/1000000");
    ASSERT_TRUE(s) << s.error;
    EXPECT_EQ(s.shard.index, 999999);
}

TEST(ParseShard, RefusesMalformedValuesNamingThem) {
    for (const char* bad : {"", "3", "/4", "1/", "a/4", "1/b", "-1/4", "1/-4", "+1/4", " 1/4", "1/4 ", "1.0/4", "1/4/2",
                            "1//4", "0x1/4", "12345678/99999999"}) {
        const auto s = parse_shard(bad);
        EXPECT_FALSE(s) << "'" << bad << "' accepted";
        EXPECT_NE(s.error.find("--shard '" + std::string(bad) + "'"), std::string::npos) << s.error;
        EXPECT_NE(s.error.find("e.g. --shard 0/4"), std::string::npos) << bad << ": " << s.error;
    }
}

TEST(ParseShard, RefusesOutOfRangePartOrCount) {
    auto s = parse_shard("4/4");
    EXPECT_FALSE(s);
    EXPECT_NE(s.error.find("numbered 0 to 3"), std::string::npos) << s.error;
    s = parse_shard("7/3");
    EXPECT_FALSE(s);
    s = parse_shard("0/0");
    EXPECT_FALSE(s);
    EXPECT_NE(s.error.find("must be in 1..1000000"), std::string::npos) << s.error;
    s = parse_shard("0/1000001");
    EXPECT_FALSE(s);
}

// Part k mod N: the documented assignment, pinned on a small list.
TEST(TakeShard, InterleavesByPositionInTheList) {
    const std::vector<int> items{10, 11, 12, 13, 14, 15, 16};
    EXPECT_EQ(take_shard(items, Shard{0, 3}), (std::vector<int>{10, 13, 16}));
    EXPECT_EQ(take_shard(items, Shard{1, 3}), (std::vector<int>{11, 14}));
    EXPECT_EQ(take_shard(items, Shard{2, 3}), (std::vector<int>{12, 15}));
    EXPECT_EQ(take_shard(items, Shard{0, 1}), items);
    EXPECT_TRUE(take_shard(items, Shard{9, 10}).empty());
}

// For random list lengths and part counts: the parts together hold every item exactly once, in
// the list's order within a part, and their sizes differ by at most one.
TEST(TakeShard, PartsCoverTheListExactlyOnceAndBalanced) {
    std::mt19937 rng(16);
    for (int round = 0; round < 200; ++round) {
        const int size = int(rng() % 60);
        const long long count = 1 + static_cast<long long>(rng() % 12);
        std::vector<int> items(size);
        for (int k = 0; k < size; ++k) items[k] = k;
        std::vector<int> seen;
        size_t smallest = items.size() + 1, largest = 0;
        for (long long i = 0; i < count; ++i) {
            const auto part = take_shard(items, Shard{i, count});
            EXPECT_TRUE(std::is_sorted(part.begin(), part.end()));
            EXPECT_EQ(part, take_shard(items, Shard{i, count})) << "not the same on a second call";
            smallest = std::min(smallest, part.size());
            largest = std::max(largest, part.size());
            seen.insert(seen.end(), part.begin(), part.end());
        }
        std::sort(seen.begin(), seen.end());
        EXPECT_EQ(seen, items) << size << " items in " << count << " parts";
        EXPECT_LE(largest - smallest, 1u) << size << " items in " << count << " parts";
    }
}
