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

test("only an open volume takes libfuse's hidden name; it is then neither listed nor anyone's source, and is shown again at its last release, for libfuse to unlink", async t => {
  await withPool(async pool => {
    const disk = await pool.create('disk', 'd.img')
    const hidden = '.fuse_hidden0000000100000002'
    // Closed, it simply takes the name, an ordinary one.
    await pool.move(disk, 'disk', hidden)
    t.deepEqual(pool.visible('disk').map(v => v.name), [hidden])
    await pool.move(disk, 'disk', 'd.img')
    const backup = await pool.backup(disk, 'b.img')
    t.is(pool.liveSource(backup), disk)
    pool.opened(disk, true)
    await pool.move(disk, 'disk', hidden)
    t.deepEqual(pool.visible('disk'), [])
    t.is(pool.find('disk', hidden), disk)
    t.is(pool.liveSource(backup), undefined)
    // libfuse unlinks its hidden file right after the last release; a user's mv to such a name is
    // followed by no unlink, and the image must stay under it.
    await pool.released(disk)
    t.deepEqual(pool.visible('disk').map(v => v.name), [hidden])
    await pool.unlink(disk)
    t.is(pool.byId(disk.id), undefined)
  })
})
