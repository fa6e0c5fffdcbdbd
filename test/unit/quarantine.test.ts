/**
 * Compaction tells garbage from lost data (issue #9, item 6), on the engine directly: the chunks of a
 * seal pass whose pack fdatasync failed were never indexed, so they are garbage that compaction
 * deletes, not records the catalog lost (which it would quarantine and verify would report).
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { verifyPool } from '../../src/inspect/verify'
import { FileIo, nodeFileIo } from '../../src/io/file-io'

test.serial('chunks a failed seal pass abandoned are deleted by compaction, not quarantined or reported', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-quarantine-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const blockBytes = 4096
  const paths = new Map<number, string>()
  let failPackSync = false
  const io: FileIo = {
    ...nodeFileIo,
    open: async (file, flags, mode) => { const fd = await nodeFileIo.open(file, flags, mode); paths.set(fd, file); return fd },
    fdatasync: async fd => {
      // A pack holding records (not one just created): the seal pass's sync before indexing.
      if (failPackSync && (paths.get(fd) ?? '').endsWith('.pack') && fs.fstatSync(fd).size > 64) {
        failPackSync = false
        const err = new Error('EIO: i/o error, fdatasync (injected)') as NodeJS.ErrnoException
        err.code = 'EIO'
        throw err
      }
      await nodeFileIo.fdatasync(fd)
    }
  }
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1, io })
  try {
    const data = crypto.randomBytes(64 * blockBytes)
    await (await pool.createDisk('d.img')).write(data, 0)
    await pool.commit()
    failPackSync = true
    const first = await new Sealer(pool, () => {}).sealPending(true)
    t.true(first.failed.length > 0, 'the first pass fails')
    const second = await new Sealer(pool, () => {}).sealPending(true)
    t.is(second.failed.length, 0)
    await pool.gc(0.99)
    const quarantine = path.join(dir, 'pool', 'quarantine')
    t.deepEqual(fs.existsSync(quarantine) ? fs.readdirSync(quarantine) : [], [], 'nothing quarantined')
    const report = await verifyPool(pool)
    t.deepEqual(report.problems, [])
    t.true(report.ok)
    const out = Buffer.alloc(data.length)
    await pool.get('disk', 'd.img').read(out, 0)
    t.true(out.equals(data))
  } finally {
    await pool.close()
  }
})
