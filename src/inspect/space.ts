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
 * - It runs under the maintenance lock (Pool.besideSealing), or beside a seal pass that is sealing
 *   extents, so nothing frees or moves what it reads: no gc drops a page or retires a chunk, no
 *   compaction moves a chunk, no seal pass settles (deletes its extents) until the walk ended. A seal
 *   pass beside it repoints pages in place (synchronously) and makes chunks: to the walk, which reads
 *   each page once, that is what a write into a page is (below); issue #21, du and info answered only
 *   after a whole seal pass.
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
import { VdiskError, corrupt } from '../errors'
import { VolumeKind } from '../catalog/catalog'
import { chunkEntry, entryChunkId, entryKind, entryKindChunk, entryKindDelta } from '../format/map-format'
import { Pool } from '../volume/pool'
import { Volume } from '../volume/volume'
import { spaceSliceMs, spaceUsageStaleMs } from '../limits'
import type { RootIds } from '../map/block-map'

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
  root: RootIds
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
    walk.result = this.pool.besideSealing(async () => await this.walk(generation => { walk.generation = generation }))
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
    const walk = new SpaceWalk(this.pool)
    snapshotTaken(walk.generation)
    await walk.readRoots()
    await walk.compareRootsWithSources()
    await this.pause()
    if (this.pool.closing) throw new VdiskError('BUSY', 'the pool is closing')
    await walk.readPages()
    const figures = await walk.sumVolumes()
    return await walk.sumLocations(figures)
  }
}

/**
 * A set of page ids: a byte per id below `ceiling` when `bitmap` (few sources: the walk's bitmaps stay
 * within spaceBitmapBytesMax), else a Set.
 */
class PageFlags {
  private readonly bits: Uint8Array
  private readonly more = new Set<number>()
  constructor (ceiling: number, bitmap: boolean) { this.bits = new Uint8Array(bitmap ? ceiling : 0) }
  has (id: number): boolean { return id < this.bits.length ? this.bits[id] === 1 : this.more.has(id) }
  add (id: number): void { if (id < this.bits.length) this.bits[id] = 1; else this.more.add(id) }
}

/** Bytes of the bitmaps a walk keeps per source (two per source, a byte per page id each). */
const spaceBitmapBytesMax = 64 * 1024 * 1024

/**
 * One walk of the space accounting, in named steps (issue #21): the snapshot (constructor), the roots
 * (readRoots, compareRootsWithSources), each distinct page once (readPages), each volume's sums
 * (sumVolumes), each distinct location (sumLocations). Each distinct page gets a dense index (an array
 * of 4 bytes per page id: a root names only ids below the page store's ceiling at the snapshot) and its
 * figures are kept in arrays by that index, and a page's locations come from what the page store
 * learnt of it (PageStore.refsOf: no load of a page unchanged since it was learnt), so 10,000 roots of
 * 4,096 ids cost array reads, not map look-ups and page loads.
 */
class SpaceWalk {
  readonly generation: number
  private readonly atMs: number
  private readonly volumes: Snapshot[]
  private readonly byId: Map<number, Snapshot>
  private readonly slicer: Slicer
  private readonly ceiling: number
  /** Per page id: 1 + its index in `distinct` (0: no root names it). */
  private readonly index: Int32Array
  /** The distinct pages the roots name, in the order first met. */
  private readonly distinct: number[] = []
  /** By page index: the one volume reading it, or shared. */
  private readonly reader: number[] = []
  /** By page index: how many root slots name it. */
  private readonly times: number[] = []
  /** Per volume some backup was taken from (a source): the pages it reads. */
  private readonly sourcePages = new Map<number, PageFlags>()
  /** Per page, the sources that read it. */
  private readonly readBySources = new Map<number, number[]>()
  /** Per page, the sources whose backups read it and which do not read it themselves. */
  private readonly keptFor = new Map<number, number[]>()
  /** By page index: the stored bytes its entries reference, and of those the ones in delta extents. */
  private pageReferenced = new Float64Array(0)
  private pageUnsealed = new Float64Array(0)
  /** Whether the sources' page sets are bitmaps (PageFlags). */
  private bitmaps = false
  /** Location (a map entry value) -> the one volume reading it, or shared. */
  private readonly owners = new Map<number, number>()
  /** Location read by one volume -> how many times that volume reads it. */
  private readonly occurrences = new Map<number, number>()
  /** Per source, the locations it reads. */
  private readonly sourceLocations = new Map<number, Set<number>>()
  /** Source -> page -> bytes of the page's locations the source does not read. */
  private readonly kept = new Map<number, Map<number, number>>()
  private chunkPositions = 0

  /** The snapshot, in one synchronous step: the volumes and their roots (shared, never changed). */
  constructor (private readonly pool: Pool) {
    this.generation = pool.generation
    // Each root read when a step comes to it (issue #21: Volume.rootForWalk), not all of them here.
    this.volumes = pool.list().map(v => {
      const rootOf = v.rootForWalk()
      return { id: v.id, kind: v.kind, name: v.name, size: v.size, sourceId: v.sourceId, hidden: v.hidden, get root (): RootIds { return rootOf() } }
    })
    this.ceiling = pool.inspection.pageIdCeiling
    this.atMs = Date.now()
    this.slicer = new Slicer(pool)
    this.byId = new Map(this.volumes.map(v => [v.id, v]))
    this.index = new Int32Array(this.ceiling)
  }

  private sourceOf (v: Snapshot): Snapshot | undefined {
    return v.kind === 'backup' && v.sourceId !== null ? this.byId.get(v.sourceId) : undefined
  }

  /**
   * 1. The roots: who reads each page (one volume, or shared), how many root slots name it; the pages
   * of each volume some backup was taken from.
   */
  async readRoots (): Promise<void> {
    const sources = new Set<number>()
    for (const v of this.volumes) {
      const source = this.sourceOf(v)
      if (source !== undefined) sources.add(source.id)
    }
    this.bitmaps = 2 * sources.size * this.ceiling <= spaceBitmapBytesMax
    for (const id of sources) this.sourcePages.set(id, new PageFlags(this.ceiling, this.bitmaps))
    const { index, reader, times, distinct, readBySources } = this
    for (const v of this.volumes) {
      const root = v.root
      const ownPages = this.sourcePages.get(v.id)
      for (let p = 0; p < root.length; p++) {
        const id = root[p]
        if (id === 0) continue
        // Page ids are given in order: a root naming one at or past the ceiling names a page that is not there.
        if (id >= index.length) throw corrupt(`${v.kind} ${v.name}: map page ${id} is missing from the catalog`)
        const k = index[id] - 1
        if (k < 0) {
          index[id] = distinct.push(id)
          reader.push(v.id)
          times.push(1)
        } else {
          if (reader[k] !== v.id) reader[k] = shared
          times[k]++
        }
        if (ownPages !== undefined && !ownPages.has(id)) {
          ownPages.add(id)
          const sources = readBySources.get(id)
          if (sources === undefined) readBySources.set(id, [v.id])
          else sources.push(v.id)
        }
      }
      await this.slicer.turn()
    }
  }

  /** 1b. Which pages each backup reads that its source does not (each page once per source). */
  async compareRootsWithSources (): Promise<void> {
    const added = new Map<number, PageFlags>()
    for (const v of this.volumes) {
      const source = this.sourceOf(v)
      if (source === undefined) continue
      const ownPages = this.sourcePages.get(source.id) as PageFlags
      let done = added.get(source.id)
      if (done === undefined) added.set(source.id, done = new PageFlags(this.ceiling, this.bitmaps))
      for (const id of v.root) {
        if (id === 0 || ownPages.has(id) || done.has(id)) continue
        done.add(id)
        const sources = this.keptFor.get(id)
        if (sources === undefined) this.keptFor.set(id, [source.id])
        else sources.push(source.id)
      }
      await this.slicer.turn()
    }
  }

  /**
   * The locations of page `id`'s entries (and the chunks under its partial slots): its chunk entries,
   * then its delta entries, each followed by the chunk under it when its slot is partial.
   */
  private locationsOf (id: number, visit: (location: number, entry: boolean) => void): void {
    const inspection = this.pool.inspection
    const refs = inspection.pageRefs(id)
    const chunks = refs.chunks
    for (let i = 0; i < chunks.length; i++) visit(chunkEntry(chunks[i]), true)
    const deltas = refs.deltas
    for (let i = 0; i < deltas.length; i++) {
      visit(deltas[i], true)
      const under = inspection.underSlot(deltas[i])
      if (under.kind === 'chunk') visit(chunkEntry(under.chunkId), false)
    }
  }

  /**
   * 2. Each distinct page once: the pages sources read first, so that each source's locations are all
   * known before the pages only its backups read are compared with them.
   */
  async readPages (): Promise<void> {
    this.pageReferenced = new Float64Array(this.distinct.length)
    this.pageUnsealed = new Float64Array(this.distinct.length)
    for (const id of this.sourcePages.keys()) {
      this.sourceLocations.set(id, new Set())
      this.kept.set(id, new Map())
    }
    /** Pages a source reads that other sources' backups read too: compared once every source is known. */
    const deferred: number[] = []
    for (const id of this.readBySources.keys()) {
      if (this.visitPage(id)) deferred.push(id)
      await this.slicer.turn()
    }
    for (const id of this.distinct) {
      if (this.readBySources.has(id)) continue
      if (this.visitPage(id)) deferred.push(id)
      await this.slicer.turn()
    }
    for (const id of deferred) {
      this.keptBytes(id, this.keptFor.get(id) as number[])
      await this.slicer.turn()
    }
  }

  /** Counts page `id`'s locations; whether its comparison with sources waits for every source's (deferred). */
  private visitPage (id: number): boolean {
    const size = this.pool.inspection.sizeOf
    const { owners, occurrences } = this
    const k = this.index[id] - 1
    const owner = this.reader[k]
    const times = this.times[k]
    const sources = this.readBySources.get(id)
    const locations = sources?.map(s => this.sourceLocations.get(s) as Set<number>)
    const comparedWith = this.keptFor.get(id)
    const compareNow = comparedWith !== undefined && sources === undefined
    const bytes = compareNow ? comparedWith.map(() => 0) : null
    const compareSets = compareNow ? comparedWith.map(s => this.sourceLocations.get(s) as Set<number>) : null
    let referenced = 0
    let unsealed = 0
    this.locationsOf(id, (location, entry) => {
      const bytesHere = size(location)
      referenced += bytesHere
      if (entry) {
        const kind = entryKind(location)
        if (kind === entryKindChunk) this.chunkPositions++
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
    this.pageReferenced[k] = referenced
    this.pageUnsealed[k] = unsealed
    if (compareNow && bytes !== null) for (let k = 0; k < comparedWith.length; k++) (this.kept.get(comparedWith[k]) as Map<number, number>).set(id, bytes[k])
    return comparedWith !== undefined && !compareNow
  }

  /** Bytes of page `id`'s locations each of `sources` does not read. */
  private keptBytes (id: number, sources: number[]): void {
    const size = this.pool.inspection.sizeOf
    const bytes = sources.map(() => 0)
    const sets = sources.map(s => this.sourceLocations.get(s) as Set<number>)
    this.locationsOf(id, location => {
      for (let k = 0; k < sets.length; k++) if (!sets[k].has(location)) bytes[k] += size(location)
    })
    for (let k = 0; k < sources.length; k++) (this.kept.get(sources[k]) as Map<number, number>).set(id, bytes[k])
  }

  /** 3. Each volume: sums over its root. */
  async sumVolumes (): Promise<Map<number, VolumeSpace>> {
    const figures = new Map<number, VolumeSpace>()
    const { index, pageReferenced, pageUnsealed } = this
    for (const v of this.volumes) {
      const source = this.sourceOf(v)
      const ownPages = source === undefined ? undefined : this.sourcePages.get(source.id) as PageFlags
      const keptOfSource = source === undefined ? undefined : this.kept.get(source.id) as Map<number, number>
      let referenced = 0
      let unsealed = 0
      let keptFromSource = 0
      for (const id of v.root) {
        if (id === 0) continue
        referenced += pageReferenced[index[id] - 1]
        unsealed += pageUnsealed[index[id] - 1]
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
      figures.set(v.id, { usage, unsealedBytes: unsealed })
      await this.slicer.turn()
    }
    return figures
  }

  /** 4. Each distinct location: unique bytes, and the pool's stored bytes; the report. */
  async sumLocations (figures: Map<number, VolumeSpace>): Promise<Computed> {
    const inspection = this.pool.inspection
    const size = inspection.sizeOf
    let storedBytes = 0
    let unsealedBytes = 0
    let chunkRaw = 0
    let chunkStored = 0
    let chunks = 0
    let sinceTurn = 0
    for (const [location, owner] of this.owners) {
      const bytes = size(location)
      storedBytes += bytes
      const kind = entryKind(location)
      if (kind === entryKindDelta) unsealedBytes += bytes
      else if (kind === entryKindChunk) { chunks++; chunkStored += bytes; chunkRaw += inspection.chunkRawBytes(entryChunkId(location)) }
      if (owner !== shared) (figures.get(owner) as VolumeSpace).usage.uniqueBytes += (this.occurrences.get(location) as number) * bytes
      if (++sinceTurn >= 4096) { sinceTurn = 0; await this.slicer.turn() }
    }
    let logicalBytes = 0
    let referencedTotal = 0
    for (const v of this.volumes) {
      logicalBytes += v.size
      referencedTotal += (figures.get(v.id) as VolumeSpace).usage.referencedBytes
    }
    const report: SpaceReport = {
      // Volumes removed while open (hidden) are out of the namespace; their data still counts.
      volumes: this.volumes.filter(v => !v.hidden).map(v => (figures.get(v.id) as VolumeSpace).usage),
      logicalBytes,
      storedBytes,
      dedupRatio: chunks === 0 ? 1 : this.chunkPositions / chunks,
      compressionRatio: chunkStored === 0 ? 1 : chunkRaw / chunkStored,
      sharingRatio: storedBytes === 0 ? 1 : referencedTotal / storedBytes,
      unsealedBytes
    }
    return { generation: this.generation, atMs: this.atMs, report, byId: figures }
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
