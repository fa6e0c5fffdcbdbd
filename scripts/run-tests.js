// Runs every test with ava and ends with one plain summary line, "tests: N passed, N failed", that CI
// reads. The unit tests (engine and models, CPU-bound, each in its own temporary directory) and the
// integration tests (each file its own temporary directories, mounts, loop devices and, for the remote
// tests, a Ceph RGW on free ports) run in one ava run, three files at a time on the two cores (VDISKFS_TEST_FILES_AT_ONCE), the longest
// first (scripts/ava-order.config.mjs): a test never depends on having the machine to itself, and none asserts a
// timing. Arguments given are passed to ava instead.
// The exit status is non-zero when any phase failed.
'use strict'
const { spawn } = require('node:child_process')
const path = require('node:path')

const ava = path.join(__dirname, '..', 'node_modules', 'ava', 'entrypoints', 'cli.mjs')

/** Runs ava with `args`; resolves to its exit code, and the passed and failed counts it printed. */
function runAva (args) {
  return new Promise(resolve => {
    const child = spawn(process.execPath, [ava, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } })
    let output = ''
    const relay = (stream, to) => stream.on('data', chunk => { output += chunk; to.write(chunk) })
    relay(child.stdout, process.stdout)
    relay(child.stderr, process.stderr)
    child.on('close', code => {
      const count = re => { const m = re.exec(output); return m === null ? 0 : Number(m[1]) }
      // With failures, ava prints no "N tests passed" line: the passed ones are then counted by their marks.
      const passed = count(/(\d+) tests? passed/) || (output.match(/^\s+✔ /gm) ?? []).length
      const failed = count(/(\d+) tests? failed/) + count(/(\d+) uncaught exceptions?/) + count(/(\d+) unhandled rejections?/) +
        (/Timed out while running tests/.test(output) ? 1 : 0)
      resolve({ code: code ?? 1, passed, failed })
    })
  })
}

async function main () {
  const given = process.argv.slice(2)
  const phases = given.length > 0
    ? [given]
    : [['--config', path.join(__dirname, 'ava-order.config.mjs'), `--concurrency=${process.env.VDISKFS_TEST_FILES_AT_ONCE ?? 3}`, 'dist/test/unit/**/*.test.js', 'dist/test/integration/**/*.test.js']]
  let passed = 0
  let failed = 0
  let code = 0
  for (const args of phases) {
    const result = await runAva(args)
    passed += result.passed
    failed += result.failed
    if (result.code !== 0 || result.failed > 0) code = result.code || 1
  }
  console.log(`tests: ${passed} passed, ${failed} failed`)
  process.exit(code === 0 && failed === 0 && passed > 0 ? 0 : (code || 1))
}

main()
