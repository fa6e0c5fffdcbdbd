/**
 * What a volume references, read in one place (issue #19): a chunk entry keeps its chunk alive; a delta
 * entry keeps its extent alive and, when its slot is partial (issue #10: only the sectors written, over
 * a chunk), the chunk under it too, which supplies the sectors the slot lacks. verify, space and repair
 * walk the maps through here; gc (maintenance.ts) walks each distinct map page once (backups and clones
 * share pages) and reads what lies under a slot through underSlot() too, so that a new kind of
 * reference is added once.
 *
 * The extent store answers a slot's base as 0 (a whole slot, or an extent without base table), null
 * (the stored base entry fails its check) or undefined (the extent's base table was never loaded):
 * underSlot() turns those into the four cases below, and each walker decides in the open what a case
 * means for it (gc holds back on the last two, repair treats an unloaded table as whole).
 */
import { ExtentStore } from '../extent/delta-extent'
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entrySlot } from '../format/map-format'
import { BlockMap } from '../map/block-map'

/** What lies under a delta entry's slot. */
export type Under =
  | { kind: 'whole' }
  | { kind: 'chunk', chunkId: number }
  /** The base entry fails its check (or names something other than a chunk): the slot cannot be read whole. */
  | { kind: 'damaged' }
  /** The extent's base table was not loaded (it could not be read): nothing is known. */
  | { kind: 'unloaded' }

/** What lies under the slot of delta entry `entry`. */
export function underSlot (extents: ExtentStore, entry: number): Under {
  const base = extents.baseOf(entryExtentId(entry), entrySlot(entry))
  if (base === undefined) return { kind: 'unloaded' }
  if (base === 0) return { kind: 'whole' }
  if (base === null || entryKind(base) !== entryKindChunk) return { kind: 'damaged' }
  return { kind: 'chunk', chunkId: entryChunkId(base) }
}

/**
 * Calls `visit` for every non-hole entry of `map`, with what lies under it when it is a delta entry
 * (null otherwise). Throws what reading a page throws (CORRUPT, IO).
 */
export function forEachReference (map: BlockMap, extents: ExtentStore, visit: (block: number, entry: number, under: Under | null) => void): void {
  map.forEachEntry((block, entry) => visit(block, entry, entryKind(entry) === entryKindDelta ? underSlot(extents, entry) : null))
}
