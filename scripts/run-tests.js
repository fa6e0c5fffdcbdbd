// Runs every test (unit, then integration) with ava and ends with one plain summary line,
// "tests: N passed, N failed", that CI reads. The exit status is ava's.
'use strict'
const { spawn } = require('node:child_process')
const path = require('node:path')

const ava = path.join(__dirname, '..', 'node_modules', 'ava', 'entrypoints', 'cli.mjs')
const child = spawn(process.execPath, [ava, ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } })
let output = ''
for (const stream of [child.stdout, child.stderr]) {
  // eslint-disable-next-line no-loop-func -- both listeners only append to `output`, which is read once, when the child's streams have closed
  stream.on('data', chunk => { output += chunk; (stream === child.stdout ? process.stdout : process.stderr).write(chunk) })
}
child.on('close', code => {
  const count = re => { const m = re.exec(output); return m === null ? 0 : Number(m[1]) }
  // With failures, ava prints no "N tests passed" line: the passed ones are then counted by their marks.
  const passed = count(/(\d+) tests? passed/) || (output.match(/^\s+✔ /gm) ?? []).length
  const failed = count(/(\d+) tests? failed/) + count(/(\d+) uncaught exceptions?/) + count(/(\d+) unhandled rejections?/)
  const timedOut = /Timed out while running tests/.test(output) ? 1 : 0
  console.log(`tests: ${passed} passed, ${failed + timedOut} failed`)
  process.exit(code === 0 && failed + timedOut === 0 && passed > 0 ? 0 : (code || 1))
})
