/**
 * Namespace operations in flight at once (issue #17, finding 2): a name checked free before an `await`
 * (a backup or copy waiting for its source's writes to drain, a promote waiting for releases) must not
 * be taken by another operation meanwhile; a volume removed meanwhile is not backed up, copied or
 * restored from. After each race the pool still commits and reopens with every name once.
 */
import test, { ExecutionContext } from 'ava'
import { VdiskError } from '../../src/errors'
import { Pool } from '../../src/volume/pool'
import { withPool } from '../helpers/pool'
import { Volume } from '../../src/volume/volume'
import { bytesOf } from '../helpers/model'

/** Writes in flight on `disk` (so that pause() has to wait for them), started now. */
function writesInFlight (disk: Volume, count = 16): Promise<void[]> {
  return Promise.all(Array.from({ length: count }, async (_, i) => await disk.write(bytesOf(i, 3 * 4096 + 100), i * 5 * 4096 + 7)))
}

function codeOf (result: PromiseSettledResult<unknown>): string {
  if (result.status === 'fulfilled') return 'ok'
  return result.reason instanceof VdiskError ? result.reason.code : String(result.reason)
}

function namesOf (pool: Pool): string[] {
  return pool.list().map(v => `${v.kind}/${v.name}`).sort()
}

test('three backups of one name at once, with writes in flight: one is made, the others are refused, and the pool still commits', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    await disk.write(bytesOf(99, 8192), 0)
    const writes = writesInFlight(disk)
    const results = await Promise.allSettled([pool.backup(disk, 'same.img'), pool.backup(disk, 'same.img'), pool.backup(disk, 'same.img')])
    await writes
    t.deepEqual(results.map(codeOf).sort(), ['EXISTS', 'EXISTS', 'ok'])
    await disk.write(bytesOf(5, 4096), 0)
    await t.notThrowsAsync(pool.commit())
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['backup/same.img', 'disk/d.img'])
  })
})

test('a copy and a create of one disk name at once: one of them has it, and the pool still commits', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    await disk.write(bytesOf(1, 8192), 0)
    const writes = writesInFlight(disk)
    const copying = pool.copy(disk, 'x.img')
    // The create comes while the copy waits for the source's writes to drain.
    await new Promise(resolve => setImmediate(resolve))
    const creating = pool.createDisk('x.img')
    const results = await Promise.allSettled([copying, creating])
    await writes
    t.deepEqual(results.map(codeOf).sort(), ['EXISTS', 'ok'])
    await t.notThrowsAsync(pool.commit())
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['disk/d.img', 'disk/x.img'])
  })
})

test('a rename onto a name a copy is making is refused, not a second volume of that name', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    const other = await pool.createDisk('o.img')
    const writes = writesInFlight(disk)
    const copying = pool.copy(disk, 'x.img')
    await new Promise(resolve => setImmediate(resolve))
    const renaming = pool.rename(other, 'x.img')
    const results = await Promise.allSettled([copying, renaming])
    await writes
    t.deepEqual(results.map(codeOf), ['ok', 'BUSY'])
    await t.notThrowsAsync(pool.commit())
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['disk/d.img', 'disk/o.img', 'disk/x.img'])
  })
})

test('a backup of a disk removed while the backup waited for its writes is refused (NOT_FOUND)', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    const writes = writesInFlight(disk)
    const backingUp = pool.backup(disk, 'b.img')
    await new Promise(resolve => setImmediate(resolve))
    const removing = pool.remove(disk, { force: true })
    const results = await Promise.allSettled([backingUp, removing, writes])
    t.deepEqual(results.slice(0, 2).map(codeOf), ['NOT_FOUND', 'ok'])
    await t.notThrowsAsync(pool.commit())
    pool = await reopen()
    t.deepEqual(namesOf(pool), [])
  })
})

/**
 * One try of the race below: whether the remove came while the restore still waited for the disk's
 * writes (then the restore must be refused and the disk keep its data), checked in `t`.
 */
async function restoreFromRemovedBackup (t: ExecutionContext): Promise<boolean> {
  let raced = false
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    await disk.write(bytesOf(1, 4096), 0)
    const backup = await pool.backup(disk, 'b.img')
    await disk.write(bytesOf(2, 4096), 0)
    const writes = writesInFlight(disk)
    const restoring = pool.restore(backup, disk)
    await new Promise(resolve => setImmediate(resolve))
    raced = (disk as unknown as { inflight: number }).inflight > 0
    const removing = pool.remove(backup)
    const results = await Promise.allSettled([restoring, removing, writes])
    if (!raced) return
    t.deepEqual(results.slice(0, 2).map(codeOf), ['NOT_FOUND', 'ok'])
    await pool.gc()
    pool = await reopen()
    const got = Buffer.alloc(4096)
    await pool.get('disk', 'd.img').read(got, 0)
    // Not restored: the second write, then the first of the writes in flight (at byte 7) over it.
    const expected = bytesOf(2, 4096)
    bytesOf(0, 3 * 4096 + 100).copy(expected, 7)
    t.true(got.equals(expected))
  })
  return raced
}

test('a restore from a backup removed while the restore waited is refused, and the target keeps its data', async t => {
  // The race needs the restore still waiting for the disk's writes when the remove comes; with reads and
  // writes served inline they can all land within one turn, so a try where they did is made again (on a
  // loaded machine many tries may miss: CI missed 20 in a row once).
  let raced = false
  for (let attempt = 0; attempt < 100 && !raced; attempt++) raced = await restoreFromRemovedBackup(t)
  t.true(raced, 'in 100 tries the remove never came while the restore waited for the writes')
})

test('a promote waiting for a release and a create of its new name at once: one of them has the name', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    const backup = await pool.backup(disk, 'b.img')
    const clone = await pool.clone(backup, 'c.img')
    pool.opened(clone, true)
    const promoting = pool.promote(clone, 'p.img')
    await new Promise(resolve => setTimeout(resolve, 20))
    const creating = pool.createDisk('p.img')
    setTimeout(() => { void pool.released(clone) }, 50)
    const results = await Promise.allSettled([promoting, creating])
    t.deepEqual(results.map(codeOf), ['ok', 'EXISTS'])
    await t.notThrowsAsync(pool.commit())
    // eslint-disable-next-line require-atomic-updates -- the test's own pool, reopened in sequence after the race settled
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['backup/b.img', 'disk/d.img', 'disk/p.img'])
  })
})

test('an rm during the commit of a create through the mount sees the new image in use (its handle is counted first)', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const creating = pool.create('disk', 'n.img', { open: true })
    const volume = pool.find('disk', 'n.img') as Volume
    t.not(volume, undefined)
    const removing = pool.remove(volume)
    const results = await Promise.allSettled([creating, removing])
    t.deepEqual(results.map(codeOf), ['ok', 'BUSY'])
    await volume.write(bytesOf(1, 4096), 0)
    await pool.released(volume)
    pool = await reopen()
    const got = Buffer.alloc(4096)
    await pool.get('disk', 'n.img').read(got, 0)
    t.true(got.equals(bytesOf(1, 4096)))
  })
})

test('a backup protected while rm waits for its last release is not removed (checked after the wait), and stays across a reopen', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    await disk.write(bytesOf(3, 4096), 0)
    const backup = await pool.backup(disk, 'b.img')
    pool.opened(backup, false)
    const removing = pool.remove(backup)
    await new Promise(resolve => setTimeout(resolve, 20))
    await pool.protect(backup, true)
    await pool.released(backup)
    const results = await Promise.allSettled([removing])
    t.deepEqual(results.map(codeOf), ['NOT_PERMITTED'])
    await t.throwsAsync(pool.remove(backup, { force: true }), { message: /protected/ })
    pool = await reopen()
    const again = pool.get('backup', 'b.img')
    t.true(again.isProtected)
    await pool.protect(again, false)
    await t.notThrowsAsync(pool.remove(again))
    t.deepEqual(namesOf(pool), ['disk/d.img'])
  })
})

test('rename waiting for a release: a volume removed meanwhile is NOT_FOUND and the name it held is free again', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    pool.opened(disk, true)
    const renaming = pool.renameVolume(disk, 'n.img')
    await new Promise(resolve => setTimeout(resolve, 20))
    // A creator of the held name waits for the rename, then decides.
    const creating = pool.createDisk('n.img')
    await pool.remove(disk, { force: true })
    setTimeout(() => { void pool.released(disk) }, 30)
    const results = await Promise.allSettled([renaming, creating])
    t.deepEqual(results.map(codeOf), ['NOT_FOUND', 'ok'])
    await t.notThrowsAsync(pool.commit())
    // eslint-disable-next-line require-atomic-updates -- the test's own pool, reopened in sequence after the race settled
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['disk/n.img'])
  })
})

test('two renames onto one name at once (the first waiting for a release): one is made, the other is EXISTS; a backup renames too', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    const backup = await pool.backup(a, 'monday.img')
    pool.opened(a, true)
    const first = pool.renameVolume(a, 'x.img')
    await new Promise(resolve => setTimeout(resolve, 20))
    const second = pool.renameVolume(b, 'x.img')
    setTimeout(() => { void pool.released(a) }, 30)
    const results = await Promise.allSettled([first, second])
    t.deepEqual(results.map(codeOf), ['ok', 'EXISTS'])
    await pool.renameVolume(backup, 'web-monday.img')
    await t.throwsAsync(pool.renameVolume(b, 'x.img'), { code: 'EXISTS' })
    // eslint-disable-next-line require-atomic-updates -- the test's own pool, reopened in sequence after the race settled
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['backup/web-monday.img', 'disk/b.img', 'disk/x.img'])
  })
})

test('a group backup whose source is removed while its writes drain is NOT_FOUND: no backup of the group is made and its names are free again', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    await b.write(bytesOf(1, 4096), 0)
    const writes = writesInFlight(b)
    const group = pool.backupGroup([a, b], ['g-a.img', 'g-b.img'], 'g')
    const removing = pool.remove(b, { force: true })
    const results = await Promise.allSettled([group, removing, writes])
    t.deepEqual(results.map(codeOf), ['NOT_FOUND', 'ok', 'ok'])
    t.deepEqual(namesOf(pool), ['disk/a.img'])
    await t.notThrowsAsync(pool.backupGroup([a], ['g-a.img'], 'g'))
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['backup/g-a.img', 'disk/a.img'])
    t.is(pool.get('backup', 'g-a.img').groupName, 'g')
  })
})

test('two group backups of the same disks in opposite orders at once both finish (names and pauses are taken in one order), and a third of a group name in use is EXISTS', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    const writes = [writesInFlight(a), writesInFlight(b)]
    const results = await Promise.allSettled([
      pool.backupGroup([a, b], ['x-a.img', 'x-b.img'], 'x'),
      pool.backupGroup([b, a], ['y-b.img', 'y-a.img'], 'y'),
      pool.backupGroup([b], ['z-b.img'], 'x'),
      ...writes
    ])
    t.deepEqual(results.map(codeOf), ['ok', 'ok', 'EXISTS', 'ok', 'ok'])
    pool = await reopen()
    t.deepEqual(namesOf(pool), ['backup/x-a.img', 'backup/x-b.img', 'backup/y-a.img', 'backup/y-b.img', 'disk/a.img', 'disk/b.img'])
    t.deepEqual(pool.groupMembers('y').map(v => v.name), ['y-b.img', 'y-a.img'])
  })
})

test('a group restore refuses (nothing restored) when one target is open, or was removed while it waited for a release; forced, it restores them all in one step', async t => {
  await withPool('vdiskfs-races-', async (pool, reopen) => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    await a.write(bytesOf(1, 4096), 0)
    await b.write(bytesOf(2, 4096), 0)
    await pool.backupGroup([a, b], ['g-a.img', 'g-b.img'], 'g')
    await a.write(bytesOf(3, 4096), 0)
    await b.write(bytesOf(4, 4096), 0)
    const read = async (v: Volume): Promise<Buffer> => { const out = Buffer.alloc(4096); await v.read(out, 0); return out }
    pool.opened(b, true)
    await t.throwsAsync(pool.restoreGroup('g'), { code: 'BUSY' })
    t.true((await read(a)).equals(bytesOf(3, 4096)), 'a untouched')
    // Removed while the restore waits for a's release: NOT_FOUND, nothing restored.
    const c = await pool.createDisk('c.img')
    await pool.backupGroup([a, c], ['h-a.img', 'h-c.img'], 'h')
    pool.opened(a, true)
    const restoring = pool.restoreGroup('h')
    await new Promise(resolve => setTimeout(resolve, 20))
    await pool.remove(c, { force: true })
    setTimeout(() => { void pool.released(a) }, 30)
    const results = await Promise.allSettled([restoring])
    t.deepEqual(results.map(codeOf), ['NOT_FOUND'])
    t.true((await read(a)).equals(bytesOf(3, 4096)), 'a untouched')
    await t.notThrowsAsync(pool.restoreGroup('g', { force: true }))
    t.true((await read(a)).equals(bytesOf(1, 4096)))
    t.true((await read(b)).equals(bytesOf(2, 4096)))
    await pool.released(b)
    // eslint-disable-next-line require-atomic-updates -- the test's own pool, reopened in sequence after the race settled
    pool = await reopen()
    t.true((await read(pool.get('disk', 'b.img'))).equals(bytesOf(2, 4096)))
  })
})
