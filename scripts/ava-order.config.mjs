// scripts/run-tests.js runs ava with this file (--config): package.json's ava settings, and the test files
// started longest first, by the durations of the last full run (scripts/test-durations.json, written by
// scripts/test-durations.js from a CI log), so that `make test`'s files at a time keep both cores busy
// to the end; files not in the table (new ones, of unknown length) start first, by name: a long one
// started last would run alone. A plain `npx ava FILE` reads package.json alone.
import fs from 'node:fs'

const durations = JSON.parse(fs.readFileSync(new URL('./test-durations.json', import.meta.url), 'utf8'))
const settings = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')).ava
// The files that start a Ceph RGW of their own (test/helpers/rgw.ts): two clusters at once slowed both by
// half in a CI run, so only the longest keeps its place; the second starts among files a third its
// length, the third among files a ninth of its length.
const rgw = ['dist/test/integration/remote.test.js', 'dist/test/integration/remote-lazy.test.js', 'dist/test/integration/remote-store.test.js']
  .sort((a, b) => (durations[b] ?? 0) - (durations[a] ?? 0))
const weight = file => {
  const rel = Object.keys(durations).find(key => file.endsWith(key))
  if (rel === undefined) return Number.MAX_SAFE_INTEGER
  const apart = rgw.indexOf(rel)
  return apart <= 0 ? durations[rel] : durations[rel] / 3 ** apart
}

export default {
  ...settings,
  sortTestFiles: (a, b) => (weight(b) - weight(a)) || a.localeCompare(b)
}
