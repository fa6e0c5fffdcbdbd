/**
 * Space accounting: per volume, the stored bytes it can read (referenced), what deleting it would free
 * now (unique), and for a backup what it alone keeps from its source; for the pool, logical and stored
 * totals. Backups and clones are accounted apart from their base: a block shared by several volumes
 * counts in each one's referenced bytes and in nobody's unique bytes.
 *
 * A partial slot (issue #10) references two locations: its slot and the chunk under it, which counts
 * like any other chunk the volume can read.
 *
 * A report scans every map once (one pass over the pages). It is cached until the pool changes.
 */
import { chunkEntry, entryChunkId, entryKind, entryKindChunk, entryKindDelta } from '../format/map-format'
import { Page } from '../map/page-store'
import { Pool } from '../volume/pool'
import { Volume } from '../volume/volume'
import { spaceUsageStaleMs } from '../limits'

export interface VolumeUsage {
  id: number
  kind: string
  name: string
  logicalBytes: number
  referencedBytes: number
  uniqueBytes: number
  /** Backups only: bytes it references that its source (if still there) does not. */
  keptFromSourceBytes: number | null
}

export interface SpaceReport {
  volumes: VolumeUsage[]
  /** Sum of the volumes' sizes. */
  logicalBytes: number
  /** Bytes stored for every distinct block location: delta slots and chunks (compressed). */
  storedBytes: number
  /** Block positions in distinct map pages that point at chunks, over distinct chunks. */
  dedupRatio: number
  /** Raw over stored bytes of the distinct chunks. */
  compressionRatio: number
  /** Referenced over stored bytes: all that sharing (backups, clones, dedup) and compression save. */
  sharingRatio: number
  /** Bytes still in delta extents, waiting to be sealed. */
  unsealedBytes: number
}

export class SpaceAccounting {
  private cached: { generation: number, atMs: number, report: SpaceReport, byId: Map<number, VolumeUsage> } | null = null

  constructor (private readonly pool: Pool) {}

  report (): SpaceReport {
    return this.compute().report
  }

  /**
   * One volume's figures for its xattrs. A pass over every map of the pool runs on the main thread,
   * so anybody who can read one image could stall the daemon by writing and asking in a loop: the
   * figures served here may be up to spaceUsageStaleMs old (`vdiskfs du` always recomputes).
   */
  usage (volume: Volume): VolumeUsage {
    const fresh = this.cached !== null && this.cached.byId.has(volume.id) && Date.now() - this.cached.atMs < spaceUsageStaleMs
    const usage = (fresh ? this.cached as NonNullable<typeof this.cached> : this.compute()).byId.get(volume.id)
    if (usage === undefined) throw new Error(`no usage for volume ${volume.id}`)
    return usage
  }

  private compute (): { report: SpaceReport, byId: Map<number, VolumeUsage> } {
    const generation = this.pool.generation
    if (this.cached !== null && this.cached.generation === generation) return this.cached
    const size = this.pool.inspection.sizeOf
    const volumes = this.pool.list()
    /** Every stored location a volume reads: its map entries, and the chunks under its partial slots. */
    const locations = (volume: Volume, visit: (entry: number) => void): void => {
      this.pool.inspection.forEachReference(volume.map, (_block, entry, under) => {
        visit(entry)
        if (under?.kind === 'chunk') visit(chunkEntry(under.chunkId))
      })
    }
    // Which volumes reference each stored location (map entry value).
    const owners = new Map<number, number>()
    const shared = -1
    for (const volume of volumes) {
      locations(volume, entry => {
        const owner = owners.get(entry)
        if (owner === undefined) owners.set(entry, volume.id)
        else if (owner !== volume.id) owners.set(entry, shared)
      })
    }
    const byId = new Map<number, VolumeUsage>()
    let logicalBytes = 0
    let referencedTotal = 0
    for (const volume of volumes) {
      let unique = 0
      let referenced = 0
      locations(volume, entry => { referenced += size(entry); if (owners.get(entry) === volume.id) unique += size(entry) })
      let kept: number | null = null
      if (volume.kind === 'backup') {
        const source = volume.sourceId !== null ? this.pool.byId(volume.sourceId) : undefined
        const sourceEntries = new Set<number>()
        if (source !== undefined) locations(source, entry => sourceEntries.add(entry))
        let bytes = 0
        locations(volume, entry => { if (!sourceEntries.has(entry)) bytes += size(entry) })
        kept = bytes
      }
      const usage: VolumeUsage = {
        id: volume.id,
        kind: volume.kind,
        name: volume.name,
        logicalBytes: volume.size,
        referencedBytes: referenced,
        uniqueBytes: unique,
        keptFromSourceBytes: kept
      }
      logicalBytes += volume.size
      referencedTotal += usage.referencedBytes
      byId.set(volume.id, usage)
    }
    let storedBytes = 0
    let unsealedBytes = 0
    let chunkRaw = 0
    let chunkStored = 0
    let chunks = 0
    for (const entry of owners.keys()) {
      const bytes = size(entry)
      storedBytes += bytes
      const kind = entryKind(entry)
      if (kind === entryKindDelta) unsealedBytes += bytes
      else if (kind === entryKindChunk) { chunks++; chunkStored += bytes; chunkRaw += this.pool.inspection.chunkRawBytes(entryChunkId(entry)) }
    }
    const pages = new Set<Page>()
    for (const volume of volumes) volume.map.forEachPage(page => pages.add(page))
    let chunkPositions = 0
    for (const page of pages) for (const entry of page.entries) if (entry !== 0 && entryKind(entry) === entryKindChunk) chunkPositions++
    const report: SpaceReport = {
      // Volumes removed while open (hidden) are out of the namespace; their data still counts.
      volumes: volumes.filter(v => !v.hidden).map(v => byId.get(v.id) as VolumeUsage),
      logicalBytes,
      storedBytes,
      dedupRatio: chunks === 0 ? 1 : chunkPositions / chunks,
      compressionRatio: chunkStored === 0 ? 1 : chunkRaw / chunkStored,
      sharingRatio: storedBytes === 0 ? 1 : referencedTotal / storedBytes,
      unsealedBytes
    }
    this.cached = { generation, atMs: Date.now(), report, byId }
    return this.cached
  }
}
