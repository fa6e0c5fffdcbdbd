/**
 * gc's mark from what the page store learnt of each page (issue #21: gc walked every map page of
 * 10,000 backups of a 1 TiB disk, 196-233 s, however little it freed). A page unchanged since the last
 * mark is neither loaded nor walked again; what was learnt of a page must be what its entries are, or
 * gc would free a referenced chunk. So after random operation sequences (the engine model's
 * generators, test/helpers/model.ts: writes, discards, truncates, backups, clones, restores, rm, seal
 * passes, gc, reopen) the learnt mark and a full walk of every page's entries must find the same pages,
 * extents and chunks, and the same hold.
 */
import test from 'ava'
import fc from 'fast-check'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { MarkResult } from '../../src/volume/gc-mark'
import { pageEntries } from '../../src/limits'
import { Harness, Op, bytesOf, opArbitrary, partialOpArbitrary } from '../helpers/model'
import { storesOf } from '../helpers/stores'

const runs = Number(process.env.VDISKFS_GC_REFS_RUNS ?? 25)

interface Marks { markOnly: (full: boolean) => Promise<MarkResult> }

function marksOf (pool: Pool): Marks {
  return (pool as unknown as { maintenance: Marks }).maintenance
}

const sorted = (set: Set<number>): number[] => [...set].sort((a, b) => a - b)

/** Why the learnt mark and the full walk differ, or null. */
async function compareMarks (pool: Pool): Promise<string | null> {
  const learnt = await marksOf(pool).markOnly(false)
  const full = await marksOf(pool).markOnly(true)
  for (const key of ['livePages', 'liveExtents', 'liveChunks'] as const) {
    const a = sorted(learnt[key])
    const b = sorted(full[key])
    if (JSON.stringify(a) !== JSON.stringify(b)) return `${key}: learnt ${JSON.stringify(a)}, full walk ${JSON.stringify(b)}`
  }
  if ((learnt.held === null) !== (full.held === null)) return `held: learnt ${String(learnt.held)}, full walk ${String(full.held)}`
  return null
}

async function runCompared (ops: Op[], blockBytes: number): Promise<string | null> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-gc-refs-'))
  // Every other sequence keeps only 4 KiB of page references: the rest are read from their pages.
  const options = { workers: 1, pageCacheMax: 4, ...(ops.length % 2 === 0 ? { pageRefsBytesMax: 4096 } : {}) }
  const harness: Harness = new Harness(Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, ...options }), async () => {
    await harness.pool.close()
    return Pool.open(path.join(dir, 'pool'), options)
  })
  try {
    await harness.apply({ op: 'create' })
    for (const [i, op] of ops.entries()) {
      await harness.apply(op)
      const problem = await compareMarks(harness.pool)
      if (problem !== null) return `after op ${i} (${JSON.stringify(op)}): ${problem}`
    }
    return await harness.check()
  } finally {
    await harness.pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

for (const [name, arbitrary, blockBytes] of [['4 KiB blocks', opArbitrary, 4096], ['16 KiB blocks: partial slots', partialOpArbitrary, 16384]] as const) {
  test(`gc's learnt mark finds what a full walk of every page finds, after random operations (${name})`, async t => {
    const seed = process.env.VDISKFS_GC_REFS_SEED !== undefined ? Number(process.env.VDISKFS_GC_REFS_SEED) : Date.now() | 0
    const details = await fc.check(fc.asyncProperty(fc.array(arbitrary, { minLength: 1, maxLength: 30 }), async ops => {
      const problem = await runCompared(ops, blockBytes)
      if (problem !== null) throw new Error(problem)
    }), { numRuns: runs, seed })
    if (details.failed) t.fail(`seed ${seed} (VDISKFS_GC_REFS_SEED): ${(details.errorInstance as Error | undefined)?.message ?? '?'}\nops: ${JSON.stringify(details.counterexample?.[0])}`)
    else t.pass()
  })
}

test('a gc after a gc loads no map page the first did not see change (a 4-page cache, 12 pages, 8 backups)', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-gc-refs-'))
  const blockBytes = 4096
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1, pageCacheMax: 4 })
  try {
    const disk = await pool.createDisk('d.img')
    for (let b = 0; b < 8; b++) {
      for (let p = 0; p < 12; p++) await disk.write(bytesOf(b * 100 + p, blockBytes), (p * pageEntries + b) * blockBytes)
      await pool.backup(disk, `b${b}.img`)
    }
    await new Sealer(pool, () => {}).sealPending(true)
    await pool.gc()
    const pages = storesOf(pool).pages
    const before = pages.loads
    const report = await pool.gc()
    t.is(report.pagesFreed, 0)
    t.is(pages.loads - before, 0, 'pages loaded by the second gc')
    // One page changed since: the next gc loads at most that one.
    await disk.write(bytesOf(999, blockBytes), 3 * pageEntries * blockBytes)
    await pool.commit()
    const changed = pages.loads
    await pool.gc()
    t.true(pages.loads - changed <= 1, `pages loaded after one page changed: ${pages.loads - changed}`)
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a gc that frees nothing rewrites no pack, though its chunks compress smaller than their record headers', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-gc-refs-'))
  const blockBytes = 65536
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    // Blocks of one repeated line each (zstd: a few dozen bytes; a record's header is 56).
    for (let b = 0; b < 64; b++) await disk.write(Buffer.alloc(blockBytes, `block ${b} `), b * blockBytes)
    await new Sealer(pool, () => {}).sealPending(true)
    const first = await pool.gc()
    const second = await pool.gc()
    t.is(first.packsFreed + second.packsFreed, 0, `packs rewritten: ${first.packsFreed}, then ${second.packsFreed}`)
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
