/**
 * The S3 dedup store (src/remote/store.ts) against a real Ceph RGW: a push uploads only what the store
 * lacks and its manifest last, an interrupted push leaves no backup and the next one resumes, every block
 * read back is checked (a damaged or missing chunk is one error naming the backup and the byte range),
 * verify finds what is wrong, and gc frees only unreferenced chunks past the grace period, also while a
 * push from "another host" sits between its existence checks and its manifest.
 */
import test from 'ava'
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import crypto from 'node:crypto'
import { Rgw, rgwAccessKey, rgwSecretKey, startRgw } from '../helpers/rgw'
import { BackupMeta, Block, RemoteStore } from '../../src/remote/store'
import { VdiskError } from '../../src/errors'
import { RemoteKey } from '../../src/remote/crypt'

const blockBytes = 64 * 1024
let rgw: Rgw
let prefixes = 0

test.before(async () => {
  rgw = await startRgw()
  process.env.AWS_ACCESS_KEY_ID = rgwAccessKey
  process.env.AWS_SECRET_ACCESS_KEY = rgwSecretKey
})
test.after.always(async () => { await rgw?.stop() })

async function openStore (graceSeconds = 3600, key: RemoteKey | null = null): Promise<RemoteStore> {
  return await RemoteStore.open({ bucket: 'vdiskfs-test', prefix: `store${++prefixes}/`, endpoint: rgw.endpoint }, 'test', { create: true, graceSeconds, key })
}

/** The gc tests run on a plain store and on an encrypted one (issue #22: there gc works on keyed object names). */
const kinds: Array<[string, () => RemoteKey | null]> = [['', () => null], ['an encrypted store: ', () => RemoteKey.fromBytes(crypto.randomBytes(32))]]

/** A volume as blocks: block i is seeded random bytes from seeds[i], or zeros for null. */
function volume (seeds: Array<number | null>): { meta: BackupMeta, blocks: Array<{ index: number, data: Buffer }> } {
  const blocks = seeds.flatMap((seed, index) => seed === null ? [] : [{ index, data: seeded(seed) }])
  return { meta: { identity: `test-${seeds.join(',')}`, name: 'vol', source: 'disk vol', host: 'host-a', created: new Date().toISOString(), size: seeds.length * blockBytes, blockBytes }, blocks }
}

function seeded (seed: number): Buffer {
  // Half random, half zeros: compressible, and distinct per seed.
  const data = Buffer.alloc(blockBytes)
  crypto.createHash('sha256').update(String(seed)).digest().copy(data)
  for (let offset = 32; offset < blockBytes / 2; offset += 32) crypto.createHash('sha256').update(data.subarray(offset - 32, offset)).digest().copy(data, offset)
  return data
}

async function * from (blocks: Block[]): AsyncGenerator<Block> { for (const block of blocks) yield block }

async function readAll (store: RemoteStore, id: string): Promise<Array<{ index: number, data: Buffer }>> {
  const out: Array<{ index: number, data: Buffer }> = []
  for await (const block of store.blocks(id, await store.manifest(id))) out.push(block)
  return out
}

function s3 (): S3Client {
  return new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true })
}

for (const [kind, storeKey] of kinds) {
test.serial(`${kind}a push of more packs than it uploads at once fills buffers it used before (its blocks handed in one buffer rewritten each time, as the export gives them), and a pull through its reused batch buffers reads back every block`, async t => {
  const store = await openStore(3600, storeKey())
  t.teardown(() => store.close())
  // Block i: random bytes (odd i: stored raw), or half random and half zeros (even i: stored compressed, so
  // a pull decompresses it into its batch buffers). About 340 to a 16 MiB pack: 7 packs or more, so the
  // last ones fill the buffers of packs written before.
  const count = 2600
  const key = crypto.randomBytes(32)
  const blockOf = (i: number): Buffer => {
    const iv = Buffer.alloc(16)
    iv.writeUInt32BE(i, 0)
    const data = Buffer.alloc(blockBytes)
    crypto.createCipheriv('aes-256-ctr', key, iv).update(Buffer.alloc(i % 2 === 1 ? blockBytes : blockBytes / 2)).copy(data)
    return data
  }
  const meta: BackupMeta = { identity: `test-reuse-${crypto.randomUUID()}`, name: 'big', source: 'disk big', host: 'host-a', created: new Date().toISOString(), size: count * blockBytes, blockBytes }
  async function * reused (): AsyncGenerator<Block> {
    const scratch = Buffer.alloc(blockBytes)
    for (let index = 0; index < count; index++) { blockOf(index).copy(scratch); yield { index, data: scratch } }
  }
  const pushed = await store.push(meta, reused())
  t.true(pushed.packsUploaded >= 7, `${pushed.packsUploaded} packs`)
  t.is(pushed.chunksUploaded, count)
  // The blocks are kept until the store says it is about to use buffers again (released: the consumer must
  // hold none of the blocks yielded so far), and compared only then: as late as the store lets them live.
  let next = 0
  let released = 0
  const held: Array<{ index: number, data: Buffer }> = []
  const check = (): void => {
    for (const block of held.splice(0)) if (!block.data.equals(blockOf(block.index))) t.fail(`block ${block.index} reads back other bytes`)
  }
  for await (const block of store.blocks(pushed.id, await store.manifest(pushed.id), { released: async () => { released++; check() } })) {
    t.is(block.index, next++)
    held.push(block)
  }
  check()
  t.is(next, count)
  t.true(released >= 7, 'the batches were decompressed into buffers taken in turns')
  // An encrypted store's chunks are compressed and sealed on the push's own thread (issue #22: in the CLI's
  // worker threads they took about 1.8 times the CPU), none in the workers.
  t.is(store.chunksSealedInWorkers, 0)
  if (kind === '') return
  // VDISKFS_PUSH_SEAL_WORKERS=1: in the worker threads, every new chunk; it reads back the same.
  const few = 40
  const fresh = Array.from({ length: few }, () => crypto.randomBytes(blockBytes))
  process.env.VDISKFS_PUSH_SEAL_WORKERS = '1'
  let again: Awaited<ReturnType<typeof store.push>>
  try {
    again = await store.push({ ...meta, identity: `test-workers-${crypto.randomUUID()}`, size: few * blockBytes }, (async function * () { for (let index = 0; index < few; index++) yield { index, data: fresh[index] } })())
  } finally { delete process.env.VDISKFS_PUSH_SEAL_WORKERS }
  t.is(store.chunksSealedInWorkers, few)
  let read = 0
  for await (const block of store.blocks(again.id, await store.manifest(again.id))) t.deepEqual(block.data, fresh[read++])
  t.is(read, few)
})
}

test.serial('a push stores every block, a second push of a similar volume uploads only what differs, the same push twice is one backup', async t => {
  const store = await openStore()
  t.teardown(() => store.close())
  const first = volume([1, 2, null, 3, 4, 1])
  const pushed = await store.push(first.meta, from(first.blocks))
  t.true(pushed.created)
  t.is(pushed.chunksUploaded, 4)
  t.is(pushed.bytesUploaded, 4 * blockBytes)
  t.deepEqual((await readAll(store, pushed.id)).map(b => [b.index, b.data.toString('hex')]), first.blocks.map(b => [b.index, b.data.toString('hex')]))
  const again = await store.push(first.meta, from(first.blocks))
  t.is(again.id, pushed.id)
  t.false(again.created)
  t.is(again.chunksUploaded, 0)
  const similar = volume([1, 2, null, 3, 5, 1])
  const second = await store.push({ ...similar.meta, host: 'host-b' }, from(similar.blocks))
  t.not(second.id, pushed.id)
  t.is(second.chunksUploaded, 1)
  t.is(second.bytesUploaded, blockBytes)
  const list = await store.backups()
  t.deepEqual(list.map(b => b.host).sort(), ['host-a', 'host-b'])
})

test.serial('an incremental push on top of a base keeps the base blocks it does not replace and drops those now zero', async t => {
  const store = await openStore()
  t.teardown(() => store.close())
  const base = volume([1, 2, 3, 4])
  const baseId = (await store.push(base.meta, from(base.blocks))).id
  const changed: Block[] = [{ index: 1, data: seeded(9) }, { index: 3, data: Buffer.alloc(blockBytes) }]
  const next = await store.push({ ...base.meta, identity: 'next' }, from(changed), { base: await store.manifest(baseId) })
  t.is(next.chunksUploaded, 1)
  const blocks = await readAll(store, next.id)
  t.deepEqual(blocks.map(b => b.index), [0, 1, 2])
  t.true(blocks[1].data.equals(seeded(9)))
  t.true(blocks[2].data.equals(seeded(3)))
})

test.serial('an interrupted push leaves no backup, and the next push uploads only what had not arrived in a whole pack', async t => {
  const store = await openStore()
  t.teardown(() => store.close())
  // Random blocks: incompressible, so 256 of them fill a 16 MiB pack.
  const blocks = Array.from({ length: 700 }, (_, index) => ({ index, data: crypto.randomBytes(blockBytes) }))
  const meta = { ...volume([]).meta, identity: 'cut', size: 700 * blockBytes }
  async function * cut (): AsyncGenerator<Block> {
    for (const block of blocks) { if (block.index === 600) throw new Error('cut'); yield block }
  }
  await t.throwsAsync(store.push(meta, cut()), { message: 'cut' })
  t.deepEqual(await store.backups(), [])
  const resumed = await store.push(meta, from(blocks))
  // Two packs (512 blocks) were whole, with their indexes, before the cut: not sent again.
  t.is(resumed.chunksReused, 512)
  t.is(resumed.chunksUploaded, 700 - 512)
  t.is(resumed.packsUploaded, 1)
  const read = await readAll(store, resumed.id)
  t.true(read.every((block, i) => block.index === i && block.data.equals(blocks[i].data)))
})

/** Flips bit 0 of byte `at` of chunk `chunk`'s object where the store keeps it (in its pack), as a damaged disk would serve it. */
async function damage (store: RemoteStore, chunk: string, at: (length: number) => number): Promise<string> {
  await store.loadPacks()
  const where = store.chunkLocation(chunk)!
  const client = s3()
  try {
    const pack = (await store.s3.get(where.key, 64 * 1024 * 1024))!
    pack[where.start + at(where.length)] ^= 0x01
    await client.send(new PutObjectCommand({ Bucket: 'vdiskfs-test', Key: where.key, Body: pack }))
  } finally { client.destroy() }
  return where.key.slice(store.s3.prefix.length)
}

for (const [kind, key] of kinds) {
test.serial(`${kind}a flipped byte in a pack or a pack gone is one error naming the backup, the byte range, the chunk and its pack, and verify reports each`, async t => {
  const store = await openStore(3600, key())
  t.teardown(() => store.close())
  const { meta, blocks } = volume([11, 12, 13])
  const { id } = await store.push(meta, from(blocks))
  const manifest = await store.manifest(id)
  const chunk = manifest.blocks[1][1]
  const pack = await damage(store, chunk, length => length - 1)
  const error = await t.throwsAsync(readAll(store, id))
  t.true(error instanceof VdiskError && error.code === 'CORRUPT')
  t.regex(error!.message, new RegExp(`^remote backup ${id} \\(vol\\): bytes 65536-131071: chunk ${chunk} \\(.*${pack} bytes \\d+-\\d+\\)`))
  const report = await store.verify()
  t.is(report.packs, 1)
  t.deepEqual(report.problems.map(p => [p.backup, p.start, p.length, p.chunk]), [[id, 65536, 65536, chunk]])
  t.regex(report.problems[0].problem, new RegExp(pack))
  await store.s3.remove(store.s3.prefix + pack)
  const missing = await t.throwsAsync(readAll(store, id))
  t.regex(missing!.message, new RegExp(`remote backup ${id} \\(vol\\): bytes 0-65535: chunk ${manifest.blocks[0][1]} is missing from the store`))
  t.deepEqual((await store.verify()).problems.map(p => [p.start, p.problem]), [[0, 'missing'], [65536, 'missing'], [131072, 'missing']])
})

test.serial(`${kind}a store written before packs (one object per chunk) still reads, verifies and collects`, async t => {
  const store = await openStore(2, key())
  t.teardown(() => store.close())
  const old = volume([41, 42, 43])
  const { id } = await store.push(old.meta, from(old.blocks))
  // Rewritten as the old layout: each chunk object alone under chunks/ (the same bytes a pack holds), no packs.
  await store.loadPacks()
  const manifest = await store.manifest(id)
  for (const [, chunk] of manifest.blocks) {
    const where = store.chunkLocation(chunk)!
    await store.s3.putOnce(store.chunkObjectKey(chunk), (await store.s3.getRange(where.key, where.start, where.length))!)
  }
  for await (const object of store.s3.list(store.s3.prefix + 'packs/')) await store.s3.remove(object.key)
  for await (const object of store.s3.list(store.s3.prefix + 'indexes/')) await store.s3.remove(object.key)
  await store.loadPacks()
  t.deepEqual((await readAll(store, id)).map(b => b.data.equals(seeded(41 + b.index))), [true, true, true])
  t.deepEqual((await store.verify()).problems, [])
  // A second backup shares two blocks: they go into a pack (a push relies on packs only).
  const next = volume([41, 42, 44])
  const pushed = await store.push(next.meta, from(next.blocks))
  t.is(pushed.chunksUploaded, 3)
  await store.removeBackup(id)
  await new Promise(resolve => setTimeout(resolve, 5000))
  const gc = await store.gc()
  t.is(gc.chunksRemoved, 3, 'the old chunk objects no manifest names any more')
  t.deepEqual((await readAll(store, pushed.id)).map(b => b.data.equals(seeded(b.index === 2 ? 44 : 41 + b.index))), [true, true, true])
})
}

for (const [kind, key] of kinds) {
test.serial(`${kind}gc frees unreferenced chunks only past the grace period, never one a manifest names`, async t => {
  const store = await openStore(2, key())
  t.teardown(() => store.close())
  const kept = volume([21, 22])
  const gone = volume([21, 23])
  const keptId = (await store.push(kept.meta, from(kept.blocks))).id
  const goneId = (await store.push(gone.meta, from(gone.blocks))).id
  await store.removeBackup(goneId)
  const young = await store.gc()
  t.is(young.chunksRemoved, 0)
  t.is(young.chunksKeptYoung, 1)
  await new Promise(resolve => setTimeout(resolve, 5000))
  const old = await store.gc()
  t.is(old.chunksRemoved, 1)
  t.is(old.chunks, 3)
  t.is((await readAll(store, keptId)).length, 2)
  t.deepEqual((await store.verify()).problems, [])
})

test.serial(`${kind}gc repacks a sparse pack only past the grace period, and a gc cut off after its copies loses nothing: the next one copies nothing again`, async t => {
  const store = await openStore(2, key())
  t.teardown(() => store.close())
  // One pack of 8 blocks: 2 of them are also the second backup's (which uploads nothing), 6 only the first's.
  const gone = volume([51, 52, 53, 54, 55, 56, 57, 58])
  const goneId = (await store.push(gone.meta, from(gone.blocks))).id
  const kept = volume([51, 52])
  const keptPush = await store.push(kept.meta, from(kept.blocks))
  t.is(keptPush.chunksUploaded, 0)
  await store.removeBackup(goneId)
  const young = await store.gc()
  t.deepEqual([young.packsRepacked, young.chunksKeptYoung, young.chunksRemoved], [0, 6, 0])
  await new Promise(resolve => setTimeout(resolve, 5000))
  await t.throwsAsync(store.gc({ hooks: { afterCopy: async () => { throw new Error('cut') } } }), { message: 'cut' })
  t.is((await store.loadPacks()).size, 2, 'the copy was written, the sparse pack not yet removed')
  t.deepEqual((await readAll(store, keptPush.id)).map(b => b.data.equals(seeded(51 + b.index))), [true, true])
  const again = await store.gc()
  t.deepEqual([again.packsRepacked, again.chunksRepacked, again.packsWritten, again.packsRemoved, again.chunksRemoved], [1, 0, 0, 1, 6])
  t.is((await store.loadPacks()).size, 1)
  t.deepEqual((await readAll(store, keptPush.id)).map(b => b.data.equals(seeded(51 + b.index))), [true, true])
  t.deepEqual((await store.verify()).problems, [])
})

test.serial(`${kind}gc running while a push waits between its existence checks and its manifest spares the old chunks the push reuses`, async t => {
  // Host A pushed blocks 31..34, then that backup was pruned: its chunks are unreferenced and, once the
  // grace period has passed, old. Host B pushes a volume made of the same blocks; it finds them stored,
  // and gc runs to completion before B writes its manifest.
  const store = await openStore(2, key())
  t.teardown(() => store.close())
  const a = volume([31, 32, 33, 34])
  const aId = (await store.push(a.meta, from(a.blocks))).id
  await store.removeBackup(aId)
  await new Promise(resolve => setTimeout(resolve, 5000))
  const b = volume([31, 32, 33, 34, null])
  let gcReport = null
  const pushed = await store.push({ ...b.meta, host: 'host-b' }, from(b.blocks), { hooks: { beforeManifest: async () => { gcReport = await store.gc() } } })
  t.is(pushed.chunksUploaded, 0)
  t.not(gcReport, null)
  t.is(gcReport!.chunksRemoved, 0)
  const blocks = await readAll(store, pushed.id)
  t.deepEqual(blocks.map(block => block.data.equals(seeded(31 + block.index))), [true, true, true, true])
})
}
