/**
 * The ingest (src/chunk/ingest.ts), the one way blocks become chunks for sealing and import: a zero
 * block becomes a hole, identical blocks one chunk (within a batch, across batches, and against what
 * the pool already holds), a block that compresses well is stored compressed and one that does not is
 * stored raw, every chunk reads back as the block it came from, and a refused block stores nothing
 * after it while what was stored before it is indexed, never half-referenced. A zstd frame (a pull's
 * chunk) is opened and hashed by the workers and stored as it came; one that does not open is refused.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Ingested } from '../../src/chunk/ingest'
import { storesOf } from '../helpers/stores'

const blockBytes = 16 * 1024

function tempPool (t: { teardown: (fn: () => void) => void }, workers: number): Pool {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-ingest-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers })
}

function chunk (outcome: Ingested): { chunkId: number, isNew: boolean } {
  if (outcome.zero) throw new Error('expected a chunk, got a hole')
  return outcome
}

for (const workers of [0, 2]) {
  test(`zeros become holes, duplicates one chunk, compressible blocks are stored compressed and random ones raw (${workers} workers)`, async t => {
    const pool = tempPool(t, workers)
    try {
      const stores = storesOf(pool)
      const random = crypto.randomBytes(blockBytes)
      const text = Buffer.alloc(blockBytes, 'vdiskfs ingest ')
      const blocks = [Buffer.alloc(blockBytes), random, text, Buffer.from(random)]
      let outcomes: Ingested[] = []
      await stores.ingest.run([blocks], async batch => {
        outcomes = await stores.ingest.batch({ count: batch.length, fill: (i, region) => { batch[i].copy(region) } }, 'test')
      })
      t.true(outcomes[0].zero)
      const [a, b, c] = [chunk(outcomes[1]), chunk(outcomes[2]), chunk(outcomes[3])]
      t.true(a.isNew)
      t.true(b.isNew)
      t.false(c.isNew, 'the same bytes twice in one batch are one chunk')
      t.is(c.chunkId, a.chunkId)
      t.false(stores.chunks.info(a.chunkId).compressed, 'random bytes are stored raw')
      t.true(stores.chunks.info(b.chunkId).compressed, 'text is stored compressed')
      for (const [id, expected] of [[a.chunkId, random], [b.chunkId, text]] as const) {
        const back = Buffer.alloc(blockBytes)
        await stores.chunks.read(id, 0, back, 'test')
        t.true(back.equals(expected))
      }
      // A later pass finds what is indexed already.
      let again: Ingested[] = []
      await stores.ingest.run([[text]], async batch => {
        again = await stores.ingest.batch({ count: 1, fill: (_i, region) => { batch[0].copy(region) } }, 'test')
      })
      t.deepEqual(again.map(o => chunk(o).isNew), [false])
      t.is(chunk(again[0]).chunkId, b.chunkId)
    } finally {
      await pool.close()
    }
  })
}

test('a block refused by the check stops its batch; the chunks stored before it are indexed, none after it is stored', async t => {
  const pool = tempPool(t, 1)
  try {
    const stores = storesOf(pool)
    const blocks = [crypto.randomBytes(blockBytes), crypto.randomBytes(blockBytes), crypto.randomBytes(blockBytes)]
    const before = new Set(pool.inspection.chunkIds())
    await t.throwsAsync(stores.ingest.run([blocks], async batch => {
      await stores.ingest.batch({ count: batch.length, fill: (i, region) => { batch[i].copy(region) } }, 'test', i => { if (i === 1) throw new Error('refused') })
    }), { message: 'refused' })
    const added = pool.inspection.chunkIds().filter(id => !before.has(id))
    t.is(added.length, 1, 'the first block was stored and indexed; the refused one and the one after it were not')
    const back = Buffer.alloc(blockBytes)
    await stores.chunks.read(added[0], 0, back, 'test')
    t.true(back.equals(blocks[0]))
  } finally {
    await pool.close()
  }
})

for (const workers of [0, 2]) {
  test(`${workers} workers: a zstd frame is opened and hashed by the workers and stored as it came; a frame that does not decompress to a block is refused where it stands`, async t => {
    const pool = tempPool(t, workers)
    try {
      const stores = storesOf(pool)
      const zstd = await import('zstd-napi/binding')
      // Frames made at level 19, which the pool (level 3) would not make of the same blocks.
      const cctx = new zstd.CCtx()
      cctx.setParameter(zstd.CParameter.compressionLevel, 19)
      const frameOf = (block: Buffer): Buffer => { const out = Buffer.alloc(zstd.compressBound(block.length)); return Buffer.from(out.subarray(0, cctx.compress2(out, block))) }
      const text = (seed: number): Buffer => Buffer.from(Array.from({ length: blockBytes }, (_, i) => 0x61 + ((i * seed + (i >> 7)) % 13)))
      const blocks = [text(3), text(5), text(7)]
      const frames = blocks.map(frameOf)
      const hashes: Buffer[] = []
      let stored: Ingested[] = []
      await stores.ingest.run([frames], async batch => {
        stored = await stores.ingest.batch({ count: 2, fill: (i, region) => batch[i].copy(region) }, 'test', (i, hash) => { hashes[i] = hash })
      })
      t.is(stored.length, 2)
      for (let i = 0; i < 2; i++) {
        const row = stores.chunks.info(chunk(stored[i]).chunkId)
        t.true(row.compressed)
        t.is(row.storedBytes, frames[i].length, 'the frame as it came, not compressed again')
        const payload = Buffer.alloc(row.storedBytes)
        const fd = fs.openSync(stores.chunks.packFile(row.packId), 'r')
        try { fs.readSync(fd, payload, 0, payload.length, row.offset) } finally { fs.closeSync(fd) }
        t.true(payload.equals(frames[i]))
        const back = Buffer.alloc(blockBytes)
        await stores.chunks.read(chunk(stored[i]).chunkId, 0, back, 'test')
        t.true(back.equals(blocks[i]))
      }
      t.true(hashes[0].equals(stores.chunks.info(chunk(stored[0]).chunkId).hash), 'the check saw the hash of the decompressed block')

      // A damaged frame (its magic), one of half a block, then a good one: the first is refused, nothing of it or after it is stored.
      const damaged = Buffer.from(frames[2])
      damaged[0] ^= 0x01
      const half = frameOf(blocks[2].subarray(0, blockBytes / 2))
      for (const bad of [damaged, half]) {
        const before = new Set(pool.inspection.chunkIds())
        const refused: number[] = []
        await t.throwsAsync(stores.ingest.run([[bad, frameOf(text(11))]], async batch => {
          await stores.ingest.batch({ count: 2, fill: (i, region) => batch[i].copy(region) }, 'test', undefined, (i, why) => { refused.push(i); return new Error(`refused: ${why}`) })
        }), { message: /^refused: (does not decompress|decompresses to \d+ bytes, not 16384)/ })
        t.deepEqual(refused, [0])
        t.deepEqual(pool.inspection.chunkIds().filter(id => !before.has(id)), [])
      }
    } finally {
      await pool.close()
    }
  })
}
