// Owns: the look-up table of the page's elements by id (index.html). Every other module reaches the
// page through `el`, so an id appears in one place only. Module scripts run after the document is
// parsed, so the elements exist when this module is evaluated.

const $ = (id) => document.getElementById(id);

export const el = {
  // measure form
  form: $('measure-form'), file: $('file'), drop: $('drop-zone'), fileName: $('file-name'),
  pixelSize: $('pixel-size'), pixelSizeHelp: $('pixel-size-help'), gaWeeks: $('ga-weeks'), pregnancyId: $('pregnancy-id'), examDate: $('exam-date'),
  measure: $('measure'), token: $('token'), tokenSettings: $('token-settings'),
  // ellipse editor
  canvas: $('canvas'), canvasEmpty: $('canvas-empty'),
  ellFields: $('ellipse-fields'), ellCx: $('ell-cx'), ellCy: $('ell-cy'), ellA: $('ell-a'), ellB: $('ell-b'),
  ellAngle: $('ell-angle'),
  // results panel
  quality: $('quality'), corrected: $('corrected-flag'), reasons: $('reasons'),
  hc: $('hc'), hcInterval: $('hc-interval'), bpd: $('bpd'), ofd: $('ofd'), ci: $('ci'), gaHadlock: $('ga-hadlock'),
  gaIntergrowth: $('ga-intergrowth'), centile: $('centile'), timings: $('timings'), results: $('results'),
  calibrationBox: $('calibration-box'), calibration: $('calibration'), dicomInfo: $('dicom-info'),
  calibrationWarnings: $('calibration-warnings'),
  reset: $('reset-ellipse'), accept: $('accept'), acceptStatus: $('accept-status'),
  openPregnancy: $('open-pregnancy'),
  // page chrome
  message: $('message'), messageText: $('message-text'), messageClose: $('message-close'),
  serverStatus: $('server-status'), signedIn: $('signed-in'),
  tabMeasure: $('tab-measure'), tabPregnancy: $('tab-pregnancy'),
  viewMeasure: $('view-measure'), viewPregnancy: $('view-pregnancy'),
  // pregnancy view
  pregnancyForm: $('pregnancy-form'), viewPregnancyId: $('view-pregnancy-id'), exportCsv: $('export-csv'),
  chart: $('chart'), chartNote: $('chart-note'), examsBody: $('exams-body'),
};
