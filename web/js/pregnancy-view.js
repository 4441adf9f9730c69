// Owns: the pregnancy tab: choosing the pregnancy (#pregnancy-form, the last id remembered in
// localStorage), loading its accepted exams, the exams table (#exams-body), the Chart.js growth
// chart against the INTERGROWTH-21st centile curves (#chart, #chart-note) and the CSV export link.
//
// For tests: #chart carries data-loading while loading, then data-points (exams plotted) and
// data-drawn.

import * as api from './api.js';
import { el } from './dom.js';
import { DASH } from './format.js';
import { PREGNANCY_ID_RE, PREGNANCY_ID_RULE, pregnancyIdValue } from './inputs.js';
import { clearMessage, showMessage } from './messages.js';

const STORAGE_PREGNANCY = 'fetalhc.lastPregnancyId';

let growthCurveCache = null;
let chart = null;   // the Chart.js instance on #chart

// After an exam is saved: the pregnancy this view shows next.
export function rememberPregnancy(pid) {
  localStorage.setItem(STORAGE_PREGNANCY, pid);
  el.viewPregnancyId.value = pid;
}

// When the tab is shown: load the pregnancy in the id field (filled from the measure form or the
// last one saved when empty), or put the cursor in the field.
export function showPregnancyView() {
  if (!el.viewPregnancyId.value.trim()) {
    el.viewPregnancyId.value = pregnancyIdValue() || localStorage.getItem(STORAGE_PREGNANCY) || '';
  }
  const pid = el.viewPregnancyId.value.trim();
  if (PREGNANCY_ID_RE.test(pid)) loadPregnancy(pid);
  else el.viewPregnancyId.focus();
}

// GA of an exam for the chart and table: the given GA, else Hadlock from HC, else null.
function examGa(x) {
  if (Number.isFinite(x.ga_weeks_given)) return x.ga_weeks_given;
  if (Number.isFinite(x.ga_hadlock_weeks)) return x.ga_hadlock_weeks;
  return null;
}

// ---------------------------------------------------------------- table

function emptyRow(text) {
  const tr = document.createElement('tr');
  const td = document.createElement('td');
  td.colSpan = 9;
  td.className = 'hint';
  td.textContent = text;
  tr.appendChild(td);
  return tr;
}

function examRow(x) {
  const fmt = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : DASH);
  const tr = document.createElement('tr');
  const ga = examGa(x);
  const gaText = ga === null ? 'n/a' : `${fmt(ga)}${Number.isFinite(x.ga_weeks_given) ? ' (given)' : ' (Hadlock)'}`;
  const cells = [x.exam_date, fmt(x.hc_mm), fmt(x.bpd_mm), fmt(x.ofd_mm), gaText, fmt(x.centile),
    x.quality || DASH, x.corrected ? 'corrected' : 'automatic',
    x.saved_by || DASH];
  cells.forEach((text, i) => {
    const td = document.createElement('td');
    td.textContent = text;
    if (i === 6) td.className = x.quality === 'ok' ? 'q-ok' : x.quality === 'review' ? 'q-review' : '';
    if (i === 7 && x.corrected) td.className = 'corrected';
    tr.appendChild(td);
  });
  return tr;
}

function fillTable(exams) {
  el.examsBody.innerHTML = '';
  if (!exams.length) {
    el.examsBody.appendChild(emptyRow('No accepted exams.'));
    return;
  }
  for (const x of exams) el.examsBody.appendChild(examRow(x));
}

// ---------------------------------------------------------------- growth chart

function chartDatasets(curve, points, correctedPoints) {
  const line = (key) => curve.ga_weeks.map((g, i) => ({ x: g, y: curve[key][i] }));
  const curveStyle = (label, color, dash) => ({
    type: 'line', label, borderColor: color, backgroundColor: color, borderWidth: 2, borderDash: dash,
    pointRadius: 0, pointHitRadius: 0, pointStyle: 'line', fill: false, tension: 0.2,
  });
  return [
    { ...curveStyle('97th centile', '#c0392b', [6, 4]), data: line('p97') },
    { ...curveStyle('50th centile', '#2c3e50', []), data: line('p50') },
    { ...curveStyle('3rd centile', '#c0392b', [6, 4]), data: line('p3') },
    { type: 'scatter', label: 'Exam (automatic)', data: points, backgroundColor: '#1f77b4', borderColor: '#0b3d62',
      pointRadius: 6, pointHoverRadius: 8, pointStyle: 'circle' },
    { type: 'scatter', label: 'Exam (corrected)', data: correctedPoints, backgroundColor: '#ff9f1c',
      borderColor: '#8a4f00', pointRadius: 7, pointHoverRadius: 9, pointStyle: 'triangle' },
  ];
}

function chartOptions() {
  const tooltipLabel = (ctx) => {
    const r = ctx.raw;
    return r.date ? `${r.date}: HC ${r.y.toFixed(1)} mm at ${r.x.toFixed(1)} weeks`
      : `${ctx.dataset.label}: ${r.y.toFixed(1)} mm at ${r.x.toFixed(1)} weeks`;
  };
  return {
    animation: false, responsive: true, maintainAspectRatio: false,
    interaction: { mode: 'nearest', intersect: true },
    scales: {
      x: { type: 'linear', min: 14, max: 40, title: { display: true, text: 'Gestational age (weeks)' },
        ticks: { stepSize: 2 } },
      y: { title: { display: true, text: 'Head circumference (mm)' } },
    },
    plugins: {
      legend: { position: 'bottom', labels: { usePointStyle: true } },
      tooltip: { callbacks: { label: tooltipLabel } },
    },
  };
}

function drawChart(curve, exams) {
  if (typeof window.Chart !== 'function') throw new Error('the charting library did not load');
  const points = [], correctedPoints = [];
  let unplotted = 0;
  for (const x of exams) {
    const ga = examGa(x);
    if (ga === null || !Number.isFinite(x.hc_mm)) { unplotted++; continue; }
    (x.corrected ? correctedPoints : points).push({ x: ga, y: x.hc_mm, date: x.exam_date });
  }
  if (chart) chart.destroy();
  chart = new window.Chart(el.chart, {
    type: 'line',
    data: { datasets: chartDatasets(curve, points, correctedPoints) },
    options: chartOptions(),
  });
  const n = points.length + correctedPoints.length;
  el.chart.dataset.points = String(n);
  el.chart.dataset.drawn = '1';
  el.chartNote.textContent = unplotted
    ? `${unplotted} exam(s) not on the chart: no GA given and HC outside the Hadlock range.`
    : `${n} exam(s) plotted. GA is the given GA when entered, else Hadlock from HC.`;
}

// ---------------------------------------------------------------- loading

async function loadGrowthCurve() {
  if (!growthCurveCache) growthCurveCache = await api.growthCurve();
  return growthCurveCache;
}

function setExportLink(pid) {
  if (pid === null) {
    el.exportCsv.setAttribute('aria-disabled', 'true');
    el.exportCsv.removeAttribute('href');
    return;
  }
  el.exportCsv.href = api.exportCsvUrl(pid);
  el.exportCsv.setAttribute('download', `pregnancy_${pid.replace(/[^A-Za-z0-9_.-]/g, '_')}.csv`);
  el.exportCsv.removeAttribute('aria-disabled');
}

async function loadPregnancy(pid) {
  clearMessage();
  el.chart.dataset.loading = '1';
  setExportLink(pid);
  let exams = [];
  try {
    const [curve, preg] = await Promise.all([
      loadGrowthCurve(),
      api.pregnancy(pid).catch((err) => {
        if (err.status === 404) return null;
        throw err;
      }),
    ]);
    if (preg === null) {
      showMessage(`No accepted exams for pregnancy "${pid}".`, 'warning');
      setExportLink(null);
    } else {
      exams = (preg.exams || []).slice().sort((p, q) => String(p.exam_date).localeCompare(String(q.exam_date)));
    }
    fillTable(exams);
    drawChart(curve, exams);
  } catch (err) {
    showMessage('Could not show the pregnancy: ' + err.message);
  } finally {
    delete el.chart.dataset.loading;
  }
}

// ---------------------------------------------------------------- wiring

export function initPregnancyView() {
  el.viewPregnancyId.value = localStorage.getItem(STORAGE_PREGNANCY) || '';
  el.pregnancyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const pid = el.viewPregnancyId.value.trim();
    if (!PREGNANCY_ID_RE.test(pid)) {
      showMessage(pid ? PREGNANCY_ID_RULE : 'Enter a pregnancy id.');
      el.viewPregnancyId.focus();
      return;
    }
    loadPregnancy(pid);
  });
  el.exportCsv.addEventListener('click', (ev) => {
    if (el.exportCsv.getAttribute('aria-disabled') === 'true') {
      ev.preventDefault();
      showMessage('Show a pregnancy first.');
    }
  });
}
