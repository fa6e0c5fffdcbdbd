/**
 * Issue #22: the AWS SDK is loaded only by the commands that talk to S3 (src/remote/s3-store.ts, sdk()).
 * A child process runs CLI commands through main() and reports which modules of @aws-sdk are in
 * require.cache afterwards; no timing is asserted. The same child then makes an S3 client, and the SDK
 * must show up: the check can see it. Nor is the engine (src/volume, the daemon, SQLite, the workers) loaded
 * by the CLI until a command runs it (mount, verify, repair, an offline command): `pull --lazy` is timed from
 * its start.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const dist = path.resolve(__dirname, '..', '..')

/** Runs `script` (CommonJS, with `dist`, `dir` and `sdkModules()` in scope) in a fresh node; returns what it printed last, as JSON. */
function child (t: { teardown: (f: () => void) => void }, script: string): unknown {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-sdk-lazy-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const prelude = `const dist = ${JSON.stringify(dist)}; const dir = ${JSON.stringify(dir)}; const path = require('node:path');
const sdkModules = () => Object.keys(require.cache).filter(k => k.includes(path.sep + '@aws-sdk' + path.sep)).length;
const quiet = async (f) => { const w = process.stdout.write; const e = process.stderr.write; process.stdout.write = () => true; process.stderr.write = () => true; try { return await f() } finally { process.stdout.write = w; process.stderr.write = e } };
`
  const run = spawnSync(process.execPath, ['-e', prelude + script], { encoding: 'utf8', env: { ...process.env, VDISKFS_RUN_DIR: dir } })
  if (run.status !== 0) throw new Error(`child failed (${String(run.status)}): ${run.stderr}`)
  const lines = run.stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1])
}

test('--help, --version, status and ls (no daemon) and the daemon module do not load the AWS SDK; an S3 client does', t => {
  const result = child(t, `(async () => {
  const { main } = require(path.join(dist, 'src', 'cli', 'main.js'))
  const seen = {}
  seen.loaded = sdkModules()
  seen.help = [await quiet(() => main(['--help'])), sdkModules()]
  seen.version = [await quiet(() => main(['--version'])), sdkModules()]
  seen.status = [await quiet(() => main(['status', dir])), sdkModules()]
  seen.ls = [await quiet(() => main(['ls', dir])), sdkModules()]
  require(path.join(dist, 'src', 'daemon', 'daemon.js'))
  seen.daemon = sdkModules()
  const { S3Store } = require(path.join(dist, 'src', 'remote', 's3-store.js'))
  new S3Store({ bucket: 'bucket', prefix: '', endpoint: 'http://127.0.0.1:9' }, 'test').destroy()
  seen.client = sdkModules()
  console.log(JSON.stringify(seen))
})().catch(err => { console.error(err); process.exit(1) })`) as { loaded: number, help: number[], version: number[], status: number[], ls: number[], daemon: number, client: number }
  t.is(result.loaded, 0, 'loading the CLI')
  t.is(result.help[1], 0, '--help')
  t.is(result.version[1], 0, '--version')
  // status and ls of a directory no daemon serves fail (exit status 1), without the SDK.
  t.is(result.status[1], 0, 'status')
  t.is(result.ls[1], 0, 'ls')
  t.is(result.daemon, 0, 'the daemon')
  t.true(result.client > 0, 'an S3 client loads it')
})

test('loading the CLI, --help and status load none of the engine (the daemon, src/volume but its name rules, the catalog, the FUSE addon, SQLite, the workers); the daemon module does', t => {
  const result = child(t, `(async () => {
  const engine = () => Object.keys(require.cache).filter(k => /[\\\\/](src[\\\\/](volume|daemon|fuse|catalog|inspect|chunk)|better-sqlite3|piscina)[\\\\/]/.test(k)).map(k => path.relative(dist, k)).filter(k => k !== path.join('src', 'volume', 'names.js'))
  const { main } = require(path.join(dist, 'src', 'cli', 'main.js'))
  const seen = {}
  seen.loaded = engine()
  await quiet(() => main(['--help']))
  await quiet(() => main(['status', dir]))
  seen.ran = engine()
  require(path.join(dist, 'src', 'daemon', 'daemon.js'))
  seen.daemon = engine().length
  console.log(JSON.stringify(seen))
})().catch(err => { console.error(err); process.exit(1) })`) as { loaded: string[], ran: string[], daemon: number }
  t.deepEqual(result.loaded, [], 'loading the CLI')
  t.deepEqual(result.ran, [], '--help and status')
  t.true(result.daemon > 10, 'the check sees the engine once the daemon module loads')
})

test('the progress bars\' module (cli-progress) is loaded only to draw a bar on a terminal: loading the CLI and a command with stderr not a terminal leave it out', t => {
  const result = child(t, `(async () => {
  const bars = () => Object.keys(require.cache).filter(k => k.includes(path.sep + 'cli-progress' + path.sep)).length
  const { main } = require(path.join(dist, 'src', 'cli', 'main.js'))
  const seen = {}
  seen.loaded = bars()
  await quiet(() => main(['status', dir]))
  const { byteProgress } = require(path.join(dist, 'src', 'cli', 'commands-remote.js'))
  const progress = byteProgress('push')
  progress.total(1 << 20); progress.add(1 << 20); progress.stop()
  seen.ran = bars()
  Object.defineProperty(process.stderr, 'isTTY', { value: true })
  const drawn = byteProgress('push')
  await quiet(async () => { drawn.total(1 << 20); drawn.add(1 << 20); drawn.stop() })
  seen.drawn = bars()
  console.log(JSON.stringify(seen))
})().catch(err => { console.error(err); process.exit(1) })`) as { loaded: number, ran: number, drawn: number }
  t.is(result.loaded, 0, 'loading the CLI')
  t.is(result.ran, 0, 'a command, and a progress bar with stderr not a terminal')
  t.true(result.drawn > 0, 'a bar drawn on a terminal loads it: the check can see it')
})
