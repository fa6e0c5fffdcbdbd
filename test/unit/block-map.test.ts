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
import { decodeU64Array, deltaEntry, encodeU64Array, entryExtentId, entryKind, entrySlot } from '../../src/format/map-format'
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
