/**
 * The addon's published words (native/fuse3/words.c, docs/FASTPATH.md "Sparse pages") through their C
 * harness (native/fuse3/test/words-test.c, built by `make native`): random publications, clears, freezes
 * and native first writes against a dense model, with and without failed mallocs; then writer, reader
 * and publishing threads at once. `make native-sanitize` runs the same under ThreadSanitizer and
 * AddressSanitizer. The seed changes every run and is printed.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { repoRoot } from '../helpers/mount'

const execFileAsync = promisify(execFile)
const harness = path.join(repoRoot, 'native', 'fuse3', 'build', 'words-test')
const seed = process.env.VDISKFS_WORDS_SEED ?? String(Date.now() % 1000000)

async function run (t: import('ava').ExecutionContext, args: string[]): Promise<void> {
  const result = await execFileAsync(harness, ['--seed', seed, ...args], { timeout: 120000 }).then(r => ({ code: 0, ...r }), (err: { code?: number, stdout?: string, stderr?: string }) => ({ code: err.code ?? 1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' }))
  t.log(result.stdout.trim())
  t.is(result.code, 0, `words-test --seed ${seed} ${args.join(' ')}:\n${result.stderr}`)
}

test('published words match the model, and threads keep every native first write', async t => {
  await run(t, ['--ops', '20000', '--rounds', '20000', '--threads', '3'])
})

test('published words match the model when allocations fail (never a native first write lost)', async t => {
  await run(t, ['--ops', '20000', '--fail-malloc'])
})
