// fetalhc/csv.h - the one CSV writer of the project, and the reader of one CSV record.
//
//   fetalhc::CsvWriter w(std::cout);
//   w.text("017_HC.png").number(172.41, 2).empty().text(reason).end_row();
//
// Cells follow RFC 4180: a cell holding a comma, a double quote, CR or LF is quoted and its quotes
// doubled. Text cells (file names, ids, reasons: anything a client or a file name can choose) that
// start with '=', '+', '-', '@', TAB or CR get a leading apostrophe, so that a spreadsheet shows
// them as text instead of running them as a formula. Numbers are written as numbers (a negative
// number stays negative); a non-finite number is an empty cell. Rows end with "\n".
// Thread safety: a writer is used by one thread; the functions are pure.
#pragma once

#include "fetalhc/expected.h"

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace fetalhc {

// One text cell, neutralised and quoted as above.
std::string csv_text(std::string_view text);
// One number cell with `digits` decimals ("" when not finite).
std::string csv_number(double value, int digits);

class CsvWriter {
public:
    explicit CsvWriter(std::ostream& out) : out_(out) {}
    CsvWriter& text(std::string_view cell);
    CsvWriter& number(double value, int digits);
    CsvWriter& integer(long long value);
    CsvWriter& empty(int count = 1);
    // A header or other cells known to be plain (no neutralising, still quoted when needed).
    CsvWriter& raw(std::string_view cell);
    void end_row();

private:
    void separator();
    std::ostream& out_;
    bool row_started_ = false;
};

// Splits one CSV record (one line, without its line end) into cells: quoted cells may hold commas
// and doubled quotes; spaces around an unquoted cell are kept. A UTF-8 byte order mark at the start
// is dropped. Errors: an unterminated quote, or text after a closing quote.
Expected<std::vector<std::string>> parse_csv_record(std::string_view line);

}  // namespace fetalhc
