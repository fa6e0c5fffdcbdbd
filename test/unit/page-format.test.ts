/**
 * The map page and root checksums (format/map-format.ts): every kind of single damage is found, a
 * single damaged byte is corrected only when its group's CRC proves it, damage to the checksums
 * themselves costs no entry, and legacy (unchecksummed) pages and roots still read.
 */
import test from 'ava'
import zlib from 'node:zlib'
import { chunkEntry, decodePage, decodeRoot, encodePage, encodeRoot, encodeU64Array, lostEntry, pageIsSound, storedPageBytes } from '../../src/format/map-format'

const entries = new Float64Array(4096)
for (let i = 0; i < 300; i++) entries[i] = chunkEntry(1000 + i)
const stored = encodePage(entries, 42)

test('a sound page decodes as written; the same bytes under another page id do not pass', t => {
  t.is(stored.length, storedPageBytes)
  const page = decodePage(stored, 42)
  t.true(pageIsSound(page))
  t.deepEqual(Array.from(page.entries), Array.from(entries))
  t.is(decodePage(stored, 43).unverified.length, 256)
})

test('one flipped byte anywhere in the entries is found, and corrected only when asked', t => {
  for (const at of [0, 7, 127, 128, 5000, 32767]) {
    const damaged = Buffer.from(stored)
    damaged[at] ^= 0x5a
    const found = decodePage(damaged, 42)
    t.deepEqual(found.unverified, [Math.floor(at / 128)], `byte ${at}`)
    t.is(found.entries[Math.floor(at / 8)], lostEntry, 'an unverified entry reads as lost')
    const fixed = decodePage(damaged, 42, true)
    t.deepEqual(fixed.unverified, [])
    t.is(fixed.corrected.length, 1)
    t.deepEqual(Array.from(fixed.entries), Array.from(entries))
  }
})

test('damage to a group checksum or the trailer costs no entry; two damaged bytes in a group are not guessed', t => {
  const crc = Buffer.from(stored)
  crc[32768 + 8 + 4 * 9 + 2] ^= 1
  const a = decodePage(crc, 42, true)
  t.deepEqual(a.unverified, [])
  t.deepEqual(Array.from(a.entries), Array.from(entries))
  const trailer = Buffer.from(stored)
  trailer[storedPageBytes - 1] ^= 0x80
  t.deepEqual(decodePage(trailer, 42).unverified, [])
  const two = Buffer.from(stored)
  two[10] ^= 1
  two[100] ^= 1
  const b = decodePage(two, 42, true)
  t.deepEqual(b.unverified, [0])
  t.deepEqual(Array.from(b.entries.subarray(16)), Array.from(entries.subarray(16)), 'the other groups are kept')
})

test('legacy pages read; an impossible entry in one is the only one lost', t => {
  const legacy = encodeU64Array(entries)
  const page = decodePage(legacy, 42)
  t.false(page.checksummed)
  t.true(pageIsSound(page))
  legacy[8 * 5 + 7] = 0xff
  const bad = decodePage(legacy, 42)
  t.deepEqual(bad.invalid, [5])
  t.deepEqual(Array.from(bad.entries.subarray(6)), Array.from(entries.subarray(6)))
})

test('roots: checked, bound to their volume, legacy roots read, empty roots too', t => {
  const root = Float64Array.from([3, 0, 9])
  t.deepEqual(Array.from(decodeRoot(encodeRoot(root, 7), 3, 7)), [3, 0, 9])
  t.throws(() => decodeRoot(encodeRoot(root, 7), 3, 8))
  const damaged = encodeRoot(root, 7)
  damaged[0] ^= 1
  t.throws(() => decodeRoot(damaged, 3, 7))
  t.deepEqual(Array.from(decodeRoot(encodeU64Array(root), 3, 7)), [3, 0, 9])
  t.deepEqual(Array.from(decodeRoot(encodeRoot(new Float64Array(0), 1), 0, 1)), [])
})

test('roots: the stored checksum is CRC-32 of the volume id (u64) and the ids; decoded at any byte offset, never a view of the input', t => {
  const root = Float64Array.from([1, 2 ** 52 + 5, 0, 4294967297])
  const stored = encodeRoot(root, 12345)
  const seed = Buffer.alloc(8)
  seed.writeBigUInt64LE(12345n)
  t.is(stored.readUInt32LE(32 + 4), zlib.crc32(Buffer.concat([seed, encodeU64Array(root)])), 'the format (docs/FORMAT.md) is unchanged')
  t.is(encodeRoot(new Float64Array(0), 9).readUInt32LE(4), zlib.crc32(Buffer.from([9, 0, 0, 0, 0, 0, 0, 0])))
  for (const offset of [0, 1, 2, 3, 4, 8]) {
    // A root inside a larger buffer at `offset` (SQLite's blobs are their own buffers; a test's need not be).
    const holder = Buffer.alloc(offset + stored.length + 3, 0xee)
    stored.copy(holder, offset)
    const inside = holder.subarray(offset, offset + stored.length)
    const decoded = decodeRoot(inside, 4, 12345)
    t.deepEqual(Array.from(decoded), Array.from(root), `offset ${offset}`)
    inside.fill(0)
    t.deepEqual(Array.from(decoded), Array.from(root), `offset ${offset}: a copy, not a view`)
    const legacy = Buffer.alloc(offset + 32)
    encodeU64Array(root).copy(legacy, offset)
    t.deepEqual(Array.from(decodeRoot(legacy.subarray(offset), 4, 1)), Array.from(root), `legacy at offset ${offset}`)
  }
  const outOfRange = encodeRoot(Float64Array.from([1]), 3)
  outOfRange.writeUInt32LE(2 ** 21, 4)
  outOfRange.writeUInt32LE(zlib.crc32(Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), outOfRange.subarray(0, 8)])), 12)
  t.throws(() => decodeRoot(outOfRange, 1, 3), { instanceOf: RangeError }, 'a value past 2^53 is damage, its checksum right or not')
})
