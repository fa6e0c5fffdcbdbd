/**
 * A FUSE 3 mount outlives its daemon (issue #18; docs/TRANSPORT.md, "A mount that outlives its
 * daemon"): the holder keeps the /dev/fuse descriptor, starts a daemon that takes the mount over when
 * one is killed, and that daemon asks the kernel to resend what the dead one had read. Checked with
 * fio's O_DIRECT writes in flight (16 at a time) and its read-back verification, with fsx's mapped
 * reads and writes (its model checks every read) across three kills, with ext4 on a loop
 * device (e2fsck), with a daemon that keeps dying (the holder gives up, nothing is left), and with the
 * clean stops (SIGTERM, vdiskfs umount) that must not start another daemon.
 */
import test, { ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { isMounted, run, sha256, vdiskfs, waitForExit, withMount } from '../helpers/mount'
import type { TestMount } from '../helpers/mount'
import { fsxBin, requireTools, runProgram } from '../helpers/xfstests'

const MiB = 1024 * 1024
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

function daemonLog (m: TestMount): string {
  return fs.readFileSync(path.join(m.pool, 'daemon.log'), 'utf8')
}

async function until (what: string, check: () => boolean, timeoutMs = 20000): Promise<void> {
  for (let waited = 0; waited < timeoutMs; waited += 50) {
    if (check()) return
    await sleep(50)
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`)
}

test.serial('SIGKILL of the daemon: the holder starts one that takes the mount over, and fio with 16 O_DIRECT writes in flight goes on and verifies every block', async t => {
  const m = await withMount(t)
  t.is(m.holderPids().length, 1, 'one holder keeps the mount')
  const image = m.image('disks', 'fio.img')
  await run('truncate', ['-s', String(32 * MiB), image])
  const fio = spawn('fio', ['--name=takeover', `--filename=${image}`, '--rw=randwrite', '--bs=4k', `--size=${32 * MiB}`, '--ioengine=libaio', '--direct=1',
    '--iodepth=16', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', '--rate_iops=3000'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  fio.stdout.on('data', chunk => { output += chunk })
  fio.stderr.on('data', chunk => { output += chunk })
  const exited = new Promise<number | null>(resolve => fio.on('close', code => resolve(code)))
  const first = m.pid
  await sleep(1000)
  const second = await m.takeoverAfterKill()
  await sleep(1000)
  const third = await m.takeoverAfterKill()
  t.log(`daemons: ${first}, then ${second}, then ${third}`)
  const code = await exited
  t.is(code, 0, `fio: ${output.slice(0, 3000)}`)
  t.false(/verify|error/i.test(output.replace(/verify=crc32c|err=\s*0/g, '')), output.slice(-2000))
  const log = daemonLog(m)
  t.is(log.match(/took over the mount/g)?.length, 2, 'two takeovers logged')
  t.is(log.match(/the kernel resends the requests it had not answered/g)?.length, 2, 'FUSE_NOTIFY_RESEND accepted both times')
  t.is(m.holderPids().length, 1, 'still one holder')
  // A clean stop after the takeovers: no daemon, no holder, no mount.
  const holders = m.holderPids()
  const stopped = await vdiskfs('umount', m.mnt)
  t.is(stopped.code, 0, stopped.stderr)
  t.true(await waitForExit(third), 'the last daemon stopped')
  for (const pid of holders) t.true(await waitForExit(pid), `holder ${pid} stopped`)
  t.false(isMounted(m.mnt))
})

test.serial('a writer that fsyncs after every record keeps running across two SIGKILLs of the daemon: every record it was told is durable reads back, and it never sees an error', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'log.img')
  fs.writeFileSync(image, '')
  const acked = path.join(m.dir, 'acked')
  const stop = path.join(m.dir, 'stop')
  // Each record: 16 bytes at its own 512-byte slot, written and fsynced by dd (conv=fsync); its number
  // goes to a file outside the mount only once dd has returned.
  const script = 'i=0; while [ ! -e "$3" ]; do printf "record %08d\\n" $i | dd of="$1" bs=512 seek=$i conv=notrunc,fsync status=none || exit 1; echo $i >> "$2"; i=$((i+1)); done'
  const writer = spawn('bash', ['-c', script, 'writer', image, acked, stop], { stdio: ['ignore', 'ignore', 'pipe'] })
  let errors = ''
  writer.stderr.on('data', chunk => { errors += chunk })
  const exited = new Promise<number | null>(resolve => writer.on('close', code => resolve(code)))
  await sleep(1500)
  await m.takeoverAfterKill()
  await sleep(1500)
  await m.takeoverAfterKill()
  await sleep(1500)
  fs.writeFileSync(stop, '')
  t.is(await exited, 0, `the writer failed: ${errors}`)
  t.is(errors, '', 'no error reached the writer (ENOTCONN, EIO)')
  const told = fs.readFileSync(acked, 'utf8').trim().split('\n').map(Number)
  t.true(told.length > 10, `records written: ${told.length}`)
  const data = fs.readFileSync(image)
  const lost = told.filter(i => data.subarray(i * 512, i * 512 + 16).toString() !== `record ${String(i).padStart(8, '0')}\n`)
  t.deepEqual(lost, [], 'every record told durable is there')
  t.log(`${told.length} records, each fsynced, across two takeovers`)
})

test.serial('fsx with mapped reads and writes runs A-OK while the daemon is killed three times and taken over', async t => {
  if (!requireTools(t)) return
  const m = await withMount(t)
  const file = m.image('disks', 'fsx.img')
  fs.writeFileSync(file, '')
  const logDir = fs.mkdtempSync(path.join(m.dir, 'fsx-'))
  const ops = 4000
  const fsx = runProgram(fsxBin, ['-q', '-C', '-I', '-J', '-B', '-0', '-u', '-a', '-c', '16', '-l', '1m', '-o', '128k', '-N', String(ops), '-S', '21', '-P', logDir, file], 600_000, logDir)
  for (let i = 0; i < 3; i++) {
    await sleep(1500)
    await m.takeoverAfterKill()
  }
  const result = await fsx
  t.true(result.code === 0 && result.output.includes(`All ${ops} operations completed A-OK!`), result.output.slice(-3000))
  t.is(daemonLog(m).match(/took over the mount/g)?.length, 3)
})

test.serial('ext4 on a loop device over an image keeps working across a daemon SIGKILL: files written before and after read back, and e2fsck is clean', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'fs.img')
  await run('truncate', ['-s', String(128 * MiB), image])
  await run('mkfs.ext4', ['-q', '-F', image])
  const dir = await m.loopMount(image)
  await run('dd', ['if=/dev/urandom', `of=${path.join(dir, 'before')}`, 'bs=1M', 'count=8', 'status=none'])
  await run('sync', [])
  const before = sha256(path.join(dir, 'before'))
  // Writes in flight through the loop device while the daemon dies.
  const writer = run('dd', ['if=/dev/urandom', `of=${path.join(dir, 'during')}`, 'bs=1M', 'count=24', 'oflag=direct', 'status=none'])
  await sleep(300)
  await m.takeoverAfterKill()
  await writer
  await run('dd', ['if=/dev/urandom', `of=${path.join(dir, 'after')}`, 'bs=1M', 'count=8', 'conv=fsync', 'status=none'])
  const during = sha256(path.join(dir, 'during'))
  const after = sha256(path.join(dir, 'after'))
  await run('sync', [])
  await run('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'])
  t.is(sha256(path.join(dir, 'before')), before)
  t.is(sha256(path.join(dir, 'during')), during)
  t.is(sha256(path.join(dir, 'after')), after)
  await m.loopUmount(dir)
  await t.notThrowsAsync(run('e2fsck', ['-fn', image]), 'e2fsck is clean')
  // Through a remount as well.
  await m.umount()
  await m.mount()
  const again = await m.loopMount(image, 'loop,ro')
  t.is(sha256(path.join(again, 'during')), during)
  t.is(sha256(path.join(again, 'after')), after)
})

/**
 * A mount whose daemon, and each one its holder starts, dies before replying to a request of kind K
 * that succeeded while hooks/K exists (removing the file: once; a number in it delays the death by that
 * many ms, the reply held back): VDISKFS_TEST_DIE_BEFORE_REPLY.
 */
async function mountWithDeathHooks (t: ExecutionContext): Promise<{ m: TestMount, hooks: string }> {
  const hooks = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? '/tmp', 'vdiskfs-die-'))
  t.teardown(() => fs.rmSync(hooks, { recursive: true, force: true }))
  process.env.VDISKFS_TEST_DIE_BEFORE_REPLY = hooks
  try { return { m: await withMount(t), hooks } } finally { delete process.env.VDISKFS_TEST_DIE_BEFORE_REPLY }
}

test.serial('requests the dead daemon had done and not answered are resent to the next one and succeed as done: create, rename, unlink, open, with no handle left open', async t => {
  const { m, hooks } = await mountWithDeathHooks(t)
  const resentDone = async (kind: string, work: () => Promise<void>): Promise<void> => {
    fs.writeFileSync(path.join(hooks, kind), '')
    const old = m.pid
    const taken = m.takenOverFrom(old)
    await work()
    t.not(await taken, old, `${kind}: a new daemon answered`)
    t.false(fs.existsSync(path.join(hooks, kind)), `${kind}: the daemon before died at it`)
  }
  const a = m.image('disks', 'a.img')
  const b = m.image('disks', 'b.img')
  await resentDone('create', async () => { await fs.promises.writeFile(a, 'made once') })
  t.is(fs.readFileSync(a, 'utf8'), 'made once')
  await resentDone('rename', async () => { await fs.promises.rename(a, b) })
  t.false(fs.existsSync(a))
  t.is(fs.readFileSync(b, 'utf8'), 'made once')
  await resentDone('open', async () => { t.is(await fs.promises.readFile(b, 'utf8'), 'made once') })
  // Neither the create's nor the open's handle is left open: rm without --force takes the image (its
  // last RELEASE may still be on its way on a loaded machine: a few tries; a handle left open stays).
  let rm = await vdiskfs('rm', b)
  for (let i = 0; i < 10 && rm.code !== 0 && /in use/.test(rm.stderr); i++) { await sleep(500); rm = await vdiskfs('rm', b) }
  t.is(rm.code, 0, `rm: ${rm.stderr}`)
  fs.writeFileSync(a, 'again')
  await resentDone('unlink', async () => { await fs.promises.unlink(a) })
  t.false(fs.existsSync(a))
  const log = daemonLog(m)
  t.regex(log, /disks\/a\.img was made by the daemon before the takeover: the resent request opens it/)
  t.regex(log, /disks\/a\.img -> disks\/b\.img was done by the daemon before the takeover/)
  t.regex(log, /disks\/a\.img was removed by the daemon before the takeover/)
  t.regex(log, /a resent request takes handle \d+/)
  const status = JSON.parse((await vdiskfs('status', m.mnt, '--json')).stdout) as { daemon: { fuse3: { resent: number } } }
  t.true(status.daemon.fuse3.resent >= 1, `this daemon was resent the unlink (${JSON.stringify(status.daemon.fuse3)})`)
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
})

test.serial('a daemon killed while the kernel holds its notification (a CLI rename waiting for the directory a create in flight holds) dies whole: the next one answers the create, and the rename shows', async t => {
  const { m, hooks } = await mountWithDeathHooks(t)
  fs.writeFileSync(m.image('disks', 'x.img'), 'x')
  // The create is done and its reply held back 2 s, then the daemon dies: meanwhile the kernel holds
  // disks/ for the create, and the rename's notification about disks/x.img waits for it.
  fs.writeFileSync(path.join(hooks, 'create'), '2000')
  const old = m.pid
  const taken = m.takenOverFrom(old)
  let created = false
  const creating = fs.promises.writeFile(m.image('disks', 'new.img'), 'new').then(() => { created = true })
  await sleep(500)
  const renaming = vdiskfs('rename', m.image('disks', 'x.img'), 'y.img')
  const done = await Promise.race([creating.then(() => true), sleep(60000).then(() => false)])
  if (!done) {
    // Before the notifier: the dead daemon's notifying thread stayed in the kernel, so it never fully
    // exited and no daemon took over. End the connection so that nothing stays hung.
    const minor = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find(line => line.split(' ')[4] === m.mnt)?.split(' ')[2]?.split(':')[1]
    try { fs.writeFileSync(`/sys/fs/fuse/connections/${String(minor)}/abort`, '1') } catch {}
  }
  t.true(done && created, 'the create returned within 60 s of the daemon\'s death')
  t.not(await taken, old, 'a new daemon took the mount over')
  await renaming
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')).sort(), ['new.img', 'y.img'])
  t.is(fs.readFileSync(m.image('disks', 'new.img'), 'utf8'), 'new')
  t.is(fs.readFileSync(m.image('disks', 'y.img'), 'utf8'), 'x')
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
})

test.serial('a daemon that keeps dying: the holder gives up after 5 restarts within a minute, the mount ends and no process is left', async t => {
  const m = await withMount(t)
  const holders = m.holderPids()
  t.is(holders.length, 1)
  for (let i = 0; i < 5; i++) await m.takeoverAfterKill()
  // The sixth death: no seventh daemon.
  process.kill(m.pid, 'SIGKILL')
  t.true(await waitForExit(m.pid))
  t.true(await waitForExit(holders[0]), 'the holder gave up and exited')
  t.regex(daemonLog(m), /giving up after restarts: 5/)
  // The connection ended with the last descriptor: the mount answers ENOTCONN at once, nobody waits.
  await until('ENOTCONN', () => { try { fs.statSync(m.mnt); return false } catch (err) { return (err as NodeJS.ErrnoException).code === 'ENOTCONN' } })
  const status = await vdiskfs('status', m.mnt)
  t.not(status.code, 0)
  t.is(status.stderr.trim().split('\n').length, 1, 'status says so in one line')
})

test.serial('a command run while the holder brings up a new daemon waits for it and is served by it', async t => {
  const m = await withMount(t)
  const old = m.pid
  process.kill(old, 'SIGKILL')
  t.true(await waitForExit(old))
  const status = await vdiskfs('status', m.mnt, '--json')
  t.is(status.code, 0, status.stderr)
  const pid = (JSON.parse(status.stdout) as { daemon: { pid: number } }).daemon.pid
  t.not(pid, old, 'the new daemon answered')
  m.pid = pid
})

test.serial('clean stops start no new daemon: SIGTERM ends the daemon, the holder and the mount', async t => {
  const m = await withMount(t)
  const holders = m.holderPids()
  t.is(holders.length, 1)
  fs.writeFileSync(m.image('disks', 'x.img'), 'kept')
  await m.terminate()
  for (const pid of holders) t.true(await waitForExit(pid), 'the holder stopped')
  await until('unmounted', () => !isMounted(m.mnt))
  t.false(/took over/.test(daemonLog(m)))
  await m.mount()
  t.is(fs.readFileSync(m.image('disks', 'x.img'), 'utf8'), 'kept')
})

test.serial('after daemon.log has been rotated away, the holder and the daemon it starts still log into the current daemon.log', async t => {
  process.env.VDISKFS_LOG_BYTES_MAX = '1024'
  t.teardown(() => { delete process.env.VDISKFS_LOG_BYTES_MAX })
  const m = await withMount(t)
  const logFile = path.join(m.pool, 'daemon.log')
  const current = (): string => [logFile + '.1', logFile].map(f => { try { return fs.readFileSync(f, 'utf8') } catch { return '' } }).join('')
  const started = Date.now()
  // Twice past 1 KiB: the file the holder was started with, which begins with the mount's line, is gone.
  t.regex(current(), / mounted \//)
  // (Each create and unlink through the mount is a line of the log.)
  for (let i = 0; i < 400 && / mounted \//.test(current()); i++) {
    fs.writeFileSync(m.image('disks', `scratch-${i}.img`), '')
    fs.unlinkSync(m.image('disks', `scratch-${i}.img`))
    await sleep(5)
  }
  t.notRegex(current(), / mounted \//, 'rotated twice')
  t.log(`rotated twice after ${Date.now() - started} ms`)
  const second = await m.takeoverAfterKill()
  t.log(`taken over after ${Date.now() - started} ms`)
  await until('the holder\'s line and the takeover in the current log', () =>
    new RegExp(`holder \\(pid \\d+\\): started a new daemon, pid ${second}\\n`).test(current()) && /took over the mount of/.test(current()))
  t.pass()
})
