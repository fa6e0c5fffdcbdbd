/**
 * The map page and root checksums (format/map-format.ts): every kind of single damage is found, a
 * single damaged byte is corrected only when its group's CRC proves it, damage to the checksums
 * themselves costs no entry, and legacy (unchecksummed) pages and roots still read.
 */
import test from 'ava'
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
