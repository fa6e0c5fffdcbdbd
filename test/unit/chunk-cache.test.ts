/**
 * The cache of opened (verified, decompressed) chunks behind partial reads of sealed blocks: its memory
 * stays under its bound however reads interleave, it serves only bytes that were verified, damage on
 * disk is still found (verify never reads from it, and a read that misses fails with CORRUPT), and a
 * chunk compaction moves reads back the same from the cache and from its new place.
 * The first was a bug: two concurrent partial reads of one uncached chunk each added its size to the
 * old cache's byte count while only one copy stayed, so the count drifted up until the cache held
 * nothing at all (measured with the old code: 0 chunks held, its byte count at the 32 MiB bound).
 */
import test from 'ava'
import { flipByte } from '../helpers/damage'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { Sealer } from '../../src/seal/sealer'
import { ChunkCache } from '../../src/chunk/chunk-cache'
import { entryChunkId } from '../../src/format/map-format'
import { openedCacheBytesMax } from '../../src/limits'
import { storesOf } from '../helpers/stores'

const blockBytes = 64 * 1024

async function sealedDisk (t: { teardown: (fn: () => void) => void }, blocks: number, workers = 0): Promise<{ pool: Pool, disk: Volume, data: Buffer, dir: string }> {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-cache-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const pool = Pool.open(dir, { create: true, blockBytes, workers })
  const disk = await pool.createDisk('d.img')
  const data = crypto.randomBytes(blocks * blockBytes)
  await disk.write(data, 0)
  await new Sealer(pool, () => {}).sealPending(true)
  return { pool, disk, data, dir }
}

function chunkOf (disk: Volume, block: number): number { return entryChunkId(disk.map.get(block)) }

test('the cache holds at most its bound, least recently used out first, and counts hits and misses', t => {
  const cache = new ChunkCache(1024, 4 * 1024)
  const block = (id: number): Buffer => Buffer.alloc(1024, id)
  for (let id = 1; id <= 4; id++) cache.remember(id, block(id))
  const target = Buffer.alloc(16)
  t.true(cache.copy(1, 100, target)) // 1 is now the most recently used
  t.true(target.equals(Buffer.alloc(16, 1)))
  cache.remember(5, block(5)) // evicts 2, the least recently used
  t.false(cache.copy(2, 0, target))
  for (const id of [1, 3, 4, 5]) t.true(cache.copy(id, 1000, target), `chunk ${id} kept`)
  t.true(target.subarray(0, 16).equals(Buffer.alloc(16, 5)))
  for (let id = 6; id < 1000; id++) { cache.remember(id, block(id)); cache.remember(id, block(id)) }
  const stats = cache.stats()
  t.true(stats.bytes <= 4 * 1024)
  t.is(stats.entries, 4)
  t.is(stats.hits, 5)
  t.is(stats.misses, 1)
  cache.forget(999)
  t.is(cache.stats().entries, 3)
  t.false(cache.copy(999, 0, target))
})

test.serial('concurrent partial reads of the same chunks keep the cache under its bound and every read served', async t => {
  // More distinct chunks than the cache holds, each read twice at once: every pair misses together.
  const blocks = openedCacheBytesMax / blockBytes + 64
  const { pool, disk, data } = await sealedDisk(t, blocks)
  try {
    for (let block = 0; block < blocks; block++) {
      const a = Buffer.alloc(4096)
      const b = Buffer.alloc(4096)
      const at = block * blockBytes
      await Promise.all([disk.read(a, at), disk.read(b, at + 8192)])
      t.true(a.equals(data.subarray(at, at + 4096)) && b.equals(data.subarray(at + 8192, at + 8192 + 4096)), `block ${block} reads back`)
    }
    // Then every block once more, newest first: the cache, if it kept its size, serves the most recent.
    for (let block = blocks - 1; block >= 0; block--) {
      const c = Buffer.alloc(4096)
      await disk.read(c, block * blockBytes + 4096)
      if (!c.equals(data.subarray(block * blockBytes + 4096, block * blockBytes + 8192))) t.fail(`block ${block} reads back wrong`)
    }
    const stats = storesOf(pool).chunks.cacheStats()
    t.true(stats.bytes <= openedCacheBytesMax, `${stats.bytes} bytes held`)
    t.is(stats.entries, openedCacheBytesMax / blockBytes, 'the cache is full, not shrunk')
    t.true(stats.hits >= openedCacheBytesMax / blockBytes, `${stats.hits} hits`)
  } finally {
    await pool.close()
  }
})

test.serial('damage in a cached chunk: the cache serves only what was verified, verify finds the damage, a read that misses fails', async t => {
  const { pool, disk, data } = await sealedDisk(t, 8, 1)
  try {
    const block = 3
    const id = chunkOf(disk, block)
    const before = Buffer.alloc(4096)
    await disk.read(before, block * blockBytes) // a partial read: the chunk is now cached
    t.true(before.equals(data.subarray(block * blockBytes, block * blockBytes + 4096)))
    const row = storesOf(pool).chunks.info(id)
    const pack = storesOf(pool).chunks.packFile(row.packId)
    // A byte of the block's data (near the payload's end: its last piece's frame; the table of a pieced
    // payload is at its start, and damage there is reported as the table's, docs/FORMAT.md).
    flipByte(pack, row.offset + row.storedBytes - 100, 0x40)
    // From the cache: the bytes verified before the damage, never the damaged ones.
    const cached = Buffer.alloc(4096)
    await disk.read(cached, block * blockBytes + 8192)
    t.true(cached.equals(data.subarray(block * blockBytes + 8192, block * blockBytes + 12288)))
    // verify reads the pack, not the cache.
    const failed = await storesOf(pool).chunks.check([id])
    t.regex(failed.get(id) ?? '', /checksum mismatch/)
    // Out of the cache, the next read opens the chunk again and fails with CORRUPT.
    storesOf(pool).chunks.forgetCache()
    const after = Buffer.alloc(4096)
    await t.throwsAsync(async () => await disk.read(after, block * blockBytes), { message: /checksum mismatch/ })
    t.true(after.equals(Buffer.alloc(4096)), 'no byte of the damaged chunk reached the reader')
    // The neighbours are untouched.
    const other = Buffer.alloc(blockBytes)
    await disk.read(other, 4 * blockBytes)
    t.true(other.equals(data.subarray(4 * blockBytes, 5 * blockBytes)))
  } finally {
    await pool.close()
  }
})

test.serial('a cached chunk that compaction moves reads back the same from the cache and from its new place', async t => {
  const { pool, disk, data } = await sealedDisk(t, 16, 1)
  try {
    const keep = 5
    const id = chunkOf(disk, keep)
    const piece = Buffer.alloc(4096)
    await disk.read(piece, keep * blockBytes) // cached
    const packBefore = storesOf(pool).chunks.info(id).packId
    // Every other block rewritten as zeros: their chunks die and the pack falls below any live fraction.
    for (let block = 0; block < 16; block++) if (block !== keep) await disk.write(Buffer.alloc(blockBytes), block * blockBytes)
    await new Sealer(pool, () => {}).sealPending(true)
    const report = await pool.gc(1)
    t.true(report.packsFreed >= 1, 'the old pack was compacted away')
    t.not(storesOf(pool).chunks.info(id).packId, packBefore, 'the chunk moved')
    const expected = data.subarray(keep * blockBytes, (keep + 1) * blockBytes)
    const fromCache = Buffer.alloc(4096)
    await disk.read(fromCache, keep * blockBytes + 61440)
    t.true(fromCache.equals(expected.subarray(61440)))
    storesOf(pool).chunks.forgetCache()
    const fromPack = Buffer.alloc(8192)
    await disk.read(fromPack, keep * blockBytes + 4096)
    t.true(fromPack.equals(expected.subarray(4096, 12288)))
    const whole = Buffer.alloc(blockBytes)
    await disk.read(whole, keep * blockBytes)
    t.true(whole.equals(expected))
  } finally {
    await pool.close()
  }
})
