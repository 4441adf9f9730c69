// Owns: the measurement panel's numbers (#results): the quality badge and review reasons, HC / BPD /
// OFD / cephalic index (computed here at once from the working ellipse), GA (Hadlock,
// INTERGROWTH-21st) and the HC centile (from the server, refreshed through POST /v1/perimeter a
// moment after each change), the "corrected" badge, the reset button's state, the timings line, and
// the calibration the server used with where it came from (#calibration-box: "0.2623 mm/px from
// ultrasound region 0", "from PixelSpacing", "given by you"), a DICOM file's frames and its warnings.
//
// The model's calibrated interval for the reference HC (#hc-interval: "90% 169.8 to 175.1 mm", with
// the GA range it implies) belongs to the network's ellipse: it is shown while that ellipse stands
// and withdrawn once the ellipse is corrected by hand.
// For tests: #hc carries data-value (HC in mm, 3 decimals); outputs waiting for the server have the
// class "pending"; #results gets data-updated when a refresh has arrived; #calibration carries
// data-source (the API's calibration.source) and data-mm-per-px (the working pixel size).

import * as api from './api.js';
import { el } from './dom.js';
import { currentEllipse, isCorrected } from './ellipse-editor.js';
import { DASH, formatGa, formatWeeks, mm } from './format.js';
import { normalise, perimeter, toApi } from './geometry.js';
import { gaWeeksValue, pixelSizeValue, typedPixelSizeValue } from './inputs.js';
import { showMessage } from './messages.js';

const PERIMETER_DEBOUNCE_MS = 250;

let serverInterval = null;  // {low, high, coverage, gaLow, gaHigh} of the last measurement, or null
let perimeterTimer = 0;
let perimeterSeq = 0;

const serverOutputs = () => [el.gaHadlock, el.gaIntergrowth, el.centile];

function setOutput(node, text, note, warn) {
  node.textContent = text;
  node.title = note || '';
  node.classList.toggle('warn', !!warn);
  if (note) {
    const small = document.createElement('small');
    small.className = 'note';
    small.textContent = ' ' + note;
    node.appendChild(small);
  }
}

// The quality badge and the review reasons of a measurement (null: none).
export function showQuality(m) {
  el.quality.className = 'badge';
  el.reasons.innerHTML = '';
  if (!m) {
    el.quality.textContent = 'no measurement';
    el.quality.classList.add('badge-none');
    return;
  }
  el.quality.textContent = m.quality === 'ok' ? 'quality ok' : 'review';
  el.quality.classList.add(m.quality === 'ok' ? 'badge-ok' : 'badge-review');
  el.quality.dataset.quality = m.quality;
  for (const reason of m.reasons || []) {
    const li = document.createElement('li');
    li.textContent = reason;
    el.reasons.appendChild(li);
  }
}

// The interval of a measurement from POST /v1/measure (absent when the model carries none).
export function setInterval90(m) {
  const ok = m && Number.isFinite(m.hc_low_mm) && Number.isFinite(m.hc_high_mm);
  serverInterval = ok ? {
    low: m.hc_low_mm, high: m.hc_high_mm, coverage: m.interval_coverage,
    gaLow: m.ga_hadlock && m.ga_hadlock.low_weeks, gaHigh: m.ga_hadlock && m.ga_hadlock.high_weeks,
  } : null;
  showInterval();
}

function showInterval() {
  const iv = serverInterval;
  if (!iv) { setOutput(el.hcInterval, 'n/a', 'this model file carries no calibrated interval'); return; }
  if (isCorrected()) { setOutput(el.hcInterval, 'n/a', 'the interval is the model\'s; the ellipse was corrected by hand'); return; }
  const pct = Number.isFinite(iv.coverage) ? Math.round(100 * iv.coverage) : 90;
  const ga = Number.isFinite(iv.gaLow) && Number.isFinite(iv.gaHigh) ? `GA ${formatWeeks(iv.gaLow)} to ${formatWeeks(iv.gaHigh)}` : '';
  setOutput(el.hcInterval, `${pct}% ${iv.low.toFixed(1)} to ${iv.high.toFixed(1)} mm`, ga);
  el.hcInterval.dataset.low = iv.low.toFixed(3);
  el.hcInterval.dataset.high = iv.high.toFixed(3);
}

// HC as the server computed it (it is authoritative; it agrees with the local value).
export function showServerHc(hcMm) {
  if (!Number.isFinite(hcMm)) return;
  el.hc.textContent = mm(hcMm);
  el.hc.dataset.value = hcMm.toFixed(3);
}

// Sizes computed here, immediately, from the working ellipse and the pixel size.
export function showLocalNumbers() {
  const ps = pixelSizeValue();
  const ellipse = currentEllipse();
  if (!ellipse || ps === null) {
    for (const n of [el.hc, el.bpd, el.ofd, el.ci]) n.textContent = DASH;
    return;
  }
  const e = normalise(ellipse);
  const hc = perimeter(e.a, e.b) * ps;
  el.hc.textContent = mm(hc);
  el.hc.dataset.value = hc.toFixed(3);
  el.bpd.textContent = mm(2 * e.b * ps);
  el.ofd.textContent = mm(2 * e.a * ps);
  el.ci.textContent = (100 * e.b / e.a).toFixed(1);
  const corrected = isCorrected();
  el.corrected.hidden = !corrected;
  el.reset.disabled = !corrected;
  showInterval();
}

function showCentile(c) {
  if (!c) {
    setOutput(el.centile, 'n/a', 'enter the known GA for the centile');
  } else if (!c.in_range || !Number.isFinite(c.centile) || !Number.isFinite(c.z) || !Number.isFinite(c.median_mm)) {
    setOutput(el.centile, 'n/a', c.note || 'GA outside 14\u201340 weeks');
  } else {
    const text = `${c.centile.toFixed(1)} (z ${c.z >= 0 ? '+' : ''}${c.z.toFixed(2)}; median ${c.median_mm.toFixed(1)} mm)`;
    let flag = '';
    if (c.below_3rd) flag = 'below the 3rd centile';
    if (c.above_97th) flag = 'above the 97th centile';
    setOutput(el.centile, text, flag, !!flag);
  }
}

// GA and centile as computed by the server (measure or perimeter response).
export function showServerNumbers(r) {
  const h = formatGa(r.ga_hadlock), ig = formatGa(r.ga_intergrowth);
  setOutput(el.gaHadlock, h.text, h.note);
  setOutput(el.gaIntergrowth, ig.text, ig.note);
  showCentile(r.centile);
  for (const n of serverOutputs()) n.classList.remove('pending');
}

const mmPerPx = (v) => (Number.isFinite(v) ? Number(v.toPrecision(4)).toString() : DASH);

// Where a calibration came from, as the page words it.
function calibrationOrigin(source) {
  if (source === 'pixel_size_mm') return 'given by you';
  return 'from ' + (source || 'an unknown source');
}

// The calibration of a measurement (m.calibration) and, for DICOM, the frames and warnings. A pixel
// size typed after measuring a DICOM file replaces the file's one for the numbers shown: so said.
export function showCalibration(m) {
  const c = m && m.calibration;
  el.calibrationBox.hidden = !c;
  el.calibrationWarnings.innerHTML = '';
  el.dicomInfo.hidden = true;
  if (!c) return;
  const x = c.mm_per_px_x, y = c.mm_per_px_y;
  const square = !Number.isFinite(y) || Math.abs(x - y) <= 0.005 * Math.max(x, y);
  let text = square ? `${mmPerPx(x)} mm/px ${calibrationOrigin(c.source)}`
    : `${mmPerPx(x)} mm/px across, ${mmPerPx(y)} mm/px down ${calibrationOrigin(c.source)}`;
  let used = x;
  const typed = typedPixelSizeValue();
  if (typed !== null && Math.abs(typed - x) > 1e-9) {   // typed after measuring
    text = c.source === 'pixel_size_mm' ? `${mmPerPx(typed)} mm/px given by you`
      : `${mmPerPx(typed)} mm/px given by you (the file says ${text})`;
    used = typed;
  }
  el.calibration.textContent = text;
  el.calibration.dataset.source = c.source || '';
  el.calibration.dataset.mmPerPx = String(used);
  if (m.dicom) {
    const parts = [`DICOM file (${m.dicom.transfer_syntax || 'unknown transfer syntax'})`];
    if (m.summary) {
      parts.push(`${m.summary.frames} frames: the HC shown is the median of the ${m.summary.ok_frames} good frames; ` +
        `the ellipse and image are frame ${(m.preview_frame ?? m.summary.estimate_frame) + 1}`);
    }
    el.dicomInfo.textContent = parts.join('; ') + '.';
    el.dicomInfo.hidden = false;
  }
  for (const w of m.warnings || []) {
    const li = document.createElement('li');
    li.textContent = w;
    el.calibrationWarnings.appendChild(li);
  }
}

export function showTimings(timingsMs) {
  if (timingsMs && Number.isFinite(timingsMs.total)) {
    el.timings.textContent = `Measured in ${Math.round(timingsMs.total)} ms.`;
  }
}

// Asks the server for GA and centile of the working ellipse a moment after the last change.
export function schedulePerimeter() {
  if (!currentEllipse()) return;
  for (const n of serverOutputs()) n.classList.add('pending');
  clearTimeout(perimeterTimer);
  perimeterTimer = setTimeout(refreshFromServer, PERIMETER_DEBOUNCE_MS);
}

async function refreshFromServer() {
  const ps = pixelSizeValue();
  const ellipse = currentEllipse();
  if (!ellipse || ps === null) return;
  const seq = ++perimeterSeq;
  const body = { ellipse_px: toApi(ellipse), pixel_size_mm: ps };
  const ga = gaWeeksValue();
  if (ga !== null) body.ga_weeks = ga;
  try {
    const r = await api.perimeter(body);
    if (seq !== perimeterSeq) return;  // a newer request is on its way
    showServerNumbers(r);
    showServerHc(r.hc_mm);
    el.results.dataset.updated = String(seq);
  } catch (err) {
    if (seq === perimeterSeq) showMessage('Could not update GA and centile: ' + err.message);
  }
}

// Back to "no measurement".
export function clearResults() {
  showQuality(null);
  serverInterval = null;
  delete el.hcInterval.dataset.low;
  delete el.hcInterval.dataset.high;
  for (const n of [el.hc, el.hcInterval, el.bpd, el.ofd, el.ci, el.gaHadlock, el.gaIntergrowth, el.centile]) {
    n.textContent = DASH;
    n.classList.remove('pending', 'warn');
  }
  delete el.hc.dataset.value;
  el.corrected.hidden = true;
  el.reset.disabled = true;
  el.timings.textContent = '';
  showCalibration(null);
}
