/**
 * Issue #21: `vdiskfs du`, `info` and `status` on a pool with many backups never hold the daemon's
 * event loop. A test hook (VDISKFS_TEST_SPACE_PAUSE, inspect/space.ts) holds the space accounting's
 * walk in its middle; meanwhile reads and writes through the mount are served, `status` answers, and
 * `du` has not; released, `du` gives exactly the figures it gave on the quiet pool before (the walk's
 * snapshot: the writes made meanwhile are in the next one). Ordering, not timing: the test waits for
 * the hold's file, never for a duration.
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { call } from '../../src/control/client'
import { vdiskfs, withMount } from '../helpers/mount'

const blockBytes = 64 * 1024
const diskBytes = 4 * 1024 ** 3
const pageBytes = 4096 * blockBytes

function pwrite (file: string, data: Buffer, at: number): void {
  const fd = fs.openSync(file, 'r+')
  try { fs.writeSync(fd, data, 0, data.length, at) } finally { fs.closeSync(fd) }
}

function pread (file: string, length: number, at: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const out = Buffer.alloc(length)
    fs.readSync(fd, out, 0, length, at)
    return out
  } finally { fs.closeSync(fd) }
}

async function json (t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<any> {
  const result = await vdiskfs(...args, '--json')
  t.is(result.code, 0, `vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return JSON.parse(result.stdout)
}

test.serial('du and info walk the maps in slices: held in the middle, reads, writes and status are served, and the figures are the quiet pool\'s', async t => {
  const hooks = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? '/tmp', 'vdiskfs-space-hook-'))
  t.teardown(() => fs.rmSync(hooks, { recursive: true, force: true }))
  process.env.VDISKFS_TEST_SPACE_PAUSE = hooks
  let m
  try { m = await withMount(t) } finally { delete process.env.VDISKFS_TEST_SPACE_PAUSE }
  const disk = m.image('disks', 'big.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, diskBytes)
  // 60 backups, each after blocks changed in two of the disk's 16 map pages; half of it sealed.
  const backups = 60
  for (let i = 0; i < backups; i++) {
    pwrite(disk, Buffer.alloc(blockBytes, `backup ${i} `), ((i % 16) * pageBytes) + i * blockBytes)
    pwrite(disk, Buffer.alloc(blockBytes, `again ${i} `), (((i + 5) % 16) * pageBytes) + (i + 100) * blockBytes)
    await call(m.mnt, 'backup', { sourceKind: 'disk', sourceName: 'big.img', name: `b${i}.img` })
    if (i === backups / 2) t.is((await vdiskfs('sync', m.mnt)).code, 0)
  }
  await call(m.mnt, 'clone', { sourceKind: 'backup', sourceName: 'b7.img', name: 'c7.img' })
  pwrite(m.image('clones', 'c7.img'), Buffer.alloc(blockBytes, 'clone '), 3 * blockBytes)
  t.is((await vdiskfs('sync', m.mnt)).code, 0) // commits too: nothing changes from here until the hold
  const before = await json(t, 'du', m.mnt)
  const infoBefore = await json(t, 'info', disk)
  t.is(before.volumes.length, backups + 2)

  // A change that moves no byte (a note), so that du walks again rather than answer from its last report.
  t.is((await vdiskfs('note', m.image('backups', 'b1.img'), 'the pool changed')).code, 0)
  fs.writeFileSync(path.join(hooks, 'space-walk.arm'), '')
  let duDone = false
  const du = vdiskfs('du', m.mnt, '--json').then(result => { duDone = true; return result })
  const paused = path.join(hooks, 'space-walk.paused')
  while (!fs.existsSync(paused) && !duDone) await new Promise(resolve => setTimeout(resolve, 20))
  t.true(fs.existsSync(paused), 'du walks in slices, with its hold in the middle (it answered without reaching it)')
  if (duDone) return

  // Held: the mount serves reads and writes, the control socket answers status.
  t.true(pread(m.image('backups', 'b3.img'), blockBytes, 3 * pageBytes + 3 * blockBytes).equals(Buffer.alloc(blockBytes, 'backup 3 ')))
  pwrite(disk, Buffer.alloc(blockBytes, 'during du '), 7 * pageBytes + 999 * blockBytes) // copies a page the backups share
  t.true(pread(disk, blockBytes, 7 * pageBytes + 999 * blockBytes).equals(Buffer.alloc(blockBytes, 'during du ')))
  const fresh = m.image('disks', 'fresh.img')
  fs.writeFileSync(fresh, Buffer.alloc(blockBytes, 'fresh '))
  const fd = fs.openSync(fresh, 'r')
  try { fs.fsyncSync(fd) } finally { fs.closeSync(fd) } // a commit while the walk is held
  const status = await json(t, 'status', m.mnt)
  t.true(status.unsealedBytes >= 2 * blockBytes, `status answers, with the bytes the writes left unsealed: ${status.unsealedBytes}`)
  t.false(duDone, 'du waits at its hold')
  fs.writeFileSync(path.join(hooks, 'space-walk.go'), '')

  const held = await du
  t.is(held.code, 0, held.stderr)
  t.deepEqual(JSON.parse(held.stdout), before, 'the figures of the walk\'s snapshot: the quiet pool\'s')
  fs.rmSync(path.join(hooks, 'space-walk.arm'))
  const after = await json(t, 'du', m.mnt)
  t.true(after.volumes.some((v: { name: string }) => v.name === 'fresh.img'), 'asked again, du walks the pool as it is now')
  // (Sealed or not by now, the two blocks written during the hold count.)
  t.true(after.storedBytes > before.storedBytes)
  const infoAfter = await json(t, 'info', disk)
  t.true(infoAfter.referencedBytes > infoBefore.referencedBytes)
})
