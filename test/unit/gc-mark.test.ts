/**
 * gc's mark runs in slices that yield to the event loop (issue #21: 7-19 s of a held event loop at 300
 * backups of a 1 TiB disk). Requests are served between slices, and what the maps start or stop
 * referencing meanwhile never costs a referenced chunk, page or extent (docs/CONCURRENCY.md, "gc's
 * mark"). The mark's test seam (Pool.gcSeams) yields after every page and runs the test's steps at a
 * chosen yield, so each interleaving is forced, not timed.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { Volume } from '../../src/volume/volume'
import { verifyPool } from '../../src/inspect/verify'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'

const blockBytes = 4096

async function withPool (work: (pool: Pool) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-gcmark-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    await work(pool)
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function blockOf (volume: Volume, block: number): Promise<Buffer> {
  const out = Buffer.alloc(blockBytes)
  await volume.read(out, block * blockBytes)
  return out
}

/** Turns of the event loop until `done()`, at most `turns`; whether it came true. */
async function until (done: () => boolean, turns = 10_000): Promise<boolean> {
  for (let i = 0; i < turns && !done(); i++) await new Promise(resolve => setImmediate(resolve))
  return done()
}

test('reads are served while gc marks: the mark yields between pages', async t => {
  await withPool(async pool => {
    const disk = await pool.createDisk('d.img')
    // One block in each of 8 map pages, sealed into chunks, and three backups sharing the pages.
    for (let p = 0; p < 8; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    await new Sealer(pool, () => {}).sealPending(true)
    for (let b = 0; b < 3; b++) await pool.backup(disk, `b${b}.img`)
    let yields = 0
    let release = (): void => {}
    const held = new Promise<void>(resolve => { release = resolve })
    pool.gcSeams({ sliceMs: 0, onYield: async walked => { yields++; if (walked === 2) await held } })
    const gc = pool.gc()
    t.true(await until(() => pool.gcMarking && yields >= 2), 'the mark reached its second yield')
    // The mark is under way (two pages walked): reads, a write and a backup are served meanwhile.
    t.true((await blockOf(disk, 5 * pageEntries)).equals(bytesOf(5, blockBytes)))
    await disk.write(bytesOf(100, blockBytes), 6 * pageEntries * blockBytes)
    await pool.backup(disk, 'during.img')
    t.true(pool.gcMarking, 'all of them while the mark was still in progress')
    release()
    await gc
    t.true(yields >= 8, `the mark yielded after each page (${yields} yields)`)
    t.true((await blockOf(pool.get('backup', 'during.img'), 6 * pageEntries)).equals(bytesOf(100, blockBytes)))
    t.true((await verifyPool(pool)).ok)
  })
})

test('a backup made during the mark keeps its chunks, though the reference moved into a page already walked', async t => {
  await withPool(async pool => {
    const disk = await pool.createDisk('d.img')
    const moved = 1 * pageEntries + 5 // in page 1, walked after page 0
    await disk.write(bytesOf(1, blockBytes), 10 * blockBytes) // page 0
    await disk.write(bytesOf(2, blockBytes), moved * blockBytes)
    await new Sealer(pool, () => {}).sealPending(true)
    let ran = false
    pool.gcSeams({
      sliceMs: 0,
      onYield: async walked => {
        if (walked !== 1 || ran) return
        ran = true
        // Page 0 was walked, page 1 not yet. The chunk of block `moved` is copied into page 0 (in place:
        // the disk's own page), its entry in page 1 overwritten in place, a backup takes both pages,
        // and the disk moves on: the chunk is referenced only by the backup's page 0, walked before.
        await pool.copyRange(disk, disk, moved * blockBytes, 20 * blockBytes, blockBytes)
        await disk.write(bytesOf(3, blockBytes), moved * blockBytes)
        await pool.backup(disk, 'during.img')
        await disk.write(bytesOf(4, blockBytes), 20 * blockBytes)
      }
    })
    await pool.gc(0.99)
    t.true(ran, 'the steps ran during the mark')
    const backup = pool.get('backup', 'during.img')
    t.true((await blockOf(backup, 20)).equals(bytesOf(2, blockBytes)), 'the backup reads the moved chunk')
    t.true((await blockOf(backup, moved)).equals(bytesOf(3, blockBytes)))
    t.true((await blockOf(disk, 20)).equals(bytesOf(4, blockBytes)))
    pool.gcSeams({})
    await new Sealer(pool, () => {}).sealPending(true)
    await pool.gc(0.99)
    t.true((await blockOf(backup, 20)).equals(bytesOf(2, blockBytes)), 'and after a second gc')
    t.true((await verifyPool(pool)).ok)
  })
})

test('rm, restore, a shrunk page reused and a seal pass waiting during the mark: nothing referenced is freed, the garbage goes next time', async t => {
  await withPool(async pool => {
    const disk = await pool.createDisk('d.img')
    const other = await pool.createDisk('e.img')
    for (let p = 0; p < 4; p++) await disk.write(bytesOf(10 + p, blockBytes), p * pageEntries * blockBytes)
    await other.write(bytesOf(20, blockBytes), 3 * pageEntries * blockBytes)
    await new Sealer(pool, () => {}).sealPending(true)
    const first = await pool.backup(disk, 'first.img')
    // The disk's pages 2 and 3 become its own again (copied by these writes), then a shrink drops them
    // from its root before gc begins: they are spares, referenced by no root, which a later write reuses.
    await disk.write(bytesOf(40, blockBytes), 2 * pageEntries * blockBytes)
    await disk.write(bytesOf(41, blockBytes), 3 * pageEntries * blockBytes)
    await disk.truncate(2 * pageEntries * blockBytes)
    await pool.commit()
    let ran = false
    let sealed: Promise<unknown> = Promise.resolve()
    pool.gcSeams({
      sliceMs: 0,
      onYield: async walked => {
        if (walked !== 1 || ran) return
        ran = true
        // The disk grows and writes into its page 3 (a spare page reused, in place), another disk is
        // restored from the first backup and the backup removed (each commits), and a seal pass
        // queues behind gc (it waits for the maintenance lock).
        await disk.truncate(4 * pageEntries * blockBytes)
        await disk.write(bytesOf(30, blockBytes), 3 * pageEntries * blockBytes + blockBytes)
        await pool.restore(first, other)
        await pool.remove(first)
        sealed = new Sealer(pool, () => {}).sealPending(true)
      }
    })
    await pool.gc(0.99)
    await sealed
    t.true(ran)
    t.true((await blockOf(disk, 3 * pageEntries + 1)).equals(bytesOf(30, blockBytes)))
    t.true((await blockOf(disk, 3 * pageEntries)).equals(Buffer.alloc(blockBytes)))
    for (let p = 0; p < 4; p++) t.true((await blockOf(other, p * pageEntries)).equals(bytesOf(10 + p, blockBytes)), `restored page ${p}`)
    pool.gcSeams({})
    const second = await pool.gc(0.99)
    t.true(second.pagesFreed > 0, 'the pages that became garbage during the first mark are freed by the next gc')
    await pool.commit()
    t.true((await blockOf(disk, 3 * pageEntries + 1)).equals(bytesOf(30, blockBytes)))
    for (let p = 0; p < 4; p++) t.true((await blockOf(other, p * pageEntries)).equals(bytesOf(10 + p, blockBytes)))
    t.true((await verifyPool(pool)).ok)
  })
})

test('random writes, copies, backups, truncates, removals and restores while gc marks in a loop (a yield after every page) and seal passes run: every volume reads as its model', async t => {
  const seed = Number(process.env.VDISKFS_GCMARK_SEED ?? Date.now() % 1000000)
  t.log(`seed ${seed} (VDISKFS_GCMARK_SEED replays it)`)
  let x = seed >>> 0 || 1
  const random = (n: number): number => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x % n }
  await withPool(async pool => {
    interface Model { size: number, blocks: Map<number, Buffer> }
    const models = new Map<Volume, Model>()
    const candidates: number[] = []
    for (let p = 0; p < 4; p++) for (let k = 0; k < 6; k++) candidates.push(p * pageEntries + k * 7)
    const disks = [await pool.createDisk('a.img'), await pool.createDisk('b.img')]
    for (const disk of disks) models.set(disk, { size: 0, blocks: new Map() })
    const backups: Volume[] = []
    pool.gcSeams({ sliceMs: 0 })
    let stop = false
    let marks = 0
    const background = (async () => {
      while (!stop) {
        await pool.gc(0.99)
        marks++
        if (marks % 3 === 0) await new Sealer(pool, () => {}).sealPending(true)
      }
    })()
    const copyModel = (m: Model): Model => ({ size: m.size, blocks: new Map(m.blocks) })
    for (let step = 0; step < 160; step++) {
      const disk = disks[random(2)]
      const model = models.get(disk) as Model
      const choice = random(12)
      if (choice < 4) {
        const block = candidates[random(candidates.length)]
        const data = bytesOf(seed * 1000 + step, blockBytes)
        await disk.write(data, block * blockBytes)
        model.blocks.set(block, data)
        model.size = Math.max(model.size, (block + 1) * blockBytes)
      } else if (choice < 7) {
        const sources = [...disks, ...backups]
        const source = sources[random(sources.length)]
        const from = candidates[random(candidates.length)]
        const to = candidates[random(candidates.length)]
        if (source === disk && from === to) continue
        const sourceModel = models.get(source) as Model
        const copied = await pool.copyRange(source, disk, from * blockBytes, to * blockBytes, blockBytes)
        if (copied.bytes > 0) {
          const data = sourceModel.blocks.get(from)
          if (data === undefined) model.blocks.delete(to); else model.blocks.set(to, data)
          model.size = Math.max(model.size, (to + 1) * blockBytes)
        }
      } else if (choice < 9) {
        const backup = await pool.backup(disk, `s${step}.img`)
        backups.push(backup)
        models.set(backup, copyModel(model))
      } else if (choice === 9) {
        const size = (1 + random(4)) * pageEntries * blockBytes
        await disk.truncate(size)
        for (const block of [...model.blocks.keys()]) if (block * blockBytes >= size) model.blocks.delete(block)
        model.size = size
      } else if (choice === 10 && backups.length > 0) {
        const [backup] = backups.splice(random(backups.length), 1)
        await pool.remove(backup)
        models.delete(backup)
      } else if (backups.length > 0) {
        const backup = backups[random(backups.length)]
        await pool.restore(backup, disk)
        // eslint-disable-next-line vdiskfs/map-check-then-act -- the steps run one at a time: only this loop changes the models
        models.set(disk, copyModel(models.get(backup) as Model))
      }
    }
    stop = true
    await background
    t.true(marks > 0)
    for (const [volume, model] of models) {
      t.is(volume.size, model.size, `${volume.label}: size`)
      for (const block of candidates) {
        if (block * blockBytes >= model.size) continue
        t.true((await blockOf(volume, block)).equals(model.blocks.get(block) ?? Buffer.alloc(blockBytes)), `${volume.label} block ${block}`)
      }
    }
    pool.gcSeams({})
    await pool.gc(0.99)
    for (const [volume, model] of models) {
      for (const block of candidates) if (block * blockBytes < model.size) t.true((await blockOf(volume, block)).equals(model.blocks.get(block) ?? Buffer.alloc(blockBytes)), `after a last gc: ${volume.label} block ${block}`)
    }
    t.true((await verifyPool(pool)).ok)
  })
})
