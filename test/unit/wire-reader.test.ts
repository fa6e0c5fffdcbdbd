/**
 * ByteReader (transfer/wire.ts): exact reads over a connection's chunks however they are cut, a clean
 * end, an end inside a read, and frames read back as they were sent; a ring source (RingSource: a socket
 * reading into a buffer of its own) whose views stay right until the next frame.
 */
import test from 'ava'
import crypto from 'node:crypto'
import { ByteReader, RingSource, errorFrame, frameData, frameEnd, frameFlush, frameHead, frameRef, frameWant, frameZero, frameZstd, readFrame, readFrameNow, zstdFrameHead } from '../../src/transfer/wire'

async function * chunksOf (bytes: Buffer, cuts: number[]): AsyncGenerator<Buffer> {
  let at = 0
  for (const cut of cuts) { if (at >= bytes.length) break; yield bytes.subarray(at, Math.min(bytes.length, at + cut)); at += cut }
  if (at < bytes.length) yield bytes.subarray(at)
}

test('reads of any size over chunks cut anywhere give the bytes in order; a clean end is null, an end inside a read is IO', async t => {
  for (let round = 0; round < 50; round++) {
    const bytes = crypto.randomBytes(crypto.randomInt(1, 300000))
    const restBytes = crypto.randomInt(0, Math.min(100, bytes.length))
    const cuts = Array.from({ length: 40 }, () => crypto.randomInt(0, 70000))
    const reader = new ByteReader(chunksOf(bytes.subarray(restBytes), cuts), bytes.subarray(0, restBytes))
    let at = 0
    while (at < bytes.length) {
      const n = Math.min(bytes.length - at, crypto.randomInt(1, 80000))
      const own = round % 2 === 0
      const got = await reader.read(n, own)
      t.true(got !== null && got.equals(bytes.subarray(at, at + n)), `round ${round}: bytes ${at}-${at + n}`)
      if (own && got !== null) t.not(got.buffer, bytes.buffer, 'a buffer of its own, not a view of the connection\'s bytes')
      at += n
    }
    t.is(await reader.read(1), null)
  }
  const short = new ByteReader(chunksOf(Buffer.alloc(10), [4]), Buffer.alloc(0))
  await t.throwsAsync(short.read(11), { code: 'IO' })
})

test('frames read back as they were sent, each data block a buffer of its own', async t => {
  const blockBytes = 65536
  const blocks = Array.from({ length: 20 }, () => crypto.randomBytes(blockBytes))
  const hashes = blocks.map(() => crypto.randomBytes(32))
  const wire = Buffer.concat([...blocks.flatMap((block, i) => [frameHead(frameData, i * 3, hashes[i]), block]), frameHead(frameEnd, 0, null)])
  const reader = new ByteReader(chunksOf(wire, Array.from({ length: 100 }, () => crypto.randomInt(1, 100000))), Buffer.alloc(0))
  for (let i = 0; i < blocks.length; i++) {
    const frame = await readFrame(reader, blockBytes)
    t.like(frame, { kind: frameData, index: i * 3 })
    t.true(frame?.hash?.equals(hashes[i]))
    t.true(frame?.data?.equals(blocks[i]))
    t.not(frame?.data?.buffer, wire.buffer)
  }
  t.like(await readFrame(reader, blockBytes), { kind: frameEnd })
  t.is(await readFrame(reader, blockBytes), null)
})

test('frames read with a scratch buffer: each block right until the next read, copied into the scratch only when it lies across chunks, never into a buffer of its own', async t => {
  const blockBytes = 65536
  const blocks = Array.from({ length: 30 }, () => crypto.randomBytes(blockBytes))
  const wire = Buffer.concat([...blocks.flatMap((block, i) => [frameHead(frameData, i, null), block]), frameHead(frameEnd, 0, null)])
  // Chunks cut so that some blocks lie within one and others across several.
  const reader = new ByteReader(chunksOf(wire, Array.from({ length: 200 }, (_, i) => i % 3 === 0 ? 3 * blockBytes : crypto.randomInt(1, 40000))), Buffer.alloc(0))
  const scratch = Buffer.alloc(blockBytes)
  let copied = 0
  let viewed = 0
  for (let i = 0; i < blocks.length; i++) {
    const frame = await readFrame(reader, blockBytes, scratch)
    t.like(frame, { kind: frameData, index: i })
    t.true(frame?.data?.equals(blocks[i]), `block ${i}`)
    if (frame?.data?.buffer === scratch.buffer) copied++
    else if (frame?.data?.buffer === wire.buffer) viewed++
    else t.fail(`block ${i}: a buffer of its own`)
  }
  t.true(copied > 0 && viewed > 0, `${copied} copied into the scratch, ${viewed} views of the connection's chunks`)
  t.like(await readFrame(reader, blockBytes, scratch), { kind: frameEnd })
})

test('readFrameNow reads a frame whose bytes are all here, the same as readFrame, and nothing otherwise: every kind, over chunks cut anywhere', async t => {
  const blockBytes = 65536
  const frames: Buffer[] = []
  const expected: Array<{ kind: number, index: number, hash: Buffer | null, data: Buffer | null }> = []
  for (let i = 0; i < 300; i++) {
    const hash = crypto.randomBytes(32)
    const kind = [frameRef, frameWant, frameZero, frameData, frameZstd, frameFlush][i % 6]
    if (kind === frameData) { const data = crypto.randomBytes(blockBytes); frames.push(frameHead(kind, i, hash), data); expected.push({ kind, index: i, hash, data }) } else if (kind === frameZstd) {
      const data = crypto.randomBytes(crypto.randomInt(1, 5000))
      frames.push(zstdFrameHead(i, hash, data.length), data)
      expected.push({ kind, index: i, hash, data })
    } else {
      frames.push(frameHead(kind, i, kind === frameZero || kind === frameFlush ? null : hash))
      expected.push({ kind, index: i, hash: kind === frameZero || kind === frameFlush ? null : hash, data: null })
    }
  }
  frames.push(frameHead(frameEnd, 0, null))
  const wire = Buffer.concat(frames)
  for (let round = 0; round < 8; round++) {
    const cuts = Array.from({ length: 400 }, () => crypto.randomInt(1, round % 2 === 0 ? 100 : 70000))
    const reader = new ByteReader(chunksOf(wire, cuts), Buffer.alloc(0))
    const scratch = Buffer.alloc(blockBytes)
    let now = 0
    for (const want of expected) {
      // Nothing is read when the frame is not all here: the buffered count stays.
      const before = reader.buffered
      let frame = readFrameNow(reader, blockBytes, scratch)
      if (frame === undefined) t.is(reader.buffered, before); else now++
      frame ??= await readFrame(reader, blockBytes, scratch) ?? undefined
      t.truthy(frame)
      t.deepEqual({ ...frame, data: frame?.data === null ? null : Buffer.from(frame?.data as Buffer) }, want)
    }
    t.is((readFrameNow(reader, blockBytes) ?? await readFrame(reader, blockBytes))?.kind, frameEnd)
    t.is(await readFrame(reader, blockBytes), null)
    if (round % 2 === 1) t.true(now > 0, 'with large chunks, frames are read without waiting')
  }
  // An error frame is readFrame's (it throws the daemon's error), never readFrameNow's.
  const failed = new ByteReader(chunksOf(Buffer.alloc(0), []), errorFrame('BUSY', 'busy'))
  t.is(readFrameNow(failed, blockBytes), undefined)
  await t.throwsAsync(readFrame(failed, blockBytes), { code: 'BUSY' })
})

/**
 * A producer standing in for a socket with `onread` (RingSource.onRead): pieces of `wire` of random sizes
 * up to the read buffer's, copied into it, one per turn of the event loop (so that the reader's awaits let
 * more arrive), stopping while onRead said false until the ring resumes it, as a paused socket does.
 */
function produce (ring: RingSource, wire: Buffer, readBytes: number): { reads: number, pauses: number } {
  const stats = { reads: 0, pauses: 0 }
  let at = 0
  let paused = false
  const step = (): void => {
    if (paused) return
    if (at >= wire.length) { ring.end(); return }
    const n = Math.min(wire.length - at, crypto.randomInt(1, readBytes + 1))
    wire.copy(ring.readBuffer, 0, at, at + n)
    // What the socket's buffer held is overwritten by the next read: the ring must have copied it.
    at += n
    stats.reads++
    if (!ring.onRead(n)) { paused = true; stats.pauses++ }
    ring.readBuffer.fill(0xee)
    setImmediate(step)
  }
  ring.attach(() => { if (!paused) return; paused = false; setImmediate(step) })
  setImmediate(step)
  return stats
}

test('a ring source: each frame\'s views right until the next frame begins, though the ring is filled again behind them and the socket paused and resumed', async t => {
  // The push's ring (4 MiB, reads of 256 KiB) with blocks of each size; and a ring of four small reads,
  // filled again soon after each place is freed: a place freed before its frame's views are done with
  // (a mutation tried: freed as soon as its part was read to its end) fails here.
  for (const { blockBytes, ringBytes, readBytes } of [
    { blockBytes: 4096, ringBytes: 4 * 1024 * 1024, readBytes: 256 * 1024 },
    { blockBytes: 65536, ringBytes: 4 * 1024 * 1024, readBytes: 256 * 1024 },
    { blockBytes: 1024 * 1024, ringBytes: 4 * 1024 * 1024, readBytes: 256 * 1024 },
    { blockBytes: 4096, ringBytes: 4 * 16 * 1024 + 41 + 4096, readBytes: 16 * 1024 }
  ]) {
    const blocks = Array.from({ length: Math.ceil(6 * 1024 * 1024 / blockBytes) }, () => crypto.randomBytes(blockBytes))
    const wire = Buffer.concat([...blocks.flatMap((block, i) => [frameHead(frameData, i, crypto.createHash('sha256').update(block).digest()), block]), frameHead(frameEnd, 0, null)])
    const ring = ringBytes < 1024 * 1024 ? new RingSource(ringBytes, readBytes, 41 + blockBytes) : new RingSource(ringBytes, readBytes)
    const stats = produce(ring, wire, readBytes)
    const reader = new ByteReader(ring, Buffer.alloc(0), ring)
    const scratch = Buffer.alloc(blockBytes)
    for (let i = 0; i < blocks.length; i++) {
      const frame = await readFrame(reader, blockBytes, scratch)
      t.like(frame, { kind: frameData, index: i })
      // Held across turns of the event loop, as a push holds a block while it awaits an upload slot.
      // Long enough for the producer (half a read a turn on average) to outrun the reader and fill the ring.
      for (let k = 0; k < Math.max(3, 2 * blockBytes / (readBytes / 4)); k++) await new Promise(resolve => setImmediate(resolve))
      t.true(frame?.data?.equals(blocks[i]), `block size ${blockBytes}: block ${i} still right after more bytes arrived`)
      t.true(frame?.hash?.equals(crypto.createHash('sha256').update(blocks[i]).digest()))
    }
    t.like(await readFrame(reader, blockBytes, scratch), { kind: frameEnd })
    t.is(await readFrame(reader, blockBytes, scratch), null)
    t.true(wire.length > ringBytes, 'more bytes than the ring holds went through it')
    t.true(stats.pauses > 0, `block size ${blockBytes}: the producer was paused (${stats.reads} reads)`)
  }
})

test('a ring source that fails gives its error after the bytes that came before it', async t => {
  const ring = new RingSource(4 * 1024 * 1024, 64 * 1024)
  const reader = new ByteReader(ring, Buffer.alloc(0), ring)
  Buffer.from('abcd').copy(ring.readBuffer)
  t.true(ring.onRead(4))
  ring.fail(new Error('gone'))
  t.is((await reader.read(4))?.toString(), 'abcd')
  await t.throwsAsync(reader.read(1), { message: 'gone' })
})

test('a ring source frees a part\'s place only at the settle after it was read to its end (the next frame), and resumes the socket then', async t => {
  const readBytes = 4096
  const ring = new RingSource(4 * readBytes + 1000, readBytes, 1000)
  let resumed = 0
  ring.attach(() => { resumed++ })
  const reader = new ByteReader(ring, Buffer.alloc(0), ring)
  let reads = 0
  while (ring.onRead(readBytes)) reads++
  t.true(reads >= 1, 'filled until the ring said pause')
  const full = ring.room()
  t.true(full < 2 * readBytes)
  const first = await reader.read(readBytes)
  t.is(first?.length, readBytes)
  t.is(ring.room(), full, 'a part read to its end is not freed yet: the caller may hold a view of it')
  t.is(resumed, 0)
  reader.settle()
  t.is(ring.room(), full + readBytes, 'freed at the settle')
  t.is(resumed, 1, 'and the paused socket resumed')
})
