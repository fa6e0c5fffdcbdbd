/**
 * The block map on its own: entries round-trip, resize clears what it cuts off, a copied root shares
 * pages until a write copies just the page it touches, and allocated-block counts stay exact.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Catalog } from '../../src/catalog/catalog'
import { BlockMap } from '../../src/map/block-map'
import { PageStore } from '../../src/map/page-store'
import { decodeRoot, decodeU64Array, deltaEntry, encodeRoot, encodeU64Array, entryExtentId, entryKind, entrySlot } from '../../src/format/map-format'
import { pageEntries } from '../../src/limits'

function store (t: { teardown: (f: () => void) => void }): PageStore {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-map-'))
  const catalog = Catalog.open(path.join(dir, 'c.sqlite'), true)
  t.teardown(() => { catalog.close(); fs.rmSync(dir, { recursive: true, force: true }) })
  return new PageStore(catalog)
}

test('map entries encode extent and slot and survive u64 encoding', t => {
  const entry = deltaEntry(123456, 16383)
  t.is(entryKind(entry), 1)
  t.is(entryExtentId(entry), 123456)
  t.is(entrySlot(entry), 16383)
  const values = Float64Array.from([0, entry, 2 ** 53 - 1, 4294967296 + 7])
  t.deepEqual(Array.from(decodeU64Array(encodeU64Array(values), 4)), Array.from(values))
  const bad = Buffer.alloc(8, 0xff)
  t.throws(() => decodeU64Array(bad, 1), { instanceOf: RangeError })
})

test('a copied root shares pages until a write copies only the page it touches', t => {
  const pages = store(t)
  const map = new BlockMap(pages, new Float64Array(0), 1, 0, 0, entry => entry === 0 ? 0 : 4096)
  map.resize(3 * pageEntries)
  map.set(5, deltaEntry(1, 0))
  map.set(pageEntries + 5, deltaEntry(1, 1))
  t.is(map.allocatedBlocks, 2)
  const copy = new BlockMap(pages, map.copyRoot(), 2, map.allocatedBlocks, map.storedBytes, entry => entry === 0 ? 0 : 4096)
  map.epoch = 3
  map.set(5, deltaEntry(2, 0))
  t.is(copy.get(5), deltaEntry(1, 0), 'the copy keeps the old entry')
  t.is(map.get(5), deltaEntry(2, 0))
  t.not(map.root[0], copy.root[0], 'the touched page was copied')
  t.is(map.root[1], copy.root[1], 'the untouched page is still shared')
  map.set(pageEntries + 5, 0)
  t.is(map.allocatedBlocks, 1)
  t.is(copy.get(pageEntries + 5), deltaEntry(1, 1))
})

test('resize drops entries past the end and counts them out', t => {
  const pages = store(t)
  const map = new BlockMap(pages, new Float64Array(0), 1, 0, 0, entry => entry === 0 ? 0 : 4096)
  map.resize(2 * pageEntries + 10)
  for (const block of [0, 9, 10, pageEntries, 2 * pageEntries + 9]) map.set(block, deltaEntry(1, block % 1000))
  map.resize(10)
  t.is(map.allocatedBlocks, 2)
  t.is(map.root.length, 1)
  map.resize(2 * pageEntries + 10)
  t.is(map.get(pageEntries), 0)
  t.is(map.get(2 * pageEntries + 9), 0)
  t.is(map.get(9), deltaEntry(1, 9))
  t.is(map.get(10), 0)
})

test('a root is 4 bytes an id while its ids fit 32 bits; an id past 2^32 widens it (a copy: a reader sharing the old one keeps it), and it reads and stores the same', t => {
  const pages = store(t)
  const size = (entry: number): number => entry === 0 ? 0 : 4096
  const map = new BlockMap(pages, new Float64Array(0), 1, 0, 0, size)
  map.resize(3 * pageEntries)
  map.set(5, deltaEntry(1, 0))
  map.set(2 * pageEntries + 1, deltaEntry(1, 1))
  const copy = new BlockMap(pages, map.copyRoot(), 2, map.allocatedBlocks, map.storedBytes, size)
  t.true(copy.root instanceof Uint32Array, 'a backup\'s copy is compact')
  t.deepEqual(Array.from(copy.root), Array.from(map.root))
  const stored = decodeRoot(encodeRoot(copy.root, 9), 3, 9)
  t.true(stored instanceof Uint32Array, 'and read back compact')
  const shared = copy.shareRoot()
  // The page store has made 4 billion pages: the next page id needs 33 bits.
  ;(pages as unknown as { nextPageId: number }).nextPageId = 2 ** 32 + 7
  copy.set(2 * pageEntries + 2, deltaEntry(2, 3))
  t.true(copy.root instanceof Float64Array, 'widened before the id went in')
  t.is(copy.root[2], 2 ** 32 + 7)
  t.is(copy.get(2 * pageEntries + 2), deltaEntry(2, 3))
  t.is(copy.get(2 * pageEntries + 1), deltaEntry(1, 1), 'the page copied on write kept the other entries')
  t.is(copy.get(5), deltaEntry(1, 0))
  t.true(shared instanceof Uint32Array)
  t.is(shared[2], map.root[2], 'the shared array is as it was')
  const wide = decodeRoot(encodeRoot(copy.root, 9), 3, 9)
  t.true(wide instanceof Float64Array)
  t.is(wide[2], 2 ** 32 + 7)
  const again = new BlockMap(pages, copy.copyRoot(), 3, copy.allocatedBlocks, copy.storedBytes, size)
  t.true(again.root instanceof Float64Array, 'a copy of a wide root stays wide')
  t.is(again.get(2 * pageEntries + 2), deltaEntry(2, 3))
  copy.widenRoot()
  t.true(copy.root instanceof Float64Array)
})
