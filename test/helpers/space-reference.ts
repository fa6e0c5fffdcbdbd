/**
 * The space accounting as it was computed before issue #21 (inspect/space.ts then): every volume's every
 * entry, three passes, in one synchronous step. Slow on a big pool, and the definition the sliced walk
 * must match on a pool that does not change (test/unit/space.test.ts); with each volume's unsealed
 * bytes as `vdiskfs info` computed them (a walk of its map). One fix: the dedup ratio counts distinct
 * pages by id (see below).
 */
import { chunkEntry, entryChunkId, entryKind, entryKindChunk, entryKindDelta } from '../../src/format/map-format'
import { Page } from '../../src/map/page-store'
import { SpaceReport, VolumeUsage } from '../../src/inspect/space'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'

export function referenceSpace (pool: Pool): { report: SpaceReport, unsealedById: Map<number, number> } {
  const size = pool.inspection.sizeOf
  const volumes = pool.list()
  const locations = (volume: Volume, visit: (entry: number) => void): void => {
    pool.inspection.forEachReference(volume.map, (_block, entry, under) => {
      visit(entry)
      if (under?.kind === 'chunk') visit(chunkEntry(under.chunkId))
    })
  }
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
  const unsealedById = new Map<number, number>()
  let logicalBytes = 0
  let referencedTotal = 0
  for (const volume of volumes) {
    let unique = 0
    let referenced = 0
    locations(volume, entry => { referenced += size(entry); if (owners.get(entry) === volume.id) unique += size(entry) })
    let kept: number | null = null
    if (volume.kind === 'backup') {
      const source = volume.sourceId !== null ? pool.byId(volume.sourceId) : undefined
      const sourceEntries = new Set<number>()
      if (source !== undefined) locations(source, entry => sourceEntries.add(entry))
      let bytes = 0
      locations(volume, entry => { if (!sourceEntries.has(entry)) bytes += size(entry) })
      kept = bytes
    }
    byId.set(volume.id, { id: volume.id, kind: volume.kind, name: volume.name, logicalBytes: volume.size, referencedBytes: referenced, uniqueBytes: unique, keptFromSourceBytes: kept })
    let unsealed = 0
    volume.map.forEachEntry((_block, entry) => { if (entryKind(entry) === entryKindDelta) unsealed += size(entry) })
    unsealedById.set(volume.id, unsealed)
    logicalBytes += volume.size
    referencedTotal += referenced
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
    else if (kind === entryKindChunk) { chunks++; chunkStored += bytes; chunkRaw += pool.inspection.chunkRawBytes(entryChunkId(entry)) }
  }
  // Distinct pages by id (the old code collected Page objects: a page the cache evicted and loaded
  // again during the walk counted twice, which only a pool bigger than the page cache showed).
  const pages = new Map<number, Page>()
  for (const volume of volumes) volume.map.forEachPage(page => pages.set(page.id, page))
  let chunkPositions = 0
  for (const page of pages.values()) for (const entry of page.entries) if (entry !== 0 && entryKind(entry) === entryKindChunk) chunkPositions++
  return {
    report: {
      volumes: volumes.filter(v => !v.hidden).map(v => byId.get(v.id) as VolumeUsage),
      logicalBytes,
      storedBytes,
      dedupRatio: chunks === 0 ? 1 : chunkPositions / chunks,
      compressionRatio: chunkStored === 0 ? 1 : chunkRaw / chunkStored,
      sharingRatio: storedBytes === 0 ? 1 : referencedTotal / storedBytes,
      unsealedBytes
    },
    unsealedById
  }
}
