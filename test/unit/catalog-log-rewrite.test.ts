/**
 * catalog.log's rewrite (a snapshot of the catalog, when the log grew past twice the last one) runs
 * beside the commits, not inside one (issue #21: at 10,000 backups six backups waited 12.8-64 s behind
 * it). The rewrite's writes of the new file are held here through the file-I/O seam, so the test shows
 * by order, not by time, that commits (a backup's among them) return while it is under way, and that the
 * new log then replays to exactly what the catalog holds: what was appended meanwhile is in it.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { FileIo, nodeFileIo } from '../../src/io/file-io'
import { replayCatalogLog } from '../../src/catalog/catalog-log'
import { catalogLogFile } from '../../src/format/pool-format'
import { pageEntries } from '../../src/limits'
import { storesOf } from '../helpers/stores'

const blockBytes = 4096

/** Waits (polling every 10 ms, at most `boundMs`, a bound against hanging, not a timing) until `done()`. */
async function eventually (done: () => boolean, boundMs = 120_000): Promise<boolean> {
  for (let waited = 0; !done() && waited < boundMs; waited += 10) await new Promise(resolve => setTimeout(resolve, 10))
  return done()
}

/** A pool whose writes to catalog.log.tmp wait, while `held`, until release(). */
function heldRewrite (dir: string): { pool: Pool, hold: () => void, release: () => void, heldWrites: () => number } {
  const tmpFds = new Set<number>()
  let gate: Promise<void> | null = null
  let open = (): void => {}
  let held = 0
  const io: FileIo = {
    ...nodeFileIo,
    open: async (file, flags, mode) => {
      const fd = await nodeFileIo.open(file, flags, mode)
      if (path.basename(file) === `${catalogLogFile}.tmp`) tmpFds.add(fd)
      return fd
    },
    close: async fd => { tmpFds.delete(fd); await nodeFileIo.close(fd) },
    write: async (fd, data, offset, length, position) => {
      if (tmpFds.has(fd) && gate !== null) { held++; await gate }
      return await nodeFileIo.write(fd, data, offset, length, position)
    }
  }
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0, io })
  return {
    pool,
    hold: () => { gate = new Promise(resolve => { open = resolve }) },
    release: () => { gate = null; open() },
    heldWrites: () => held
  }
}

/** Why catalog.log does not replay to what the catalog holds (every page and volume row), or null. */
async function logMatchesCatalog (pool: Pool, dir: string): Promise<string | null> {
  const catalog = storesOf(pool).catalog
  const replayed = await replayCatalogLog(path.join(dir, catalogLogFile))
  if (replayed === null) return 'no log'
  if (replayed.skippedBytes !== 0) return `${replayed.skippedBytes} bytes skipped`
  for (const id of catalog.pageIds()) if (replayed.pages.get(id)?.entries.equals(catalog.page(id)?.entries as Buffer) !== true) return `page ${id} differs`
  for (const row of catalog.volumesWithRoots()) {
    const logged = replayed.volumes.get(row.id)
    if (logged === undefined) return `volume ${row.name} is missing`
    if (logged.name !== row.name || !Buffer.from(logged.root).equals(row.root)) return `volume ${row.name} differs`
  }
  if (replayed.volumes.size !== catalog.volumes().length) return `${replayed.volumes.size} volumes in the log, ${catalog.volumes().length} in the catalog`
  return null
}

test.serial('commits and backups return while catalog.log is rewritten, and the new log holds what they appended', async t => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-log-rewrite-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const { pool, hold, release, heldWrites } = heldRewrite(dir)
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(400 * pageEntries * blockBytes)
    await pool.commit() // the log's first snapshot
    await pool.commit()
    const inodeBefore = fs.statSync(path.join(dir, catalogLogFile)).ino
    hold()
    // 300 pages (about 10 MB of records) take the log past its bound: this commit starts a rewrite.
    for (let p = 0; p < 300; p++) await disk.write(Buffer.alloc(blockBytes, p + 1), (p * pageEntries + p) * blockBytes)
    let committed = false
    const first = pool.commit().then(() => { committed = true })
    t.true(await eventually(() => heldWrites() > 0 || committed), 'the commit returned, or the rewrite started')
    t.true(await eventually(() => committed, 30_000), 'the commit that started the rewrite returned')
    t.true(await eventually(() => heldWrites() > 0), 'the rewrite is under way (its first write held)')
    // More commits and a backup while the rewrite is held: they append to the old file.
    await disk.write(Buffer.alloc(blockBytes, 0xee), (350 * pageEntries) * blockBytes)
    const backup = await pool.backup(disk, 'during.img')
    await disk.write(Buffer.alloc(blockBytes, 0xdd), (351 * pageEntries) * blockBytes)
    await pool.commit()
    // More than catalogLogWriteBytes appended meanwhile (40 pages): copied before the final step too.
    for (let p = 0; p < 40; p++) await disk.write(Buffer.alloc(blockBytes, 0xd0), ((360 + p) * pageEntries) * blockBytes)
    await pool.commit()
    await first
    t.is(fs.statSync(path.join(dir, catalogLogFile)).ino, inodeBefore, 'the old log is still the one in use')
    t.is(await logMatchesCatalog(pool, dir), null, 'the old log holds what the catalog does meanwhile')
    release()
    await storesOf(pool).catalogLog.settled()
    t.not(fs.statSync(path.join(dir, catalogLogFile)).ino, inodeBefore, 'the rewritten log replaced the old one')
    t.false(fs.existsSync(path.join(dir, `${catalogLogFile}.tmp`)))
    t.is(await logMatchesCatalog(pool, dir), null, 'the new log holds what the catalog does, the commits made during the rewrite included')
    t.true(pool.list().includes(backup))
    // And appends go on to the new file.
    await disk.write(Buffer.alloc(blockBytes, 0xcc), (352 * pageEntries) * blockBytes)
    await pool.commit()
    t.is(await logMatchesCatalog(pool, dir), null, 'after one more commit')
  } finally {
    release()
    await pool.close()
  }
})

test.serial('a pool closed during a rewrite keeps the old log, which holds what the catalog does', async t => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-log-rewrite-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const { pool, hold, release, heldWrites } = heldRewrite(dir)
  let closed = false
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(400 * pageEntries * blockBytes)
    await pool.commit()
    const inodeBefore = fs.statSync(path.join(dir, catalogLogFile)).ino
    hold()
    for (let p = 0; p < 300; p++) await disk.write(Buffer.alloc(blockBytes, p + 1), (p * pageEntries + p) * blockBytes)
    await pool.commit()
    t.true(await eventually(() => heldWrites() > 0), 'the rewrite started')
    await disk.write(Buffer.alloc(blockBytes, 0xee), (350 * pageEntries) * blockBytes)
    // The held write goes on once the log is told to close (it stops the rewrite at its next write).
    const log = storesOf(pool).catalogLog
    const close = log.close.bind(log)
    log.close = async () => { const closing = close(); release(); await closing }
    await pool.close()
    closed = true
    t.is(fs.statSync(path.join(dir, catalogLogFile)).ino, inodeBefore, 'the rewrite stopped: the old log stays')
    t.false(fs.existsSync(path.join(dir, `${catalogLogFile}.tmp`)))
    const reopened = Pool.open(dir, { workers: 0 })
    try {
      t.is(await logMatchesCatalog(reopened, dir), null)
    } finally { await reopened.close() }
  } finally {
    release()
    if (!closed) await pool.close().catch(() => {})
  }
})
