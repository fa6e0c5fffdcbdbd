/**
 * The addon's CRC-32 (native/fuse3/crc32_fast.c: folded with PCLMULQDQ where the CPU has it) is the
 * sector checksum of every native write and read, so it must equal zlib's (the engine's, node:zlib's
 * crc32) for every length, alignment and starting value, or native writes would store sums the engine
 * refuses (EIO) and native reads would refuse the engine's.
 */
import test from 'ava'
import crypto from 'node:crypto'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import { sectorCrcNative, sectorMatches, sectorSum } from '../../src/format/extent-format'
import { decodePage, encodePage, pageCrcsNative, pageGroupCrcs, pageGroups, pageIsSound } from '../../src/format/map-format'
import { pageBytes, pageEntries } from '../../src/limits'

const addon = require(process.env.VDISKFS_FUSE3_ADDON ?? path.join(__dirname, '..', '..', '..', 'native', 'fuse3', 'build', 'vdiskfs_fuse3.node')) as { crc32: (data: Uint8Array, crc: number) => number }

test('equals zlib\'s crc32 for every length to 4 KiB + 64, any alignment and any starting value', t => {
  const data = crypto.randomBytes(8192 + 64)
  for (let length = 0; length <= 4096 + 64; length++) {
    const at = length % 16
    const slice = data.subarray(at, at + length)
    t.is(addon.crc32(slice, 0), crc32(slice) >>> 0, `length ${length} at ${at}`)
  }
  for (let i = 0; i < 200; i++) {
    const at = crypto.randomInt(64)
    const slice = data.subarray(at, at + crypto.randomInt(8192))
    const start = crypto.randomInt(2 ** 32)
    t.is(addon.crc32(slice, start), crc32(slice, start) >>> 0)
  }
})

test('equals zlib\'s crc32 on sectors of zeros, of ones, and of a single bit set anywhere', t => {
  for (const fill of [0, 0xff, 0x5a]) {
    const sector = Buffer.alloc(4096, fill)
    t.is(addon.crc32(sector, 0), crc32(sector) >>> 0)
  }
  const sector = Buffer.alloc(4096)
  for (let bit = 0; bit < 4096 * 8; bit += 97) {
    sector.fill(0)
    sector[bit >> 3] = 1 << (bit & 7)
    t.is(addon.crc32(sector, 0), crc32(sector) >>> 0, `bit ${bit}`)
  }
})

test('the engine\'s sector sums are the addon\'s, and equal zlib\'s (0 stored as 0xFFFFFFFF)', t => {
  t.true(sectorCrcNative(), 'src/format/extent-format.ts loads the addon\'s crc32')
  for (let i = 0; i < 100; i++) {
    const sector = crypto.randomBytes(4096)
    const expected = crc32(sector) >>> 0
    t.is(sectorSum(sector), expected === 0 ? 0xffffffff : expected)
    t.true(sectorMatches(sector, sectorSum(sector)))
    sector[crypto.randomInt(4096)] ^= 1 << crypto.randomInt(8)
    t.false(sectorMatches(sector, expected))
  }
  t.true(sectorMatches(Buffer.alloc(4096), 0))
  t.false(sectorMatches(Buffer.alloc(4096, 1), 0))
})

test('a page\'s checksum groups in one call (crc32Groups) equal zlib\'s group by group; pages encode and decode with them, and a damaged group is found', t => {
  t.true(pageCrcsNative(), 'the addon computes the page checksums')
  const groupBytes = pageBytes / pageGroups
  for (let round = 0; round < 20; round++) {
    const stored = crypto.randomBytes(pageBytes + 64)
    const seed = crypto.randomInt(2 ** 32)
    const crcs = pageGroupCrcs(stored, seed)
    for (let g = 0; g < pageGroups; g++) t.is(crcs[g], crc32(stored.subarray(g * groupBytes, (g + 1) * groupBytes), (seed ^ g) >>> 0) >>> 0, `round ${round} group ${g}`)
  }
  const entries = new Float64Array(pageEntries)
  for (let i = 0; i < pageEntries; i += 7) entries[i] = 2 * 2 ** 48 + i
  const page = encodePage(entries, 12345)
  const decoded = decodePage(page, 12345)
  t.true(pageIsSound(decoded))
  t.deepEqual(Array.from(decoded.entries), Array.from(entries))
  page[100 * 8 + 3] ^= 0x10
  t.deepEqual(decodePage(page, 12345).unverified, [Math.floor(100 / (pageEntries / pageGroups))])
  t.false(pageIsSound(decodePage(page, 12346)), 'the seed binds the groups to the page id')
})
