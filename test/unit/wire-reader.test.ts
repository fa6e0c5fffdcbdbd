/**
 * ByteReader (transfer/wire.ts): exact reads over a connection's chunks however they are cut, a clean
 * end, an end inside a read, and frames read back as they were sent.
 */
import test from 'ava'
import crypto from 'node:crypto'
import { ByteReader, frameData, frameEnd, frameHead, readFrame } from '../../src/transfer/wire'

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
