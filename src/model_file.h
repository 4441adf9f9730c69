// Internal: integrity of a model file before LibTorch reads it.
//
// Model files are PyTorch archives: a ZIP file whose entries are stored uncompressed, each with the
// CRC-32 of its bytes in the central directory (ZIP application note, APPNOTE.TXT 4.3.12 and
// 4.4.7). LibTorch's reader does not check those CRCs, so a damaged file loads and then gives
// nonsense; this check reads every entry and compares.
#pragma once

#include "fetalhc/expected.h"

#include <string>

namespace fetalhc::detail {

// "" when every entry of the archive at `path` matches its CRC-32; otherwise what is wrong (not a
// ZIP archive, truncated, entry N damaged), for an error message that names the file.
std::string check_model_archive(const std::string& path);

}  // namespace fetalhc::detail
