/**
 * The volume layer owns the policy the FUSE adapter used to hold (STYLE.md #2): it refuses with typed
 * errors, which the adapter only maps to errno (READ_ONLY -> EROFS, NOT_PERMITTED -> EPERM,
 * CROSS_DEVICE -> EXDEV), and it decides which names are hidden.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { VdiskError } from '../../src/errors'

async function withPool (run: (pool: Pool) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-policy-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes: 4096, workers: 0 })
  try { await run(pool) } finally {
    await pool.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

const code = (err: unknown) => (err as VdiskError).code

test('backups refuse every change through the namespace; clones come only from a backup', async t => {
  await withPool(async pool => {
    const disk = await pool.create('disk', 'd.img')
    const backup = await pool.backup(disk, 'b.img')
    const clone = await pool.clone(backup, 'c.img')
    t.is(code(await t.throwsAsync(pool.create('backup', 'x.img'))), 'READ_ONLY')
    t.is(code(await t.throwsAsync(pool.create('clone', 'x.img'))), 'NOT_PERMITTED')
    t.is(code(t.throws(() => pool.opened(backup, true))), 'READ_ONLY')
    pool.opened(backup, false)
    await pool.released(backup)
    t.is(code(await t.throwsAsync(pool.unlink(backup))), 'READ_ONLY')
    t.is(code(await t.throwsAsync(pool.move(backup, 'backup', 'y.img'))), 'READ_ONLY')
    t.is(code(await t.throwsAsync(pool.move(disk, 'backup', 'y.img'))), 'READ_ONLY')
    t.is(code(await t.throwsAsync(pool.move(disk, 'clone', 'y.img'))), 'CROSS_DEVICE')
    t.is(code(t.throws(() => backup.touch(0))), 'READ_ONLY')
    await pool.move(clone, 'clone', 'c2.img')
    t.deepEqual(pool.visible('clone').map(v => v.name), ['c2.img'])
    await pool.unlink(clone)
    t.deepEqual(pool.visible('clone'), [])
    t.deepEqual(pool.visible('backup').map(v => v.name), ['b.img'])
  })
})

test("a .fuse_hidden name is an ordinary one, open or not; a volume libfuse 2 hid is shown again under its name at the next start, not dropped", async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-policy-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const hidden = '.fuse_hidden0000000100000002'
  let pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes: 4096, workers: 0 })
  const disk = await pool.create('disk', 'd.img')
  const backup = await pool.backup(disk, 'b.img')
  pool.opened(disk, true)
  await pool.move(disk, 'disk', hidden)
  t.deepEqual(pool.visible('disk').map(v => v.name), [hidden], 'listed while open')
  t.is(pool.find('disk', hidden), disk)
  t.is(pool.liveSource(backup), disk)
  await pool.released(disk)
  t.deepEqual(pool.visible('disk').map(v => v.name), [hidden], 'and after')
  // A pool the libfuse 2 transport left with a volume hidden under such a name (stored as '/' + name),
  // and a second one whose name is taken meanwhile.
  const other = await pool.create('disk', 'e.img')
  await pool.move(disk, 'disk', 'd.img')
  disk.name = `/${hidden}`
  disk.rowDirty = true
  other.name = '/.fuse_hidden0000000300000004'
  other.rowDirty = true
  const taken = await pool.create('disk', '.fuse_hidden0000000300000004')
  await pool.commit()
  await pool.close()
  pool = Pool.open(path.join(dir, 'pool'), { blockBytes: 4096, workers: 0 })
  try {
    const dropped = await pool.dropHidden()
    t.is(dropped.length, 1, `only the one whose name was taken meanwhile is dropped (${dropped.join(', ')})`)
    t.deepEqual(pool.visible('disk').map(v => v.name).sort(), [hidden, '.fuse_hidden0000000300000004'])
    t.is(pool.find('disk', hidden)?.id, disk.id, 'shown again under its name')
    t.is(pool.find('disk', '.fuse_hidden0000000300000004')?.id, taken.id)
    t.is(pool.byId(other.id), undefined)
  } finally { await pool.close() }
})
