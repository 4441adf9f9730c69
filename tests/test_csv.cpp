// The project's CSV writer and record reader.
#include "fetalhc/csv.h"

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

using namespace fetalhc;

TEST(Csv, PlainTextIsWrittenAsIs) { EXPECT_EQ(csv_text("017_HC.png"), "017_HC.png"); }

TEST(Csv, SeparatorsQuotesAndLineBreaksAreQuoted) {
    EXPECT_EQ(csv_text("a,b.png"), "\"a,b.png\"");
    EXPECT_EQ(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
    EXPECT_EQ(csv_text("two\nlines"), "\"two\nlines\"");
    EXPECT_EQ(csv_text("cr\rhere"), "\"cr\rhere\"");
}

TEST(Csv, FormulaStartsAreNeutralised) {
    EXPECT_EQ(csv_text("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    EXPECT_EQ(csv_text("+1"), "'+1");
    EXPECT_EQ(csv_text("-2"), "'-2");
    EXPECT_EQ(csv_text("@SUM(A1)"), "'@SUM(A1)");
    EXPECT_EQ(csv_text("\tx"), "'\tx");
    EXPECT_EQ(csv_text("x=1"), "x=1");  // only the first character matters
}

TEST(Csv, NumbersStayNumbers) {
    EXPECT_EQ(csv_number(-3.14159, 2), "-3.14");
    EXPECT_EQ(csv_number(NAN, 2), "");
    EXPECT_EQ(csv_number(INFINITY, 2), "");
}

TEST(Csv, WriterSeparatesCellsAndEndsRows) {
    std::ostringstream o;
    CsvWriter w(o);
    w.raw("filename").raw("hc_mm").end_row();
    w.text("-a,b").number(-1.5, 1).empty(2).integer(7).end_row();
    EXPECT_EQ(o.str(), "filename,hc_mm\n\"'-a,b\",-1.5,,,7\n");
}

TEST(Csv, ReaderSplitsQuotedCellsAndDropsBom) {
    auto r = parse_csv_record("\xEF\xBB\xBF\"a,b.png\",0.12,\"say \"\"hi\"\"\",");
    ASSERT_TRUE(r) << r.error();
    ASSERT_EQ(r->size(), 4u);
    EXPECT_EQ((*r)[0], "a,b.png");
    EXPECT_EQ((*r)[1], "0.12");
    EXPECT_EQ((*r)[2], "say \"hi\"");
    EXPECT_EQ((*r)[3], "");
}

TEST(Csv, ReaderRejectsBrokenQuotes) {
    EXPECT_FALSE(parse_csv_record("\"open,1"));
    EXPECT_FALSE(parse_csv_record("\"a\"b,1"));
}

TEST(Csv, WhatTheWriterWritesTheReaderReadsBack) {
    for (std::string s : {"plain", "a,b", "q\"q", "", "x y"}) {
        auto r = parse_csv_record(csv_text(s) + "," + csv_text(s));
        ASSERT_TRUE(r) << s;
        ASSERT_EQ(r->size(), 2u);
        EXPECT_EQ((*r)[0], s);
    }
}
