// Owns: the measure form's inputs as values: reading and checking the pixel size, known GA and
// pregnancy id (with the texts that explain the rules), the bearer token field, and the values the
// browser remembers between visits (pixel size: localStorage; token: sessionStorage, this tab only).
// For a DICOM image the pixel size field is optional (the file's calibration is used): the field
// is emptied and its help text says so, and the calibration the server used becomes the working
// pixel size (setFilePixelSize) unless a value is typed.

import { el } from './dom.js';
import { todayIso } from './format.js';

const STORAGE_PIXEL_SIZE = 'fetalhc.pixelSize';
const STORAGE_TOKEN = 'fetalhc.token';   // sessionStorage: this tab only

export const PREGNANCY_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
export const PIXEL_SIZE_RULE = 'Enter the pixel size in mm per pixel (greater than 0, at most 2).';
export const PREGNANCY_ID_RULE =
  'The pregnancy id must be 1 to 64 letters, digits, "_", "." or "-" (a pseudonymous id).';

// null when empty, NaN when not a number.
export function readNumber(input) {
  const raw = input.value.trim();
  if (raw === '') return null;
  const v = Number(raw);
  return Number.isFinite(v) ? v : NaN;
}

let filePixelSize = null;   // mm per pixel from the DICOM file's calibration (null: none)

const PIXEL_SIZE_HELP = "From the scanner's calibration; remembered for the next image.";
const PIXEL_SIZE_HELP_DICOM = "Optional for a DICOM file: the file's own calibration (ultrasound region or " +
  'PixelSpacing) will be used. Enter a value only to override it.';

// The pixel size typed in the field, or null when missing or out of range.
export function typedPixelSizeValue() {
  const v = readNumber(el.pixelSize);
  return v !== null && v > 0 && v <= 2 ? v : null;
}

// The working pixel size in mm: the one typed, else the DICOM file's, else null.
export function pixelSizeValue() {
  const typed = typedPixelSizeValue();
  return typed !== null ? typed : filePixelSize;
}

// The calibration of a measured DICOM file (null: none, e.g. a PNG).
export function setFilePixelSize(mm) {
  filePixelSize = Number.isFinite(mm) && mm > 0 ? mm : null;
}

// A DICOM file (true) or an image (false) was chosen: the pixel size field becomes optional or
// required, with its help text and placeholder; for an image the remembered value comes back.
export function pixelSizeFor(dicom) {
  filePixelSize = null;
  el.pixelSize.required = !dicom;
  el.pixelSizeHelp.textContent = dicom ? PIXEL_SIZE_HELP_DICOM : PIXEL_SIZE_HELP;
  el.pixelSize.placeholder = dicom ? 'from the DICOM file' : 'e.g. 0.13';
  el.pixelSize.dataset.dicom = dicom ? '1' : '0';
  if (dicom) {
    el.pixelSize.value = '';
  } else if (!el.pixelSize.value) {
    el.pixelSize.value = localStorage.getItem(STORAGE_PIXEL_SIZE) || '';
  }
}

// The known GA in weeks, or null when missing or out of range.
export function gaWeeksValue() {
  const v = readNumber(el.gaWeeks);
  return v !== null && v > 0 && v < 45 ? v : null;
}

export function pregnancyIdValue() {
  return el.pregnancyId.value.trim();
}

export function rememberPixelSize(text) {
  localStorage.setItem(STORAGE_PIXEL_SIZE, text);
}

export function tokenValue() {
  return el.token.value.trim();
}

// After a 401: open the token settings and put the cursor in the token field.
export function revealToken() {
  el.tokenSettings.open = true;
  el.token.focus();
}

// Start-up values: the remembered pixel size and token, today's date.
export function initInputs() {
  const savedPixelSize = localStorage.getItem(STORAGE_PIXEL_SIZE);
  if (savedPixelSize && !el.pixelSize.value) el.pixelSize.value = savedPixelSize;
  el.examDate.value = todayIso();
  el.token.value = sessionStorage.getItem(STORAGE_TOKEN) || '';
  el.token.addEventListener('change', () => sessionStorage.setItem(STORAGE_TOKEN, el.token.value.trim()));
}

// Calls `changed` whenever the token field is changed.
export function onTokenChange(changed) {
  el.token.addEventListener('change', changed);
}
