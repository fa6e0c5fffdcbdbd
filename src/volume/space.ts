/**
 * Space accounting: per volume, the stored bytes it can read (referenced), what deleting it would free
 * now (unique), and for a backup what it alone keeps from its source; for the pool, logical and stored
 * totals. Backups and clones are accounted apart from their base: a block shared by several volumes
 * counts in each one's referenced bytes and in nobody's unique bytes.
 *
 * A report scans every map once (one pass over the pages). It is cached until the pool changes.
 */
import { Pool } from './pool'
import { Volume } from './volume'

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
  logicalBytes: number
  /** Distinct stored blocks, in bytes. */
  storedBytes: number
  /** Sum of referenced over distinct stored: how much sharing (clones, backups, dedup) saves. */
  sharingRatio: number
}

export class SpaceAccounting {
  private cached: { generation: number, report: SpaceReport, byId: Map<number, VolumeUsage> } | null = null

  constructor (private readonly pool: Pool) {}

  report (): SpaceReport {
    return this.compute().report
  }

  usage (volume: Volume): VolumeUsage {
    const usage = this.compute().byId.get(volume.id)
    if (usage === undefined) throw new Error(`no usage for volume ${volume.id}`)
    return usage
  }

  private compute (): { report: SpaceReport, byId: Map<number, VolumeUsage> } {
    const generation = this.pool.generation
    if (this.cached !== null && this.cached.generation === generation) return this.cached
    const blockBytes = this.pool.blockBytes
    const volumes = this.pool.list()
    // Which volumes reference each stored location (map entry value).
    const owners = new Map<number, number>()
    const shared = -1
    for (const volume of volumes) {
      volume.map.forEachEntry((_block, entry) => {
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
      volume.map.forEachEntry((_block, entry) => { if (owners.get(entry) === volume.id) unique++ })
      let kept: number | null = null
      const source = volume.kind === 'backup' && volume.sourceId !== null ? this.pool.byId(volume.sourceId) : undefined
      if (volume.kind === 'backup') {
        const sourceEntries = new Set<number>()
        source?.map.forEachEntry((_block, entry) => sourceEntries.add(entry))
        let count = 0
        volume.map.forEachEntry((_block, entry) => { if (!sourceEntries.has(entry)) count++ })
        kept = count * blockBytes
      }
      const usage: VolumeUsage = {
        id: volume.id,
        kind: volume.kind,
        name: volume.name,
        logicalBytes: volume.size,
        referencedBytes: volume.storedBytes,
        uniqueBytes: unique * blockBytes,
        keptFromSourceBytes: kept
      }
      logicalBytes += volume.size
      referencedTotal += usage.referencedBytes
      byId.set(volume.id, usage)
    }
    const storedBytes = owners.size * blockBytes
    const report: SpaceReport = {
      volumes: [...byId.values()],
      logicalBytes,
      storedBytes,
      sharingRatio: storedBytes === 0 ? 1 : referencedTotal / storedBytes
    }
    this.cached = { generation, report, byId }
    return this.cached
  }
}
