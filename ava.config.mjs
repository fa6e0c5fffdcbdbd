// ava's settings (they were in package.json; a function needs this file). Files start longest first, by the
// durations of the last full run (scripts/test-durations.json, written by scripts/test-durations.js from a
// CI log), so that `make test`'s two files at a time keep both cores busy to the end; files not in the
// table (new ones, of unknown length) start first, by name: a long one started last would run alone.
import fs from 'node:fs'

const durations = JSON.parse(fs.readFileSync(new URL('./scripts/test-durations.json', import.meta.url), 'utf8'))
const weight = file => {
  const rel = Object.keys(durations).find(key => file.endsWith(key))
  return rel === undefined ? Number.MAX_SAFE_INTEGER : durations[rel]
}

export default {
  files: ['dist/test/**/*.test.js'],
  timeout: '10m',
  concurrency: 1,
  workerThreads: false,
  sortTestFiles: (a, b) => (weight(b) - weight(a)) || a.localeCompare(b)
}
