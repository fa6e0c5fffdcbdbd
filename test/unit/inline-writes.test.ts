/**
 * Inline writes (issue #10, io/file-io.ts): small writes go synchronously into the page cache, large
 * ones through the thread pool; one inline write slower than the limit sends every write to the pool
 * for the back-off time; the switch turns it off. Then the real nodeFileIo: what it writes is in the
 * file, inline or not, and a failing write is a rejected promise with the system error, not a throw;
 * cached reads inline, uncached ones through the pool.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { InlineWritePolicy, inlineReadStats, inlineWriteStats, nodeFileIo } from '../../src/io/file-io'
import { inlineWriteBackoffMs, inlineWriteBytesMax, inlineWriteSlowMs, inlineWritesPerTurnMax } from '../../src/limits'

const ms = (n: number): bigint => BigInt(Math.round(n * 1e6))

test('small writes go inline, large ones through the pool', t => {
  const policy = new InlineWritePolicy(true, () => 0n)
  t.true(policy.inlineNow(4096))
  t.true(policy.inlineNow(inlineWriteBytesMax))
  t.false(policy.inlineNow(inlineWriteBytesMax + 1))
  t.is(policy.stats.pooled, 1)
})

test('a slow inline write sends writes to the pool for the back-off, then they go inline again', t => {
  let clock = ms(1000)
  const policy = new InlineWritePolicy(true, () => clock)
  // A fast one: no back-off.
  policy.run(() => { clock += ms(inlineWriteSlowMs / 2); return 4096 })
  t.true(policy.inlineNow(4096))
  t.is(policy.stats.slow, 0)
  // A slow one (the kernel throttled it).
  t.is(policy.run(() => { clock += ms(inlineWriteSlowMs * 3); return 4096 }).bytesWritten, 4096)
  t.is(policy.stats.slow, 1)
  t.false(policy.inlineNow(4096))
  clock += ms(inlineWriteBackoffMs - 1)
  t.false(policy.inlineNow(4096))
  clock += ms(2)
  t.true(policy.inlineNow(4096))
  t.deepEqual(policy.stats, { inline: 2, pooled: 2, slow: 1, slowestMs: inlineWriteSlowMs * 3, missed: 0 })
})

test('slow inline writes in a row keep the back-off at its fixed length: small writes come back to the loop soon after a throttled burst', t => {
  let clock = ms(1000)
  const policy = new InlineWritePolicy(true, () => clock)
  const slow = (): void => { policy.run(() => { clock += ms(inlineWriteSlowMs * 2); return 1 }) }
  /** How long writes go through the pool after the slow write just done (ms, to 1 ms). */
  const backoff = (): number => {
    const from = clock
    while (!policy.inlineNow(1)) clock += ms(1)
    return Number(clock - from) / 1e6
  }
  for (let i = 0; i < 50; i++) { slow(); t.is(backoff(), inlineWriteBackoffMs) }
})

test('at most inlineWritesPerTurnMax writes go inline in one turn of the event loop; then the loop turns', async t => {
  const policy = new InlineWritePolicy(true, () => 0n)
  for (let i = 0; i < inlineWritesPerTurnMax; i++) t.true(policy.inlineNow(4096))
  t.false(policy.inlineNow(4096), 'a chain of inline writes yields to the loop')
  await new Promise(resolve => setImmediate(resolve))
  t.true(policy.inlineNow(4096))
})

test('an inline try its caller could not use counts as missed and pooled, not as inline', t => {
  const policy = new InlineWritePolicy(true, () => 0n)
  t.true(policy.inlineNow(4096))
  policy.run(() => -11, n => n >= 0)
  t.true(policy.inlineNow(4096))
  policy.run(() => 4096, n => n >= 0)
  t.deepEqual(policy.stats, { inline: 1, pooled: 1, slow: 0, slowestMs: 0, missed: 1 })
})

test('a failed inline write still counts and starts no back-off when it was quick', t => {
  const policy = new InlineWritePolicy(true, () => 0n)
  t.throws(() => policy.run(() => { throw new Error('ENOSPC') }), { message: 'ENOSPC' })
  t.is(policy.stats.inline, 1)
  t.true(policy.inlineNow(4096))
})

test('turned off: every write goes through the pool', t => {
  const policy = new InlineWritePolicy(false, () => 0n)
  t.false(policy.inlineNow(1))
})

test('nodeFileIo: inline and pooled writes land; a bad descriptor is a rejected promise', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-inline-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'f')
  const fd = await nodeFileIo.open(file, 'w+', 0o600)
  const before = inlineWriteStats()
  const small = Buffer.alloc(4096, 1)
  const large = Buffer.alloc(inlineWriteBytesMax * 2, 2)
  t.is((await nodeFileIo.write(fd, small, 0, small.length, 0)).bytesWritten, 4096)
  t.is((await nodeFileIo.writev(fd, [small, small], 4096)).bytesWritten, 8192)
  t.is((await nodeFileIo.write(fd, large, 0, large.length, 12288)).bytesWritten, large.length)
  const after = inlineWriteStats()
  t.true(after.inline - before.inline + after.slow - before.slow >= 1)
  t.true(after.pooled - before.pooled >= 1, 'the large write went through the pool')
  await nodeFileIo.close(fd)
  t.deepEqual(fs.readFileSync(file), Buffer.concat([small, small, small, large]))
  const pending = nodeFileIo.write(987654, small, 0, small.length, 0)
  await t.throwsAsync(pending, { code: 'EBADF' })
})

test('nodeFileIo: a read of cached bytes is served inline (preadv2 RWF_NOWAIT), one of bytes not cached through the pool; both read what is there', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-inline-'))
  t.teardown(() => { fs.rmSync(dir, { recursive: true, force: true }) })
  const file = path.join(dir, 'f')
  const content = crypto.randomBytes(1 << 20)
  fs.writeFileSync(file, content)
  const sync = fs.openSync(file, 'r+')
  fs.fsyncSync(sync)
  fs.closeSync(sync)
  const fd = await nodeFileIo.open(file, 'r')
  try {
    const target = Buffer.alloc(8192)
    const before = inlineReadStats()
    t.is((await nodeFileIo.read(fd, target, 0, 4096, 65536)).bytesRead, 4096)
    t.true(target.subarray(0, 4096).equals(content.subarray(65536, 65536 + 4096)))
    t.is(inlineReadStats().inline - before.inline, 1, 'a cached read went inline')
    // Past the end: what is there, then 0.
    t.is((await nodeFileIo.read(fd, target, 0, 8192, content.length - 4096)).bytesRead, 4096)
    t.is((await nodeFileIo.read(fd, target, 0, 8192, content.length)).bytesRead, 0)
    // Not cached (the clean page cache dropped): the pool reads it, and the bytes are right.
    fs.writeFileSync('/proc/sys/vm/drop_caches', '1')
    const cold = inlineReadStats()
    t.is((await nodeFileIo.read(fd, target, 0, 8192, 500000)).bytesRead, 8192)
    t.true(target.equals(content.subarray(500000, 508192)))
    const after = inlineReadStats()
    t.true(after.pooled - cold.pooled >= 1, 'an uncached read went through the pool')
    t.is(after.inline - cold.inline, 0, 'not counted as inline')
    // Partly cached (the first page read again, the next one not): still the whole range, as pread gives
    // it; callers take a short read for the end of the file.
    fs.writeFileSync('/proc/sys/vm/drop_caches', '1')
    t.is((await nodeFileIo.read(fd, target, 0, 4096, 700000)).bytesRead, 4096)
    t.is((await nodeFileIo.read(fd, target, 0, 8192, 700000)).bytesRead, 8192)
    t.true(target.equals(content.subarray(700000, 708192)))
    await t.throwsAsync(nodeFileIo.read(987654, target, 0, 4096, 0), { code: 'EBADF' })
  } finally { await nodeFileIo.close(fd) }
})
