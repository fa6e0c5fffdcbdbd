/**
 * What the daemon is doing (issue #11), through a real mount: `vdiskfs status --json` has every field with
 * sane values after some I/O, and the last errors; `--prometheus` is the Prometheus text format with the
 * operation counters; daemon.log names backups, clones, restores, rm, sync and gc, one line per event with an
 * ISO time (and creates, resizes, renames and removals through the mount), rotates at a configured size keeping both files 0600, and under -f the log goes to stderr.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { TestMount, cli, run, vdiskfs, waitForExit, withMount } from '../helpers/mount'

const iso = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

async function cliOk (...args: string[]): Promise<string> {
  const result = await vdiskfs(...args)
  if (result.code !== 0) throw new Error(`vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

test.serial('status --json: every field, with sane values after some I/O', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=16', 'conv=fsync', 'status=none'])
  // Direct: the pages the writes left in the page cache stay across opens (keep_cache), so a plain cat
  // would read nothing from the daemon.
  await run('dd', [`if=${disk}`, 'of=/dev/null', 'bs=64k', 'iflag=direct', 'status=none'])
  const status = JSON.parse(await cliOk('status', m.mnt, '--json'))
  t.is(status.daemon.pid, m.pid)
  t.is(status.daemon.mountpoint, fs.realpathSync(m.mnt))
  t.regex(status.started, iso)
  t.true(status.uptimeSeconds > 0)
  t.true(status.rssBytes > 10 * 1024 * 1024 && status.rssBytes < 4 * 1024 ** 3, `RSS ${status.rssBytes}`)
  t.true(status.heapUsedBytes > 0)
  t.true(status.openFds > 3 && status.openFds < 10000, `fds ${status.openFds}`)
  t.true(status.activeResources > 0)
  t.true(status.daemon.fuse3.requests > 0, 'the FUSE session counts its requests')
  const loop = status.eventLoopDelay
  t.true(loop.p50Ms >= 0 && loop.p50Ms <= loop.p99Ms && loop.p99Ms <= loop.maxMs, JSON.stringify(loop))
  t.true(status.windowSeconds > 0)
  const write = status.operations.write
  // The first write of a new image is the engine's (it makes the extent the addon's first writes then
  // lease); the addon writes the rest itself (docs/FASTPATH.md, "First writes") and counts them.
  t.true(write.count >= 1, `${write.count} engine writes`)
  t.true(write.count + status.daemon.fuse3.fastWritten >= 8, `${write.count} engine and ${status.daemon.fuse3.fastWritten} native writes of 1 MiB`)
  t.is(write.errors, 0)
  t.true(write.perSecond > 0)
  t.true(write.totalSeconds > 0)
  t.true(write.latency.p50Ms > 0 && write.latency.p50Ms <= write.latency.p90Ms && write.latency.p90Ms <= write.latency.p99Ms, JSON.stringify(write.latency))
  // The reads reach the engine, or the addon answers them itself (the writes published their blocks).
  t.true((status.operations.read?.count ?? 0) + status.daemon.fuse3.fastServed >= 1, 'the reads were served')
  t.is(status.operations.write.count, JSON.parse(await cliOk('status', m.mnt, '--json')).operations.write.count, 'status itself writes nothing')
  t.is(status.unsealedBytes, 16 * 65536, 'the 1 MiB written waits to be sealed')
  t.regex(status.unsealedAsOf, iso)
  t.is(status.chunkCache.hits + status.chunkCache.misses, 0, 'nothing sealed, nothing read from chunks')
  t.true(status.chunkCache.bytesMax > 0)
  t.like(status.rootCache, { bytesMax: 32 * 1024 * 1024 }, 'the backups\' roots read on first use, and their bound')
  // Slot writes of 64 KiB go inline (issue #10), unless one was slow on a busy machine.
  // (The addon writes the blocks after the first itself: its blocks in new slots count the rest.)
  t.true(status.writes.inline + status.writes.pooled + status.daemon.fuse3.fastAllocated >= 16, `${JSON.stringify(status.writes)}, ${status.daemon.fuse3.fastAllocated} native`)
  t.true(status.writes.inline >= 1 || status.writes.slow >= 1, JSON.stringify(status.writes))
  t.deepEqual(status.jobs, [])
  t.deepEqual(status.lastErrors, [])
  // Sealed, then read past the page cache: the chunk cache counts it.
  await cliOk('sync', m.mnt)
  await run('dd', [`if=${disk}`, 'of=/dev/null', 'bs=64k', 'iflag=direct', 'status=none'])
  await run('dd', [`if=${disk}`, 'of=/dev/null', 'bs=64k', 'iflag=direct', 'status=none'])
  const after = JSON.parse(await cliOk('status', m.mnt, '--json'))
  const cache = after.chunkCache
  // The engine's reads count there; once a page's chunks are registered, the addon reads them itself.
  const native = (after.daemon.fuse3?.fastChunkReads ?? 0) as number
  t.true(cache.misses >= 1 && cache.hits + cache.misses + native >= 32, JSON.stringify({ cache, native }))
  // Text for people: one table row per operation.
  const text = await cliOk('status', m.mnt)
  t.regex(text, /event loop:\s+delay p50/)
  t.regex(text, /writes:\s+\d+ inline, \d+ through the thread pool/)
  t.regex(text, /^backup roots: \d+ in memory \([^)]+ of 32\.0 MiB\), \d+ read from the catalog on first use, \d+ dropped$/m)
  t.regex(text, /^write\s+\d+\s+0\s/m)
  t.is((await vdiskfs('status', m.mnt, '--json', '--prometheus')).code, 2)
  t.is((await vdiskfs('status', path.join(m.dir, 'nowhere'))).code, 1)
})

test.serial('after a burst of commits the daemon gives the C heap\'s free pages back, and status says so', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 't.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=32', 'conv=fsync', 'status=none'])
  // The checks come every 5 s: the first after the commits stopped asks for a trim (memory-trim.ts).
  let status = JSON.parse(await cliOk('status', m.mnt, '--json'))
  for (let waited = 0; waited < 30_000 && (status.memoryTrims?.count ?? 0) === 0; waited += 500) {
    await new Promise(resolve => setTimeout(resolve, 500))
    status = JSON.parse(await cliOk('status', m.mnt, '--json'))
  }
  t.true(status.memoryTrims.count >= 1, JSON.stringify(status.memoryTrims))
  t.true(status.memoryTrims.lastMs >= 0)
  t.regex(await cliOk('status', m.mnt), /^memory: .* buffers; C heap trimmed \d+ times?, the last gave back .* in [\d.]+ ms$/m)
})

test.serial('status shows the last errors: a damaged block read through the mount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'victim.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=4', 'conv=fsync', 'status=none'])
  await m.umount()
  const extents = fs.readdirSync(path.join(m.pool, 'extents')).filter(f => f.endsWith('.dx'))
  const fd = fs.openSync(path.join(m.pool, 'extents', extents[0]), 'r+')
  const at = fs.fstatSync(fd).size - 65536 + 777 // inside the last slot
  const byte = Buffer.alloc(1)
  fs.readSync(fd, byte, 0, 1, at)
  byte[0] ^= 0x01
  fs.writeSync(fd, byte, 0, 1, at)
  fs.closeSync(fd)
  await m.mount()
  t.throws(() => fs.readFileSync(disk), { code: 'EIO' })
  const status = JSON.parse(await cliOk('status', m.mnt, '--json'))
  t.true(status.lastErrors.length >= 1)
  t.regex(status.lastErrors[0].time, iso)
  t.true(status.lastErrors.some((e: { message: string }) => /corruption: delta extent/.test(e.message)), JSON.stringify(status.lastErrors))
  t.true(status.operations.read.errors >= 1)
  t.regex(await cliOk('status', m.mnt), /last errors:\n.*corruption: delta extent/)
})

test.serial('status --prometheus is the Prometheus text format, with the operation counters', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/zero', `of=${disk}`, 'bs=64k', 'count=4', 'status=none'])
  const text = await cliOk('status', m.mnt, '--prometheus')
  const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/
  const names = new Set<string>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue
    const match = sample.exec(line)
    t.truthy(match, `not a comment or a sample: ${line}`)
    if (match !== null) names.add(match[1])
  }
  for (const name of names) t.regex(name, /^vdiskfs_/)
  const mnt = fs.realpathSync(m.mnt)
  const writes = new RegExp(`^vdiskfs_fuse_operations_total\\{operation="write",mountpoint="${mnt}"\\} (\\d+)$`, 'm').exec(text)
  t.truthy(writes, 'the write counter')
  t.true(Number(writes?.[1]) >= 2)
  t.regex(text, /^# TYPE vdiskfs_fuse_operations_total counter$/m)
  t.regex(text, /^vdiskfs_fuse_operation_latency_seconds\{operation="write",quantile="0.99",mountpoint="[^"]+"\} [0-9.e-]+$/m)
  t.regex(text, /^vdiskfs_resident_memory_bytes\{mountpoint="[^"]+"\} \d+$/m)
  t.regex(text, /^vdiskfs_event_loop_delay_p99_seconds\{mountpoint="[^"]+"\} /m)
  // What promtool check metrics asks (checked with promtool 2.42): a quantile label only on a summary,
  // whose series come with _sum and _count.
  const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map(m => [m[1], m[2]]))
  for (const line of text.split('\n').filter(l => /quantile="/.test(l))) t.is(types.get(line.split('{')[0]), 'summary', line)
  t.is(types.get('vdiskfs_fuse_operation_latency_seconds'), 'summary')
  t.regex(text, /^vdiskfs_fuse_operation_latency_seconds_count\{operation="write",mountpoint="[^"]+"\} \d+$/m)
  t.regex(text, /^vdiskfs_fuse_operation_latency_seconds_sum\{operation="write",mountpoint="[^"]+"\} [0-9.e-]+$/m)
  t.regex(text, /^vdiskfs_unsealed_bytes\{mountpoint="[^"]+"\} \d+$/m)
  t.regex(text, /^vdiskfs_open_fds\{mountpoint="[^"]+"\} \d+$/m)
  t.regex(text, /^vdiskfs_memory_trims_total\{mountpoint="[^"]+"\} \d+$/m)
})

test.serial('daemon.log names each operation, one line per event, and rotates at its size keeping 0600 files', async t => {
  process.env.VDISKFS_LOG_BYTES_MAX = '2048'
  t.teardown(() => { delete process.env.VDISKFS_LOG_BYTES_MAX })
  const m = await withMount(t)
  const disk = m.image('disks', 'web.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=4', 'status=none'])
  await cliOk('backup', disk, 'web-monday')
  await cliOk('clone', m.image('backups', 'web-monday.img'), 'test1')
  await cliOk('restore', m.image('backups', 'web-monday.img'), disk)
  await cliOk('sync', m.mnt)
  await cliOk('rm', m.image('clones', 'test1.img'))
  await cliOk('gc', m.mnt)
  const scratch = m.image('disks', 'scratch.img')
  fs.writeFileSync(scratch, '')
  fs.truncateSync(scratch, 1024 * 1024)
  fs.renameSync(scratch, m.image('disks', 'scratch2.img'))
  fs.unlinkSync(m.image('disks', 'scratch2.img'))
  const logFile = path.join(m.pool, 'daemon.log')
  // The daemon writes its log in the background: the last line may land a moment after the unlink
  // returned (it is queued before the reply). Wait for it, up to 5 s.
  let log = fs.readFileSync(logFile, 'utf8')
  for (let waited = 0; waited < 5000 && !/rm: disks\/scratch2\.img \(unlinked through the mount\)\n/.test(log); waited += 50) {
    await new Promise(resolve => setTimeout(resolve, 50))
    log = fs.readFileSync(logFile, 'utf8')
  }
  t.regex(log, /backup: disks\/web\.img -> backups\/web-monday\.img/)
  t.regex(log, /clone: backups\/web-monday\.img -> clones\/test1\.img/)
  t.regex(log, /restore: disks\/web\.img from backups\/web-monday\.img/)
  t.regex(log, /sync: sealed \d+ extents/)
  t.regex(log, /rm: clones\/test1\.img/)
  t.regex(log, /gc: freed \d+ map pages/)
  t.regex(log, /create: disks\/scratch\.img\n/)
  t.regex(log, /resize: disks\/scratch\.img from 0 to 1048576 bytes\n/)
  t.regex(log, /rename: disks\/scratch\.img -> disks\/scratch2\.img\n/)
  t.regex(log, /rm: disks\/scratch2\.img \(unlinked through the mount\)\n/)
  t.false(fs.existsSync(logFile + '.1'), 'not rotated yet')
  // Past 2 KiB: rotated once or more, one older file kept.
  for (let i = 0; i < 16; i++) {
    await cliOk('backup', disk, `b${i}`)
    await cliOk('rm', m.image('backups', `b${i}.img`))
  }
  await m.umount()
  for (const file of [logFile, logFile + '.1']) {
    const stat = fs.statSync(file)
    t.is(stat.mode & 0o777, 0o600, file)
    t.true(stat.size <= 2048, `${file}: ${stat.size} bytes`)
  }
  t.false(fs.existsSync(logFile + '.2'))
  const lines = (fs.readFileSync(logFile + '.1', 'utf8') + fs.readFileSync(logFile, 'utf8')).trimEnd().split('\n')
  for (const line of lines) t.regex(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S/)
  t.true(lines.some(line => / rm: backups\/b15\.img$/.test(line)))
  t.regex(lines[lines.length - 1], / stopped$/, 'the last line is written before the daemon exits')
})

test.serial('under -f the log goes to stderr, and no daemon.log is written', async t => {
  const dir = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), 'vdiskfs-test-'))
  const m = new TestMount(dir, path.join(dir, 'pool'), path.join(dir, 'mnt'))
  fs.mkdirSync(m.mnt)
  t.teardown(async () => await m.cleanup())
  const child = spawn(cli, ['mount', m.pool, m.mnt, '-f'], { stdio: ['ignore', 'ignore', 'pipe'] })
  m.pid = child.pid ?? 0
  let stderr = ''
  child.stderr.setEncoding('utf8')
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (text: string) => { stderr += text; if (stderr.includes('vdiskfs: serving')) resolve() })
    child.on('exit', code => reject(new Error(`exited ${String(code)}: ${stderr}`)))
  })
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, 'x')
  await cliOk('backup', disk, 'b')
  process.kill(m.pid, 'SIGTERM')
  t.true(await waitForExit(m.pid))
  t.regex(stderr, /^\d{4}-\d\d-\d\dT\S+ mounted /m)
  t.regex(stderr, /^\d{4}-\d\d-\d\dT\S+ backup: disks\/d\.img -> backups\/b\.img/m)
  t.regex(stderr, /stopped\n$/)
  t.false(fs.existsSync(path.join(m.pool, 'daemon.log')))
})
