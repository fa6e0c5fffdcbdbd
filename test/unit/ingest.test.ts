/**
 * The ingest (src/chunk/ingest.ts), the one way blocks become chunks for sealing and import: a zero
 * block becomes a hole, identical blocks one chunk (within a batch, across batches, and against what
 * the pool already holds), a block that compresses well is stored compressed and one that does not is
 * stored raw, every chunk reads back as the block it came from, and a refused block stores nothing
 * after it while what was stored before it is indexed, never half-referenced.
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
