/**
 * Space accounting: per volume, the stored bytes it can read (referenced), what deleting it would free
 * now (unique), and for a backup what it alone keeps from its source; for the pool, logical and stored
 * totals. Backups and clones are accounted apart from their base: a block shared by several volumes
 * counts in each one's referenced bytes and in nobody's unique bytes.
 *
 * A partial slot (issue #10) references two locations: its slot and the chunk under it, which counts
 * like any other chunk the volume can read.
 *
 * How it is computed (issue #21: with 1,000 backups of a 1 TiB disk the old walk, every volume's every
 * entry three times on the main thread, held every FUSE request for more than ten minutes):
 *
 * - It runs under the maintenance lock (Pool.exclusive), so nothing frees or moves what it reads: no
 *   gc drops a page or retires a chunk, no seal repoints an entry, no compaction moves a chunk.
 * - It takes a snapshot of the volumes and their roots in one synchronous step (BlockMap.shareRoot:
 *   O(1) per volume; a map copies its root before changing it), then walks in slices of about
 *   spaceSliceMs, yielding to the event loop between them (setImmediate: the FUSE requests and control
 *   calls that arrived meanwhile are served first).
 * - It reads each distinct map page once, however many volumes read it (10,000 backups of a disk share
 *   most of their pages), and sums per page what a volume needs (referenced bytes, unsealed bytes, and
 *   for a backup what the page holds that its source does not read); a volume's figures are then sums
 *   over its root, with no page loads.
 *
 * What the awaits between slices may meet, and why each is safe: writes, backups, clones, restores, rm
 * and commits go on. They do not change the snapshot's roots (copied before a change) and cannot free
 * a page or chunk the walk may still read (the lock). They change, in place, only pages of a writable
 * volume's own epoch (a write into a page it already owns), and the walk reads each page once: such a
 * page is counted as it was at one instant, as `du` counts the files of a live filesystem. A volume
 * created after the snapshot is in the next report, one removed after it is still in this one. On a
 * pool that does not change during the walk the figures are exactly those of a walk in one step (the
 * unit test compares them with that one). The report says at which generation it was taken, and a
 * later call with the pool changed walks again.
 */
import fs from 'node:fs'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { VdiskError } from '../errors'
import { VolumeKind } from '../catalog/catalog'
import { chunkEntry, entryChunkId, entryKind, entryKindChunk, entryKindDelta } from '../format/map-format'
import { Pool } from '../volume/pool'
import { Volume } from '../volume/volume'
import { spaceSliceMs, spaceUsageStaleMs } from '../limits'

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

/** One volume's space figures (vdiskfs info, the xattrs). */
export interface VolumeSpace {
  usage: VolumeUsage
  /** Of its referenced bytes, those still in delta extents. */
  unsealedBytes: number
}

interface Computed {
  /** The pool's generation at the snapshot. */
  generation: number
  atMs: number
  report: SpaceReport
  byId: Map<number, VolumeSpace>
}

/** A volume as the walk's snapshot holds it. */
interface Snapshot {
  id: number
  kind: VolumeKind
  name: string
  size: number
  sourceId: number | null
  hidden: boolean
  root: Float64Array
}

/** A walk started: joinable until it took its snapshot, and after that while the pool has not changed. */
interface Walk {
  generation: number | null
  result: Promise<Computed>
}

/** Owner of a location (or reader of a page) that more than one volume reads. */
const shared = -1

/** Where a test may hold the walk, after the snapshot and the first pass over the roots. */
export type SpacePause = () => Promise<void>

export class SpaceAccounting {
  private cached: Computed | null = null
  private latest: Walk | null = null

  /** `pause`: a test's hold in the middle of the walk (default: VDISKFS_TEST_SPACE_PAUSE, see testPause). */
  constructor (private readonly pool: Pool, private readonly pause: SpacePause = testPause) {}

  /** The figures as the pool is now (a walk, unless nothing changed since the last one). */
  async report (): Promise<SpaceReport> {
    return (await this.compute()).report
  }

  /**
   * One volume's figures. `fresh` false (the xattrs): they may be up to spaceUsageStaleMs old, so that
   * a reader of one image asking after every write does not keep the pool walking.
   */
  async volume (volume: Volume, fresh = true): Promise<VolumeSpace> {
    const cached = this.cached
    const recent = !fresh && cached !== null && cached.byId.has(volume.id) && Date.now() - cached.atMs < spaceUsageStaleMs
    const computed = recent ? cached : await this.compute()
    const figures = computed.byId.get(volume.id)
    if (figures === undefined) throw new VdiskError('NOT_FOUND', `${volume.kind} ${volume.name}: not in the space report (created meanwhile?)`)
    return figures
  }

  /** The newest report if nothing changed since, else a walk: one in flight that is still good, or a new one. */
  private async compute (): Promise<Computed> {
    const cached = this.cached
    if (cached !== null && cached.generation === this.pool.generation) return cached
    const latest = this.latest
    if (latest !== null && (latest.generation === null || latest.generation === this.pool.generation)) return await latest.result
    const walk: Walk = { generation: null, result: Promise.resolve(null as unknown as Computed) }
    walk.result = this.pool.exclusive(async () => await this.walk(generation => { walk.generation = generation }))
      .then(computed => {
        if (this.cached === null || this.cached.generation <= computed.generation) this.cached = computed
        return computed
      })
    this.latest = walk
    const forget = (): void => { if (this.latest === walk) this.latest = null }
    walk.result.then(forget, forget)
    return await walk.result
  }

  private async walk (snapshotTaken: (generation: number) => void): Promise<Computed> {
    const pool = this.pool
    const inspection = pool.inspection
    const size = inspection.sizeOf
    // The snapshot, in one synchronous step.
    const generation = pool.generation
    const volumes: Snapshot[] = pool.list().map(v => ({ id: v.id, kind: v.kind, name: v.name, size: v.size, sourceId: v.sourceId, hidden: v.hidden, root: v.map.shareRoot() }))
    snapshotTaken(generation)
    const atMs = Date.now()
    const slicer = new Slicer(pool)
    const byId = new Map(volumes.map(v => [v.id, v]))
    const sourceOf = (v: Snapshot): Snapshot | undefined => v.kind === 'backup' && v.sourceId !== null ? byId.get(v.sourceId) : undefined

    // 1. The roots: who reads each page (one volume, or shared), how many root slots name it; the
    // pages of each volume some backup was taken from, and which pages a backup reads that its source
    // does not.
    const reader = new Map<number, number>()
    const slots = new Map<number, number>()
    const sourcePages = new Map<number, Set<number>>()
    for (const v of volumes) {
      const source = sourceOf(v)
      if (source !== undefined && !sourcePages.has(source.id)) sourcePages.set(source.id, new Set())
    }
    /** Per page, the sources that read it. */
    const readBySources = new Map<number, number[]>()
    for (const v of volumes) {
      const root = v.root
      const ownPages = sourcePages.get(v.id)
      for (let p = 0; p < root.length; p++) {
        const id = root[p]
        if (id === 0) continue
        const was = reader.get(id)
        reader.set(id, was === undefined || was === v.id ? v.id : shared)
        slots.set(id, (slots.get(id) ?? 0) + 1)
        if (ownPages !== undefined && !ownPages.has(id)) {
          ownPages.add(id)
          const sources = readBySources.get(id)
          if (sources === undefined) readBySources.set(id, [v.id])
          else sources.push(v.id)
        }
      }
      await slicer.turn()
    }
    /** Per page, the sources whose backups read it and which do not read it themselves. */
    const keptFor = new Map<number, number[]>()
    for (const v of volumes) {
      const source = sourceOf(v)
      if (source === undefined) continue
      const ownPages = sourcePages.get(source.id) as Set<number>
      for (const id of v.root) {
        if (id === 0 || ownPages.has(id)) continue
        const sources = keptFor.get(id)
        if (sources === undefined) keptFor.set(id, [source.id])
        else if (!sources.includes(source.id)) sources.push(source.id)
      }
      await slicer.turn()
    }
    await this.pause()
    if (pool.closing) throw new VdiskError('BUSY', 'the pool is closing')

    // 2. Each distinct page once: the pages sources read first, so that each source's locations are
    // all known before the pages only its backups read are compared with them.
    const pageReferenced = new Map<number, number>()
    const pageUnsealed = new Map<number, number>()
    /** Location (a map entry value) -> the one volume reading it, or shared. */
    const owners = new Map<number, number>()
    /** Location read by one volume -> how many times that volume reads it. */
    const occurrences = new Map<number, number>()
    const sourceLocations = new Map<number, Set<number>>()
    for (const id of sourcePages.keys()) sourceLocations.set(id, new Set())
    /** Source -> page -> bytes of the page's locations the source does not read. */
    const kept = new Map<number, Map<number, number>>()
    for (const id of sourcePages.keys()) kept.set(id, new Map())
    let chunkPositions = 0
    /** The locations of page `id`'s entries (and the chunks under its partial slots), in order. */
    const locationsOf = (id: number, visit: (location: number, entry: boolean) => void): void => {
      const entries = inspection.pageEntries(id)
      for (let i = 0; i < entries.length; i++) {
        const entry = entries[i]
        if (entry === 0) continue
        visit(entry, true)
        if (entryKind(entry) === entryKindDelta) {
          const under = inspection.underSlot(entry)
          if (under.kind === 'chunk') visit(chunkEntry(under.chunkId), false)
        }
      }
    }
    const keptBytes = (id: number, sources: number[]): void => {
      const bytes = sources.map(() => 0)
      const sets = sources.map(s => sourceLocations.get(s) as Set<number>)
      locationsOf(id, location => {
        for (let k = 0; k < sets.length; k++) if (!sets[k].has(location)) bytes[k] += size(location)
      })
      for (let k = 0; k < sources.length; k++) (kept.get(sources[k]) as Map<number, number>).set(id, bytes[k])
    }
    /** Pages a source reads that other sources' backups read too: compared once every source is known. */
    const deferred: number[] = []
    const visitPage = (id: number): void => {
      const owner = reader.get(id) as number
      const times = slots.get(id) as number
      const sources = readBySources.get(id)
      const locations = sources?.map(s => sourceLocations.get(s) as Set<number>)
      const comparedWith = keptFor.get(id)
      const compareNow = comparedWith !== undefined && sources === undefined
      const bytes = compareNow ? comparedWith.map(() => 0) : null
      const compareSets = compareNow ? comparedWith.map(s => sourceLocations.get(s) as Set<number>) : null
      let referenced = 0
      let unsealed = 0
      locationsOf(id, (location, entry) => {
        const bytesHere = size(location)
        referenced += bytesHere
        if (entry) {
          const kind = entryKind(location)
          if (kind === entryKindChunk) chunkPositions++
          else if (kind === entryKindDelta) unsealed += bytesHere
        }
        const was = owners.get(location)
        if (was === undefined) {
          owners.set(location, owner)
          if (owner !== shared) occurrences.set(location, times)
        } else if (was !== shared) {
          if (was === owner) occurrences.set(location, (occurrences.get(location) as number) + times)
          else { owners.set(location, shared); occurrences.delete(location) }
        }
        if (locations !== undefined) for (const set of locations) set.add(location)
        if (compareSets !== null && bytes !== null) for (let k = 0; k < compareSets.length; k++) if (!compareSets[k].has(location)) bytes[k] += bytesHere
      })
      pageReferenced.set(id, referenced)
      if (unsealed > 0) pageUnsealed.set(id, unsealed)
      if (compareNow && bytes !== null) for (let k = 0; k < comparedWith.length; k++) (kept.get(comparedWith[k]) as Map<number, number>).set(id, bytes[k])
      else if (comparedWith !== undefined) deferred.push(id)
    }
    for (const id of readBySources.keys()) {
      visitPage(id)
      await slicer.turn()
    }
    for (const id of reader.keys()) {
      if (readBySources.has(id)) continue
      visitPage(id)
      await slicer.turn()
    }
    for (const id of deferred) {
      keptBytes(id, keptFor.get(id) as number[])
      await slicer.turn()
    }

    // 3. Each volume: sums over its root.
    const figures = new Map<number, VolumeSpace>()
    let logicalBytes = 0
    let referencedTotal = 0
    for (const v of volumes) {
      const source = sourceOf(v)
      const ownPages = source === undefined ? undefined : sourcePages.get(source.id) as Set<number>
      const keptOfSource = source === undefined ? undefined : kept.get(source.id) as Map<number, number>
      let referenced = 0
      let unsealed = 0
      let keptFromSource = 0
      for (const id of v.root) {
        if (id === 0) continue
        referenced += pageReferenced.get(id) as number
        unsealed += pageUnsealed.get(id) ?? 0
        if (ownPages !== undefined && keptOfSource !== undefined && !ownPages.has(id)) keptFromSource += keptOfSource.get(id) as number
      }
      const usage: VolumeUsage = {
        id: v.id,
        kind: v.kind,
        name: v.name,
        logicalBytes: v.size,
        referencedBytes: referenced,
        uniqueBytes: 0,
        keptFromSourceBytes: v.kind !== 'backup' ? null : source === undefined ? referenced : keptFromSource
      }
      logicalBytes += v.size
      referencedTotal += referenced
      figures.set(v.id, { usage, unsealedBytes: unsealed })
      await slicer.turn()
    }

    // 4. Each distinct location: unique bytes, and the pool's stored bytes.
    let storedBytes = 0
    let unsealedBytes = 0
    let chunkRaw = 0
    let chunkStored = 0
    let chunks = 0
    let sinceTurn = 0
    for (const [location, owner] of owners) {
      const bytes = size(location)
      storedBytes += bytes
      const kind = entryKind(location)
      if (kind === entryKindDelta) unsealedBytes += bytes
      else if (kind === entryKindChunk) { chunks++; chunkStored += bytes; chunkRaw += inspection.chunkRawBytes(entryChunkId(location)) }
      if (owner !== shared) (figures.get(owner) as VolumeSpace).usage.uniqueBytes += (occurrences.get(location) as number) * bytes
      if (++sinceTurn >= 4096) { sinceTurn = 0; await slicer.turn() }
    }
    const report: SpaceReport = {
      // Volumes removed while open (hidden) are out of the namespace; their data still counts.
      volumes: volumes.filter(v => !v.hidden).map(v => (figures.get(v.id) as VolumeSpace).usage),
      logicalBytes,
      storedBytes,
      dedupRatio: chunks === 0 ? 1 : chunkPositions / chunks,
      compressionRatio: chunkStored === 0 ? 1 : chunkRaw / chunkStored,
      sharingRatio: storedBytes === 0 ? 1 : referencedTotal / storedBytes,
      unsealedBytes
    }
    return { generation, atMs, report, byId: figures }
  }
}

/**
 * Yields to the event loop once a slice of work took spaceSliceMs; throws BUSY when the pool started
 * closing meanwhile (its close waits for the maintenance lock this walk holds).
 */
class Slicer {
  private since = performance.now()
  constructor (private readonly pool: Pool) {}

  async turn (): Promise<void> {
    if (performance.now() - this.since < spaceSliceMs) return
    await nextTurn()
    if (this.pool.closing) throw new VdiskError('BUSY', 'the pool is closing')
    this.since = performance.now()
  }
}

const testPollMs = 50

/**
 * A test hook: with VDISKFS_TEST_SPACE_PAUSE=DIR set and DIR/space-walk.arm present, a walk reaching
 * its middle (after the roots, before the pages) creates DIR/space-walk.paused and waits until
 * DIR/space-walk.go exists, so that a test can show what is served meanwhile. Unset (always, outside
 * tests), it costs an environment lookup.
 */
async function testPause (): Promise<void> {
  const dir = process.env.VDISKFS_TEST_SPACE_PAUSE
  if (dir === undefined || dir === '' || !fs.existsSync(path.join(dir, 'space-walk.arm'))) return
  const go = path.join(dir, 'space-walk.go')
  if (fs.existsSync(go)) return
  fs.writeFileSync(path.join(dir, 'space-walk.paused'), `${process.pid}\n`)
  while (!fs.existsSync(go)) await new Promise(resolve => setTimeout(resolve, testPollMs))
}
