/**
 * A commit appends its catalog.log records in writes of about catalogLogWriteBytes, not as one buffer
 * of every record (a commit after writes all over a 1 TiB disk carries 4,096 pages: with the copy the
 * commit holds for SQLite, one more whole copy doubled the daemon's peak RSS). The log still replays
 * to exactly what the catalog holds.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { FileIo, nodeFileIo } from '../../src/io/file-io'
import { replayCatalogLog } from '../../src/catalog/catalog-log'
import { catalogLogFile } from '../../src/format/pool-format'
import { catalogLogWriteBytes, pageEntries } from '../../src/limits'
import { storesOf } from '../helpers/stores'

const blockBytes = 4096

test.serial('a commit of 300 pages reaches catalog.log in bounded writes, and the log replays to the catalog', async t => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-log-append-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const logFds = new Set<number>()
  const writes: number[] = []
  const io: FileIo = {
    ...nodeFileIo,
    open: async (file, flags, mode) => {
      const fd = await nodeFileIo.open(file, flags, mode)
      if (path.basename(file) === catalogLogFile) logFds.add(fd)
      return fd
    },
    write: async (fd, data, offset, length, position) => {
      if (logFds.has(fd)) writes.push(length)
      return await nodeFileIo.write(fd, data, offset, length, position)
    }
  }
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0, io })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(300 * pageEntries * blockBytes)
    await pool.commit() // the first commit writes the log whole (a snapshot); the next ones append
    await pool.commit()
    writes.length = 0
    for (let p = 0; p < 300; p++) await disk.write(Buffer.alloc(blockBytes, p + 1), (p * pageEntries + p) * blockBytes)
    await pool.commit()
    const catalog = storesOf(pool).catalog
    const ids = catalog.pageIds()
    const pageRecordBytes = 16 + 16 + (catalog.page(ids[0])?.entries.length ?? 0)
    t.true(writes.length > 2, `the commit's records came in several writes: ${writes.length}`)
    t.true(Math.max(...writes) <= catalogLogWriteBytes + pageRecordBytes, `largest write ${Math.max(...writes)} bytes`)
    const replayed = await replayCatalogLog(path.join(dir, catalogLogFile))
    t.truthy(replayed)
    t.true(ids.length > 250, `pages in the catalog: ${ids.length}`)
    let same = 0
    for (const id of ids) if (replayed?.pages.get(id)?.entries.equals(catalog.page(id)?.entries as Buffer) === true) same++
    t.is(same, ids.length, 'every page of the catalog, as the log replays it')
    t.is(replayed?.skippedBytes, 0)
  } finally {
    await pool.close()
  }
})
