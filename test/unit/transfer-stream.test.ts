/**
 * The export stream's encoder and decoder agree, and the decoder refuses every damaged stream: any
 * single flipped byte, a truncated stream, bytes after the trailer, a block out of order.
 */
import test from 'ava'
import crypto from 'node:crypto'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { StreamBlock, StreamDecoder, StreamEncoder, StreamHeader, StreamItem, blockHash } from '../../src/transfer/stream'

const blockBytes = 4096

function header (records: number, baseUuid: string | null = null): StreamHeader {
  return { name: 'web-monday', blockBytes, uuid: crypto.randomUUID(), baseUuid, size: 10 * blockBytes + 100, createdMs: Date.now(), records }
}

function sampleBlocks (): StreamBlock[] {
  const compressible = Buffer.alloc(blockBytes, 'abcdefgh')
  return [
    { index: 0, data: crypto.randomBytes(blockBytes) },
    { index: 2, data: compressible, hash: blockHash(compressible) },
    { index: 3, data: null },
    { index: 4, data: Buffer.alloc(blockBytes) },
    { index: 10, data: crypto.randomBytes(blockBytes) }
  ]
}

async function encode (h: StreamHeader, blocks: StreamBlock[], compress = true): Promise<Buffer> {
  const parts: Buffer[] = []
  const encoder = new StreamEncoder(h, { compress })
  encoder.on('data', (chunk: Buffer) => parts.push(chunk))
  await pipeline(Readable.from(blocks, { objectMode: true }), encoder)
  return Buffer.concat(parts)
}

async function decode (bytes: Buffer, pieceBytes = 1000): Promise<StreamItem[]> {
  const items: StreamItem[] = []
  const pieces: Buffer[] = []
  for (let at = 0; at < bytes.length; at += pieceBytes) pieces.push(bytes.subarray(at, at + pieceBytes))
  const decoder = new StreamDecoder()
  decoder.on('data', (item: StreamItem) => items.push(item))
  await pipeline(Readable.from(pieces), decoder)
  return items
}

test('a stream decodes to its header and blocks, zero blocks as null', async t => {
  const h = header(5, crypto.randomUUID())
  const blocks = sampleBlocks()
  for (const compress of [true, false]) {
    const items = await decode(await encode(h, blocks, compress))
    t.deepEqual(items[0], { kind: 'header', header: h })
    const decoded = items.slice(1).map(item => item.kind === 'block' ? item.block : null)
    t.deepEqual(decoded.map(b => b?.index), [0, 2, 3, 4, 10])
    t.deepEqual(decoded[0]?.data, blocks[0].data)
    t.deepEqual(decoded[1]?.data, blocks[1].data)
    t.deepEqual(decoded[1]?.hash, blockHash(blocks[1].data as Buffer))
    t.is(decoded[2]?.data, null)
    t.is(decoded[3]?.data, null)
  }
})

test('every single flipped byte is refused', async t => {
  const bytes = await encode(header(5), sampleBlocks())
  // Every byte of the header, record headers and trailer, and a sample of the payload bytes.
  for (let at = 0; at < bytes.length; at += at < 200 || at > bytes.length - 100 ? 1 : 97) {
    const damaged = Buffer.from(bytes)
    damaged[at] ^= 0x10
    await t.throwsAsync(decode(damaged), undefined, `byte ${at} flipped`)
  }
})

test('a truncated stream, or bytes after the trailer, are refused', async t => {
  const bytes = await encode(header(5), sampleBlocks())
  for (const cut of [0, 10, 80, 200, bytes.length - 1]) {
    await t.throwsAsync(decode(bytes.subarray(0, cut)), { message: /truncated/ }, `cut at ${cut}`)
  }
  await t.throwsAsync(decode(Buffer.concat([bytes, Buffer.from([0])])), { message: /follow/ })
})

test('the encoder refuses blocks out of order, a wrong count, a hash that does not match', async t => {
  await t.throwsAsync(encode(header(2), [{ index: 3, data: null }, { index: 1, data: null }]), { message: /out of order/ })
  await t.throwsAsync(encode(header(2), [{ index: 3, data: null }]), { message: /announced/ })
  await t.throwsAsync(encode(header(1), [{ index: 0, data: crypto.randomBytes(blockBytes), hash: Buffer.alloc(32, 1) }]), { message: /BLAKE3/ })
})

test('a header carries its source (identity and label) when it has one; a stream without one still decodes; an unknown flag is refused', async t => {
  const withSource: StreamHeader = { ...header(5), source: { uuid: crypto.randomUUID(), label: 'disk web.img' } }
  const bytes = await encode(withSource, sampleBlocks())
  t.deepEqual((await decode(bytes, 7))[0], { kind: 'header', header: withSource })
  // Flag 1 set; the header's checksum covers the source part: a flipped byte in the label is CORRUPT.
  t.is(bytes.readUInt32LE(72), 1)
  const at = 80 + Buffer.byteLength('web-monday') + 18
  const damaged = Buffer.from(bytes)
  damaged[at] ^= 0x20
  await t.throwsAsync(decode(damaged), { message: /checksum/ })
  const plain = await encode(header(5), sampleBlocks())
  t.is(plain.readUInt32LE(72), 0)
  const decoded = (await decode(plain))[0]
  t.true(decoded.kind === 'header' && decoded.header.source === undefined)
  const unknown = Buffer.from(plain)
  unknown.writeUInt32LE(2, 72)
  await t.throwsAsync(decode(unknown), { message: /flags 2 are not supported/ })
})
