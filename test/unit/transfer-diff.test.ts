/**
 * diff's cost follows what changed: between two backups of a disk with data in every map page, only
 * the pages the later writes copied are read (two per changed page), and the changed blocks are
 * exactly those written.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pageEntries } from '../../src/limits'
import { changedBlockSet, changedBlocks, differingRanges } from '../../src/map/diff'
import { Pool } from '../../src/volume/pool'
import { storesOf } from '../helpers/stores'

const blockBytes = 4096

test('pages shared by both backups are not read; the changed blocks are the ones written', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-diff-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    const pages = 8
    await disk.truncate(pages * pageEntries * blockBytes)
    // A block in every page, so that every page exists.
    for (let p = 0; p < pages; p++) await disk.write(crypto.randomBytes(blockBytes), p * pageEntries * blockBytes)
    const older = await pool.backup(disk, 'b1.img')
    const written = [3 * pageEntries + 7, 3 * pageEntries + 8, 6 * pageEntries]
    for (const block of written) await disk.write(crypto.randomBytes(blockBytes), block * blockBytes)
    const newer = await pool.backup(disk, 'b2.img')
    const { blocks, pagesRead } = changedBlocks(newer, older, storesOf(pool).pages, blockBytes)
    t.deepEqual(blocks.map(b => b.block), written)
    t.is(pagesRead, 4)
    // The export's bit set says the same, and a full one every block that is not a hole.
    const set = await changedBlockSet(newer, older, storesOf(pool).pages, blockBytes)
    t.is(set.count, written.length)
    t.deepEqual([...set.blocks()], written)
    const fullSet = await changedBlockSet(newer, null, storesOf(pool).pages, blockBytes)
    t.deepEqual([...fullSet.blocks()], changedBlocks(newer, null, storesOf(pool).pages, blockBytes).blocks.map(b => b.block))
    t.is(changedBlocks(newer, newer, storesOf(pool).pages, blockBytes).pagesRead, 0)
    const full = changedBlocks(newer, null, storesOf(pool).pages, blockBytes)
    t.is(full.blocks.length, pages + written.length - 1)
    t.deepEqual(differingRanges(older, newer, storesOf(pool).pages, blockBytes).ranges, [
      { start: written[0] * blockBytes, length: 2 * blockBytes },
      { start: written[2] * blockBytes, length: blockBytes }
    ])
  } finally {
    await pool.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
