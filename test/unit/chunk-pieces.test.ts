/**
 * Pieced payloads (docs/FORMAT.md, "Pieced payload"; workers/pieces.ts): sealed chunks cut into 16 KiB
 * zstd frames after a table of the pieces' BLAKE3 values, which the FUSE addon's sealed reads check one
 * piece at a time. Sealed through the workers' own task functions (a pool with no threads), stored in a
 * file, opened again: the hash is the block's BLAKE3-256, the payload is one valid zstd stream, and
 * every kind of damage to the table or the frames is refused, never served.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import * as zstd from 'zstd-napi/binding'
import { WorkerPool } from '../../src/chunk/worker-pool'
import { blake3Digest } from '../../workers/hash'
import { isPieced, pieceTableBytes } from '../../workers/pieces'

/** A block that compresses (text-like) or not (random), of `length` bytes. */
function block (length: number, compressible: boolean, seed: number): Buffer {
  if (!compressible) return crypto.randomBytes(length)
  const words = ['vdiskfs', 'block', 'chunk', 'piece', String(seed), 'ext4', 'inode', '\n']
  const out = Buffer.alloc(length)
  let at = 0
  let x = seed
  while (at < length) { x = (x * 1103515245 + 12345) >>> 0; at += out.write(words[x % words.length] + ' ', at) }
  return out
}

interface Sealed { hash: Buffer, payload: Buffer }

async function sealOne (data: Buffer): Promise<Sealed> {
  const pool = new WorkerPool({ blockBytes: data.length, zstdLevel: 3, threads: 0 })
  try {
    return await pool.lease(1, async lease => {
      data.copy(lease.input(0, data.length))
      const result = await lease.seal(data.length)
      const bytes = result.blocks[0].compressedBytes
      return { hash: lease.hash(0), payload: Buffer.from(bytes > 0 ? lease.output(0, bytes) : data) }
    })
  } finally { await pool.close() }
}

/** Opens `payload` from a file as the engine's read workers do: ok, or the error they report. */
async function openOne (payload: Buffer, rawBytes: number, hash: Buffer, compressed = true): Promise<{ ok: boolean, error?: string, data?: Buffer }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pieces-'))
  const file = path.join(dir, 'pack')
  fs.writeFileSync(file, payload)
  const fd = fs.openSync(file, 'r')
  const pool = new WorkerPool({ blockBytes: rawBytes, zstdLevel: 3, threads: 0 })
  try {
    return await pool.lease(1, async lease => {
      const result = await lease.open([{ at: 0, hash, fd, offset: 0, storedBytes: payload.length, rawBytes, compressed }])
      const opened = result.blocks[0]
      return opened.ok ? { ok: true, data: Buffer.from(lease.output(0, rawBytes)) } : { ok: false, error: opened.error }
    })
  } finally {
    await pool.close()
    fs.closeSync(fd)
    fs.rmSync(dir, { recursive: true })
  }
}

/** Seals a pulled frame (a lazy pull's or an import's chunk as the store keeps it) as the daemon does. */
async function sealFrame (frame: Buffer, rawBytes: number): Promise<{ error?: string, hash?: Buffer }> {
  const pool = new WorkerPool({ blockBytes: rawBytes, zstdLevel: 3, threads: 0 })
  try {
    return await pool.lease(1, async lease => {
      frame.copy(lease.input(0, frame.length))
      const result = await lease.seal(rawBytes, undefined, [frame.length])
      const sealed = result.blocks[0]
      return sealed.error !== undefined ? { error: sealed.error } : { hash: lease.hash(0) }
    })
  } finally { await pool.close() }
}

for (const length of [32768, 65536, 131072]) {
  test(`a compressible ${length / 1024} KiB block is sealed pieced, one zstd stream, hashed as BLAKE3, and opens again`, async t => {
    const data = block(length, true, length)
    const sealed = await sealOne(data)
    t.true(isPieced(sealed.payload))
    t.true(sealed.hash.equals(blake3Digest(data)))
    t.is(sealed.payload.readUInt32LE(16), length / 16384)
    // Any zstd decoder reads the whole payload: the table is a skippable frame, the pieces concatenate.
    const whole = Buffer.alloc(length)
    t.is(new zstd.DCtx().decompress(whole, sealed.payload), length)
    t.true(whole.equals(data))
    const opened = await openOne(sealed.payload, length, sealed.hash)
    t.true(opened.ok, opened.error)
    t.true(opened.data?.equals(data))
    // A pulled frame that is pieced is checked the same way before it is stored.
    const frame = await sealFrame(sealed.payload, length)
    t.is(frame.error, undefined)
    t.true(frame.hash?.equals(sealed.hash))
  })
}

test('an incompressible block is pieced all the same, each piece a zstd frame of one raw block (0.3% over the block), and opens again', async t => {
  for (const length of [32768, 65536]) {
    const random = block(length, false, 0)
    const sealed = await sealOne(random)
    t.true(isPieced(sealed.payload))
    t.is(sealed.payload.length, pieceTableBytes(length / 16384) + (length / 16384) * (16384 + 10))
    t.true(sealed.hash.equals(blake3Digest(random)))
    const whole = Buffer.alloc(length)
    t.is(new zstd.DCtx().decompress(whole, sealed.payload), length)
    t.true(whole.equals(random))
    const opened = await openOne(sealed.payload, length, sealed.hash)
    t.true(opened.ok, opened.error)
    t.true(opened.data?.equals(random))
  }
})

test('blocks that are not cut into pieces (16 KiB, 48 KiB), and VDISKFS_CHUNK_PIECES=0, are sealed as before: one frame, or raw', async t => {
  for (const length of [16384, 49152]) {
    const sealed = await sealOne(block(length, true, 3))
    t.false(isPieced(sealed.payload), `${length}`)
    t.true((await openOne(sealed.payload, length, sealed.hash)).ok)
    const random = block(length, false, 1)
    const raw = await sealOne(random)
    t.true(raw.payload.equals(random), `${length} raw`)
  }
  process.env.VDISKFS_CHUNK_PIECES = '0'
  try {
    const plain = await sealOne(block(65536, true, 4))
    t.false(isPieced(plain.payload))
    t.true((await openOne(plain.payload, 65536, plain.hash)).ok)
    const random = block(65536, false, 2)
    t.true((await sealOne(random)).payload.equals(random)) // stored raw: compressing saves less than an eighth
  } finally { delete process.env.VDISKFS_CHUNK_PIECES }
})

test('damage to a pieced payload is refused: a value, a frame\'s byte, lengths moved between frames, the table\'s header', async t => {
  const data = block(65536, true, 9)
  const sealed = await sealOne(data)
  const count = 4
  const damaged: Array<[string, (p: Buffer) => void]> = [
    ['a value\'s byte', p => { p[20 + 4 * count + 40] ^= 1 }],
    ['a byte of the third frame', p => { const at = pieceTableBytes(count) + p.readUInt32LE(20) + p.readUInt32LE(24) + 10; p[at] ^= 0x40 }],
    ['one byte moved from the first frame\'s length to the second\'s', p => { p.writeUInt32LE(p.readUInt32LE(20) - 1, 20); p.writeUInt32LE(p.readUInt32LE(24) + 1, 24) }],
    ['the piece count', p => { p.writeUInt32LE(8, 16) }],
    ['the table\'s length', p => { p.writeUInt32LE(p.readUInt32LE(4) + 4, 4) }]
  ]
  for (const [what, damage] of damaged) {
    const payload = Buffer.from(sealed.payload)
    damage(payload)
    const opened = await openOne(payload, 65536, sealed.hash)
    t.false(opened.ok, what)
    t.truthy(opened.error, what)
    const frame = await sealFrame(payload, 65536)
    t.truthy(frame.error, `pulled frame: ${what}`)
  }
  // Values that merge to another block's hash: the table is right for that block, not for this chunk.
  const other = await sealOne(block(65536, true, 10))
  t.false((await openOne(other.payload, 65536, sealed.hash)).ok)
})
