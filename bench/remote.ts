/**
 * Remote store throughput (issue #12), standalone: `node dist/bench/remote.js`. Starts its own Ceph RGW
 * (scripts/ceph-rgw.sh, through test/helpers/rgw.ts), two pools standing for two hosts, and a disk with
 * VDISKFS_BENCH_REMOTE_MIB (default 512) MiB written (half random, half text) across a 20 GiB sparse
 * disk, sealed; then measures
 *   - push of its backup to an empty store (MB/s of the backup's data),
 *   - pull into the second pool (MB/s),
 *   - the second host's push of a similar image (a clone of the pulled backup with 2% of its data blocks
 *     rewritten): bytes it uploads,
 *   - an incremental push on the first host after 1% of the data changed: seconds and bytes uploaded,
 *   - the same push and pull to an encrypted store (issue #22: `remote add --key`),
 *   - the baseline of issue #22's speed bar: one object of the same size PUT and then GET through the same
 *     SDK (@aws-sdk/client-s3, one request each) to the same RGW, and push and pull as a fraction of it.
 * Prints a markdown table and one JSON line; tears everything down (mounts, daemons, RGW) at the end.
 */
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { Readable } from 'node:stream'
import { rgwAccessKey, rgwSecretKey, startRgw } from '../test/helpers/rgw'

// As src/remote/s3-store.ts does: the SDK's Node 22 notice says nothing about a pinned release.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'

const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const workRoot = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
const mib = 1024 * 1024
const dataBytes = Number(process.env.VDISKFS_BENCH_REMOTE_MIB ?? 512) * mib
const diskBytes = 20 * 1024 ** 3
const blockBytes = 64 * 1024
const pieceBytes = 4 * mib

interface Pushed { id: string, chunksUploaded: number, bytesUploaded: number, chunksReused: number, since: string | null }

function seconds<T> (work: () => T): [number, T] {
  const started = process.hrtime.bigint()
  const result = work()
  return [Number(process.hrtime.bigint() - started) / 1e9, result]
}

/** Rewrites `fraction` of the data's blocks (random ones, spread over the pieces) with random bytes. */
function rewrite (image: string, stride: number, fraction: number): number {
  const fd = fs.openSync(image, 'r+')
  const blocks = Math.round(dataBytes / blockBytes * fraction)
  for (let i = 0; i < blocks; i++) {
    const piece = crypto.randomInt(dataBytes / pieceBytes)
    const block = crypto.randomInt(pieceBytes / blockBytes)
    fs.writeSync(fd, crypto.randomBytes(blockBytes), 0, blockBytes, piece * stride + block * blockBytes)
  }
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  return blocks * blockBytes
}

async function main (): Promise<void> {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'remote-'))
  const mounts: string[] = []
  const rgwStarted = process.hrtime.bigint()
  const rgw = await startRgw()
  const rgwSeconds = Number(process.hrtime.bigint() - rgwStarted) / 1e9
  const vdiskfs = (...args: string[]): string => execFileSync(cli, args, { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
  try {
    // host-c pulls from the encrypted store (a pool refuses a second copy of a backup it holds).
    const pools = ['host-a', 'host-b', 'host-c'].map(name => ({ pool: path.join(dir, `${name}-pool`), mnt: path.join(dir, `${name}-mnt`) }))
    for (const { pool, mnt } of pools) {
      fs.mkdirSync(mnt, { recursive: true })
      vdiskfs('mount', pool, mnt)
      mounts.push(mnt)
      vdiskfs('remote', 'add', mnt, 'bench', 's3://vdiskfs-bench/store', '--endpoint', rgw.endpoint)
    }
    const [a, b, c] = pools.map(p => p.mnt)
    const disk = path.join(a, 'disks', 'bench.img')
    fs.writeFileSync(disk, '')
    fs.truncateSync(disk, diskBytes)
    const fd = fs.openSync(disk, 'r+')
    const text = Buffer.alloc(pieceBytes, 'vdiskfs remote bench: some text that compresses well enough. ')
    const pieces = dataBytes / pieceBytes
    const stride = Math.floor(diskBytes / pieces / blockBytes) * blockBytes
    for (let i = 0; i < pieces; i++) fs.writeSync(fd, i % 2 === 0 ? crypto.randomBytes(pieceBytes) : text, 0, pieceBytes, i * stride)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    vdiskfs('backup', disk, 'b1')
    vdiskfs('sync', a)
    const [pushSeconds, pushed] = seconds(() => JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b1.img'), 'bench', '--json')) as Pushed)
    const [pullSeconds] = seconds(() => vdiskfs('pull', b, 'bench', pushed.id, 'b1'))

    // The second host: a clone of what it pulled, 2% of the data rewritten, backed up and pushed.
    vdiskfs('clone', path.join(b, 'backups', 'b1.img'), 'work')
    const changedB = rewrite(path.join(b, 'clones', 'work.img'), stride, 0.02)
    vdiskfs('backup', path.join(b, 'clones', 'work.img'), 'h1')
    vdiskfs('sync', b)
    const [secondSeconds, second] = seconds(() => JSON.parse(vdiskfs('push', path.join(b, 'backups', 'h1.img'), 'bench', '--json')) as Pushed)

    // An incremental push on the first host: 1% of the data changed since b1.
    const changedA = rewrite(disk, stride, 0.01)
    vdiskfs('backup', disk, 'b2')
    vdiskfs('sync', a)
    const [incrementalSeconds, incremental] = seconds(() => JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b2.img'), 'bench', '--json')) as Pushed)

    // The same backup to an encrypted store, pushed and pulled (into a third pool).
    const keyFile = path.join(dir, 'bench.key')
    vdiskfs('key', 'create', keyFile)
    for (const mnt of [a, c]) vdiskfs('remote', 'add', mnt, 'sealed', 's3://vdiskfs-bench/sealed', '--endpoint', rgw.endpoint, '--key', keyFile)
    const [sealedPushSeconds, sealedPushed] = seconds(() => JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b1.img'), 'sealed', '--json')) as Pushed)
    const [sealedPullSeconds] = seconds(() => vdiskfs('pull', c, 'sealed', sealedPushed.id, 'b1'))

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
      rgwStartSeconds: Number(rgwSeconds.toFixed(1)),
      pushSeconds: Number(pushSeconds.toFixed(2)),
      pushMBps: Number(mbps(dataBytes, pushSeconds)),
      pushUploadedBytes: pushed.bytesUploaded,
      pullSeconds: Number(pullSeconds.toFixed(2)),
      pullMBps: Number(mbps(dataBytes, pullSeconds)),
      secondHostChangedBytes: changedB,
      secondHostUploadedBytes: second.bytesUploaded,
      secondHostSeconds: Number(secondSeconds.toFixed(2)),
      incrementalChangedBytes: changedA,
      incrementalUploadedBytes: incremental.bytesUploaded,
      incrementalSince: incremental.since,
      incrementalSeconds: Number(incrementalSeconds.toFixed(2)),
      encryptedPushMBps: Number(mbps(dataBytes, sealedPushSeconds)),
      encryptedPushSeconds: Number(sealedPushSeconds.toFixed(2)),
      encryptedPullMBps: Number(mbps(dataBytes, sealedPullSeconds)),
      encryptedPullSeconds: Number(sealedPullSeconds.toFixed(2)),
      baselinePutMBps: Number(mbps(dataBytes, putSeconds)),
      baselineGetMBps: Number(mbps(dataBytes, getSeconds)),
      pushOfBaseline: Number((putSeconds / pushSeconds).toFixed(2)),
      pullOfBaseline: Number((getSeconds / pullSeconds).toFixed(2)),
      encryptedPushOfBaseline: Number((putSeconds / sealedPushSeconds).toFixed(2)),
      encryptedPullOfBaseline: Number((getSeconds / sealedPullSeconds).toFixed(2))
    }
    console.log(`| remote store (RGW on 127.0.0.1, ${dataBytes / mib} MiB of data in a 20 GiB disk) | figure |`)
    console.log('|---|---|')
    console.log(`| push to an empty store | ${figures.pushMBps} MB/s (${figures.pushSeconds} s) |`)
    console.log(`| pull into a second pool | ${figures.pullMBps} MB/s (${figures.pullSeconds} s) |`)
    console.log(`| second host's push of a similar image (${(changedB / mib).toFixed(1)} MiB of blocks rewritten) | ${(second.bytesUploaded / mib).toFixed(1)} MiB uploaded (${figures.secondHostSeconds} s) |`)
    console.log(`| incremental push, 1% changed (${(changedA / mib).toFixed(1)} MiB of blocks) | ${(incremental.bytesUploaded / mib).toFixed(1)} MiB uploaded in ${figures.incrementalSeconds} s |`)
    console.log(`| push to an empty encrypted store | ${figures.encryptedPushMBps} MB/s (${figures.encryptedPushSeconds} s) |`)
    console.log(`| pull from the encrypted store | ${figures.encryptedPullMBps} MB/s (${figures.encryptedPullSeconds} s) |`)
    console.log(`| baseline: one ${dataBytes / mib} MiB object, PUT / GET through the same SDK | ${figures.baselinePutMBps} / ${figures.baselineGetMBps} MB/s |`)
    console.log(`| push / pull as a fraction of the baseline (issue #22's bar: 0.8) | ${figures.pushOfBaseline} / ${figures.pullOfBaseline} (encrypted: ${figures.encryptedPushOfBaseline} / ${figures.encryptedPullOfBaseline}) |`)
    console.log(JSON.stringify(figures))
  } finally {
    for (const mnt of mounts.reverse()) { try { execFileSync(cli, ['umount', mnt], { stdio: 'ignore', timeout: 120000 }) } catch {} }
    await rgw.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(`bench remote: ${(err as Error).message}`); process.exitCode = 1 })
