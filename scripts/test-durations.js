// Writes scripts/test-durations.json from the output of a full `node scripts/run-tests.js` (a CI log):
// for each test file, the sum of its tests' durations as ava printed them (ava prints a duration only for
// slow tests; a file with none counts 0). scripts/run-tests.js starts the longest files first, so that
// the two cores stay busy to the end instead of one long file running alone.
// Usage: node scripts/test-durations.js LOG
'use strict'
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')
const seconds = text => {
  const m = /^(?:(\d+)m)? ?(?:([\d.]+)(ms|s))?$/.exec(text.trim())
  if (m === null) return 0
  return Number(m[1] ?? 0) * 60 + (m[2] === undefined ? 0 : Number(m[2]) / (m[3] === 'ms' ? 1000 : 1))
}
const dirOf = stem => ['unit', 'integration'].filter(d => fs.existsSync(path.join(root, 'test', d, `${stem}.test.ts`)))

const log = fs.readFileSync(process.argv[2], 'utf8').split('\n')
const totals = {}
let phase = 0 // the unit phase, then the integration phase: each ends with ava's "N tests passed"
for (const line of log) {
  if (/^\s+\d+ tests? (passed|failed)/.test(line)) { phase++; continue }
  // One ava run over both folders prints "unit › FILE › title"; two runs (before) printed "FILE › title".
  const m = /^\s+[✔✘] (?:\[[a-z]+\] )?(?:(unit|integration) › )?([\w-]+) › .*?(?:\(([\dm. ]+s)\))?$/.exec(line)
  if (m === null) continue
  const dirs = dirOf(m[2])
  const dir = m[1] ?? (dirs.length === 1 ? dirs[0] : ['unit', 'integration'][Math.min(phase, 1)])
  const file = `dist/test/${dir}/${m[2]}.test.js`
  totals[file] = (totals[file] ?? 0) + (m[3] === undefined ? 0 : seconds(m[3]))
}
const sorted = Object.fromEntries(Object.entries(totals).sort((a, b) => b[1] - a[1]).map(([f, s]) => [f, Math.round(s)]))
fs.writeFileSync(path.join(__dirname, 'test-durations.json'), JSON.stringify(sorted, null, 1) + '\n')
console.log(`${Object.keys(sorted).length} files, ${Object.values(sorted).reduce((a, b) => a + b, 0)} s in all`)
