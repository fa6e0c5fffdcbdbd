/**
 * Writes in flight at once on one volume, through the engine: each write's bytes land at its own offset
 * whatever order the block locks release them in (issue #17, finding 1: a piece queued behind another
 * write's lock used to take the bytes of the next piece).
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { bytesOf } from '../helpers/model'

async function withPool (blockBytes: number, work: (pool: Pool) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-concurrent-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    await work(pool)
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

for (const blockBytes of [4096, 16384]) {
  test(`two concurrent writes sharing a block each land at their own offsets (${blockBytes / 1024} KiB blocks)`, async t => {
    await withPool(blockBytes, async pool => {
      const disk = await pool.createDisk('d.img')
      await disk.write(bytesOf(1, 4 * blockBytes), 0)
      await pool.backup(disk, 'b.img')
      // First: a partial write of block 0 (a read-modify-write of a block the backup froze, so it waits
      // on a read). Second: starts in block 0 and runs over blocks 1 and 2, so its piece for block 0
      // waits behind the first write's lock while the loop goes on to the next pieces.
      const first = bytesOf(2, 100)
      const second = bytesOf(3, 2 * blockBytes + 300)
      await Promise.all([disk.write(first, 10), disk.write(second, blockBytes - 200)])
      const expected = bytesOf(1, 4 * blockBytes)
      first.copy(expected, 10)
      second.copy(expected, blockBytes - 200)
      const got = Buffer.alloc(4 * blockBytes)
      await disk.read(got, 0)
      t.true(got.equals(expected), `first difference at byte ${got.findIndex((b, i) => b !== expected[i])}`)
    })
  })
}

test('many concurrent overlapping writes: every sector holds the bytes of one of the writes that covered it', async t => {
  await withPool(4096, async pool => {
    const disk = await pool.createDisk('d.img')
    const size = 64 * 4096
    await disk.write(bytesOf(0, size), 0)
    await pool.backup(disk, 'b.img')
    const writes: Array<{ offset: number, data: Buffer }> = []
    for (let i = 0; i < 64; i++) {
      // Sector-aligned writes, so that "one write per sector" is the whole rule.
      const offset = ((i * 7919) % 60) * 4096 + (i % 8) * 512
      const length = 512 * (1 + ((i * 31) % 24))
      writes.push({ offset, data: bytesOf(100 + i, length) })
    }
    await Promise.all(writes.map(async w => await disk.write(w.data, w.offset)))
    const got = Buffer.alloc(size)
    await disk.read(got, 0)
    const original = bytesOf(0, size)
    for (let sector = 0; sector < size / 512; sector++) {
      const at = sector * 512
      const here = got.subarray(at, at + 512)
      const candidates = writes.filter(w => w.offset <= at && at + 512 <= w.offset + w.data.length)
        .map(w => w.data.subarray(at - w.offset, at - w.offset + 512))
      if (candidates.length === 0) candidates.push(original.subarray(at, at + 512))
      if (!candidates.some(c => c.equals(here))) {
        t.fail(`sector ${sector} holds bytes that none of the ${candidates.length} writes covering it wrote`)
        return
      }
    }
    t.pass()
  })
})

test('a truncate while a write past its new size is in flight: the result is one of the two orders, never the write behind the end', async t => {
  await withPool(4096, async pool => {
    const disk = await pool.createDisk('d.img')
    await disk.write(bytesOf(1, 3 * 4096), 0)
    // The backup freezes block 2, so the partial write below reads it first (it is in flight).
    await pool.backup(disk, 'b.img')
    const data = bytesOf(2, 100)
    await Promise.all([disk.write(data, 2 * 4096 + 10), disk.truncate(4096)])
    const sizeAfter = disk.size
    await disk.truncate(3 * 4096)
    const got = Buffer.alloc(3 * 4096)
    await disk.read(got, 0)
    const expected = Buffer.alloc(3 * 4096)
    bytesOf(1, 4096).copy(expected, 0)
    // Truncate first, then the write (size 2 blocks + 110 bytes); or the write first, cut by the truncate.
    if (sizeAfter !== 4096) data.copy(expected, 2 * 4096 + 10)
    t.true([4096, 2 * 4096 + 110].includes(sizeAfter), `size ${sizeAfter}`)
    t.true(got.equals(expected), `size after the race ${sizeAfter}; first difference at byte ${got.findIndex((b, i) => b !== expected[i])}`)
  })
})

test('extend (fallocate without KEEP_SIZE) never shrinks what a write in flight grew', async t => {
  await withPool(4096, async pool => {
    const disk = await pool.createDisk('d.img')
    await disk.write(bytesOf(1, 3 * 4096), 0)
    await pool.backup(disk, 'b.img')
    const data = bytesOf(2, 5000)
    await Promise.all([disk.write(data, 2 * 4096 + 10), disk.extend(4096 * 2 + 20)])
    t.is(disk.size, 2 * 4096 + 10 + 5000)
    const got = Buffer.alloc(data.length)
    await disk.read(got, 2 * 4096 + 10)
    t.true(got.equals(data))
  })
})
