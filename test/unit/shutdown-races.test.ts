/**
 * Orderly paths the SIGKILL harness never walks, on the engine directly (issue #9, items 1, 2, 3, 7, 9):
 * a close while sealing runs, a disk that fills up part-way through sealing followed by rm + gc + seal,
 * more concurrent sealed reads than the worker queue holds, a new volume's first write racing a
 * background seal pass, and a seal batch that fails while its sibling lanes are still appending.
 * Each was a data-loss or spurious-EIO bug before; each test checks every byte written.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { FileIo, nodeFileIo } from '../../src/io/file-io'
import { extentFdsMax, workerQueueMax } from '../../src/limits'
import { storesOf } from '../helpers/stores'

/** The pool's filesystem filling up: a write to a pack fails with ENOSPC once packBytesMax bytes went to packs. */
class FillingIo implements FileIo {
  packBytes = 0
  filled = false
  private readonly packs = new Set<number>()
  constructor (public packBytesMax: number) {}
  open = async (file: string, flags: string, mode?: number): Promise<number> => {
    const fd = await nodeFileIo.open(file, flags, mode)
    if (file.endsWith('.pack')) this.packs.add(fd)
    else this.packs.delete(fd)
    return fd
  }

  private take (fd: number, bytes: number): void {
    if (!this.packs.has(fd)) return
    if (this.packBytes + bytes > this.packBytesMax) {
      this.filled = true
      throw Object.assign(new Error('ENOSPC: no space left on device, write (test)'), { code: 'ENOSPC' })
    }
    this.packBytes += bytes
  }

  write = async (fd: number, data: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> => {
    this.take(fd, length)
    return await nodeFileIo.write(fd, data, offset, length, position)
  }

  writev = async (fd: number, buffers: Uint8Array[], position: number): Promise<{ bytesWritten: number }> => {
    this.take(fd, buffers.reduce((sum, b) => sum + b.length, 0))
    return await nodeFileIo.writev(fd, buffers, position)
  }

  close = nodeFileIo.close
  read = nodeFileIo.read
  fdatasync = nodeFileIo.fdatasync
  fstat = nodeFileIo.fstat
  truncate = nodeFileIo.truncate
  sizeOf = nodeFileIo.sizeOf
  remove = nodeFileIo.remove
  syncDirectory = nodeFileIo.syncDirectory
}

function tempPool (t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-races-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'pool')
}

async function readAll (pool: Pool, kind: 'disk' | 'backup' | 'clone', name: string, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length)
  await pool.get(kind, name).read(out, 0)
  return out
}

test.serial('close while a seal pass is writing packs keeps every committed byte', async t => {
  const dir = tempPool(t)
  const blockBytes = 4096
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  const data = crypto.randomBytes(4000 * blockBytes)
  const disk = await pool.createDisk('d.img')
  await disk.write(data, 0)
  await pool.commit()
  const sealer = new Sealer(pool, () => {})
  const sealing = sealer.sealPending(true).catch(err => err)
  // Let the pass get going (packs are being written), then close under it.
  while (sealer.progress.total === 0 || storesOf(pool).chunks.pendingCount() < 50) await new Promise(resolve => setImmediate(resolve))
  await pool.close()
  await sealing
  pool = Pool.open(dir, { workers: 1 })
  try {
    await pool.gc()
    t.true((await readAll(pool, 'disk', 'd.img', data.length)).equals(data))
    await new Sealer(pool, () => {}).sealPending(true)
    t.true((await readAll(pool, 'disk', 'd.img', data.length)).equals(data), 'and after sealing again')
  } finally {
    await pool.close()
  }
})

test.serial('the disk filling up part-way through sealing, then rm + gc + seal, loses nothing', async t => {
  const dir = tempPool(t)
  const blockBytes = 4096
  // The filesystem fills after 700 blocks' worth of packs: the rest of the pass fails with ENOSPC.
  const io = new FillingIo(700 * blockBytes)
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1, io })
  const keep = crypto.randomBytes(600 * blockBytes)
  const other = crypto.randomBytes(900 * blockBytes)
  await (await pool.createDisk('keep.img')).write(keep, 0)
  await (await pool.createDisk('other.img')).write(other, 0)
  await pool.commit()
  const failed = await new Sealer(pool, () => {}).sealPending(true)
  t.true(io.filled, 'the filesystem filled')
  t.true(failed.failed.length > 0, 'the pass reports the failure')
  io.packBytesMax = Infinity
  await pool.remove(pool.get('disk', 'other.img'))
  await pool.gc(0.99)
  await new Sealer(pool, () => {}).sealPending(true)
  await pool.gc(0.99)
  t.true((await readAll(pool, 'disk', 'keep.img', keep.length)).equals(keep))
  await pool.close()
  pool = Pool.open(dir, { workers: 1 })
  try {
    await pool.gc(0.99)
    t.true((await readAll(pool, 'disk', 'keep.img', keep.length)).equals(keep), 'after a reopen')
  } finally {
    await pool.close()
  }
})

test.serial('more concurrent reads of sealed blocks than the worker queue holds all succeed', async t => {
  const dir = tempPool(t)
  const blockBytes = 4096
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  try {
    const blocks = workerQueueMax * 6
    const data = crypto.randomBytes(blocks * blockBytes)
    const disk = await pool.createDisk('d.img')
    await disk.write(data, 0)
    await new Sealer(pool, () => {}).sealPending(true)
    const reads = Array.from({ length: blocks }, async (_, i) => {
      const out = Buffer.alloc(blockBytes)
      await disk.read(out, i * blockBytes)
      return out.equals(data.subarray(i * blockBytes, (i + 1) * blockBytes))
    })
    const results = await Promise.allSettled(reads)
    t.deepEqual(results.filter(r => r.status === 'rejected').map(r => String((r as PromiseRejectedResult).reason)).slice(0, 3), [])
    t.true(results.every(r => r.status === 'fulfilled' && r.value))
  } finally {
    await pool.close()
  }
})

test.serial("a new volume's first write racing a background seal pass is kept", async t => {
  const dir = tempPool(t)
  const blockBytes = 4096
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  try {
    const sealer = new Sealer(pool, () => {})
    for (let i = 0; i < 20; i++) {
      const disk = await pool.createDisk(`d${i}.img`)
      const data = crypto.randomBytes(blockBytes)
      const writing = disk.write(data, 0)
      const sealing = sealer.sealPending(false)
      await writing
      await sealing
      await pool.commit()
      const back = Buffer.alloc(blockBytes)
      await disk.read(back, 0)
      t.true(back.equals(data), `disk ${i}`)
    }
  } finally {
    await pool.close()
  }
})

test.serial('extent descriptors stay bounded however many extents are read', async t => {
  const dir = tempPool(t)
  const blockBytes = 4096
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  try {
    const count = extentFdsMax + 40
    const datas: Buffer[] = []
    for (let i = 0; i < count; i++) {
      const disk = await pool.createDisk(`d${i}.img`)
      datas.push(crypto.randomBytes(blockBytes))
      await disk.write(datas[i], 0)
      await pool.backup(disk, `b${i}.img`) // freezes the extent: each disk's block is in its own extent
    }
    await pool.commit()
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < count; i++) t.true((await readAll(pool, 'backup', `b${i}.img`, blockBytes)).equals(datas[i]))
    }
    t.true(storesOf(pool).extents.openCount <= extentFdsMax, `${storesOf(pool).extents.openCount} extent descriptors open`)
  } finally {
    await pool.close()
  }
})

test.serial('writes racing commits with a two-page cache: no page reloads stale from the catalog', async t => {
  const dir = tempPool(t)
  const blockBytes = 4096
  const pageSpan = 4096 * blockBytes // one map page covers 16 MiB at 4 KiB blocks
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1, pageCacheMax: 2 })
  const expected = new Map<number, Buffer>()
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(12 * pageSpan)
    const work: Array<Promise<void>> = []
    for (let round = 0; round < 30; round++) {
      for (let page = 0; page < 12; page++) {
        const at = page * pageSpan + ((round * 7 + page) % 64) * blockBytes
        const data = crypto.randomBytes(blockBytes)
        expected.set(at, data)
        work.push(disk.write(data, at))
      }
      work.push(pool.commit())
    }
    await Promise.all(work)
    await pool.commit()
  } finally {
    await pool.close()
  }
  pool = Pool.open(dir, { workers: 1, pageCacheMax: 2 })
  try {
    const disk = pool.get('disk', 'd.img')
    let wrong = 0
    for (const [at, data] of expected) {
      const back = Buffer.alloc(blockBytes)
      await disk.read(back, at)
      if (!back.equals(data)) wrong++
    }
    t.is(wrong, 0, `${wrong} of ${expected.size} blocks wrong after a reopen`)
  } finally {
    await pool.close()
  }
})

test.serial('full packs do not keep their descriptors: descriptors stay bounded over many packs', async t => {
  const dir = tempPool(t)
  const blockBytes = 64 * 1024
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  try {
    const fdsBefore = fs.readdirSync('/proc/self/fd').length
    // 5 rounds of 80 MiB of random data: more than six 64 MiB packs, each full one rotated.
    for (let round = 0; round < 5; round++) {
      const disk = await pool.createDisk(`d${round}.img`)
      await disk.write(crypto.randomBytes(80 * 1024 * 1024), 0)
      await new Sealer(pool, () => {}).sealPending(true)
    }
    const held = fs.readdirSync('/proc/self/fd').filter(fd => {
      try { return fs.readlinkSync(`/proc/self/fd/${fd}`).includes(path.join(dir, 'packs')) } catch { return false }
    })
    t.true(held.length <= 3, `${held.length} pack descriptors open (${fs.readdirSync('/proc/self/fd').length - fdsBefore} more descriptors in all)`)
  } finally {
    await pool.close()
  }
})
