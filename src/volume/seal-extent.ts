/**
 * Sealing one extent, inside the engine (its stores stay the pool's own): read the slots some map
 * still references, have the workers zero-check, hash and compress them in batches through the ingest
 * (chunk/ingest.ts), repoint the maps; `settle` then commits a batch of them and only then deletes
 * their extents. The sealer
 * (src/seal/sealer.ts) decides when and which extents; this file does the work on one.
 *
 * A kill at any point leaves either the old slots or the new chunks referenced, both durable; chunks
 * indexed but never referenced are garbage for gc. Reads and writes go on while it runs: the maps
 * change in one synchronous step, and only entries that still name the old slot are repointed.
 *
 * A partial slot (issue #10: only the sectors written, over a chunk) is sealed merged: the main thread
 * reads its sectors (checked) and the chunk underneath (verified) into the slab, and the workers hash
 * and compress the whole block from there. The new chunk replaces both; the old one stays for gc.
 */
import { IngestInput } from '../chunk/ingest'
import { DeltaExtent } from '../extent/delta-extent'
import { extentSectorBytes, sumOffset } from '../format/extent-format'
import { chunkEntry, entryChunkId, entryKind, entryKindChunk } from '../format/map-format'
import { sealBatchBlocks } from '../limits'
import { Committer } from './commit'
import { Maintenance } from './maintenance'
import { PoolState } from './pool-state'

export interface SealReport {
  extentsSealed: number
  blocksSealed: number
  zeroBlocks: number
  dedupedBlocks: number
  newChunks: number
  rawBytes: number
  storedBytes: number
  /** Extents that could not be sealed (damaged or unreadable), with why; their data stays where it is. */
  failed: string[]
  /** Extents the pass was to seal and did not reach because the pool is closing (0: it ran to its end). */
  extentsLeft: number
}

export function emptyReport (): SealReport {
  return { extentsSealed: 0, blocksSealed: 0, zeroBlocks: 0, dedupedBlocks: 0, newChunks: 0, rawBytes: 0, storedBytes: 0, failed: [], extentsLeft: 0 }
}

/** A seal pass stopped because the pool is closing; its extent is untouched. */
export class SealCancelled extends Error {
  constructor () { super('cancelled: the pool is closing') }
}

export class ExtentSealing {
  constructor (private readonly state: PoolState, private readonly committer: Committer, private readonly maintenance: Maintenance) {}

  /**
   * Seals extent `extentId` (frozen, and sealed by nobody else: the caller holds the maintenance
   * lock): its referenced slots become chunks and the maps are repointed (in memory; `settle` commits
   * and drops it). Adds what it did to `report`. Throws SealCancelled when the pool starts closing (the
   * extent untouched), or why the extent could not be sealed (its data stays where it is).
   */
  async sealExtent (extentId: number, report: SealReport): Promise<void> {
    const state = this.state
    const extents = state.extents
    const blockBytes = state.blockBytes
    const slots = this.maintenance.referencedSlots(extentId)
    const mapping = new Map<number, number>()
    if (slots.length > 0) {
      let extent = await extents.get(extentId) // checks the extent's header before any of it is sealed
      // A suspect extent (written when the pool stopped uncleanly) gets its checksums back first.
      if (extents.suspect.has(extentId)) await extents.recoverSuspect(extentId, slots)
      const checked = extents.checked(extent)
      // The workers read through this descriptor; it stays open until the pass is done with it.
      // eslint-disable-next-line require-atomic-updates -- extent is a local of this call: the pinned one replaces it, and nothing else assigns it
      extent = await extents.pin(extent)
      const pinned = extent
      const extentFile = extents.file(extentId)
      const ingest = state.ingest
      const partial = extents.partialSlots(extentId, slots)
      const whole = slots.filter(slot => !partial.has(slot))
      const merged = slots.filter(slot => partial.has(slot))
      const batches: Array<{ slots: number[], partial: boolean }> = []
      for (let i = 0; i < whole.length; i += sealBatchBlocks) batches.push({ slots: whole.slice(i, i + sealBatchBlocks), partial: false })
      for (let i = 0; i < merged.length; i += sealBatchBlocks) batches.push({ slots: merged.slice(i, i + sealBatchBlocks), partial: true })
      const runBatch = async ({ slots: batch, partial: merging }: { slots: number[], partial: boolean }): Promise<void> => {
        // The worker reads whole slots from the extent itself: the main thread only hands out numbers.
        // A partial slot is merged with the chunk under it on the main thread, into the slab.
        const input: IngestInput = merging
          ? { count: batch.length, fill: async (i, region) => { (await this.mergedBlock(pinned, batch[i], partial.get(batch[i]) ?? null)).copy(region) } }
          : {
              count: batch.length,
              source: {
                fd: pinned.fd,
                file: extentFile,
                offsets: batch.map(slot => extents.slotPosition(extent, slot)),
                // The worker checks every sector against the extent's table before it hashes the block.
                sums: checked ? batch.map(slot => sumOffset(slot, 0, blockBytes)) : undefined
              }
            }
        const outcomes = await ingest.batch(input, 'seal worker')
        outcomes.forEach((outcome, i) => {
          report.blocksSealed++
          report.rawBytes += blockBytes
          if (outcome.zero) { mapping.set(batch[i], 0); report.zeroBlocks++; return }
          mapping.set(batch[i], chunkEntry(outcome.chunkId))
          if (!outcome.isNew) { report.dedupedBlocks++; return }
          report.newChunks++
          report.storedBytes += outcome.storedBytes
        })
      }
      // A failure (or a close) stops every lane from taking another batch; the pass then waits for
      // the batches in flight to settle; what they stored is indexed (or, on a failure, abandoned).
      try {
        await ingest.run(batches, async batch => {
          if (state.lifecycle !== 'open') throw new SealCancelled()
          await runBatch(batch)
        })
      } finally {
        extents.unpin(pinned)
      }
      if (state.lifecycle !== 'open') throw new SealCancelled()
      this.maintenance.repoint(extentId, mapping)
    }
  }

  /**
   * Commits the maps that `sealExtent` repointed away from `extentIds`, then drops those extents (no
   * committed map names them any more) and counts them sealed in `report`. One commit for many
   * extents writes a map page naming several of them once.
   */
  async settle (extentIds: number[], report: SealReport): Promise<void> {
    if (extentIds.length === 0) return
    // A du walking beside the pass ends first, and none starts until this ends (Maintenance.settling).
    await this.maintenance.settling(async () => {
      // `full`: the repoints this pass left out of other commits (deferred-repoints.ts) go in this one,
      // so every page that named these extents is committed repointed before they are dropped.
      await this.committer.commit(true)
      for (const id of extentIds) {
        await this.maintenance.dropExtent(id)
        report.extentsSealed++
      }
    })
  }

  /**
   * Partial slot `slot` of `extent` merged with the chunk under it (`base`): its written sectors
   * checked, the chunk verified. Throws CORRUPT (a damaged sector, base entry or chunk) or IO.
   */
  private async mergedBlock (extent: DeltaExtent, slot: number, base: number | null): Promise<Buffer> {
    const block = Buffer.alloc(this.state.blockBytes)
    const unwritten = await this.state.extents.read(extent, slot, 0, block)
    if (unwritten.length === 0) return block
    if (base === null || entryKind(base) !== entryKindChunk) throw new Error(`delta extent ${extent.id} slot ${slot}: its base entry fails its check`)
    const under = Buffer.alloc(this.state.blockBytes)
    await this.state.chunks.read(entryChunkId(base), 0, under, `delta extent ${extent.id} slot ${slot} (the chunk under its partial slot)`)
    for (const sector of unwritten) under.copy(block, sector * extentSectorBytes, sector * extentSectorBytes, (sector + 1) * extentSectorBytes)
    return block
  }
}
