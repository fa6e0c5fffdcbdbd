/**
 * Remote store throughput (issues #12 and #22), standalone: `node dist/bench/remote.js`. Starts its own
 * Ceph RGW (scripts/ceph-rgw.sh, through test/helpers/rgw.ts), pools standing for hosts, and a disk of
 * VDISKFS_BENCH_REMOTE_MIB (default 1024) MiB of real data: an ext4 filesystem (mkfs.ext4, loop-mounted)
 * filled with a copy of /usr until it is full, then copied into the pool (sparse); then measures
 *   - push of its backup to an empty store (MB/s of the disk's size), the bytes it sent against the
 *     stored size of the new chunks (issue #22's bar: at most 1.1x),
 *   - pull into the second pool (MB/s), the bytes it received against the chunks' stored size,
 *   - the second host's push of a similar image (a clone of the pulled backup with 2% of its data blocks
 *     rewritten): bytes it uploads,
 *   - an incremental push on the first host after 1% of the data changed: seconds and bytes uploaded,
 *   - the same push and pull to an encrypted store (issue #22: `remote add --key`),
 *   - a lazy pull (issue #22's instant restore) into a fourth pool, after the push and a `sync`, before the
 *     pull: when `pull --lazy` returns, and when the first MiB of the image reads (open, read, close, from
 *     the start of the command), then a MiB in the middle of the image (its chunks fetched on demand by the
 *     hydrator); the hydrator is then killed by its pid (bench/remote-common.ts, shared with bench/lazy-pull.ts),
 *   - the baseline of issue #22's speed bar: one object of the same size PUT and then GET through the same
 *     SDK (@aws-sdk/client-s3, one request each) to the same RGW, and push and pull as a fraction of it.
 * Prints a markdown table and one JSON line; tears everything down (mounts, daemons, RGW) at the end.
 * VDISKFS_BENCH_REMOTE_QUICK=1 leaves out the second host, the incremental push and the encrypted store;
 * VDISKFS_BENCH_REMOTE_PERF=DIR records the push and the pull with perf (DIR/push-cli.data, push-daemon.data ...).
 */
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { Readable } from 'node:stream'
import { rgwAccessKey, rgwSecretKey, startRgw } from '../test/helpers/rgw'
import { BenchPools, buildUsrDisk, cli, dataBytes, lazyPull, load, mib, workRoot } from './remote-common'

// As src/remote/s3-store.ts does: the SDK's Node 22 notice says nothing about a pinned release.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'

const blockBytes = 64 * 1024
const quick = process.env.VDISKFS_BENCH_REMOTE_QUICK === '1'
/** VDISKFS_BENCH_REMOTE_PERF=DIR: perf record of the push and the pull (their CLI and daemon) into DIR. */
const perfDir = process.env.VDISKFS_BENCH_REMOTE_PERF

interface Pushed { id: string, chunksUploaded: number, bytesUploaded: number, chunksReused: number, since: string | null, chunkBytesUploaded: number, objectBytesUploaded: number, packsUploaded: number }
interface Pulled { bytesDownloaded: number, chunkBytesDownloaded: number }

/** CPU seconds (user + system, every thread) process `pid` has used so far; 0 when it is gone. */
function cpuOf (pid: number): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')
    // After the command's name: state is field 3, utime and stime fields 14 and 15 (clock ticks of 1/100 s).
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch { return 0 }
}

/** Where the CPU of one push or pull went: the CLI (from /usr/bin/time), the daemon, RGW and its OSD. */
interface CpuSplit { cli: number, daemon: number, rgw: number, osd: number }

function seconds<T> (work: () => T): [number, T] {
  const started = process.hrtime.bigint()
  const result = work()
  return [Number(process.hrtime.bigint() - started) / 1e9, result]
}

/** Rewrites `fraction` of the disk's blocks (random ones) with random bytes. */
function rewrite (image: string, fraction: number): number {
  const fd = fs.openSync(image, 'r+')
  const blocks = Math.round(dataBytes / blockBytes * fraction)
  for (let i = 0; i < blocks; i++) {
    fs.writeSync(fd, crypto.randomBytes(blockBytes), 0, blockBytes, crypto.randomInt(dataBytes / blockBytes) * blockBytes)
  }
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  return blocks * blockBytes
}

async function main (): Promise<void> {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'remote-'))
  const rgwStarted = process.hrtime.bigint()
  const rgw = await startRgw()
  const rgwSeconds = Number(process.hrtime.bigint() - rgwStarted) / 1e9
  const vdiskfs = (...args: string[]): string => execFileSync(cli, args, { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
  const benchPools = new BenchPools(dir, rgw.env)
  const rgwPid = (name: string): number => Number(fs.readFileSync(path.join(rgw.dir, `${name}.pid`), 'utf8'))
  /** The command run under /usr/bin/time, with the CPU it and the daemon of `mnt`, RGW and the OSD used meanwhile. */
  const measured = (mnt: string, ...args: string[]): [string, CpuSplit] => {
    const daemon = (JSON.parse(vdiskfs('status', mnt, '--json')) as { daemon: { pid: number } }).daemon.pid
    const pids = { daemon, rgw: rgwPid('rgw'), osd: rgwPid('osd') }
    const before = { daemon: cpuOf(pids.daemon), rgw: cpuOf(pids.rgw), osd: cpuOf(pids.osd) }
    const timeFile = path.join(dir, 'time.out')
    const timed = ['/usr/bin/time', '-f', '%U %S', '-o', timeFile]
    let out: string
    if (perfDir === undefined) out = execFileSync(timed[0], [...timed.slice(1), cli, ...args], { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
    else {
      // Profiling (not for the figures): perf records the daemon by its pid and the CLI from its start.
      const name = path.join(perfDir, args[0])
      const quote = (word: string): string => `'${word.replace(/'/g, "'\\''")}'`
      const script = `perf record -q -F 199 -g -p ${daemon} -o ${quote(name + '-daemon.data')} & P=$!; sleep 1; ` +
        `${[...timed, 'perf', 'record', '-q', '-F', '199', '-g', '-o', name + '-cli.data', '--', process.execPath, '--perf-basic-prof', cli, ...args].map(quote).join(' ')}; S=$?; kill -INT $P; wait $P; exit $S`
      out = execFileSync('sh', ['-c', script], { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
    }
    const [user, system] = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop()?.split(' ').map(Number) ?? [0, 0]
    const round = (n: number): number => Number(n.toFixed(2))
    return [out, { cli: round(user + system), daemon: round(cpuOf(pids.daemon) - before.daemon), rgw: round(cpuOf(pids.rgw) - before.rgw), osd: round(cpuOf(pids.osd) - before.osd) }]
  }
  try {
    // host-c pulls from the encrypted store (a pool refuses a second copy of a backup it holds).
    // host-d pulls lazily.
    const remote = { name: 'bench', url: 's3://vdiskfs-bench/store', endpoint: rgw.endpoint }
    const [a, b, c, d] = ['host-a', 'host-b', 'host-c', 'host-d'].map(name => benchPools.mount(name, remote))
    // Real data: an ext4 holding as much of /usr as fits, built outside the pool, then copied in (sparse).
    const disk = path.join(a, 'disks', 'bench.img')
    buildUsrDisk(dir, disk)
    vdiskfs('backup', disk, 'b1')
    vdiskfs('sync', a)
    const loadBefore = load()
    const [pushSeconds, [pushOut, pushCpu]] = seconds(() => measured(a, 'push', path.join(a, 'backups', 'b1.img'), 'bench', '--json'))
    const pushed = JSON.parse(pushOut) as Pushed

    // A lazy pull (issue #22's instant restore), into a pool of its own: the command, then the first MiB
    // (it comes with the backup), then a MiB in the middle (fetched on demand). Measured here, after the
    // push's writes are flushed (sync) and before the 1 GiB pull: an instant restore stands for a host
    // that restores one backup, not one that is writing another 1 GiB to the same disk meanwhile (where
    // it ran before, right after the pull, it took 2 to 3 s more, waiting on that pull's writeback).
    execFileSync('sync')
    const lazy = lazyPull(rgw.env, d, 'bench', pushed.id, 'lazy', path.join(a, 'backups', 'b1.img'))
    const loadAtLazy = lazy.loadBefore

    const [pullSeconds, [pullOut, pullCpu]] = seconds(() => measured(b, 'pull', b, 'bench', pushed.id, 'b1', '--json'))
    const pulled = JSON.parse(pullOut) as Pulled
    const loadAfterPull = load()

    let changedB = 0
    let secondSeconds = 0
    let second: Pushed = pushed
    let changedA = 0
    let incrementalSeconds = 0
    let incremental: Pushed = pushed
    let sealedPushSeconds = 0
    let sealedPullSeconds = 0
    let sealedPushed: Pushed = pushed
    let sealedPulled: Pulled = pulled
    if (!quick) {
      // The second host: a clone of what it pulled, 2% of the data rewritten, backed up and pushed.
      vdiskfs('clone', path.join(b, 'backups', 'b1.img'), 'work')
      changedB = rewrite(path.join(b, 'clones', 'work.img'), 0.02)
      vdiskfs('backup', path.join(b, 'clones', 'work.img'), 'h1')
      vdiskfs('sync', b)
      ;[secondSeconds, second] = seconds(() => JSON.parse(vdiskfs('push', path.join(b, 'backups', 'h1.img'), 'bench', '--json')) as Pushed)

      // An incremental push on the first host: 1% of the data changed since b1.
      changedA = rewrite(disk, 0.01)
      vdiskfs('backup', disk, 'b2')
      vdiskfs('sync', a)
      ;[incrementalSeconds, incremental] = seconds(() => JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b2.img'), 'bench', '--json')) as Pushed)

      // The same backup to an encrypted store, pushed and pulled (into a third pool).
      const keyFile = path.join(dir, 'bench.key')
      vdiskfs('key', 'create', keyFile)
      for (const mnt of [a, c]) vdiskfs('remote', 'add', mnt, 'sealed', 's3://vdiskfs-bench/sealed', '--endpoint', rgw.endpoint, '--key', keyFile)
      ;[sealedPushSeconds, sealedPushed] = seconds(() => JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b1.img'), 'sealed', '--json')) as Pushed)
      ;[sealedPullSeconds, sealedPulled] = seconds(() => JSON.parse(vdiskfs('pull', c, 'sealed', sealedPushed.id, 'b1', '--json')) as Pulled)
    }

    const baselineLoad = load()
    // The baseline: one object of the data's size, one PUT and one GET, through the same SDK.
    const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: rgwAccessKey, secretAccessKey: rgwSecretKey }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' })
    const body = crypto.randomBytes(dataBytes)
    let started = process.hrtime.bigint()
    await client.send(new PutObjectCommand({ Bucket: 'vdiskfs-bench', Key: 'baseline', Body: body }))
    const putSeconds = Number(process.hrtime.bigint() - started) / 1e9
    started = process.hrtime.bigint()
    const reply = await client.send(new GetObjectCommand({ Bucket: 'vdiskfs-bench', Key: 'baseline' }))
    let got = 0
    for await (const chunk of reply.Body as Readable) got += (chunk as Buffer).length
    const getSeconds = Number(process.hrtime.bigint() - started) / 1e9
    client.destroy()
    if (got !== dataBytes) throw new Error(`the baseline GET read ${got} bytes, not ${dataBytes}`)

    const mbps = (bytes: number, s: number): string => (bytes / 1e6 / s).toFixed(1)
    const figures = {
      dataMiB: dataBytes / mib,
      loadBeforePush: loadBefore,
      loadAfterPull,
      loadAtBaseline: baselineLoad,
      rgwStartSeconds: Number(rgwSeconds.toFixed(1)),
      pushSeconds: Number(pushSeconds.toFixed(2)),
      pushMBps: Number(mbps(dataBytes, pushSeconds)),
      pushNewChunkBytes: pushed.chunkBytesUploaded,
      pushSentBytes: pushed.objectBytesUploaded,
      pushSentOfNewChunks: Number((pushed.objectBytesUploaded / pushed.chunkBytesUploaded).toFixed(3)),
      pushPacks: pushed.packsUploaded,
      pullChunkBytes: pulled.chunkBytesDownloaded,
      pullReceivedBytes: pulled.bytesDownloaded,
      pullReceivedOfChunks: Number((pulled.bytesDownloaded / pulled.chunkBytesDownloaded).toFixed(3)),
      pullSeconds: Number(pullSeconds.toFixed(2)),
      pullMBps: Number(mbps(dataBytes, pullSeconds)),
      secondHostChangedBytes: changedB,
      secondHostUploadedBytes: second.bytesUploaded,
      secondHostNewChunkBytes: second.chunkBytesUploaded,
      secondHostSentBytes: second.objectBytesUploaded,
      secondHostSeconds: Number(secondSeconds.toFixed(2)),
      incrementalChangedBytes: changedA,
      incrementalUploadedBytes: incremental.bytesUploaded,
      incrementalNewChunkBytes: incremental.chunkBytesUploaded,
      incrementalSentBytes: incremental.objectBytesUploaded,
      incrementalSince: incremental.since,
      incrementalSeconds: Number(incrementalSeconds.toFixed(2)),
      encryptedPushMBps: Number(mbps(dataBytes, sealedPushSeconds)),
      encryptedPushSeconds: Number(sealedPushSeconds.toFixed(2)),
      encryptedPushSentOfNewChunks: Number((sealedPushed.objectBytesUploaded / sealedPushed.chunkBytesUploaded).toFixed(3)),
      encryptedPullReceivedOfChunks: Number((sealedPulled.bytesDownloaded / sealedPulled.chunkBytesDownloaded).toFixed(3)),
      encryptedPullMBps: Number(mbps(dataBytes, sealedPullSeconds)),
      encryptedPullSeconds: Number(sealedPullSeconds.toFixed(2)),
      baselinePutMBps: Number(mbps(dataBytes, putSeconds)),
      baselineGetMBps: Number(mbps(dataBytes, getSeconds)),
      pushOfBaseline: Number((putSeconds / pushSeconds).toFixed(2)),
      pullOfBaseline: Number((getSeconds / pullSeconds).toFixed(2)),
      encryptedPushOfBaseline: Number((putSeconds / sealedPushSeconds).toFixed(2)),
      encryptedPullOfBaseline: Number((getSeconds / sealedPullSeconds).toFixed(2)),
      pushCpu,
      pullCpu,
      lazyLoad: loadAtLazy,
      lazyCommandSeconds: Number(lazy.command.toFixed(2)),
      lazyFirstMiBSeconds: Number(lazy.firstMiB.toFixed(2)),
      lazyFirstMiBFromCommandSeconds: Number(lazy.firstMiBFromCommand.toFixed(2)),
      lazyMiddleMiBSeconds: Number(lazy.middleMiB.toFixed(2))
    }
    const mibOf = (n: number): string => (n / mib).toFixed(1)
    console.log(`| remote store (RGW on 127.0.0.1, a ${dataBytes / mib} MiB disk: ext4 holding a copy of /usr) | figure |`)
    console.log('|---|---|')
    console.log(`| push to an empty store | ${figures.pushMBps} MB/s (${figures.pushSeconds} s); sent ${mibOf(pushed.objectBytesUploaded)} MiB for ${mibOf(pushed.chunkBytesUploaded)} MiB of new chunks (${figures.pushSentOfNewChunks}x) in ${pushed.packsUploaded} packs |`)
    console.log(`| pull into a second pool | ${figures.pullMBps} MB/s (${figures.pullSeconds} s); received ${mibOf(pulled.bytesDownloaded)} MiB for ${mibOf(pulled.chunkBytesDownloaded)} MiB of chunks (${figures.pullReceivedOfChunks}x) |`)
    console.log(`| second host's push of a similar image (${mibOf(changedB)} MiB of blocks rewritten) | ${mibOf(second.bytesUploaded)} MiB of blocks uploaded; sent ${mibOf(second.objectBytesUploaded)} MiB for ${mibOf(second.chunkBytesUploaded)} MiB of new chunks (${figures.secondHostSeconds} s) |`)
    console.log(`| incremental push, 1% changed (${mibOf(changedA)} MiB of blocks) | ${mibOf(incremental.bytesUploaded)} MiB of blocks uploaded; sent ${mibOf(incremental.objectBytesUploaded)} MiB for ${mibOf(incremental.chunkBytesUploaded)} MiB of new chunks, in ${figures.incrementalSeconds} s |`)
    console.log(`| push to an empty encrypted store | ${figures.encryptedPushMBps} MB/s (${figures.encryptedPushSeconds} s) |`)
    console.log(`| pull from the encrypted store | ${figures.encryptedPullMBps} MB/s (${figures.encryptedPullSeconds} s) |`)
    const split = (c: CpuSplit): string => `CLI ${c.cli} s, daemon ${c.daemon} s, RGW ${c.rgw} s, OSD ${c.osd} s`
    console.log(`| CPU of the push / of the pull (user + system) | ${split(pushCpu)} / ${split(pullCpu)} |`)
    console.log(`| lazy pull: the command returns / the first MiB read / from the command to the first MiB / a MiB in the middle (fetched on demand); load average before it | ${figures.lazyCommandSeconds} s / ${figures.lazyFirstMiBSeconds} s / ${figures.lazyFirstMiBFromCommandSeconds} s / ${figures.lazyMiddleMiBSeconds} s; ${loadAtLazy} |`)
    console.log(`| baseline: one ${dataBytes / mib} MiB object, PUT / GET through the same SDK | ${figures.baselinePutMBps} / ${figures.baselineGetMBps} MB/s |`)
    console.log(`| load average (1 min) before the push / after the pull / at the baseline | ${loadBefore} / ${loadAfterPull} / ${baselineLoad} |`)
    console.log(`| push / pull as a fraction of the baseline (issue #22's bar: 0.8; sent/received at most 1.1x the chunks) | ${figures.pushOfBaseline} / ${figures.pullOfBaseline} (encrypted: ${figures.encryptedPushOfBaseline} / ${figures.encryptedPullOfBaseline}) |`)
    console.log(JSON.stringify(figures))
  } finally {
    benchPools.unmountAll()
    await rgw.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(`bench remote: ${(err as Error).message}`); process.exitCode = 1 })
