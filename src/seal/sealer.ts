/**
 * Sealing: moves blocks from delta extents into the chunk store, in the background. For each frozen
 * extent (and each active one past its size or idle limit, after rotating it): read the slots some
 * map still references, have the workers zero-check, hash and compress them in batches, deduplicate
 * by hash across the pool, append new chunks to a pack, make the packs durable and index them, repoint
 * the maps, commit, and only then delete the extent.
 *
 * A kill at any point leaves either the old slots or the new chunks referenced, both durable; chunks
 * indexed but never referenced are garbage for gc. Reads and writes go on while it runs: the maps
 * change in one synchronous step, and only entries that still name the old slot are repointed.
 *
 * A partial slot (issue #10: only the sectors written, over a chunk) is sealed merged: the main thread
 * reads its sectors (checked) and the chunk underneath (verified) into the slab, and the workers hash
 * and compress the whole block from there. The new chunk replaces both; the old one stays for gc.
 */
import { DeltaExtent } from '../extent/delta-extent'
import { chunkEntry, entryChunkId, entryKind, entryKindChunk } from '../format/map-format'
import { extentSectorBytes, sumOffset } from '../format/extent-format'
import { sealBatchBlocks, sealIntervalMs } from '../limits'
import { Pool } from '../volume/pool'
import { IngestInput } from '../chunk/ingest'

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
}

/** A seal pass stopped because the pool is closing; its extent is untouched. */
class Cancelled extends Error {
  constructor () { super('cancelled: the pool is closing') }
}

export function emptyReport (): SealReport {
  return { extentsSealed: 0, blocksSealed: 0, zeroBlocks: 0, dedupedBlocks: 0, newChunks: 0, rawBytes: 0, storedBytes: 0, failed: [] }
}

export class Sealer {
  private timer: NodeJS.Timeout | null = null
  private running: Promise<SealReport> | null = null
  /** Extents that failed to seal: the background passes skip them until an explicit sync retries. */
  private readonly failing = new Set<number>()
  /** Progress of the pass in flight, for callers that show it. */
  progress = { done: 0, total: 0 }

  constructor (private readonly pool: Pool, private readonly log: (message: string) => void) {}

  start (): void {
    this.timer = setInterval(() => {
      if (this.running === null) this.sealPending(false).catch(err => this.log(`sealing failed: ${(err as Error).message}`))
    }, sealIntervalMs)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  /**
   * Seals every frozen extent, after rotating active ones that are idle or big (`all`: every active
   * extent with data, which is what `vdiskfs sync` asks for). Passes do not overlap.
   */
  async sealPending (all: boolean): Promise<SealReport> {
    while (this.running !== null) await this.running.catch(() => {})
    const run = this.pool.exclusive(async () => {
      const report = emptyReport()
      await this.pool.freezeForSealing(all)
      const extents = this.pool.frozenExtents().filter(id => all || (!this.failing.has(id) && this.pool.coldEnough(id)))
      this.progress = { done: 0, total: extents.length }
      for (const extentId of extents) {
        if (this.pool.closing) break
        try {
          await this.sealExtent(extentId, report)
          this.failing.delete(extentId)
        } catch (err) {
          if (err instanceof Cancelled) break
          // Space may run out, or the extent may be damaged: its blocks stay readable where they are
          // (or fail with EIO), and the next pass tries again.
          if (!this.failing.has(extentId)) this.log(`sealing extent ${extentId} failed: ${(err as Error).message}`)
          this.failing.add(extentId)
          report.failed.push(`extent ${extentId}: ${(err as Error).message}`)
        }
        this.progress.done++
      }
      if (report.extentsSealed > 0) {
        this.log(`sealed ${report.extentsSealed} extents: ${report.blocksSealed} blocks, ${report.zeroBlocks} zero, ${report.dedupedBlocks} deduplicated, ` +
          `${report.newChunks} new chunks, ${report.rawBytes} -> ${report.storedBytes} bytes`)
      }
      return report
    })
    this.running = run
    try { return await run } finally { this.running = null }
  }

  private async sealExtent (extentId: number, report: SealReport): Promise<void> {
    const pool = this.pool
    const blockBytes = pool.blockBytes
    const slots = pool.referencedSlots(extentId)
    const mapping = new Map<number, number>()
    if (slots.length > 0) {
      let extent = await pool.extents.get(extentId) // checks the extent's header before any of it is sealed
      // A suspect extent (written when the pool stopped uncleanly) gets its checksums back first.
      if (pool.extents.suspect.has(extentId)) await pool.extents.recoverSuspect(extentId, slots)
      const checked = pool.extents.checked(extent)
      // The workers read through this descriptor; it stays open until the pass is done with it.
      // eslint-disable-next-line require-atomic-updates -- extent is a local of this call: the pinned one replaces it, and nothing else assigns it
      extent = await pool.extents.pin(extent)
      const pinned = extent
      const extentFile = pool.extents.file(extentId)
      const ingest = pool.ingest
      const partial = pool.extents.partialSlots(extentId, slots)
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
                offsets: batch.map(slot => pool.extents.slotPosition(extent, slot)),
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
          if (pool.closing) throw new Cancelled()
          await runBatch(batch)
        })
      } finally {
        pool.extents.unpin(pinned)
      }
      if (pool.closing) throw new Cancelled()
      pool.repoint(extentId, mapping)
    }
    await pool.commit()
    await pool.dropExtent(extentId)
    report.extentsSealed++
  }

  /**
   * Partial slot `slot` of `extent` merged with the chunk under it (`base`): its written sectors
   * checked, the chunk verified. Throws CORRUPT (a damaged sector, base entry or chunk) or IO.
   */
  private async mergedBlock (extent: DeltaExtent, slot: number, base: number | null): Promise<Buffer> {
    const pool = this.pool
    const block = Buffer.alloc(pool.blockBytes)
    const unwritten = await pool.extents.read(extent, slot, 0, block)
    if (unwritten.length === 0) return block
    if (base === null || entryKind(base) !== entryKindChunk) throw new Error(`delta extent ${extent.id} slot ${slot}: its base entry fails its check`)
    const under = Buffer.alloc(pool.blockBytes)
    await pool.chunks.read(entryChunkId(base), 0, under, `delta extent ${extent.id} slot ${slot} (the chunk under its partial slot)`)
    for (const sector of unwritten) under.copy(block, sector * extentSectorBytes, sector * extentSectorBytes, (sector + 1) * extentSectorBytes)
    return block
  }
}
