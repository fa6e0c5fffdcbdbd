/**
 * Issue #12's remote store end to end: real mounts (two pools, standing for two hosts), the real CLI, a
 * real Ceph RGW. Remotes are kept in the pool without credentials; push uploads only what the store lacks
 * (incremental on the lineage, shared between hosts), pull rebuilds the same bytes; a damaged or missing
 * chunk is one clear error and no backup; RGW killed mid-push or mid-pull, the same command again
 * completes; remote gc running while another host's push waits before its manifest spares what it reuses;
 * remote prune keeps by the keep-rules.
 */
import test, { ExecutionContext } from 'ava'
import { ChildProcess, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import crypto from 'node:crypto'
import { CliResult, TestMount, cli, execFileAsync, run, withMount } from '../helpers/mount'
import { Rgw, rgwSecretKey, startRgw, randomFile, rgwCli, scratch as scratchDir } from '../helpers/rgw'
import { blake3Hex } from '../../src/remote/remote-format'
import { scanPack } from '../../src/chunk/pack-scan'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'
const mib = 1024 * 1024
const bucket = 'vdiskfs-cli-test'
let rgw: Rgw
const { vd, ok, json } = rgwCli(() => rgw)
const scratch = (t: ExecutionContext): string => scratchDir(t, 'vdiskfs-remote-')

test.before(async () => { rgw = await startRgw() })
test.after.always(async () => { await rgw?.stop() })

/** A disk of `sizeMiB` in `mount` with random MiBs at the given offsets (from a seeded file so hosts can share them). */
async function disk (mount: TestMount, name: string, sizeMiB: number, chunks: Array<{ atMiB: number, file: string }>): Promise<string> {
  const image = mount.image('disks', name)
  await run('truncate', ['-s', `${sizeMiB}M`, image])
  for (const { atMiB, file } of chunks) await run('dd', [`if=${file}`, `of=${image}`, 'bs=1M', `seek=${atMiB}`, 'conv=notrunc,fsync', 'status=none'])
  return image
}

interface Pushed { id: string, created: boolean, chunksUploaded: number, bytesUploaded: number, chunksReused: number, since: string | null }

async function addRemote (t: ExecutionContext, mount: TestMount, name: string, prefix: string, grace = 3600): Promise<void> {
  await ok(t, 'remote', 'add', mount.mnt, name, `s3://${bucket}/${prefix}`, '--endpoint', rgw.endpoint, '--grace-period', String(grace))
}

// Paused commands still running when a test ends (it failed) are killed by pid.
const children: ChildProcess[] = []
test.afterEach.always(() => { for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })

async function waitFor (file: string, child?: ChildProcess): Promise<void> {
  for (let waited = 0; waited < 120000; waited += 50) {
    if (fs.existsSync(file)) return
    if (child?.exitCode != null) throw new Error(`the command exited (${child.exitCode}) before pausing at ${path.basename(file)}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`nothing paused at ${file}`)
}

/** Starts a CLI command that pauses at `point` (VDISKFS_TEST_REMOTE_PAUSE); resolves with it once paused. */
async function paused (dir: string, point: string, ...args: string[]): Promise<{ release: () => void, done: Promise<CliResult> }> {
  const child = spawn(cli, args, { env: { ...rgw.env, VDISKFS_TEST_REMOTE_PAUSE: dir, VDISKFS_TEST_REMOTE_PAUSE_AT: point }, stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', chunk => { stdout += chunk })
  child.stderr.on('data', chunk => { stderr += chunk })
  const done = new Promise<CliResult>(resolve => child.on('exit', code => resolve({ code: code ?? 1, stdout, stderr })))
  await waitFor(path.join(dir, `${point}.paused`), child)
  return { release: () => fs.writeFileSync(path.join(dir, `${point}.go`), ''), done }
}

test.serial('push uploads only what the store lacks (incremental on the lineage, shared between hosts), pull rebuilds the same bytes, and the pool keeps the remote without credentials', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  const base = randomFile(files, 'base', 16)
  const change = randomFile(files, 'change', 1)
  await addRemote(t, a, 'store', 'shared')
  await addRemote(t, b, 'store', 'shared')
  const remotesFile = path.join(a.pool, 'remotes.json')
  t.is(fs.statSync(remotesFile).mode & 0o777, 0o600)
  const listed = await json<Array<{ name: string, url: string, endpoint: string }>>(t, 'remote', 'list', a.mnt)
  t.deepEqual(listed.map(r => [r.name, r.url, r.endpoint]), [['store', `s3://${bucket}/shared`, rgw.endpoint]])
  const grep = await execFileAsync('grep', ['-rlF', rgwSecretKey, a.pool]).then(r => r.stdout, () => '')
  t.is(grep, '', 'no pool file holds the secret key')

  const image = await disk(a, 'web.img', 32, [{ atMiB: 0, file: base }])
  await ok(t, 'backup', image, 'b1')
  const first = await json<Pushed>(t, 'push', a.image('backups', 'b1.img'), 'store')
  t.is(first.chunksUploaded, 16 * mib / 65536)
  t.is(first.since, null)
  const ls = await json<Array<{ id: string, name: string, source: string, size: number, created: string, host: string }>>(t, 'remote', 'ls', b.mnt, 'store')
  t.deepEqual(ls.map(e => [e.id, e.name, e.source, e.size, e.host]), [[first.id, 'b1.img', 'disk web.img', 32 * mib, os.hostname()]])
  t.regex(ls[0].created, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  t.is((await ok(t, 'push', a.image('backups', 'b1.img'), 'store')).split('\n')[0], first.id, 'the text output starts with the id')

  await ok(t, 'pull', b.mnt, 'store', first.id, 'copy')
  await run('cmp', [a.image('backups', 'b1.img'), b.image('backups', 'copy.img')])
  // A backup of a clone of the pulled copy goes incremental on that copy (already in the store).
  await ok(t, 'clone', b.image('backups', 'copy.img'), 'work')
  await run('dd', [`if=${randomFile(files, 'change-b', 1)}`, `of=${b.image('clones', 'work.img')}`, 'bs=1M', 'seek=3', 'conv=notrunc,fsync', 'status=none'])
  await ok(t, 'backup', b.image('clones', 'work.img'), 'w1')
  const fromClone = await json<Pushed>(t, 'push', b.image('backups', 'w1.img'), 'store')
  t.is(fromClone.since, 'copy.img')
  t.is(fromClone.bytesUploaded, mib)

  // An incremental push: 1 MiB changed since b1.
  await run('dd', [`if=${change}`, `of=${image}`, 'bs=1M', 'seek=20', 'conv=notrunc,fsync', 'status=none'])
  await ok(t, 'backup', image, 'b2')
  const second = await json<Pushed>(t, 'push', a.image('backups', 'b2.img'), 'store')
  t.is(second.since, 'b1.img')
  t.is(second.bytesUploaded, mib)

  // Another host pushes a similar image: the same 16 MiB plus 2 MiB of its own.
  const own = randomFile(files, 'own', 2)
  const other = await disk(b, 'db.img', 32, [{ atMiB: 0, file: base }, { atMiB: 24, file: own }])
  await ok(t, 'backup', other, 'h1')
  const hostB = await json<Pushed>(t, 'push', b.image('backups', 'h1.img'), 'store')
  t.is(hostB.bytesUploaded, 2 * mib)
  t.is(hostB.chunksReused, 16 * mib / 65536)
  await ok(t, 'pull', b.mnt, 'store', second.id, 'b2-copy')
  await run('cmp', [a.image('backups', 'b2.img'), b.image('backups', 'b2-copy.img')])
  // A pool that holds the backup already (the same identity) refuses a second copy.
  const twice = await vd(rgw.env, 'pull', a.mnt, 'store', second.id, 'b2-again')
  t.is(twice.code, 1)
  t.regex(twice.stderr, /^vdiskfs pull: a volume with the stream's identity [0-9a-f-]{36} \(backup b2.img\) already exists\n$/)
  await ok(t, 'pull', a.mnt, 'store', hostB.id, 'from-b')
  await run('cmp', [b.image('backups', 'h1.img'), a.image('backups', 'from-b.img')])
})

test.serial('a damaged or a missing chunk fails the pull with one line naming the backup and the byte range, makes no backup, and remote verify names it', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  await addRemote(t, a, 'store', 'damage')
  await addRemote(t, b, 'store', 'damage')
  const image = await disk(a, 'web.img', 8, [{ atMiB: 2, file: randomFile(files, 'data', 2) }])
  await ok(t, 'backup', image, 'b1')
  const { id } = await json<Pushed>(t, 'push', a.image('backups', 'b1.img'), 'store')
  const manifest = JSON.parse((await ok(t, 'remote', 'ls', a.mnt, 'store', '--json'))) as Array<{ id: string }>
  t.is(manifest[0].id, id)
  // Block 40 (bytes 2621440-2686975) is inside the data: flip the last byte of its chunk object.
  const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: rgw.env.AWS_ACCESS_KEY_ID!, secretAccessKey: rgwSecretKey } })
  t.teardown(() => client.destroy())
  const { RemoteStore } = await import('../../src/remote/store')
  process.env.AWS_ACCESS_KEY_ID = rgw.env.AWS_ACCESS_KEY_ID
  process.env.AWS_SECRET_ACCESS_KEY = rgwSecretKey
  const store = await RemoteStore.open({ bucket, prefix: 'damage/', endpoint: rgw.endpoint }, 'store')
  t.teardown(() => store.close())
  const chunk = (await store.manifest(id)).blocks.find(entry => entry[0] === 40)![1]
  await store.loadPacks()
  const where = store.chunkLocation(chunk)!
  const pack = (await store.s3.get(where.key, 64 * mib))!
  pack[where.start + where.length - 1] ^= 0x01
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: where.key, Body: pack }))

  const pulled = await vd(rgw.env, 'pull', b.mnt, 'store', id, 'copy')
  t.is(pulled.code, 1)
  t.is(pulled.stderr.trim().split('\n').length, 1, pulled.stderr)
  t.regex(pulled.stderr, new RegExp(`^vdiskfs pull: remote backup ${id} \\(b1.img\\): bytes 2621440-2686975: chunk ${chunk}`))
  t.false(fs.existsSync(b.image('backups', 'copy.img')))
  const verify = await vd(rgw.env, 'remote', 'verify', a.mnt, 'store')
  t.is(verify.code, 1)
  t.regex(verify.stdout, new RegExp(`backup ${id} \\(b1.img\\) bytes 2621440-2686975: chunk ${chunk}: chunk ${chunk} \\(pack ${where.key.slice('damage/'.length)} bytes ${where.start}-${where.start + where.length - 1}\\): `))

  // The pack gone: the first block it held (block 32, the first of the data) is the first missing.
  await store.s3.remove(where.key)
  const first = (await store.manifest(id)).blocks.find(entry => entry[0] === 32)![1]
  const missing = await vd(rgw.env, 'pull', b.mnt, 'store', id, 'copy')
  t.is(missing.code, 1)
  t.regex(missing.stderr, new RegExp(`^vdiskfs pull: remote backup ${id} \\(b1.img\\): bytes 2097152-2162687: chunk ${first} is missing from the store\\n$`))
  t.false(fs.existsSync(b.image('backups', 'copy.img')))
})

/** The chunk records of the packs of pool `pool` (pack-format.ts), by BLAKE3 id: each one's flags and payload. */
async function poolChunks (pool: string): Promise<Map<string, { compressed: boolean, payload: Buffer }>> {
  const out = new Map<string, { compressed: boolean, payload: Buffer }>()
  const dir = path.join(pool, 'packs')
  for (const name of fs.readdirSync(dir)) {
    if (!name.endsWith('.pack')) continue
    const file = path.join(dir, name)
    const bytes = fs.readFileSync(file)
    for (const record of (await scanPack(file)).records) {
      out.set(record.hash.toString('hex'), { compressed: record.compressed, payload: bytes.subarray(record.offset, record.offset + record.storedBytes) })
    }
  }
  return out
}

test.serial('a pull stores each chunk as the zstd frame the store holds (not compressed again), each verified: a frame that does not decompress to its chunk fails the pull naming it, and none of its bytes are stored', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const c = await withMount(t)
  const files = scratch(t)
  for (const mount of [a, b, c]) await addRemote(t, mount, 'store', 'frames')
  // Compressible data (random letters of 16): every chunk travels zstd-compressed.
  const text = path.join(files, 'text')
  const letters = crypto.randomBytes(2 * mib)
  for (let i = 0; i < letters.length; i++) letters[i] = 0x61 + (letters[i] & 15)
  fs.writeFileSync(text, letters)
  const image = await disk(a, 'web.img', 8, [{ atMiB: 2, file: text }])
  await ok(t, 'backup', image, 'b1')
  const { id } = await json<Pushed>(t, 'push', a.image('backups', 'b1.img'), 'store')
  const { RemoteStore } = await import('../../src/remote/store')
  process.env.AWS_ACCESS_KEY_ID = rgw.env.AWS_ACCESS_KEY_ID
  process.env.AWS_SECRET_ACCESS_KEY = rgwSecretKey
  const store = await RemoteStore.open({ bucket, prefix: 'frames/', endpoint: rgw.endpoint }, 'store')
  t.teardown(() => store.close())
  const manifest = await store.manifest(id)
  await store.loadPacks()
  t.is(manifest.blocks.length, 32)
  /** The payload of chunk `chunk`'s object in the store (after its 44-byte header): a zstd frame. */
  const frameOf = async (chunk: string): Promise<Buffer> => {
    const where = store.chunkLocation(chunk)!
    const object = (await store.s3.getRange(where.key, where.start, where.length))!
    t.is(object[5], 1, 'the chunk object is zstd-encoded')
    return object.subarray(44)
  }

  await ok(t, 'pull', b.mnt, 'store', id, 'copy')
  await run('cmp', [a.image('backups', 'b1.img'), b.image('backups', 'copy.img')])
  const stored = await poolChunks(b.pool)
  const zstd = await import('zstd-napi/binding')
  const level3 = new zstd.CCtx()
  level3.setParameter(zstd.CParameter.compressionLevel, 3)
  let recompressedDiffers = 0
  for (const [index, chunk] of manifest.blocks) {
    const record = stored.get(chunk)
    t.truthy(record, `chunk ${chunk} (block ${index}) is stored`)
    t.true(record!.compressed)
    const frame = await frameOf(chunk)
    t.true(record!.payload.equals(frame), `block ${index}: the pool stores the store's frame as it came`)
    // The pool's own compression (level 3) of the block would be other bytes: the frame was not made again.
    const block = Buffer.from(letters.subarray((index - 32) * 65536, (index - 31) * 65536))
    const scratchBuffer = Buffer.alloc(zstd.compressBound(block.length))
    if (!scratchBuffer.subarray(0, level3.compress2(scratchBuffer, block)).equals(frame)) recompressedDiffers++
  }
  t.true(recompressedDiffers > 0, 'the test tells a frame passed through from one compressed again')

  // Damaged frames: the first byte of block 40's (zstd's magic: it does not decompress), then the last (it
  // decompresses to other bytes, or not at all). Each fails the pull naming the chunk; nothing is stored.
  const chunk = manifest.blocks.find(entry => entry[0] === 40)![1]
  const where = store.chunkLocation(chunk)!
  const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: rgw.env.AWS_ACCESS_KEY_ID!, secretAccessKey: rgwSecretKey } })
  t.teardown(() => client.destroy())
  const original = (await store.s3.get(where.key, 64 * mib))!
  for (const at of [where.start + 44, where.start + where.length - 1]) {
    const pack = Buffer.from(original)
    pack[at] ^= 0x01
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: where.key, Body: pack }))
    const pulled = await vd(rgw.env, 'pull', c.mnt, 'store', id, 'copy')
    t.is(pulled.code, 1, pulled.stdout)
    t.is(pulled.stderr.trim().split('\n').length, 1, pulled.stderr)
    t.regex(pulled.stderr, new RegExp(`^vdiskfs pull: remote backup ${id} \\(b1.img\\): bytes 2621440-2686975: chunk ${chunk} \\(pack ${where.key.slice('frames/'.length)} bytes ${where.start}-${where.start + where.length - 1}\\): (damaged|does not decompress|decompresses to)`))
    t.false(fs.existsSync(c.image('backups', 'copy.img')))
    t.false((await poolChunks(c.pool)).has(chunk), 'nothing of the damaged chunk is stored')
  }
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: where.key, Body: original }))
  await ok(t, 'pull', c.mnt, 'store', id, 'copy')
  await run('cmp', [a.image('backups', 'b1.img'), c.image('backups', 'copy.img')])
})

test.serial('RGW killed in the middle of a push and of a pull: each fails with one line, and the same command again completes', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  await addRemote(t, a, 'store', 'faults')
  await addRemote(t, b, 'store', 'faults')
  const image = await disk(a, 'web.img', 64, [{ atMiB: 0, file: randomFile(files, 'data', 40) }])
  await ok(t, 'backup', image, 'b1')

  const pushPause = fs.mkdtempSync(path.join(files, 'push-'))
  const push = await paused(pushPause, 'push-batch', 'push', a.image('backups', 'b1.img'), 'store', '--json')
  await rgw.killRgw()
  push.release()
  const failed = await push.done
  t.is(failed.code, 1, failed.stdout + failed.stderr)
  t.is(failed.stderr.trim().split('\n').length, 1, failed.stderr)
  t.regex(failed.stderr, /^vdiskfs push: remote store: .*(ECONNREFUSED|ECONNRESET|EPIPE)/)
  await rgw.restartRgw()
  t.deepEqual(await json<unknown[]>(t, 'remote', 'ls', a.mnt, 'store'), [], 'no half backup is visible')
  const pushed = await json<Pushed>(t, 'push', a.image('backups', 'b1.img'), 'store')
  t.true(pushed.chunksReused >= 256, `the first batch was not sent again (${pushed.chunksReused} reused)`)
  t.is(pushed.chunksReused + pushed.chunksUploaded, 640)

  const pullPause = fs.mkdtempSync(path.join(files, 'pull-'))
  const pull = await paused(pullPause, 'pull-batch', 'pull', b.mnt, 'store', pushed.id, 'copy')
  await rgw.killRgw()
  pull.release()
  const pullFailed = await pull.done
  t.is(pullFailed.code, 1)
  t.is(pullFailed.stderr.trim().split('\n').length, 1, pullFailed.stderr)
  t.false(fs.existsSync(b.image('backups', 'copy.img')))
  await rgw.restartRgw()
  await ok(t, 'pull', b.mnt, 'store', pushed.id, 'copy')
  await run('cmp', [a.image('backups', 'b1.img'), b.image('backups', 'copy.img')])
})

test.serial('packs: a push killed after its first pack resumes without sending it again, a second host dedups against the packs, and gc repacks what prune left sparse with every remaining backup pulling back equal', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  const grace = 2
  await addRemote(t, a, 'store', 'packs', grace)
  await addRemote(t, b, 'store', 'packs', grace)
  // 512 random blocks: two packs of 256 (random blocks do not compress: 256 fill 16 MiB).
  const shared = randomFile(files, 'shared', 20)
  const image = await disk(a, 'web.img', 64, [{ atMiB: 0, file: shared }, { atMiB: 20, file: randomFile(files, 'gone', 12) }])
  await ok(t, 'backup', image, 'b1')

  // Killed (SIGKILL) once its first pack and that pack's index have landed.
  const pause = fs.mkdtempSync(path.join(files, 'pause-'))
  const push = await paused(pause, 'push-batch', 'push', a.image('backups', 'b1.img'), 'store', '--json')
  children[children.length - 1].kill('SIGKILL')
  t.not((await push.done).code, 0)
  t.deepEqual(await json<unknown[]>(t, 'remote', 'ls', a.mnt, 'store'), [], 'no half backup is visible')
  const b1 = await json<Pushed & { packsUploaded: number }>(t, 'push', a.image('backups', 'b1.img'), 'store')
  t.true(b1.chunksReused >= 256, `the first pack was not sent again (${b1.chunksReused} reused)`)
  t.is(b1.chunksReused + b1.chunksUploaded, 512)

  // Another host with the same 20 MiB and 2 MiB of its own sends only its own.
  const h1Image = await disk(b, 'db.img', 64, [{ atMiB: 0, file: shared }, { atMiB: 30, file: randomFile(files, 'own', 2) }])
  await ok(t, 'backup', h1Image, 'h1')
  const h1 = await json<Pushed>(t, 'push', b.image('backups', 'h1.img'), 'store')
  t.is(h1.chunksReused, 320)
  t.is(h1.bytesUploaded, 2 * mib)

  // b2: the last 12 MiB of b1 replaced by 4 MiB of new data and zeros. Once b1 is pruned, its second pack
  // (64 blocks still named, 192 not) is sparse.
  await run('dd', [`if=${randomFile(files, 'fresh', 4)}`, `of=${image}`, 'bs=1M', 'seek=20', 'conv=notrunc,fsync', 'status=none'])
  await run('dd', ['if=/dev/zero', `of=${image}`, 'bs=1M', 'seek=24', 'count=8', 'conv=notrunc,fsync', 'status=none'])
  await ok(t, 'backup', image, 'b2')
  const b2 = await json<Pushed>(t, 'push', a.image('backups', 'b2.img'), 'store')
  t.is(b2.bytesUploaded, 4 * mib)
  await ok(t, 'remote', 'prune', a.mnt, 'store', '--keep-last', '1', '--match', 'b*')
  t.deepEqual((await json<Array<{ name: string }>>(t, 'remote', 'ls', a.mnt, 'store')).map(e => e.name).sort(), ['b2.img', 'h1.img'])
  // (That nothing is repacked within the grace period: remote-store.test.ts.)
  await new Promise(resolve => setTimeout(resolve, (grace + 3) * 1000))
  const gc = await json<{ packs: number, packsRepacked: number, packsWritten: number, chunksRepacked: number, packsRemoved: number, chunksRemoved: number }>(t, 'remote', 'gc', a.mnt, 'store')
  t.deepEqual([gc.packsRepacked, gc.packsWritten, gc.chunksRepacked, gc.packsRemoved, gc.chunksRemoved], [1, 1, 64, 1, 192])
  await ok(t, 'pull', b.mnt, 'store', b2.id, 'b2-copy')
  await run('cmp', [a.image('backups', 'b2.img'), b.image('backups', 'b2-copy.img')])
  await ok(t, 'pull', a.mnt, 'store', h1.id, 'h1-copy')
  await run('cmp', [b.image('backups', 'h1.img'), a.image('backups', 'h1-copy.img')])
  t.is((await vd(rgw.env, 'remote', 'verify', a.mnt, 'store')).code, 0)
  const again = await json<{ packsRepacked: number, chunksRemoved: number }>(t, 'remote', 'gc', a.mnt, 'store')
  t.deepEqual([again.packsRepacked, again.chunksRemoved], [0, 0])
})

test.serial('remote prune keeps by the keep-rules; remote gc run while another host waits before its manifest spares the old chunks that push reuses, and frees the rest past the grace period', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  const grace = 2
  await addRemote(t, a, 'store', 'gc', grace)
  await addRemote(t, b, 'store', 'gc', grace)
  const old = randomFile(files, 'old', 2)
  const image = await disk(a, 'web.img', 8, [{ atMiB: 0, file: old }])
  await ok(t, 'backup', image, 'b1')
  await run('dd', [`if=${randomFile(files, 'new', 2)}`, `of=${image}`, 'bs=1M', 'seek=0', 'conv=notrunc,fsync', 'status=none'])
  await ok(t, 'backup', image, 'b2')
  const b1 = await json<Pushed>(t, 'push', a.image('backups', 'b1.img'), 'store')
  const b2 = await json<Pushed>(t, 'push', a.image('backups', 'b2.img'), 'store')
  const dry = await json<{ backups: Array<{ id: string, action: string, rule: string | null }> }>(t, 'remote', 'prune', a.mnt, 'store', '--keep-last', '1', '--dry-run')
  t.deepEqual(dry.backups.map(e => [e.id, e.action, e.rule]), [[b2.id, 'keep', 'last'], [b1.id, 'remove', null]])
  t.is((await json<unknown[]>(t, 'remote', 'ls', a.mnt, 'store')).length, 2, '--dry-run removes nothing')
  const refused = await vd(rgw.env, 'remote', 'prune', a.mnt, 'store')
  t.is(refused.code, 2, 'prune without a rule is refused')
  await ok(t, 'remote', 'prune', a.mnt, 'store', '--keep-last', '1')
  t.deepEqual((await json<Array<{ id: string }>>(t, 'remote', 'ls', a.mnt, 'store')).map(e => e.id), [b2.id])
  // b1's chunks are unreferenced now; once past the grace period, gc may free them.
  await new Promise(resolve => setTimeout(resolve, (grace + 3) * 1000))

  // Host B pushes the very data b1 held, and waits before its manifest while gc runs to its end.
  const other = await disk(b, 'db.img', 8, [{ atMiB: 0, file: old }])
  await ok(t, 'backup', other, 'h1')
  const pause = fs.mkdtempSync(path.join(files, 'pause-'))
  const push = await paused(pause, 'push-manifest', 'push', b.image('backups', 'h1.img'), 'store', '--json')
  const gc = await json<{ chunksRemoved: number }>(t, 'remote', 'gc', a.mnt, 'store')
  t.is(gc.chunksRemoved, 0, 'gc spared the chunks the waiting push reuses')
  push.release()
  const pushed = await push.done
  t.is(pushed.code, 0, pushed.stderr)
  const h1 = JSON.parse(pushed.stdout) as Pushed
  t.is(h1.chunksUploaded, 0)
  await ok(t, 'pull', a.mnt, 'store', h1.id, 'h1-copy')
  await run('cmp', [b.image('backups', 'h1.img'), a.image('backups', 'h1-copy.img')])

  // With no push in flight, pruning h1 and waiting out the grace period, gc frees its chunks.
  await ok(t, 'remote', 'prune', a.mnt, 'store', '--keep-last', '1', '--match', 'b*')
  const ids = (await json<Array<{ id: string, name: string }>>(t, 'remote', 'ls', a.mnt, 'store'))
  t.deepEqual(ids.map(e => e.name).sort(), ['b2.img', 'h1.img'], '--match limits prune to the names it matches')
  t.is((await vd(rgw.env, 'remote', 'verify', a.mnt, 'store')).code, 0)
})

test.serial('a backup pulled from a remote keeps its source identity: on a host that only pulls, prune --keep-last 1 prunes within each source', async t => {
  const sender = await withMount(t)
  const receiver = await withMount(t)
  await addRemote(t, sender, 'store', 'sources')
  await addRemote(t, receiver, 'store', 'sources')
  const disks = ['vm1', 'vm2'].map(name => sender.image('disks', `${name}.img`))
  for (const disk of disks) { fs.writeFileSync(disk, ''); fs.truncateSync(disk, mib) }
  // Interleaved in time: vm1-1, vm2-1, vm1-2, vm2-2; each pushed and pulled.
  for (const i of [1, 2]) {
    for (const [d, disk] of disks.entries()) {
      const fd = fs.openSync(disk, 'r+')
      fs.writeSync(fd, crypto.randomBytes(65536), 0, 65536, 0)
      fs.closeSync(fd)
      const name = `vm${d + 1}-${i}`
      await ok(t, 'backup', disk, name)
      const { id } = await json<Pushed>(t, 'push', sender.image('backups', `${name}.img`), 'store')
      await ok(t, 'pull', receiver.mnt, 'store', id, name)
    }
  }
  type Decisions = { backups: Array<{ name: string, group: string, keep: boolean }> }
  const decide = async (mnt: string): Promise<string[]> => {
    const result = await json<Decisions>(t, 'prune', mnt, '--keep-last', '1', '--dry-run')
    return result.backups.map(b => `${b.name}:${b.group}:${b.keep ? 'keep' : 'remove'}`).sort()
  }
  const expected = ['vm1-1.img:disk vm1.img:remove', 'vm1-2.img:disk vm1.img:keep', 'vm2-1.img:disk vm2.img:remove', 'vm2-2.img:disk vm2.img:keep']
  t.deepEqual(await decide(sender.mnt), expected)
  t.deepEqual(await decide(receiver.mnt), expected)
  await ok(t, 'prune', receiver.mnt, '--keep-last', '1')
  t.deepEqual(fs.readdirSync(path.join(receiver.mnt, 'backups')).sort(), ['vm1-2.img', 'vm2-2.img'])
})

// ---- issue #22: encrypted stores ----

/** Every object under `prefix` in the bucket, with its bytes (read as a stranger with the S3 credentials would). */
async function everyObject (client: S3Client, prefix: string): Promise<Array<{ key: string, body: Buffer }>> {
  const out: Array<{ key: string, body: Buffer }> = []
  let token: string | undefined
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }))
    for (const object of page.Contents ?? []) {
      const reply = await client.send(new GetObjectCommand({ Bucket: bucket, Key: object.Key }))
      out.push({ key: object.Key!, body: Buffer.from(await reply.Body!.transformToByteArray()) })
    }
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined
  } while (token !== undefined)
  return out
}

function rawClient (t: ExecutionContext): S3Client {
  const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: rgw.env.AWS_ACCESS_KEY_ID!, secretAccessKey: rgwSecretKey } })
  t.teardown(() => client.destroy())
  return client
}

/** A file of `sizeMiB` of random bytes with `marker` written every 4 KiB (incompressible around it, so zstd keeps it literal). */
function markedFile (dir: string, name: string, sizeMiB: number, marker: string): string {
  const data = crypto.randomBytes(sizeMiB * mib)
  for (let offset = 100; offset + marker.length < data.length; offset += 4096) data.write(marker, offset, 'latin1')
  const file = path.join(dir, name)
  fs.writeFileSync(file, data)
  return file
}

test.serial('an encrypted remote: key create makes a 0600 key with a fingerprint, no object in the bucket holds a plaintext marker or a plain chunk id, a second host with the key pulls and dedups, without it or with another key it is refused with one line', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  const keyFile = path.join(files, 'offsite.key')
  // Under umask 0 the key is still 0600.
  const created = await execFileAsync('sh', ['-c', 'umask 000; exec "$0" "$@"', cli, 'key', 'create', keyFile], { encoding: 'utf8', env: rgw.env })
  t.is(fs.statSync(keyFile).mode & 0o777, 0o600)
  const fingerprint = /fingerprint ([0-9a-f:]{39})/.exec(created.stdout)?.[1]
  t.truthy(fingerprint, created.stdout)
  t.regex(created.stdout, /keep a copy/i)
  t.deepEqual(await json<{ file: string, fingerprint: string }>(t, 'key', 'fingerprint', keyFile), { file: keyFile, fingerprint })
  t.is((await vd(rgw.env, 'key', 'create', keyFile)).code, 1, 'a key is never overwritten')

  const added = await json<{ encrypted: boolean, keyFingerprint: string, keyFile: string }>(t, 'remote', 'add', a.mnt, 'vault', `s3://${bucket}/sealed`, '--endpoint', rgw.endpoint, '--key', keyFile, '--grace-period', '3600')
  t.deepEqual([added.encrypted, added.keyFingerprint, added.keyFile], [true, fingerprint, keyFile])
  const remotes = fs.readFileSync(path.join(a.pool, 'remotes.json'), 'utf8')
  t.false(remotes.includes(JSON.parse(fs.readFileSync(keyFile, 'utf8')).key), 'the pool keeps the key file\'s path, never the key')

  const marker = `PLAINTEXT-MARKER-${crypto.randomBytes(6).toString('hex')}`
  const base = markedFile(files, 'base', 8, marker)
  const image = await disk(a, 'web.img', 16, [{ atMiB: 0, file: base }])
  await ok(t, 'backup', image, `${marker}-b1`)
  const pushed = await json<Pushed>(t, 'push', a.image('backups', `${marker}-b1.img`), 'vault')
  t.is(pushed.chunksUploaded, 8 * mib / 65536)

  const objects = await everyObject(rawClient(t), 'sealed/')
  t.true(objects.some(o => /^sealed\/packs\/[0-9a-f]{32}$/.test(o.key)) && objects.some(o => /^sealed\/indexes\/[0-9a-f]{32}$/.test(o.key)), 'the chunks are in packs, each with its index')
  const firstBlockId = blake3Hex(fs.readFileSync(base).subarray(0, 65536))
  for (const { key, body } of objects) {
    t.false(key.includes(marker), key)
    t.is(body.indexOf(marker), -1, `${key} holds the marker`)
    t.is(body.indexOf(Buffer.from(marker, 'latin1').toString('hex')), -1, `${key} holds the marker in hex`)
    t.false(key.includes(firstBlockId) || body.indexOf(firstBlockId) >= 0 || body.indexOf(Buffer.from(firstBlockId, 'hex')) >= 0, `${key} names the plain chunk id`)
  }
  t.true(objects.some(o => /^sealed\/manifests\/[0-9a-f]{32}\.enc$/.test(o.key)))
  t.false(objects.some(o => o.key.endsWith('.json') && o.key !== 'sealed/vdiskfs-store.json'), 'no plain manifest')

  // Host B: without the key, or with another key, one line and no remote.
  const noKey = await vd(rgw.env, 'remote', 'add', b.mnt, 'vault', `s3://${bucket}/sealed`, '--endpoint', rgw.endpoint)
  t.is(noKey.code, 1)
  t.is(noKey.stderr, `vdiskfs remote add: remote vault: the store at s3://${bucket}/sealed/ is encrypted (key fingerprint ${fingerprint!}): give its key with --key FILE\n`)
  const otherKey = path.join(files, 'other.key')
  await ok(t, 'key', 'create', otherKey)
  const wrong = await vd(rgw.env, 'remote', 'add', b.mnt, 'vault', `s3://${bucket}/sealed`, '--endpoint', rgw.endpoint, '--key', otherKey)
  t.is(wrong.code, 1)
  t.regex(wrong.stderr, new RegExp(`^vdiskfs remote add: remote vault: wrong key: ${otherKey} has fingerprint [0-9a-f:]{39}, the store at s3://${bucket}/sealed/ was made with ${fingerprint!}\\n$`))
  t.deepEqual(await json<unknown[]>(t, 'remote', 'list', b.mnt), [])
  // An encrypted remote is never added over a plain store (nor a plain one over an encrypted store, above).
  await addRemote(t, a, 'plain', 'plain-store')
  const overPlain = await vd(rgw.env, 'remote', 'add', b.mnt, 'vault', `s3://${bucket}/plain-store`, '--endpoint', rgw.endpoint, '--key', keyFile)
  t.is(overPlain.code, 1)
  t.regex(overPlain.stderr, /is not encrypted: an encrypted remote needs a bucket or prefix of its own\n$/)
  // The check above can fail: the same backup pushed to the plain store leaves the marker in its objects.
  await ok(t, 'push', a.image('backups', `${marker}-b1.img`), 'plain')
  const plainObjects = await everyObject(rawClient(t), 'plain-store/')
  t.true(plainObjects.some(o => o.body.indexOf(marker) >= 0) && plainObjects.some(o => o.body.indexOf(firstBlockId) >= 0), 'a plain store shows the marker and the chunk ids')

  // With a copy of the key: B pulls A's backup, and pushes a similar image sending only its own blocks.
  const copy = path.join(files, 'copy.key')
  fs.copyFileSync(keyFile, copy)
  await ok(t, 'remote', 'add', b.mnt, 'vault', `s3://${bucket}/sealed`, '--endpoint', rgw.endpoint, '--key', copy)
  const ls = await json<Array<{ id: string, name: string }>>(t, 'remote', 'ls', b.mnt, 'vault')
  t.deepEqual(ls.map(e => [e.id, e.name]), [[pushed.id, `${marker}-b1.img`]])
  await ok(t, 'pull', b.mnt, 'vault', pushed.id, 'copy')
  await run('cmp', [a.image('backups', `${marker}-b1.img`), b.image('backups', 'copy.img')])
  const other = await disk(b, 'db.img', 16, [{ atMiB: 0, file: base }, { atMiB: 12, file: randomFile(files, 'own', 1) }])
  await ok(t, 'backup', other, 'h1')
  const hostB = await json<Pushed>(t, 'push', b.image('backups', 'h1.img'), 'vault')
  t.is(hostB.chunksReused, 8 * mib / 65536, 'B dedups against A\'s chunks')
  t.is(hostB.bytesUploaded, mib)
  t.is((await vd(rgw.env, 'remote', 'verify', a.mnt, 'vault')).code, 0)

  // The key file replaced by another key, or gone: one line each.
  fs.copyFileSync(otherKey, copy)
  const replaced = await vd(rgw.env, 'remote', 'ls', b.mnt, 'vault')
  t.is(replaced.code, 1)
  t.regex(replaced.stderr, new RegExp(`^vdiskfs remote ls: remote vault: wrong key: ${copy} has fingerprint [0-9a-f:]{39}, the remote was added with ${fingerprint!}\n$`))
  fs.rmSync(copy)
  const gone = await vd(rgw.env, 'pull', b.mnt, 'vault', hostB.id, 'again')
  t.is(gone.code, 1)
  t.is(gone.stderr, `vdiskfs pull: key file ${copy} does not exist (restore it from your copy: without it the store's backups cannot be read)\n`)
})

test.serial('an encrypted remote: a flipped byte in a chunk or a manifest, or a chunk copied over another, is refused naming the object; remote verify names it; nothing is imported', async t => {
  const a = await withMount(t)
  const b = await withMount(t)
  const files = scratch(t)
  const keyFile = path.join(files, 'k')
  await ok(t, 'key', 'create', keyFile)
  for (const mount of [a, b]) await ok(t, 'remote', 'add', mount.mnt, 'vault', `s3://${bucket}/sealed-damage`, '--endpoint', rgw.endpoint, '--key', keyFile)
  const image = await disk(a, 'web.img', 8, [{ atMiB: 2, file: randomFile(files, 'data', 2) }])
  await ok(t, 'backup', image, 'b1')
  const { id } = await json<Pushed>(t, 'push', a.image('backups', 'b1.img'), 'vault')
  const client = rawClient(t)
  const { RemoteStore } = await import('../../src/remote/store')
  const { readKeyFile } = await import('../../src/remote/crypt')
  process.env.AWS_ACCESS_KEY_ID = rgw.env.AWS_ACCESS_KEY_ID
  process.env.AWS_SECRET_ACCESS_KEY = rgwSecretKey
  const store = await RemoteStore.open({ bucket, prefix: 'sealed-damage/', endpoint: rgw.endpoint }, 'vault', { key: readKeyFile(keyFile) })
  t.teardown(() => store.close())
  t.is((await store.loadPacks()).size, 1)
  // Block 40 (bytes 2621440-2686975) is inside the data.
  const blocks = (await store.manifest(id)).blocks
  const chunk = blocks.find(entry => entry[0] === 40)![1]
  const where = store.chunkLocation(chunk)!
  const original = (await everyObject(client, where.key))[0].body
  const put = async (k: string, body: Buffer): Promise<void> => { await client.send(new PutObjectCommand({ Bucket: bucket, Key: k, Body: body })) }

  const flipped = Buffer.from(original)
  flipped[where.start + Math.floor(where.length / 2)] ^= 0x01
  await put(where.key, flipped)
  const object = store.chunkObjectKey(chunk).slice('sealed-damage/'.length)
  const inPack = `${where.key.slice('sealed-damage/'.length)} bytes ${where.start}-${where.start + where.length - 1}`
  const pulled = await vd(rgw.env, 'pull', b.mnt, 'vault', id, 'copy')
  t.is(pulled.code, 1)
  t.is(pulled.stderr, `vdiskfs pull: remote backup ${id} (b1.img): bytes 2621440-2686975: chunk ${chunk} (object ${object} in pack ${inPack}): damaged or not this store's (it fails authentication with the store's key)\n`)
  t.false(fs.existsSync(b.image('backups', 'copy.img')))
  const verify = await vd(rgw.env, 'remote', 'verify', a.mnt, 'vault', '--json')
  t.is(verify.code, 1)
  const report = JSON.parse(verify.stdout) as { chunks: number, problems: Array<{ backup: string, start: number, chunk: string, problem: string }> }
  t.is(report.chunks, 32)
  t.deepEqual(report.problems.map(p => [p.backup, p.start, p.chunk]), [[id, 2621440, chunk]])
  t.regex(report.problems[0].problem, new RegExp(`\\(object ${object} in pack ${inPack}\\): damaged`))

  // Another chunk's (valid) sealed object copied over this one's bytes in the pack (random blocks: the same length): its name is bound in, so it fails too.
  const another = store.chunkLocation(blocks.find(entry => entry[0] === 41)![1])!
  t.is(another.length, where.length)
  const swappedPack = Buffer.from(original)
  original.copy(swappedPack, where.start, another.start, another.start + another.length)
  await put(where.key, swappedPack)
  const swapped = await vd(rgw.env, 'pull', b.mnt, 'vault', id, 'copy')
  t.is(swapped.code, 1)
  t.regex(swapped.stderr, new RegExp(`^vdiskfs pull: remote backup ${id} \\(b1.img\\): bytes 2621440-2686975: chunk ${chunk} \\(object ${object} in pack .*\\): damaged or not this store's`))
  await put(where.key, original)

  // A flipped byte in the pack's index (sealed too).
  const indexKey = `sealed-damage/indexes/${where.key.slice('sealed-damage/packs/'.length)}`
  const index = (await everyObject(client, indexKey))[0].body
  const badIndex = Buffer.from(index)
  badIndex[badIndex.length - 20] ^= 0x04
  await put(indexKey, badIndex)
  const noIndex = await vd(rgw.env, 'pull', b.mnt, 'vault', id, 'copy')
  t.is(noIndex.code, 1)
  t.is(noIndex.stderr, `vdiskfs pull: remote vault: pack index ${indexKey.slice('sealed-damage/'.length)}: damaged or not this store's (it fails authentication with the store's key)\n`)
  t.false(fs.existsSync(b.image('backups', 'copy.img')))
  await put(indexKey, index)

  // A flipped byte in the manifest.
  const manifestKey = `sealed-damage/manifests/${id}.enc`
  const manifest = (await everyObject(client, manifestKey))[0].body
  const damaged = Buffer.from(manifest)
  damaged[damaged.length - 20] ^= 0x80
  await put(manifestKey, damaged)
  const bad = await vd(rgw.env, 'pull', b.mnt, 'vault', id, 'copy')
  t.is(bad.code, 1)
  t.is(bad.stderr, `vdiskfs pull: remote backup ${id}: its manifest (object manifests/${id}.enc): damaged or not this store's (it fails authentication with the store's key)\n`)
  t.false(fs.existsSync(b.image('backups', 'copy.img')))
  await put(manifestKey, manifest)
  await ok(t, 'pull', b.mnt, 'vault', id, 'copy')
  await run('cmp', [a.image('backups', 'b1.img'), b.image('backups', 'copy.img')])
})
