// Owns: the measure tab's workflow: choosing the image (file input, drop zone), the measure form
// (checking the inputs, POST /v1/measure, the busy button), reacting to pixel size / GA edits, the
// "Reset to automatic" button, and accepting the exam (POST /v1/exams, #accept, #accept-status,
// #open-pregnancy). It keeps the last measurement and whether it has been accepted since.
// DICOM files (.dcm, application/dicom, or "DICM" at byte 128) are measured with their own
// calibration (the pixel size is optional); the browser cannot show them, so the image under the
// ellipse is the server's PNG of the measured frame (preview_url), and accepting keeps the file's
// SOP Instance UID with the exam.

import * as api from './api.js';
import { el } from './dom.js';
import * as editor from './ellipse-editor.js';
import { fromApi, toApi } from './geometry.js';
import {
  PIXEL_SIZE_RULE, PREGNANCY_ID_RE, PREGNANCY_ID_RULE, gaWeeksValue, pixelSizeFor, pixelSizeValue, pregnancyIdValue,
  readNumber, rememberPixelSize, setFilePixelSize, typedPixelSizeValue,
} from './inputs.js';
import { clearMessage, refuse, showMessage } from './messages.js';
import { rememberPregnancy } from './pregnancy-view.js';
import * as results from './results.js';

const state = {
  imageUrl: null,       // object URL of the chosen file
  measurement: null,    // last POST /v1/measure response
  measureSeq: 0,        // bumps on every new file or measurement; stale responses are dropped
  accepted: false,
  dicom: false,         // the chosen file is DICOM
};

const DICOM_UID_RE = /^(?=.{1,64}$)\d+(\.\d+)*$/;

// True for a DICOM Part 10 file: by name or type, else "DICM" at byte 128.
async function isDicomFile(file) {
  if (/\.dcm$/i.test(file.name) || file.type === 'application/dicom') return true;
  if (file.size < 132 || /^image\//.test(file.type)) return false;
  try {
    return (await file.slice(128, 132).text()) === 'DICM';
  } catch (_) {
    return false;
  }
}

// Square pixels: one pixel size serves the hand correction and the saved exam.
function squarePixels(m) {
  const c = m && m.calibration;
  if (!c || !Number.isFinite(c.mm_per_px_y)) return true;
  return Math.abs(c.mm_per_px_x - c.mm_per_px_y) <= 0.005 * Math.max(c.mm_per_px_x, c.mm_per_px_y);
}

// Called after every change of the working ellipse (drag, keys, fields) or of the pixel size / GA.
export function ellipseChanged() {
  editor.draw();
  results.showLocalNumbers();
  editor.syncFields();
  changedSinceAccept();
  results.schedulePerimeter();
}

function changedSinceAccept() {
  if (!state.measurement) return;
  el.accept.disabled = false;
  if (state.accepted) {
    state.accepted = false;
    el.openPregnancy.hidden = true;
    el.acceptStatus.textContent = 'Changed since it was accepted: accept again to save this version.';
  }
}

function resetMeasurement() {
  state.measurement = null;
  setFilePixelSize(null);
  state.accepted = false;
  editor.clearEllipse();
  results.clearResults();
  el.accept.disabled = true;
  el.acceptStatus.textContent = '';
  el.openPregnancy.hidden = true;
}

// ---------------------------------------------------------------- image choice

async function chooseFile(file) {
  clearMessage();
  const seq = ++state.measureSeq;
  resetMeasurement();
  if (!file) return;
  const dicom = await isDicomFile(file);
  if (seq !== state.measureSeq) return;  // another file was chosen meanwhile
  state.dicom = dicom;
  const okType = dicom || /^image\/(png|jpeg)$/.test(file.type) || /\.(png|jpe?g)$/i.test(file.name);
  if (!okType) {
    showMessage(`"${file.name}" is not a PNG or JPEG image or a DICOM file.`);
    return;
  }
  pixelSizeFor(dicom);
  el.fileName.textContent = `${file.name} (${Math.round(file.size / 1024)} KiB${dicom ? ', DICOM' : ''})`;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = null;
  if (dicom) {
    editor.clearImage('DICOM file: the image is shown once it is measured (calibrated from the file).');
    return;
  }
  state.imageUrl = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => editor.setImage(img);
  img.onerror = () => showMessage(`The browser cannot display "${file.name}".`);
  img.src = state.imageUrl;
  if (pixelSizeValue() === null) el.pixelSize.focus();
}

function initImageChoice() {
  el.file.addEventListener('change', () => chooseFile(el.file.files[0]));
  el.drop.addEventListener('dragover', (ev) => {
    ev.preventDefault();
    el.drop.classList.add('dragging');
  });
  el.drop.addEventListener('dragleave', () => el.drop.classList.remove('dragging'));
  el.drop.addEventListener('drop', (ev) => {
    ev.preventDefault();
    el.drop.classList.remove('dragging');
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (!files || !files.length) return;
    el.file.files = files;
    chooseFile(files[0]);
  });
  // The label opens the file dialog on click; make Enter/Space work when it has focus too.
  el.drop.tabIndex = 0;
  el.drop.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      el.file.click();
    }
  });
}

// ---------------------------------------------------------------- measuring

// The form's values as the FormData of POST /v1/measure, or null (with the reason shown).
function measureRequest() {
  const file = el.file.files[0];
  if (!file) return refuse(el.drop, 'Choose an image first (PNG, JPEG or DICOM).');
  // DICOM: the file's calibration unless a pixel size is typed (then it overrides the file's).
  const ps = typedPixelSizeValue();
  if (ps === null && !(state.dicom && readNumber(el.pixelSize) === null)) {
    return refuse(el.pixelSize, state.dicom ? PIXEL_SIZE_RULE + ' Or leave it empty to use the DICOM file\'s calibration.'
      : PIXEL_SIZE_RULE);
  }
  const ga = readNumber(el.gaWeeks);
  if (ga !== null && !(ga > 0 && ga < 45))
    return refuse(el.gaWeeks, 'The known GA must be in weeks, between 0 and 45 (e.g. 22.4), or left empty.');
  if (!state.dicom) rememberPixelSize(String(ps));

  const fd = new FormData();
  fd.append('image', file, file.name);
  if (ps !== null) fd.append('pixel_size_mm', String(ps));
  if (ga !== null) fd.append('ga_weeks', String(ga));
  const pid = pregnancyIdValue();
  if (pid && !PREGNANCY_ID_RE.test(pid)) return refuse(el.pregnancyId, PREGNANCY_ID_RULE);
  if (pid) fd.append('pregnancy_id', pid);
  if (el.examDate.value) fd.append('exam_date', el.examDate.value);
  return fd;
}

// The server's PNG of a DICOM file's measured frame, loaded (a rejected promise when it cannot be).
function loadPreview(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('the server\'s image of the DICOM frame could not be shown'));
    img.src = url;
  });
}

function showMeasurement(m) {
  state.measurement = m;
  // DICOM: the file's calibration is the working pixel size unless one is typed.
  setFilePixelSize(m.dicom && m.calibration ? m.calibration.mm_per_px_x : null);
  editor.setAutoEllipse(fromApi(m.ellipse_px));
  const img = editor.currentImage();
  if (img && (img.naturalWidth !== m.image_width || img.naturalHeight !== m.image_height)) {
    showMessage(`The server read the image as ${m.image_width}x${m.image_height} pixels but the browser shows ` +
      `${img.naturalWidth}x${img.naturalHeight}; the overlay may be misplaced.`, 'warning');
  }
  results.showQuality(m);
  results.showServerNumbers(m);
  el.accept.disabled = false;
  results.showTimings(m.timings_ms);
  editor.draw();
  results.showLocalNumbers();
  editor.syncFields();
  results.showServerHc(m.hc_mm);
  results.setInterval90(m);
  results.showCalibration(m);
  const notes = [...(m.warnings || [])];
  if (!squarePixels(m)) {
    notes.push('The pixels of this file are not square: the HC shown is the server\'s, but hand correction and ' +
      'saving use one pixel size, so this exam cannot be accepted here.');
    el.accept.disabled = true;
  }
  if (notes.length) showMessage(notes.join(' '), 'warning');
}

function setMeasuring(busy) {
  el.measure.disabled = busy;
  el.measure.textContent = busy ? 'Measuring\u2026' : 'Measure';
  if (busy) el.measure.setAttribute('aria-busy', 'true');
  else el.measure.removeAttribute('aria-busy');
}

async function submitMeasure(ev) {
  ev.preventDefault();
  clearMessage();
  const fd = measureRequest();
  if (!fd) return;
  resetMeasurement();
  editor.draw();
  const seq = ++state.measureSeq;
  setMeasuring(true);
  try {
    const m = await api.measure(fd);
    if (seq !== state.measureSeq) return;  // another image was chosen meanwhile
    if (m.preview_url) {
      const img = await loadPreview(m.preview_url);
      if (seq !== state.measureSeq) return;
      editor.setImage(img);
    }
    showMeasurement(m);
  } catch (err) {
    if (seq !== state.measureSeq) return;
    // Another plane of the study (abdomen, femur, ...): refused by the head check, not a failure.
    if (err.code === 'not_a_head_plane') {
      showMessage('Not measured: this image is not a fetal head in the HC plane. ' + err.message +
        ' Choose an image of the head in the trans-thalamic plane.', 'warning');
    } else {
      showMessage('Measurement failed: ' + err.message);
    }
  } finally {
    setMeasuring(false);
  }
}

// ---------------------------------------------------------------- accepting the exam

// The body of POST /v1/exams, or null (with the reason shown).
function examRequest(m) {
  const pid = pregnancyIdValue();
  if (!pid) return refuse(el.pregnancyId, 'Enter the pregnancy id to save this exam.');
  if (!PREGNANCY_ID_RE.test(pid)) return refuse(el.pregnancyId, PREGNANCY_ID_RULE);
  if (!/^\d{4}-\d{2}-\d{2}$/.test(el.examDate.value))
    return refuse(el.examDate, 'Enter the exam date to save this exam.');
  if (!squarePixels(m)) return refuse(el.pixelSize, 'This DICOM file\'s pixels are not square; its exam cannot be saved here.');
  const ps = pixelSizeValue();
  if (ps === null) return refuse(el.pixelSize, PIXEL_SIZE_RULE);
  const body = {
    pregnancy_id: pid, exam_date: el.examDate.value, image_sha256: m.image_sha256, pixel_size_mm: ps,
    ellipse_px: toApi(editor.currentEllipse()), corrected: editor.isCorrected(), quality: m.quality,
    reasons: m.reasons || [],
  };
  const uid = m.dicom && m.dicom.sop_instance_uid;
  if (uid && DICOM_UID_RE.test(uid)) body.sop_instance_uid = uid;
  const ga = gaWeeksValue();
  if (ga !== null) body.ga_weeks = ga;
  return body;
}

function showAccepted(exam, pid, corrected) {
  state.accepted = true;
  el.openPregnancy.hidden = false;
  rememberPregnancy(pid);
  const hc = exam && Number.isFinite(exam.hc_mm) ? ` HC ${exam.hc_mm.toFixed(1)} mm,` : '';
  el.acceptStatus.textContent = `Saved for pregnancy ${pid}:${hc} ${corrected ? 'corrected by hand' : 'automatic ellipse'}.`;
  el.acceptStatus.dataset.examId = exam && exam.id !== undefined ? String(exam.id) : '';
  showMessage(`Exam saved for pregnancy ${pid}${corrected ? ' (corrected)' : ''}. ` +
    'See the growth chart in the Pregnancy tab.', 'success');
}

async function accept() {
  clearMessage();
  const m = state.measurement;
  if (!m || !editor.currentEllipse()) return;
  const body = examRequest(m);
  if (!body) return;
  el.accept.disabled = true;
  let saved = false;
  try {
    const exam = await api.saveExam(body);
    saved = true;
    showAccepted(exam, body.pregnancy_id, body.corrected);
  } catch (err) {
    showMessage('Could not save the exam: ' + err.message);
  } finally {
    el.accept.disabled = saved;
  }
}

// ---------------------------------------------------------------- wiring

export function initMeasureView() {
  initImageChoice();
  el.form.addEventListener('submit', submitMeasure);
  el.pixelSize.addEventListener('input', () => {
    if (pixelSizeValue() !== null) {
      if (!state.dicom) rememberPixelSize(el.pixelSize.value.trim());
      if (state.measurement) results.showCalibration(state.measurement);
      if (editor.currentEllipse()) ellipseChanged();
    }
  });
  el.gaWeeks.addEventListener('input', () => {
    if (!editor.currentEllipse()) return;
    changedSinceAccept();
    results.schedulePerimeter();
  });
  el.reset.addEventListener('click', () => {
    if (editor.resetToAuto()) ellipseChanged();
  });
  el.accept.addEventListener('click', accept);
}
