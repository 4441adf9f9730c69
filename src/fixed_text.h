// Internal: a number in a message, in fixed notation with `digits` decimals (e.g. 12.3), as the
// review reasons and the DICOM messages write their numbers.
#pragma once

#include <sstream>
#include <string>

namespace fetalhc::detail {

inline std::string fixed_text(double v, int digits = 1) {
    std::ostringstream s;
    s.setf(std::ios::fixed);
    s.precision(digits);
    s << v;
    return s.str();
}

}  // namespace fetalhc::detail
