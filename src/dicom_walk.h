// Internal: the element walk that runs before DCMTK reads a file (src/dicom_walk.cpp).
//
// Reading from memory, DCMTK allocates every value at the length its header declares before it
// reads the value (a 4 KB upload whose element says 2.6 GB allocates 2.6 GB), and it reads nested
// sequences by recursion (some thousands of levels overflow the stack). The walk goes over the
// elements first, allocating nothing but a small stack of open sequences and items, and reports
// the first problem: a declared length that runs past the end of the bytes, or more than
// kDicomMaxNesting nested sequences. Sequences and items are entered (their contents are elements),
// fragments of encapsulated pixel data skipped. A deflated data set (PS3.5 A.5) is inflated first,
// at most kDicomMaxInflatedBytes, and its elements walked the same way.
#pragma once

#include <cstddef>
#include <string>

namespace fetalhc::detail {

constexpr size_t kDicomMaxInflatedBytes = size_t(256) << 20;

// The walk over p[0..n) (a Part 10 file: preamble, "DICM", meta header, data set). Returns "" when
// every element fits, else the problem as "(gggg,eeee): N bytes declared, M left" or
// "(gggg,eeee): sequences nested more than 128 levels deep".
std::string dicom_walk_problem(const unsigned char* p, size_t n);

// The same over a file, mapped read-only (nothing is copied; pixel data is skipped by its length,
// so only the pages holding element headers are read). "" also when the file cannot be opened
// (DCMTK's own read then reports it).
std::string dicom_walk_file_problem(const std::string& path);

}  // namespace fetalhc::detail
