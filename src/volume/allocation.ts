/**
 * A volume's allocation map, in the shape of `qemu-img map --output=json`: byte ranges, each with
 * `depth` (0: the volume's own; 1: what a clone reads from the backup it stands on), `present` (the
 * range is allocated somewhere: data, or a zero the volume wrote over its backup's data), `zero` (reads
 * as zeros), `data` (holds data) and, for data, `offset` (where the image file holds it: images are
 * raw files, so the same offset; for depth 1 also in the backup's image). Adjacent ranges of the same
 * kind are merged. libfuse 2 cannot answer SEEK_DATA/SEEK_HOLE: this is what tools get instead.
 *
 * Cost follows the map, not the size: a page that is all holes (root entry 0) is one step, so a 20 GiB
 * empty image answers at once; allocated pages are walked entry by entry, yielding to the event loop
 * every allocationPagesPerTurn pages so a large map does not stall the daemon.
 *
 * Assumes: the volume may be written meanwhile; each page is read as it is when its turn comes.
 * Errors: what reading a map page throws (CORRUPT, IO).
 */
import { allocationPagesPerTurn, pageEntries } from '../limits'
import { PageStore } from '../map/page-store'
import { Volume } from './volume'

export interface AllocationRange {
  start: number
  length: number
  depth: number
  present: boolean
  zero: boolean
  data: boolean
  offset?: number
}

/** What one block is: 0 hole, 1 own zero over backing data, 2 own data, 3 backing data, 4 hole over a backing hole. */
type BlockClass = 0 | 1 | 2 | 3 | 4

function rangeOf (kind: BlockClass, start: number, length: number): AllocationRange {
  switch (kind) {
    case 0: return { start, length, depth: 0, present: false, zero: true, data: false }
    case 1: return { start, length, depth: 0, present: true, zero: true, data: false }
    case 2: return { start, length, depth: 0, present: true, zero: false, data: true, offset: start }
    case 3: return { start, length, depth: 1, present: true, zero: false, data: true, offset: start }
    case 4: return { start, length, depth: 1, present: false, zero: true, data: false }
  }
}

/**
 * The allocation map of `volume`; `backing` is the backup a clone stands on (undefined for a disk, a
 * backup, or a clone whose backup was removed: then everything is depth 0). `unmapped`: block ranges
 * [from, to), in order, whose entries a lazy pull has not applied yet (the map says 0 there): data, never
 * holes (the backing's data for a clone), so that SEEK_HOLE and a sparse copy never skip them.
 */
export async function allocationMap (volume: Volume, backing: Volume | undefined, pages: PageStore, blockBytes: number, unmapped: ReadonlyArray<readonly [number, number]> = []): Promise<AllocationRange[]> {
  const size = volume.size
  const blocks = Math.ceil(size / blockBytes)
  const pageCount = Math.ceil(blocks / pageEntries)
  const ranges: AllocationRange[] = []
  let current: BlockClass | null = null
  let currentFirst = 0
  const flush = (endBlock: number): void => {
    if (current === null) return
    const start = currentFirst * blockBytes
    const end = Math.min(endBlock * blockBytes, size)
    if (end > start) ranges.push(rangeOf(current, start, end - start))
  }
  const add = (kind: BlockClass, first: number): void => {
    if (kind === current) return
    flush(first)
    current = kind
    currentFirst = first
  }
  const holeKind: BlockClass = backing === undefined ? 0 : 4
  const unmappedKind: BlockClass = backing === undefined ? 2 : 3
  const empty = new Float64Array(0)
  // The first unmapped range not wholly before `block` (blocks are visited in order).
  let u = 0
  const unmappedFrom = (block: number): readonly [number, number] | undefined => {
    while (u < unmapped.length && unmapped[u][1] <= block) u++
    return unmapped[u]
  }
  for (let p = 0; p < pageCount; p++) {
    if (p > 0 && p % allocationPagesPerTurn === 0) await new Promise(resolve => setImmediate(resolve))
    const first = p * pageEntries
    const count = Math.min(pageEntries, blocks - first)
    const rootId = p < volume.map.root.length ? volume.map.root[p] : 0
    const backingId = backing !== undefined && p < backing.map.root.length ? backing.map.root[p] : 0
    const next = unmappedFrom(first)
    const touched = next !== undefined && next[0] < first + count
    if (rootId === 0 && backingId === 0 && !touched) { add(holeKind, first); continue }
    const own = rootId === 0 ? empty : pages.get(rootId).entries
    // The same page as the backup's: everything in it is the backup's.
    const inherited = rootId !== 0 && rootId === backingId
    const under = backingId === 0 || inherited ? empty : pages.get(backingId).entries
    for (let i = 0; i < count; i++) {
      const entry = rootId === 0 ? 0 : own[i]
      let kind: BlockClass
      if (backing === undefined) kind = entry === 0 ? 0 : 2
      else if (inherited) kind = entry === 0 ? 4 : 3
      else {
        const below = i < under.length ? under[i] : 0
        if (entry === 0) kind = below === 0 ? 4 : 1
        else kind = entry === below ? 3 : 2
      }
      if (touched) {
        const range = unmappedFrom(first + i)
        if (range !== undefined && range[0] <= first + i) kind = unmappedKind
      }
      add(kind, first + i)
    }
  }
  flush(blocks)
  return ranges
}
