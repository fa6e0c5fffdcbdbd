/**
 * The roots of idle backups kept out of memory (issue #21, docs/PERFORMANCE.md "The roots of idle
 * backups loaded on first use"):
 *
 * - The page counts so taken are the counts of every root (a damaged stored count is what the open
 *   takes: verify finds it); after an unclean stop (none stored) the
 *   open counts every root, as before.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { Pool } from '../../src/volume/pool'
import { verifyPool } from '../../src/inspect/verify'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'
import { storesOf } from '../helpers/stores'

const blockBytes = 4096
const pagesPerRoot = 6
const backups = 30
const options = { workers: 1, pageCacheMax: 8 }

/** A disk of 6 pages and 30 backups, each with one block of its own; closed cleanly (`gc`: after a gc, the counts built). */
async function poolOfBackups (dir: string, gc = false): Promise<void> {
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, ...options })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(pagesPerRoot * pageEntries * blockBytes)
    for (let p = 0; p < pagesPerRoot; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    for (let b = 0; b < backups; b++) {
      await disk.write(bytesOf(1000 + b, blockBytes), ((b % pagesPerRoot) * pageEntries + 1 + b) * blockBytes)
      await pool.backup(disk, `b${b}.img`)
    }
    if (gc) await pool.gc()
  } finally {
    await pool.close()
  }
}

/** Page id -> root entries naming it, counted from every volume's root. */
function countedFromRoots (pool: Pool): Map<number, number> {
  const out = new Map<number, number>()
  for (const volume of storesOf(pool).volumes.values()) {
    for (const id of volume.map.root) if (id !== 0) out.set(id, (out.get(id) ?? 0) + 1)
  }
  return out
}

function sameCounts (pool: Pool, expected: Map<number, number>): string | null {
  const refs = storesOf(pool).refs
  const live = refs.livePagesNow()
  if (live.size !== expected.size) return `${live.size} pages counted, ${expected.size} named by the roots`
  for (const [id, n] of expected) if (refs.refsOfPage(id) !== n) return `page ${id}: counted ${refs.refsOfPage(id)}, named ${n} times`
  return null
}

test('after an unclean stop (no counts stored) the open counts every root, and the counts are theirs', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    // An open that is never closed (its process killed): the counts it took are gone from the catalog.
    await Pool.open(path.join(dir, 'pool'), options).abandon()
    const pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.false(pool.countsLoaded)
      t.true(storesOf(pool).catalog.rootsRead >= backups + 1, 'every root was read to count it')
      t.is(sameCounts(pool, countedFromRoots(pool)), null)
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('the page counts are what the close stored: one damaged behind a valid checksum is taken, and verify finds it', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir, true)
    // The stored record (ref-counts.ts, version 2): 16 numbers, the lists' lengths the 7th to the 16th;
    // the page ids the 9th list, their counts the 10th.
    const db = new Database(path.join(dir, 'pool', 'catalog.sqlite'))
    const row = db.prepare('SELECT data FROM ref_counts').get() as { data: Buffer }
    const all = new Float64Array(new Uint8Array(row.data).buffer)
    const lengths = Array.from(all.subarray(6, 16))
    const pagesAt = 16 + lengths.slice(0, 8).reduce((a, b) => a + b, 0)
    t.true(lengths[8] > 0, 'the page counts are stored')
    const page = all[pagesAt]
    all[pagesAt + lengths[8]] += 1
    const damaged = Buffer.from(all.buffer)
    db.prepare('UPDATE ref_counts SET data = ?, sum = ?').run(damaged, crypto.createHash('sha256').update(damaged).digest('hex'))
    db.close()
    const pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.true(pool.countsLoaded)
      const named = countedFromRoots(pool).get(page) ?? 0
      t.is(storesOf(pool).refs.refsOfPage(page), named + 1, 'the stored count, not the roots\'')
      const report = await verifyPool(pool)
      t.false(report.ok)
      t.true(report.problems.some(p => p.includes(`map page ${page}:`)), JSON.stringify(report.problems))
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
