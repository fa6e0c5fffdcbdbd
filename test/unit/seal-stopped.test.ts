/**
 * A seal pass cut short by the pool closing (the daemon's SIGTERM or umount while `vdiskfs sync` runs)
 * says so: its report counts the extents it did not reach, so that `vdiskfs sync` can exit non-zero
 * (a script could not tell a cut-short sync from a complete one: both exited 0). The pass is held after
 * its first extent (Sealer.onExtentSealed, a test seam) while the pool starts closing.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'

test('a seal pass stopped by the pool closing counts the extents it left, and one that ran to its end counts none', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-seal-stopped-'))
  const blockBytes = 4096
  const make = async (name: string): Promise<Pool> => {
    const pool = Pool.open(path.join(dir, name), { create: true, blockBytes, workers: 1 })
    const disk = await pool.createDisk('d.img')
    // Three extents to seal: a write, a backup and a freeze of the active extent between them.
    for (let e = 0; e < 3; e++) {
      for (let b = 0; b < 16; b++) await disk.write(bytesOf(e * 100 + b, blockBytes), (e * pageEntries + b) * blockBytes)
      await pool.backup(disk, `b${e}.img`)
      await pool.freezeForSealing(true)
    }
    return pool
  }
  const whole = await make('whole')
  try {
    const report = await new Sealer(whole, () => {}).sealPending(true)
    t.true(report.extentsSealed >= 3, `sealed ${report.extentsSealed}`)
    t.is(report.extentsLeft, 0)
  } finally { await whole.close().catch(() => {}) }
  const cut = await make('cut')
  let closing: Promise<void> | null = null
  try {
    const frozen = cut.frozenExtents().length
    t.true(frozen >= 3, `frozen extents: ${frozen}`)
    const sealer = new Sealer(cut, () => {})
    sealer.onExtentSealed = async () => { if (closing === null) closing = cut.close() }
    const report = await sealer.sealPending(true)
    t.true(report.extentsSealed <= 1, `sealed ${report.extentsSealed}`) // the repointed one is counted at the pass's commit, which a closing pool leaves to its last
    t.is(report.extentsLeft, frozen - 1)
  } finally {
    await (closing ?? cut.close()).catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
