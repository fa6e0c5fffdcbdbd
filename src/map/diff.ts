/**
 * Which blocks differ between two volumes, from their maps alone: `vdiskfs diff` and incremental
 * export. Its cost follows what changed, not the size: map pages are copy-on-write and shared between
 * a backup and its source and clones (src/map/block-map.ts), so a page id both roots name holds the
 * same entries and is skipped without being read; only pages whose ids differ are compared entry by
 * entry.
 *
 * Entries that differ may still hold equal bytes (a block rewritten with what it held): the answer is
 * a superset of the changed blocks, never a subset. Equal entries always hold equal bytes (a delta slot
 * a backup can read is never written again; sealing repoints shared pages in place).
 *
 * Assumes: both volumes are in one pool (their entries name the same extents and chunks), and the maps
 * do not change while it runs (it is synchronous). Errors: CORRUPT when a page fails its checks.
 */
import { diffPagesPerTurn, pageEntries } from '../limits'
import { PageStore } from './page-store'

/** What the comparisons read of a volume: its size and its map's root. */
export interface Mapped { readonly size: number, readonly map: { readonly root: Float64Array | Uint32Array } }

/** A block of `newer` that differs from `older`, with its entry in `newer` (0: a hole). */
export interface ChangedBlock { block: number, entry: number }

/** A byte range, as `vdiskfs diff --json` prints it. */
export interface ByteRange { start: number, length: number }

const holes = new Float64Array(pageEntries)

/**
 * The blocks below `newer`'s size whose entries differ from `older`'s (every non-hole block when
 * `older` is null), in increasing order, and how many pages were compared.
 */
export function changedBlocks (newer: Mapped, older: Mapped | null, pages: PageStore, blockBytes: number): { blocks: ChangedBlock[], pagesRead: number } {
  const blocks: ChangedBlock[] = []
  const total = Math.ceil(newer.size / blockBytes)
  const newRoot = newer.map.root
  const oldRoot = older?.map.root ?? new Float64Array(0)
  let pagesRead = 0
  for (let p = 0; p * pageEntries < total; p++) {
    const newId = p < newRoot.length ? newRoot[p] : 0
    const oldId = p < oldRoot.length ? oldRoot[p] : 0
    if (newId === oldId) continue // shared (or both all holes): not read
    const newEntries = newId === 0 ? holes : pages.get(newId).entries
    const oldEntries = oldId === 0 ? holes : pages.get(oldId).entries
    pagesRead += (newId === 0 ? 0 : 1) + (oldId === 0 ? 0 : 1)
    const end = Math.min(pageEntries, total - p * pageEntries)
    for (let i = 0; i < end; i++) if (newEntries[i] !== oldEntries[i]) blocks.push({ block: p * pageEntries + i, entry: newEntries[i] })
  }
  return { blocks, pagesRead }
}

/** The changed blocks of a large comparison: one bit per block of each map page that differs. */
export interface ChangedSet {
  count: number
  /** The changed block indices, in increasing order. */
  blocks: () => Generator<number>
}

/**
 * changedBlocks for export: the same answer as a bit set (a bit per block of the pages that differ:
 * 512 bytes per 256 MiB at 64 KiB blocks, not an object per block), computed in turns of
 * diffPagesPerTurn pages so that the daemon keeps serving the mount meanwhile. A seal pass between two
 * turns may repoint entries (a delta slot becomes the chunk it was sealed into) on both sides at once:
 * a block compared across that moment is at worst reported changed with equal bytes.
 */
export async function changedBlockSet (newer: Mapped, older: Mapped | null, pages: PageStore, blockBytes: number): Promise<ChangedSet> {
  const total = Math.ceil(newer.size / blockBytes)
  const bits = new Map<number, Uint8Array>()
  let count = 0
  for (let p = 0; p * pageEntries < total; p++) {
    if (p > 0 && p % diffPagesPerTurn === 0) await new Promise(resolve => setImmediate(resolve))
    const newRoot = newer.map.root
    const oldRoot = older?.map.root ?? new Float64Array(0)
    const newId = p < newRoot.length ? newRoot[p] : 0
    const oldId = p < oldRoot.length ? oldRoot[p] : 0
    if (newId === oldId) continue
    const newEntries = newId === 0 ? holes : pages.get(newId).entries
    const oldEntries = oldId === 0 ? holes : pages.get(oldId).entries
    const end = Math.min(pageEntries, total - p * pageEntries)
    let set: Uint8Array | undefined
    for (let i = 0; i < end; i++) {
      if (newEntries[i] === oldEntries[i]) continue
      set ??= new Uint8Array(pageEntries / 8)
      set[i >> 3] |= 1 << (i & 7)
      count++
    }
    if (set !== undefined) bits.set(p, set)
  }
  return {
    count,
    blocks: function * () {
      for (const p of [...bits.keys()].sort((a, b) => a - b)) {
        const set = bits.get(p) as Uint8Array
        for (let i = 0; i < pageEntries; i++) if ((set[i >> 3] & (1 << (i & 7))) !== 0) yield p * pageEntries + i
      }
    }
  }
}

/**
 * The byte ranges that differ between `older` and `newer`: their changed blocks, clipped to the larger
 * size, and the span between the two sizes when they differ; adjacent ranges merged.
 */
export function differingRanges (older: Mapped, newer: Mapped, pages: PageStore, blockBytes: number): { ranges: ByteRange[], pagesRead: number } {
  const { blocks, pagesRead } = changedBlocks(newer, older, pages, blockBytes)
  const ranges: ByteRange[] = []
  const larger = Math.max(older.size, newer.size)
  const smaller = Math.min(older.size, newer.size)
  for (const { block } of blocks) ranges.push({ start: block * blockBytes, length: Math.min((block + 1) * blockBytes, larger) - block * blockBytes })
  // Past the smaller size the two differ in length: that span differs whatever the blocks hold.
  if (larger > smaller) ranges.push({ start: smaller, length: larger - smaller })
  ranges.sort((a, b) => a.start - b.start)
  return { ranges: mergeRanges(ranges), pagesRead }
}

function mergeRanges (ranges: ByteRange[]): ByteRange[] {
  const out: ByteRange[] = []
  for (const range of ranges) {
    const last = out[out.length - 1]
    if (last !== undefined && last.start + last.length >= range.start) last.length = Math.max(last.start + last.length, range.start + range.length) - last.start
    else out.push({ ...range })
  }
  return out
}
