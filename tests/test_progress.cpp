// The CLI's progress line (tools/progress.h): its text, pinned exactly, since users read it.
#include "progress.h"

#include <gtest/gtest.h>

#include <cmath>

using fetalhc_cli::format_duration;
using fetalhc_cli::progress_text;

TEST(ProgressText, CountOnlyBeforeAnythingIsDone) {
    EXPECT_EQ(progress_text(0, 335, 0.0), "0/335 images");
    EXPECT_EQ(progress_text(0, 335, 12.0), "0/335 images");
}

TEST(ProgressText, RateAndTimeLeftFromTheItemsDone) {
    // 5 items in 2 s: 2.5 items/s, 5 left -> 2 s.
    EXPECT_EQ(progress_text(5, 10, 2.0), "5/10 images  2.5 images/s  0:02 left");
    // 12 of 335 in 1.5 s: 8 items/s, 323 left -> 40.375 s.
    EXPECT_EQ(progress_text(12, 335, 1.5), "12/335 images  8.0 images/s  0:40 left");
}

TEST(ProgressText, NoTimeLeftOnceDone) {
    EXPECT_EQ(progress_text(10, 10, 4.0), "10/10 images  2.5 images/s");
}

TEST(ProgressText, NoRateWithoutElapsedTime) {
    EXPECT_EQ(progress_text(3, 10, 0.0), "3/10 images");
    EXPECT_EQ(progress_text(3, 10, std::nan("")), "3/10 images");
}

TEST(ProgressText, UnitIsNamed) {
    EXPECT_EQ(progress_text(1, 4, 0.5, "frames"), "1/4 frames  2.0 frames/s  0:02 left");
}

TEST(FormatDuration, MinutesSecondsThenHours) {
    EXPECT_EQ(format_duration(0), "0:00");
    EXPECT_EQ(format_duration(59.4), "0:59");
    EXPECT_EQ(format_duration(59.6), "1:00");  // rounded, never "0:60"
    EXPECT_EQ(format_duration(605), "10:05");
    EXPECT_EQ(format_duration(3725), "1:02:05");
}

TEST(FormatDuration, NegativeOrNotFiniteIsZero) {
    EXPECT_EQ(format_duration(-3), "0:00");
    EXPECT_EQ(format_duration(std::nan("")), "0:00");
    EXPECT_EQ(format_duration(INFINITY), "0:00");
}
