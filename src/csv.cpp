#include "fetalhc/csv.h"

#include <cmath>
#include <cstdio>

namespace fetalhc {

namespace {

std::string quote_if_needed(std::string_view cell) {
    if (cell.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(cell);
    std::string q = "\"";
    for (char c : cell) {
        if (c == '"') q += '"';
        q += c;
    }
    return q + '"';
}

}  // namespace

std::string csv_text(std::string_view text) {
    const bool formula = !text.empty() && std::string_view("=+-@\t\r").find(text.front()) != std::string_view::npos;
    return quote_if_needed(formula ? "'" + std::string(text) : std::string(text));
}

std::string csv_number(double value, int digits) {
    if (!std::isfinite(value)) return "";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, value);
    return buf;
}

void CsvWriter::separator() {
    if (row_started_) out_ << ',';
    row_started_ = true;
}

CsvWriter& CsvWriter::text(std::string_view cell) {
    separator();
    out_ << csv_text(cell);
    return *this;
}

CsvWriter& CsvWriter::number(double value, int digits) {
    separator();
    out_ << csv_number(value, digits);
    return *this;
}

CsvWriter& CsvWriter::integer(long long value) {
    separator();
    out_ << value;
    return *this;
}

CsvWriter& CsvWriter::empty(int count) {
    for (int i = 0; i < count; ++i) separator();
    return *this;
}

CsvWriter& CsvWriter::raw(std::string_view cell) {
    separator();
    out_ << quote_if_needed(cell);
    return *this;
}

void CsvWriter::end_row() {
    out_ << '\n';
    row_started_ = false;
}

Expected<std::vector<std::string>> parse_csv_record(std::string_view line) {
    if (line.size() >= 3 && line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);
    std::vector<std::string> cells;
    std::string cell;
    size_t i = 0;
    while (true) {
        if (i < line.size() && line[i] == '"') {
            ++i;
            while (true) {
                if (i >= line.size()) return make_error(ErrorKind::InvalidArgument, "unterminated quoted cell");
                if (line[i] == '"') {
                    if (i + 1 < line.size() && line[i + 1] == '"') {
                        cell += '"';
                        i += 2;
                        continue;
                    }
                    ++i;
                    break;
                }
                cell += line[i++];
            }
            if (i < line.size() && line[i] != ',') return make_error(ErrorKind::InvalidArgument, "text after a closing quote");
        } else {
            while (i < line.size() && line[i] != ',') cell += line[i++];
        }
        cells.push_back(std::move(cell));
        cell.clear();
        if (i >= line.size()) break;
        ++i;  // the comma
    }
    return cells;
}

}  // namespace fetalhc
