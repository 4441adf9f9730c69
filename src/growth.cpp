#include "fetalhc/growth.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

namespace fetalhc {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kPi = 3.14159265358979323846;

// Published validity ranges.
constexpr double kHadlockMinMm = 68.0, kHadlockMaxMm = 360.0;
constexpr double kIgDatingMinWeeks = 14.0, kIgDatingEndWeeks = 26.0;  // 14+0 .. 25+6, end exclusive
constexpr double kIgStandardMinWeeks = 14.0, kIgStandardMaxWeeks = 40.0;
constexpr double kIgDatingTurnMm = 1.0;  // where the dating formula turns (see intergrowth_ga)

std::string fmt(const char* f, double v) {
    char buf[512];  // %.1f of a huge double is over 300 characters
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

GaEstimate out_of_range(std::string note) {
    GaEstimate g;
    g.in_range = false;
    g.weeks = kNaN;
    g.note = std::move(note);
    return g;
}

bool positive_finite(double v) { return std::isfinite(v) && v > 0; }

bool in_standard_range(double ga_weeks) {
    return std::isfinite(ga_weeks) && ga_weeks >= kIgStandardMinWeeks && ga_weeks <= kIgStandardMaxWeeks;
}

double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

// Inverse of the standard normal CDF. Starting point: P. J. Acklam's rational approximation
// (central region |p - 0.5| <= 0.47575 and two tails, relative error below 1.15e-9), then one
// Newton step on Phi(x) - p using erfc, which brings it to about double precision.
double normal_quantile(double p) {
    if (!(p > 0 && p < 1)) {
        if (p == 0) return -std::numeric_limits<double>::infinity();
        if (p == 1) return std::numeric_limits<double>::infinity();
        return kNaN;
    }
    static constexpr std::array<double, 6> a = {-3.969683028665376e+01, 2.209460984245205e+02,
                                                -2.759285104469687e+02, 1.383577518672690e+02,
                                                -3.066479806614716e+01, 2.506628277459239e+00};
    static constexpr std::array<double, 5> b = {-5.447609879822406e+01, 1.615858368580409e+02,
                                                -1.556989798598866e+02, 6.680131188771972e+01,
                                                -1.328068155288572e+01};
    static constexpr std::array<double, 6> c = {-7.784894002430293e-03, -3.223964580411365e-01,
                                                -2.400758277161838e+00, -2.549732539343734e+00,
                                                4.374664141464968e+00,  2.938163982698783e+00};
    static constexpr std::array<double, 4> d = {7.784695709041462e-03, 3.224671290700398e-01,
                                                2.445134137142996e+00, 3.754408661907416e+00};
    constexpr double p_low = 0.02425;

    double x;
    if (p < p_low || p > 1 - p_low) {
        // Tails: rational function of q = sqrt(-2 ln(tail probability)).
        const double q = std::sqrt(-2 * std::log(p < p_low ? p : 1 - p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
        if (p > 1 - p_low) x = -x;
    } else {
        const double q = p - 0.5, r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
    }
    // Newton refinement; the density is far from zero for any p a chart asks for.
    const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2 * kPi);
    if (pdf > 0) x -= (normal_cdf(x) - p) / pdf;
    return x;
}

}  // namespace

GaEstimate hadlock_ga(double hc_mm) {
    if (!positive_finite(hc_mm)) return out_of_range("HC must be a positive finite length in mm; no GA given");
    if (hc_mm < kHadlockMinMm)
        return out_of_range(fmt("HC %.1f mm is below the 68 mm lower limit of Hadlock 1984; no GA given", hc_mm));
    if (hc_mm > kHadlockMaxMm)
        return out_of_range(fmt("HC %.1f mm is above the 360 mm upper limit of Hadlock 1984; no GA given", hc_mm));
    const double hc_cm = hc_mm / 10.0;
    GaEstimate g;
    g.in_range = true;
    g.weeks = 8.96 + 0.540 * hc_cm + 0.0003 * hc_cm * hc_cm * hc_cm;
    return g;
}

GaEstimate intergrowth_ga(double hc_mm) {
    if (!positive_finite(hc_mm)) return out_of_range("HC must be a positive finite length in mm; no GA given");
    const double l = std::log(hc_mm);
    const double days = std::exp(0.05970 * l * l + 6.409e-9 * hc_mm * hc_mm * hc_mm + 3.3258);
    const double weeks = days / 7.0;
    // The formula falls and then rises in ln HC, with its minimum near HC = 1 mm (its slope in ln HC is
    // 0.1194 ln HC + 1.92e-8 HC^3, zero there); only the rising branch dates a pregnancy. Below it a
    // tiny HC would map back into the range (0.01 mm gives "14w1d"), so it is refused by HC first.
    if (hc_mm <= kIgDatingTurnMm)
        return out_of_range(fmt("HC %.3g mm", hc_mm) +
                            " is far below the 14+0 weeks lower limit of INTERGROWTH-21st dating (about 97 mm); no GA given");
    // The range is stated in GA, so the check is on the result; days are not rounded first.
    if (weeks < kIgDatingMinWeeks)
        return out_of_range(fmt("HC %.1f mm", hc_mm) + " gives GA " + format_weeks(weeks) +
                            ", before the 14+0 weeks lower limit of INTERGROWTH-21st dating; no GA given");
    if (weeks >= kIgDatingEndWeeks)
        return out_of_range(fmt("HC %.1f mm", hc_mm) + " gives GA " + format_weeks(weeks) +
                            ", past the 25+6 weeks upper limit of INTERGROWTH-21st dating; no GA given");
    GaEstimate g;
    g.in_range = true;
    g.weeks = weeks;
    return g;
}

double intergrowth_hc_median(double ga_weeks) {
    if (!in_standard_range(ga_weeks)) return kNaN;
    const double g2 = ga_weeks * ga_weeks;
    return -28.2849 + 1.69267 * g2 - 0.397485 * g2 * std::log(ga_weeks);
}

double intergrowth_hc_sd(double ga_weeks) {
    if (!in_standard_range(ga_weeks)) return kNaN;
    const double g3 = ga_weeks * ga_weeks * ga_weeks, l = std::log(ga_weeks);
    return 1.98735 + 0.0136772 * g3 - 0.00726264 * g3 * l + 0.000976253 * g3 * l * l;
}

Centile intergrowth_hc_centile(double hc_mm, double ga_weeks) {
    Centile c;
    c.median_mm = c.sd_mm = c.z = c.centile = kNaN;
    if (!positive_finite(hc_mm)) {
        c.note = "HC must be a positive finite length in mm; no centile given";
        return c;
    }
    if (!in_standard_range(ga_weeks)) {
        c.note = (std::isfinite(ga_weeks) ? fmt("GA %.1f weeks", ga_weeks) : std::string("GA (not a number)")) +
                 " is outside 14..40 weeks of the INTERGROWTH-21st HC standard; no centile given";
        return c;
    }
    c.in_range = true;
    c.median_mm = intergrowth_hc_median(ga_weeks);
    c.sd_mm = intergrowth_hc_sd(ga_weeks);
    c.z = (hc_mm - c.median_mm) / c.sd_mm;
    c.centile = 100.0 * normal_cdf(c.z);
    c.below_3rd = c.centile < 3.0;
    c.above_97th = c.centile > 97.0;
    return c;
}

double intergrowth_hc_at_centile(double ga_weeks, double centile) {
    if (!in_standard_range(ga_weeks) || !(centile > 0 && centile < 100)) return kNaN;
    return intergrowth_hc_median(ga_weeks) + normal_quantile(centile / 100.0) * intergrowth_hc_sd(ga_weeks);
}

std::string format_weeks(double weeks) {
    // Far beyond any pregnancy the day count would not fit in an integer; nothing sensible to show.
    if (!std::isfinite(weeks) || weeks < 0 || weeks > 1e6) return "n/a";
    const long long days = std::llround(weeks * 7.0);
    return std::to_string(days / 7) + "w" + std::to_string(days % 7) + "d";
}

}  // namespace fetalhc
