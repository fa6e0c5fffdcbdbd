/**
 * Two things a loaded machine showed (docs/ARCHITECTURE.md, "The event loop's priority" and "Early
 * writeback of overwrites"): the daemon's event loop thread at real-time priority (SCHED_RR 1) when it
 * may, every other thread of it at the normal policy; and the writeback of extents that native
 * overwrites changed started before the commit's fdatasync, counted by distinct pages so that a block
 * rewritten again and again is left to the commit. The unprivileged daemon's normal priority is checked
 * in security.test.ts (a user's mount).
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { run, vdiskfs, withMount, withMountEnv, TestMount } from '../helpers/mount'

const MiB = 1024 * 1024

/** /proc/PID/task/TID/stat's policy (field 41) and rt_priority (field 40), read after the last ')'. */
function schedOf (pid: number, tid: number): { policy: number, priority: number } {
  const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state): field N is fields[N - 3].
  return { policy: Number(fields[41 - 3]), priority: Number(fields[40 - 3]) }
}

const SCHED_OTHER = 0
const SCHED_RR = 2

async function status (m: TestMount): Promise<{ eventLoopDelay: { policy?: string }, daemon: { fuse3: { fastWritebackKicks: number, fastWritten: number } } }> {
  const result = await vdiskfs('status', m.mnt, '--json')
  if (result.code !== 0) throw new Error(result.stderr)
  return JSON.parse(result.stdout)
}

/**
 * Overwrites `bytes` at `offset` through `fd`, opened O_DIRECT (each WRITE reaches the daemon at once).
 * One descriptor kept open: a close flushes, and the commit that follows takes the extent and counts its
 * pages afresh.
 */
function overwrite (fd: number, offset: number, bytes: number): void {
  for (let at = offset; at < offset + bytes; at += 65536) fs.writeSync(fd, crypto.randomBytes(65536), 0, 65536, at)
}

async function kicksAfter (m: TestMount, waitMs: number): Promise<number> {
  await new Promise(resolve => setTimeout(resolve, waitMs))
  return (await status(m)).daemon.fuse3.fastWritebackKicks
}

test.serial('the event loop runs at real-time priority as root, its other threads at the normal one; overwrites start their writeback before the commit, a hot set does not', async t => {
  const m = await withMount(t)
  t.is((await status(m)).eventLoopDelay.policy, 'realtime')
  t.deepEqual(schedOf(m.pid, m.pid), { policy: SCHED_RR, priority: 1 })
  const others = fs.readdirSync(`/proc/${m.pid}/task`).map(Number).filter(tid => tid !== m.pid)
  t.true(others.length > 0)
  for (const tid of others) t.is(schedOf(m.pid, tid).policy, SCHED_OTHER, `thread ${tid}`)
  t.regex(fs.readFileSync(`${m.pool}/daemon.log`, 'utf8'), /event loop: real-time priority \(SCHED_RR 1\)/)

  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=32', 'conv=fsync', 'status=none'])
  // First writes fill new slots in order (their own kick); they count nothing here.
  t.is(await kicksAfter(m, 300), 0)
  const fd = fs.openSync(disk, fs.constants.O_WRONLY | fs.constants.O_DIRECT)
  let kicks = 0
  try {
    // A hot set: 2 MiB rewritten five times is 10 MiB of writes but 512 distinct pages.
    const written = (await status(m)).daemon.fuse3.fastWritten
    for (let round = 0; round < 5; round++) overwrite(fd, 4 * MiB, 2 * MiB)
    t.true((await status(m)).daemon.fuse3.fastWritten - written >= 5 * 32, 'the overwrites were native')
    t.is(await kicksAfter(m, 500), 0, 'a hot set smaller than the bound is left to the commit')
    // 8 MiB of distinct pages more: past the bound (4 MiB), the next check starts the extent's writeback.
    overwrite(fd, 16 * MiB, 8 * MiB)
    for (let waited = 0; kicks === 0 && waited < 10000; waited += 100) kicks = await kicksAfter(m, 100)
  } finally { fs.closeSync(fd) }
  t.true(kicks >= 1, `writebacks started: ${kicks}`)
})

test.serial('VDISKFS_LOOP_REALTIME=0 keeps the normal priority; VDISKFS_WRITEBACK_KICK=0 starts no writeback', async t => {
  const m = await withMountEnv(t, { VDISKFS_LOOP_REALTIME: '0', VDISKFS_WRITEBACK_KICK: '0' })
  t.is((await status(m)).eventLoopDelay.policy, 'normal')
  t.is(schedOf(m.pid, m.pid).policy, SCHED_OTHER)
  t.regex(fs.readFileSync(`${m.pool}/daemon.log`, 'utf8'), /event loop: normal priority \(VDISKFS_LOOP_REALTIME=0\)/)
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=32', 'conv=fsync', 'status=none'])
  const fd = fs.openSync(disk, fs.constants.O_WRONLY | fs.constants.O_DIRECT)
  try {
    overwrite(fd, 16 * MiB, 8 * MiB)
    t.is(await kicksAfter(m, 1000), 0)
  } finally { fs.closeSync(fd) }
})
