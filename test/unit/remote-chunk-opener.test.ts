/**
 * Issue #22: an encrypted store's chunks are opened in worker threads of the CLI (src/remote/chunk-opener.ts,
 * workers/remote-open.ts), not on its main thread. What the workers give back is exactly what
 * RemoteKey.open gives, every object of a range in order; an object that does not authenticate (a flipped
 * byte, another name, another key) is that object's CORRUPT error naming it, the others of the range
 * still open; the opening is done in another thread; close() ends the threads.
 */
import test from 'ava'
import crypto from 'node:crypto'
import { threadId } from 'node:worker_threads'
import { ChunkOpener, newSharedBuffer } from '../../src/remote/chunk-opener'
import { RemoteKey, sealKindChunk } from '../../src/remote/crypt'
import { VdiskError } from '../../src/errors'
import { blake3Hex, chunkEncodingRaw, chunkEncodingZstd, chunkHeaderBytes, decodeChunkHeader, sealRoom } from '../../src/remote/remote-format'
import * as zstd from 'zstd-napi'

function range (key: RemoteKey, count: number): { bytes: Buffer, chunks: Array<{ offset: number, length: number, name: string, what: string }>, plain: Buffer[] } {
  const plain: Buffer[] = []
  const sealed: Buffer[] = []
  const chunks: Array<{ offset: number, length: number, name: string, what: string }> = []
  let offset = 0
  for (let i = 0; i < count; i++) {
    const name = `chunks/ab/${i.toString(16).padStart(64, '0')}`
    plain.push(crypto.randomBytes(1000 + i * 997))
    sealed.push(key.seal(sealKindChunk, name, plain[i]))
    chunks.push({ offset, length: sealed[i].length, name, what: `chunk ${i}` })
    offset += sealed[i].length
  }
  return { bytes: Buffer.concat(sealed), chunks, plain }
}

test('the workers open each object of a range as RemoteKey.open does, in another thread; a damaged one is its own CORRUPT naming it', async t => {
  const key = RemoteKey.fromBytes(crypto.randomBytes(32))
  const opener = new ChunkOpener(key.sealKeyForWorkers())
  t.teardown(async () => await opener.close())
  const { bytes, chunks, plain } = range(key, 8)
  const opened = await opener.open(bytes, chunks)
  t.is(opened.length, 8)
  opened.forEach((one, i) => {
    t.true(Buffer.isBuffer(one))
    t.deepEqual(one, plain[i])
    t.deepEqual(one, key.open(sealKindChunk, chunks[i].name, bytes.subarray(chunks[i].offset, chunks[i].offset + chunks[i].length), 'x'))
  })
  t.not(opener.lastThreadId(), threadId, 'opened in a worker thread, not this one')

  // A flipped byte in object 2, object 5 asked for under another object's name: those two fail, alone.
  const damaged = Buffer.from(bytes)
  damaged[chunks[2].offset + chunks[2].length - 20] ^= 0x40
  const asked = chunks.map((c, i) => i === 5 ? { ...c, name: chunks[4].name } : c)
  const results = await opener.open(damaged, asked)
  results.forEach((one, i) => {
    if (i === 2 || i === 5) {
      t.true(one instanceof VdiskError && one.code === 'CORRUPT', `object ${i} is refused`)
      t.regex((one as Error).message, new RegExp(`^chunk ${i}: damaged or not this store's`))
    } else t.deepEqual(one, plain[i])
  })
  // The bytes the caller gave are still its own (a gc copies them into a new pack).
  t.deepEqual(damaged.subarray(0, chunks[1].offset), bytes.subarray(0, chunks[1].offset))

  // Another key opens nothing.
  const other = new ChunkOpener(RemoteKey.fromBytes(crypto.randomBytes(32)).sealKeyForWorkers())
  t.teardown(async () => await other.close())
  for (const one of await other.open(bytes, chunks)) t.true(one instanceof VdiskError && one.code === 'CORRUPT')
})

test('close() ends the worker threads, and a closed opener starts them again when asked', async t => {
  const key = RemoteKey.fromBytes(crypto.randomBytes(32))
  const opener = new ChunkOpener(key.sealKeyForWorkers())
  const { bytes, chunks, plain } = range(key, 2)
  t.deepEqual(await opener.open(bytes, chunks), plain)
  t.true(opener.running)
  await opener.close()
  t.false(opener.running)
  t.deepEqual(await opener.open(bytes, chunks), plain)
  await opener.close()
})

test('the workers seal a push\'s chunks as the main thread would build them, in place into the caller\'s shared buffer: each one opens under its name to its plain chunk object, in another thread', async t => {
  const key = RemoteKey.fromBytes(crypto.randomBytes(32))
  const opener = new ChunkOpener(key.sealKeyForWorkers())
  t.teardown(async () => await opener.close())
  // Block 0 compresses (half zeros), block 1 does not (random): one chunk object zstd, one raw.
  const blockBytes = 64 * 1024
  const data = [Buffer.concat([crypto.randomBytes(blockBytes / 2), Buffer.alloc(blockBytes / 2)]), crypto.randomBytes(blockBytes), Buffer.alloc(blockBytes, 7)]
  const blocks = newSharedBuffer(3 * blockBytes)
  Buffer.concat(data).copy(blocks)
  const chunks = data.map((block, i) => ({ id: blake3Hex(block), name: `chunks/${i}/${key.chunkName(blake3Hex(block))}`, offset: i * blockBytes, length: blockBytes }))
  // Buffers not shared are refused (the workers write into the caller's buffer in place), as is too little room.
  await t.throwsAsync(opener.seal(Buffer.concat(data), chunks, newSharedBuffer(sealRoom(chunks.map(c => c.length)))), { instanceOf: TypeError })
  await t.throwsAsync(opener.seal(blocks, chunks, newSharedBuffer(sealRoom(chunks.map(c => c.length)) - 1)), { message: /too little room/ })
  const into = newSharedBuffer(sealRoom(chunks.map(c => c.length)))
  const sealed = await opener.seal(blocks, chunks, into)
  t.is(sealed[0].buffer, into.buffer, 'written in place, into the caller\'s buffer')
  t.is(sealed.length, 3)
  t.not(opener.lastThreadId(), threadId, 'sealed in a worker thread, not this one')
  const encodings: number[] = []
  sealed.forEach((object, i) => {
    const plain = key.open(sealKindChunk, chunks[i].name, object, `chunk ${i}`)
    const header = decodeChunkHeader(plain, 'x')
    t.is(header.id, chunks[i].id)
    t.is(header.rawBytes, blockBytes)
    encodings.push(header.encoding)
    const payload = plain.subarray(chunkHeaderBytes)
    t.deepEqual(header.encoding === chunkEncodingZstd ? Buffer.from(zstd.decompress(payload)) : payload, data[i])
    // Under another name it does not open.
    t.throws(() => key.open(sealKindChunk, chunks[(i + 1) % 3].name, object, 'x'), { code: 'CORRUPT' } as never)
  })
  t.deepEqual(encodings, [chunkEncodingZstd, chunkEncodingRaw, chunkEncodingZstd])
})
