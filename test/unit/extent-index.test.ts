/**
 * The page store's extent index (issue #21): once learnt, sealing finds the pages that name an extent
 * and the volumes that read them without walking every root. It must never miss one: a page the index
 * did not know would keep naming an extent that sealing then drops. Random writes, backups, clones,
 * restores, shrinks (spare pages reused at another root index), copies of ranges and removals, with
 * seal passes between them; after each step the slots found through the index are the slots found by
 * walking every root, and every volume's stored bytes are what its entries count.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { Volume } from '../../src/volume/volume'
import { pageEntries } from '../../src/limits'
import { storesOf } from '../helpers/stores'

const blockBytes = 4096

interface Walks { referencedSlots: (extentId: number) => number[], lookUpRatio: number }

function slotsBothWays (pool: Pool, extentId: number): { indexed: number[], walked: number[] } {
  const maintenance = (pool as unknown as { maintenance: Walks }).maintenance
  const pages = storesOf(pool).pages
  maintenance.lookUpRatio = Number.POSITIVE_INFINITY // the index's look-ups, however many pages
  const indexed = maintenance.referencedSlots(extentId)
  pages.indexComplete = false
  try { return { indexed, walked: maintenance.referencedSlots(extentId) } } finally { pages.indexComplete = true }
}

for (const seed of [1, 2, 3, 4]) {
  test(`the extent index finds what a walk of every root finds, under random changes (seed ${seed})`, async t => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-extent-index-'))
    const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 0, pageCacheMax: 16 })
    let random = seed * 0x9e3779b1
    const next = (n: number): number => { random ^= random << 13; random ^= random >>> 17; random ^= random << 5; return (random >>> 0) % n }
    try {
      const sealer = new Sealer(pool, () => {})
      const pagesMax = 6
      const disk = await pool.createDisk('d.img')
      await disk.truncate(pagesMax * pageEntries * blockBytes)
      const writable: Volume[] = [disk]
      const backups: Volume[] = []
      await pool.exclusive(async () => { await pool.learnExtentNames() }) // the index is complete from here on
      t.true(storesOf(pool).pages.indexComplete)
      for (let step = 0; step < 300; step++) {
        const target = writable[next(writable.length)]
        const op = next(20)
        const block = next(pagesMax * pageEntries)
        if (op < 9) {
          if (block * blockBytes < target.size) await target.write(Buffer.alloc(blockBytes, 1 + next(250)), block * blockBytes)
        } else if (op < 12) {
          backups.push(await pool.backup(target, `b${step}.img`))
        } else if (op === 12 && backups.length > 0) {
          writable.push(await pool.clone(backups[next(backups.length)], `c${step}.img`))
        } else if (op === 13 && backups.length > 0) {
          await pool.restore(backups[next(backups.length)], target, { force: true })
        } else if (op === 14) {
          // A shrink keeps the dropped pages as spares; growing back and writing reuses them elsewhere.
          await target.truncate(next(pagesMax) * pageEntries * blockBytes)
          await target.truncate(pagesMax * pageEntries * blockBytes)
        } else if (op === 15 && writable.length > 1) {
          const source = writable[next(writable.length)]
          const from = next(pagesMax * pageEntries)
          if (source !== target && (from + 1) * blockBytes <= source.size && (block + 1) * blockBytes <= target.size) await pool.copyRange(source, target, from * blockBytes, block * blockBytes, blockBytes)
        } else if (op === 16 && backups.length > 2) {
          const [gone] = backups.splice(next(backups.length), 1)
          await pool.remove(gone, { force: true })
        } else if (op >= 17) {
          await sealer.sealPending(next(2) === 0)
        }
        for (const extentId of storesOf(pool).catalog.extents().map(e => e.id)) {
          const { indexed, walked } = slotsBothWays(pool, extentId)
          t.deepEqual(indexed, walked, `step ${step}, extent ${extentId}`)
        }
      }
      await sealer.sealPending(true)
      const sizeOf = storesOf(pool).sizeOf
      for (const volume of pool.list()) {
        let stored = 0
        volume.map.forEachEntry((_block, entry) => { stored += sizeOf(entry) })
        t.is(volume.storedBytes, stored, `${volume.label}: stored bytes`)
      }
    } finally {
      await pool.close().catch(() => {})
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
}
