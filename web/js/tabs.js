// Owns: the two tabs (Measure, Pregnancy) in the top bar: which view is shown, aria-selected and the
// roving tabindex, arrow/Home/End keys between the tabs.

import { el } from './dom.js';

let onPregnancyShown = () => {};

// which: 'measure' or 'pregnancy'; focus: move the keyboard focus to the tab.
export function selectTab(which, focus) {
  const measure = which === 'measure';
  el.tabMeasure.setAttribute('aria-selected', String(measure));
  el.tabPregnancy.setAttribute('aria-selected', String(!measure));
  el.tabMeasure.tabIndex = measure ? 0 : -1;
  el.tabPregnancy.tabIndex = measure ? -1 : 0;
  el.viewMeasure.hidden = !measure;
  el.viewPregnancy.hidden = measure;
  if (focus) (measure ? el.tabMeasure : el.tabPregnancy).focus();
  if (!measure) onPregnancyShown();
}

// pregnancyShown: called each time the pregnancy tab is selected.
export function initTabs({ pregnancyShown }) {
  onPregnancyShown = pregnancyShown;
  el.tabMeasure.addEventListener('click', () => selectTab('measure'));
  el.tabPregnancy.addEventListener('click', () => selectTab('pregnancy'));
  for (const tab of [el.tabMeasure, el.tabPregnancy]) {
    tab.addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft' || ev.key === 'Home' || ev.key === 'End') {
        ev.preventDefault();
        selectTab(tab === el.tabMeasure ? 'pregnancy' : 'measure', true);
      }
    });
  }
}
