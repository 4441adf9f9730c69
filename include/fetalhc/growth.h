// fetalhc/growth.h - gestational age from HC and HC-for-age centiles.
//
//   fetalhc::GaEstimate h = fetalhc::hadlock_ga(hc_mm);            // weeks, with range check
//   fetalhc::GaEstimate ig = fetalhc::intergrowth_ga(hc_mm);
//   fetalhc::Centile c = fetalhc::intergrowth_hc_centile(hc_mm, 20.0);  // GA in exact weeks
//
// Formulas:
//   Hadlock FP et al., "Estimating fetal age: computer-assisted analysis of multiple fetal growth
//   parameters", Radiology 152 (1984): GA weeks = 8.96 + 0.540 HC + 0.0003 HC^3, HC in cm,
//   stated for HC 68..360 mm.
//   Papageorghiou AT et al. (INTERGROWTH-21st), "International standards for early fetal size and
//   pregnancy dating", Ultrasound Obstet Gynecol 2016: GA days = exp(0.05970 (ln HC)^2
//   + 6.409e-9 HC^3 + 3.3258), HC in mm, valid for GA 14+0..25+6 weeks.
//   Papageorghiou AT et al., "International standards for fetal growth based on serial ultrasound
//   measurements", Lancet 384 (2014): HC median and SD as functions of GA (14..40 weeks).
// Nothing is extrapolated silently: outside a formula's range `in_range` is false, `note` says why,
// and the value is left unset (NaN).
// Thread safety: pure functions.
#pragma once

#include <string>

namespace fetalhc {

struct GaEstimate {
    bool in_range = false;
    double weeks = 0;   // NaN when out of range
    std::string note;   // empty when in range
};

GaEstimate hadlock_ga(double hc_mm);
GaEstimate intergrowth_ga(double hc_mm);

struct Centile {
    bool in_range = false;
    double median_mm = 0, sd_mm = 0;
    double z = 0;            // (hc - median) / sd
    double centile = 0;      // 100 * Phi(z)
    bool below_3rd = false, above_97th = false;
    std::string note;
};

// INTERGROWTH-21st HC-for-GA standard; GA in exact weeks, valid 14..40.
double intergrowth_hc_median(double ga_weeks);
double intergrowth_hc_sd(double ga_weeks);
Centile intergrowth_hc_centile(double hc_mm, double ga_weeks);
// HC (mm) at a given centile (e.g. 3, 50, 97) for a GA in weeks; used to draw growth charts.
double intergrowth_hc_at_centile(double ga_weeks, double centile);

// Formats weeks as "20w3d".
std::string format_weeks(double weeks);

}  // namespace fetalhc
