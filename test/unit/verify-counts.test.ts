/**
 * verify compares gc's reference counts with a recount from the maps (issue #21):
 *
 * - On a healthy pool whose counts were stored at a clean close and taken at the open, verify recounts
 *   every page's references and finds them equal (`counts` in its report says they were compared).
 * - Stored counts damaged in a way their checksum cannot see (a chunk's count lowered and the checksum
 *   recomputed, as a bug in the counting would leave them): verify reports the mismatch, naming the
 *   chunk, and drops the counts, so the next gc marks in full. A backup removed after that, which would
 *   have taken the lowered count to 0, frees nothing another backup still reads.
 * - Stale counts (an earlier close's row put back after the catalog moved on) are never taken: verify
 *   says the counts are not built, and gc frees only what a full mark finds unreferenced.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { verifyPool } from '../../src/inspect/verify'
import { entryChunkId, entryKind, entryKindChunk } from '../../src/format/map-format'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'

const blockBytes = 4096
const options = { workers: 1, pageCacheMax: 8 }

/** A disk of 3 pages and 8 backups, backup b having written block 1 + b (page 0); sealed; gc ran (the counts built). */
async function eightBackups (dir: string): Promise<void> {
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, ...options })
  try {
    const disk = await pool.createDisk('d.img')
    for (let p = 0; p < 3; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    for (let b = 0; b < 8; b++) {
      await disk.write(bytesOf(1000 + b, blockBytes), (1 + b) * blockBytes)
      await pool.backup(disk, `b${b}.img`)
    }
    await new Sealer(pool, () => {}).sealPending(true)
    await pool.gc()
  } finally {
    await pool.close()
  }
}

/** The stored counts' chunk ids and their counts (RefCounts.stored's layout: 13 numbers of head, then the lists). */
function chunkCountsOf (data: Buffer): { all: Float64Array, ids: Float64Array, counts: Float64Array } {
  const all = new Float64Array(new Uint8Array(data).buffer)
  // The layout (ref-counts.ts, version 2): 16 numbers, the first list's length the 7th.
  const n = all[6]
  return { all, ids: all.subarray(16, 16 + n), counts: all.subarray(16 + n, 16 + 2 * n) }
}

async function readsItsBlocks (t: import('ava').ExecutionContext, pool: Pool, backups: number[]): Promise<void> {
  for (const b of backups) {
    const buf = Buffer.alloc(blockBytes)
    await pool.get('backup', `b${b}.img`).read(buf, (1 + b) * blockBytes)
    t.true(buf.equals(bytesOf(1000 + b, blockBytes)), `backup ${b} reads its block`)
  }
}

test('verify recounts gc\'s counts: equal on a healthy pool, a damaged count reported and dropped, and nothing referenced freed after', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-verify-counts-'))
  try {
    await eightBackups(dir)
    // Healthy: the counts the close stored, taken at the open, agree with a recount.
    let pool = Pool.open(path.join(dir, 'pool'), options)
    let chunk = 0
    try {
      t.true(pool.countsLoaded)
      const report = await verifyPool(pool)
      t.true(report.ok, JSON.stringify(report.problems))
      t.regex(report.counts, /^compared/, 'verify compared the counts')
      // The chunk backup 6's block 7 (written before backup 6) reads: b6 and b7 name it, each from its own page 0.
      const entry = pool.inspection.pageEntries(pool.get('backup', 'b6.img').map.root[0])[7]
      t.is(entryKind(entry), entryKindChunk)
      chunk = entryChunkId(entry)
    } finally {
      await pool.close()
    }
    // Damage the stored count of that chunk (2 -> 1) behind a valid checksum.
    const db = new Database(path.join(dir, 'pool', 'catalog.sqlite'))
    const row = db.prepare('SELECT data FROM ref_counts').get() as { data: Buffer }
    const { all, ids, counts } = chunkCountsOf(row.data)
    const at = ids.indexOf(chunk)
    t.true(at >= 0, 'the stored counts list the chunk')
    t.true(counts[at] >= 2, `counted ${counts[at]} times`)
    counts[at] = counts[at] - 1
    const damaged = Buffer.from(all.buffer)
    db.prepare('UPDATE ref_counts SET data = ?, sum = ?').run(damaged, crypto.createHash('sha256').update(damaged).digest('hex'))
    db.close()
    pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.true(pool.countsLoaded, 'the checksum cannot see the damage')
      const report = await verifyPool(pool)
      t.false(report.ok)
      t.true(report.problems.some(p => p.includes('reference counts') && p.includes(`chunk ${chunk}`)), JSON.stringify(report.problems))
      t.regex(report.counts, /disagree/)
      // b6 gone: the damaged count would fall to 0 while b7 still reads the chunk.
      await pool.remove(pool.get('backup', 'b6.img'))
      const gc = await pool.gc()
      t.is(gc.held, undefined)
      t.true(gc.pagesFreed >= 1, 'b6\'s own page 0 is freed')
      await readsItsBlocks(t, pool, [0, 5, 7])
      const buf = Buffer.alloc(blockBytes)
      await pool.get('backup', 'b7.img').read(buf, 7 * blockBytes)
      t.true(buf.equals(bytesOf(1006, blockBytes)), 'b7 still reads the chunk whose count was damaged')
      const again = await verifyPool(pool)
      t.true(again.ok, JSON.stringify(again.problems))
      t.regex(again.counts, /^compared/, 'the full mark built the counts again, and they agree')
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('stale stored counts (an earlier close\'s, put back after the catalog changed) are never taken: verify says so, gc frees only the unreferenced', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-verify-counts-'))
  try {
    await eightBackups(dir)
    const catalogFile = path.join(dir, 'pool', 'catalog.sqlite')
    let db = new Database(catalogFile)
    const old = db.prepare('SELECT fingerprint, sum, data FROM ref_counts').get() as { fingerprint: string, sum: string, data: Buffer }
    db.close()
    // The pool moves on: b7 removed (its page 0 counted no more), a new backup of the disk.
    let pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      await pool.remove(pool.get('backup', 'b7.img'))
      await pool.gc()
      await pool.backup(pool.get('disk', 'd.img'), 'b8.img')
    } finally {
      await pool.close()
    }
    db = new Database(catalogFile)
    db.prepare('UPDATE ref_counts SET fingerprint = ?, sum = ?, data = ?').run(old.fingerprint, old.sum, old.data)
    db.close()
    pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.false(pool.countsLoaded, 'stale counts are not taken')
      const report = await verifyPool(pool)
      t.true(report.ok, JSON.stringify(report.problems))
      t.regex(report.counts, /not built/)
      await pool.remove(pool.get('backup', 'b6.img'))
      t.is((await pool.gc()).held, undefined)
      await readsItsBlocks(t, pool, [0, 3, 5])
      const buf = Buffer.alloc(blockBytes)
      await pool.get('backup', 'b8.img').read(buf, 8 * blockBytes)
      t.true(buf.equals(bytesOf(1007, blockBytes)), 'b8 reads what b6 and b7 wrote')
      const after = await verifyPool(pool)
      t.true(after.ok)
      t.regex(after.counts, /^compared/)
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
