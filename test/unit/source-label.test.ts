/**
 * A volume whose source is gone names it as `KIND NAME (deleted)` (ls, info). The name is the one the
 * source had when it went, not the one it had when the volume was made: `vdiskfs rename`, rename(2)
 * through the mount and `promote` give the source's volumes its new label, committed with it (found
 * trying issue #21's rename by hand: a clone of a backup renamed, then removed, said the old name).
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { sourceOf } from '../../src/inspect/facts'

test('a volume whose source was renamed, then removed, names the source by its last name, across a reopen', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-source-label-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const poolDir = path.join(dir, 'pool')
  let pool = Pool.open(poolDir, { create: true, blockBytes: 4096, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(1 << 20)
    const backup = await pool.backup(disk, 'monday.img')
    const clone = await pool.clone(backup, 'c.img')
    // A backup of a clone that is then promoted and renamed through the mount (rename(2)), then removed.
    const ofClone = await pool.backup(clone, 'of-clone.img')
    await pool.renameVolume(backup, 'mon.img')
    t.is(sourceOf(pool, clone), 'backups/mon.img')
    await pool.remove(backup)
    t.is(sourceOf(pool, clone), 'backup mon.img (deleted)')
    await pool.promote(clone, 'p.img')
    await pool.move(clone, 'disk', 'q.img')
    await pool.remove(clone)
    t.is(sourceOf(pool, ofClone), 'disk q.img (deleted)')
    await pool.close()
    pool = Pool.open(poolDir, { workers: 1 })
    t.is(sourceOf(pool, pool.get('backup', 'of-clone.img')), 'disk q.img (deleted)', 'committed: the same after a reopen')
  } finally {
    await pool.close().catch(() => {})
  }
})
