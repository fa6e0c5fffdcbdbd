/**
 * Sector checksums kept in memory (issue #10, extent/sum-cache.ts): a read of unsealed data then
 * reads only the data. The cache's coherence rules (a slot being written is unknown; a load that raced
 * a write is not installed; pages dropped least recently used), and through a real pool: repeated
 * reads hit it, a damaged sector is still caught with the checksum in memory, verify still reads the
 * checksum table from the file, and reads racing writes of the same sectors are never called damage.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { SumCache } from '../../src/extent/sum-cache'
import { flipByte } from '../helpers/damage'
import { Pool } from '../../src/volume/pool'
import { sumCacheBytesMax, sumCachePageSlots } from '../../src/limits'
import { dataStart, extentFormatVersion, sumOffset } from '../../src/format/extent-format'
import { storesOf } from '../helpers/stores'

const perSlot = 16
const blockBytes = 64 * 1024
const sums = (seed: number): Uint32Array => Uint32Array.from({ length: perSlot }, (_, k) => seed * 100 + k + 1)

test('a slot is known once loaded, unless a write started or ended meanwhile', t => {
  const cache = new SumCache(perSlot, 64)
  t.is(cache.get(1, 5), null)
  const sequence = cache.sequenceOf(1)
  cache.install(1, 5, sums(1), sequence)
  t.deepEqual(cache.get(1, 5), sums(1))
  // A load that started before a write of the extent began is not installed.
  const stale = cache.sequenceOf(1)
  const before = cache.writeStarted(1, 7)
  t.is(before, null)
  cache.install(1, 7, sums(2), stale)
  t.is(cache.get(1, 7), null)
  // Nor one that started during the write and ended after it.
  const during = cache.sequenceOf(1)
  cache.writeEnded(1, 7, before, { from: 2, sums: Uint32Array.from([9, 9]) })
  cache.install(1, 7, sums(2), during)
  t.is(cache.get(1, 7), null, 'a part written over an unknown slot leaves it unknown')
  // Another extent is not disturbed.
  cache.install(2, 7, sums(3), cache.sequenceOf(2))
  t.deepEqual(cache.get(2, 7), sums(3))
})

test('a load that began and ended while a write of the extent was in flight is not installed, and reads see the write in flight', t => {
  const cache = new SumCache(perSlot, 64)
  t.false(cache.writing(1))
  const before = cache.writeStarted(1, 7)
  t.true(cache.writing(1))
  // The load read the entries from the file before the write's pwrite landed: it may be stale.
  cache.install(1, 7, sums(2), cache.sequenceOf(1))
  t.is(cache.get(1, 7), null, 'a load inside a write is not installed')
  // A second write of the extent ends first: still one in flight.
  const other = cache.writeStarted(1, 9)
  cache.writeEnded(1, 9, other, null)
  t.true(cache.writing(1))
  cache.writeEnded(1, 7, before, { from: 2, sums: Uint32Array.from([9, 9]) })
  t.false(cache.writing(1))
  t.is(cache.get(1, 7), null, 'a part written over an unknown slot leaves it unknown')
  cache.install(1, 7, sums(3), cache.sequenceOf(1))
  t.deepEqual(cache.get(1, 7), sums(3), 'a load with no write in flight is')
})

test('a slot being written is unknown until the write ended; then it holds the entries written', t => {
  const cache = new SumCache(perSlot, 64)
  cache.install(1, 3, sums(1), cache.sequenceOf(1))
  const before = cache.writeStarted(1, 3)
  t.deepEqual(before, sums(1))
  t.is(cache.get(1, 3), null)
  cache.writeEnded(1, 3, before, { from: 4, sums: Uint32Array.from([77, 78]) })
  const expected = sums(1)
  expected.set([77, 78], 4)
  t.deepEqual(cache.get(1, 3), expected)
  // A failed write leaves the slot unknown.
  const again = cache.writeStarted(1, 3)
  cache.writeEnded(1, 3, again, null)
  t.is(cache.get(1, 3), null)
  // A write of the whole slot's entries (a fresh slot) is known without a load.
  cache.writeEnded(1, 9, cache.writeStarted(1, 9), { from: 0, sums: sums(4) })
  t.deepEqual(cache.get(1, 9), sums(4))
  cache.forget(1)
  t.is(cache.get(1, 9), null)
})

test('pages past the byte limit are dropped least recently used first', t => {
  const cache = new SumCache(perSlot, 1_000_000)
  const pagesMax = Math.floor(sumCacheBytesMax / (sumCachePageSlots * perSlot * 4))
  for (let page = 0; page < pagesMax; page++) cache.install(page, 0, sums(1), 0)
  t.truthy(cache.get(0, 0), 'page 0 used last now')
  cache.install(pagesMax, 0, sums(1), 0)
  t.truthy(cache.get(0, 0))
  t.is(cache.get(1, 0), null, 'the least recently used page went')
  t.truthy(cache.get(pagesMax, 0))
})

function tempDir (t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-sumcache-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

test.serial('through a pool: reads hit the cache, damage is still caught, verify reads the table from the file', async t => {
  const dir = path.join(tempDir(t), 'pool')
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  t.teardown(async () => await pool.close().catch(() => {}))
  const disk = await pool.createDisk('d.img')
  const data = crypto.randomBytes(4 * blockBytes)
  await disk.write(data, 0)
  const out = Buffer.alloc(4096)
  const hits = storesOf(pool).extents.sums.stats.hits
  for (let i = 0; i < 4; i++) { await disk.read(out, 8192); t.deepEqual(out, data.subarray(8192, 12288)) }
  t.true(storesOf(pool).extents.sums.stats.hits - hits >= 4, 'the written slot\'s checksums are known: no checksum read')
  const names = fs.readdirSync(path.join(dir, 'extents')).filter(n => n.endsWith('.dx'))
  t.is(names.length, 1)
  const extentId = Number(names[0].replace('.dx', ''))
  const file = storesOf(pool).extents.file(extentId)
  // A flipped data byte: caught against the checksum in memory.
  flipByte(file, dataStart(extentFormatVersion, blockBytes) + blockBytes + 100)
  await t.throwsAsync(disk.read(out, blockBytes), { message: /checksum mismatch/ })
  // A flipped checksum entry in the file: the data is sound, so reads serve it; verify reads the file.
  flipByte(file, sumOffset(2, 3, blockBytes))
  await disk.read(out, 2 * blockBytes + 3 * 4096)
  t.deepEqual(out, data.subarray(2 * blockBytes + 3 * 4096, 2 * blockBytes + 4 * 4096))
  t.regex(String(await storesOf(pool).extents.checkSlot(extentId, 2)), /checksum mismatch/)
})

test.serial('reads racing writes of the same sectors never count as damage', async t => {
  const dir = path.join(tempDir(t), 'pool')
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  t.teardown(async () => await pool.close().catch(() => {}))
  const disk = await pool.createDisk('d.img')
  await disk.write(crypto.randomBytes(blockBytes), 0)
  const out = Buffer.alloc(4096)
  for (let round = 0; round < 300; round++) {
    const fresh = crypto.randomBytes(4096)
    const read = disk.read(out, 4096)
    const write = disk.write(fresh, 4096)
    await Promise.all([read, write])
  }
  t.deepEqual(storesOf(pool).extents.damaged, [])
})
