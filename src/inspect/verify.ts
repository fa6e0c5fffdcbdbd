/**
 * verify: checks the catalog, every map page and entry, every delta extent a map points into and
 * every chunk's hash, and names the damaged volumes and byte ranges; and compares gc's reference counts
 * with a recount of the maps (a mismatch is a problem, and the counts are dropped: the next gc marks in
 * full). Apart from dropping wrong counts it only reads. Runs online (in
 * the daemon, under the maintenance lock so compaction does not move chunks under it) or offline
 * (the CLI opens the pool itself, under the pool lock).
 */
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindHole, entryKindLost, entrySlot } from '../format/map-format'
import { pageEntries, verifyBatchChunks } from '../limits'
import fs from 'node:fs'
import path from 'node:path'
import { scanPack } from '../chunk/pack-scan'
import { catalogLogFile, extentIdOfFile, extentsDir, packIdOfFile, packsDir, quarantineDir, quarantinedKind } from '../format/pool-format'
import { replayCatalogLog } from '../catalog/catalog-log'
import { extentHeaderFields, extentMagic } from '../format/extent-format'
import { Pool } from '../volume/pool'
import { Volume } from '../volume/volume'
import type { RootIds } from '../map/block-map'

export interface DamagedRange { volume: string, kind: string, startByte: number, endByte: number, problem: string }

export interface VerifyReport {
  ok: boolean
  volumes: number
  pages: number
  blocks: number
  extents: number
  chunks: number
  /** Problems of the pool itself (catalog, index, gc's reference counts). */
  problems: string[]
  /** gc's reference counts against a recount of the maps: compared and equal, disagreeing (dropped), not built, or not compared (why). */
  counts: string
  damaged: DamagedRange[]
}

export interface Progress { done: number, total: number }

export async function verifyPool (pool: Pool, progress: Progress = { done: 0, total: 0 }): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, volumes: 0, pages: 0, blocks: 0, extents: 0, chunks: 0, problems: [], damaged: [], counts: '' }
  for (const problem of pool.inspection.catalogProblems()) report.problems.push(`catalog: ${problem}`)
  for (const problem of pool.inspection.rootPieceProblems()) report.problems.push(`catalog: ${problem}`)
  const walk: MapWalk = { pool, report, damage: new DamagedBlocks(), users: new Map(), extentSlots: new Map() }
  const volumes = pool.list()
  const chunkIds = pool.inspection.chunkIds()
  progress.total = volumes.length + chunkIds.length
  for (const volume of volumes) {
    await checkMap(walk, volume)
    progress.done++
  }
  await checkChunks(walk, chunkIds, progress)
  report.damaged.push(...walk.damage.ranges(pool.blockBytes))
  await checkPoolFiles(pool, report)
  const counts = await pool.checkCounts()
  report.counts = counts.counts
  report.problems.push(...counts.problems)
  report.ok = report.problems.length === 0 && report.damaged.length === 0
  return report
}

/** The damaged blocks found, per volume, each with the first problem found for it. */
class DamagedBlocks {
  private readonly bad = new Map<Volume, Map<number, string>>()
  /** Volumes none of whose blocks can be read (a root that fails its check), with why. */
  private readonly whole = new Map<Volume, string>()

  markAll (volume: Volume, problem: string): void { this.whole.set(volume, problem) }

  mark (volume: Volume, block: number, problem: string): void {
    let blocks = this.bad.get(volume)
    if (blocks === undefined) this.bad.set(volume, blocks = new Map())
    if (!blocks.has(block)) blocks.set(block, problem)
  }

  /** Each volume's damaged blocks as byte ranges: neighbours with the same problem make one range. */
  ranges (blockBytes: number): DamagedRange[] {
    const ranges: DamagedRange[] = []
    for (const [volume, problem] of this.whole) ranges.push({ volume: volume.name, kind: volume.kind, startByte: 0, endByte: volume.size, problem })
    for (const [volume, blocks] of this.bad) {
      if (this.whole.has(volume)) continue
      const sorted = [...blocks.entries()].sort((a, b) => a[0] - b[0])
      let start = sorted[0]
      let previous = sorted[0]
      // eslint-disable-next-line vdiskfs/loop-capture-changed -- flush is only called synchronously below, and must see the run's current start
      const flush = (last: [number, string]) => ranges.push({
        volume: volume.name, kind: volume.kind, startByte: start[0] * blockBytes, endByte: Math.min(volume.size, (last[0] + 1) * blockBytes), problem: start[1]
      })
      for (const current of sorted.slice(1)) {
        if (current[0] === previous[0] + 1 && current[1] === previous[1]) { previous = current; continue }
        flush(previous)
        start = current
        previous = current
      }
      flush(previous)
    }
    return ranges
  }
}

/** What the walk of the maps found and keeps as it goes. */
interface MapWalk {
  pool: Pool
  report: VerifyReport
  damage: DamagedBlocks
  /** The blocks that read each chunk, to name the volumes a damaged chunk hurts. */
  users: Map<number, Array<{ volume: Volume, block: number }>>
  /** Each delta extent's slot count once loaded, or why it could not be. */
  extentSlots: Map<number, number | string>
}

function addUser (walk: MapWalk, chunkId: number, volume: Volume, block: number): void {
  let list = walk.users.get(chunkId)
  if (list === undefined) walk.users.set(chunkId, list = [])
  list.push({ volume, block })
}

/** Every map page of `volume` read and checked, and every entry in them (checkEntry). */
async function checkMap (walk: MapWalk, volume: Volume): Promise<void> {
  const { pool, report } = walk
  report.volumes++
  // A backup's root is read here when it is not in memory (issue #21): one that fails its check
  // makes the whole volume unreadable, reported as its damage.
  let root: RootIds
  try {
    root = volume.map.root
  } catch (err) {
    walk.damage.markAll(volume, (err as Error).message)
    return
  }
  for (let p = 0; p < root.length; p++) {
    if (root[p] === 0) continue
    let entries: Float64Array
    try {
      entries = pool.inspection.pageEntries(root[p])
      report.pages++
    } catch (err) {
      const first = p * pageEntries
      for (let b = first; b < Math.min(first + pageEntries, Math.ceil(volume.size / pool.blockBytes)); b++) walk.damage.mark(volume, b, (err as Error).message)
      continue
    }
    for (let i = 0; i < entries.length; i++) {
      if (entries[i] === 0) continue
      report.blocks++
      await checkEntry(walk, volume, p * pageEntries + i, entries[i])
    }
  }
}

/** One map entry: a delta entry's slot checked in its extent, a chunk entry noted for checkChunks, a lost or unknown one marked. */
async function checkEntry (walk: MapWalk, volume: Volume, block: number, entry: number): Promise<void> {
  const kind = entryKind(entry)
  if (kind === entryKindDelta) await checkDeltaEntry(walk, volume, block, entry)
  else if (kind === entryKindChunk) addUser(walk, entryChunkId(entry), volume, block)
  else if (kind === entryKindLost) walk.damage.mark(volume, block, 'lost (quarantined by repair)')
  else if (kind !== entryKindHole) walk.damage.mark(volume, block, `unknown map entry kind ${kind}`)
}

async function checkDeltaEntry (walk: MapWalk, volume: Volume, block: number, entry: number): Promise<void> {
  const { pool, damage } = walk
  const extentId = entryExtentId(entry)
  let slots = walk.extentSlots.get(extentId)
  if (slots === undefined) {
    try {
      slots = await pool.inspection.extentSlots(extentId)
      walk.report.extents++
    } catch (err) { slots = (err as Error).message }
    // eslint-disable-next-line vdiskfs/map-check-then-act -- extentSlots is this verify's own cache, filled by this sequential walk; nothing else sets it
    walk.extentSlots.set(extentId, slots)
  }
  if (typeof slots === 'string') { damage.mark(volume, block, slots); return }
  if (entrySlot(entry) >= slots) { damage.mark(volume, block, `delta extent ${extentId} is shorter than slot ${entrySlot(entry)}`); return }
  const why = await pool.inspection.checkExtentSlot(extentId, entrySlot(entry))
  if (why !== null) damage.mark(volume, block, why)
  // A partial slot reads its unwritten sectors from the chunk under it: that chunk is checked
  // with the others (checkChunks), and this block named if it is damaged or missing.
  const under = pool.inspection.underSlot(entry)
  if (under.kind === 'damaged') damage.mark(volume, block, `delta extent ${extentId} slot ${entrySlot(entry)}: its base entry fails its check`)
  else if (under.kind === 'chunk') addUser(walk, under.chunkId, volume, block)
}

/**
 * Every chunk in the index, referenced or not, read and checked against its hash; the blocks that
 * read a damaged chunk, or one missing from the index, are marked.
 */
async function checkChunks (walk: MapWalk, chunkIds: number[], progress: Progress): Promise<void> {
  const { pool, report, damage, users } = walk
  const indexed = new Set(chunkIds)
  for (const [id, list] of users) {
    if (!indexed.has(id)) for (const { volume, block } of list) damage.mark(volume, block, `chunk ${id} is missing from the index`)
  }
  const damagedChunks = new Map<number, string>()
  for (let i = 0; i < chunkIds.length; i += verifyBatchChunks) {
    const ids = chunkIds.slice(i, i + verifyBatchChunks)
    for (const [id, why] of await pool.inspection.checkChunks(ids)) damagedChunks.set(id, why)
    report.chunks += ids.length
    progress.done += ids.length
  }
  for (const [id, why] of damagedChunks) {
    const list = users.get(id)
    if (list === undefined) report.problems.push(`chunk ${id} (unreferenced): ${why}`)
    else for (const { volume, block } of list) damage.mark(volume, block, `chunk ${id}: ${why}`)
  }
}

/** catalog.log against the catalog: a log this catalog does not name, or volumes it holds that the catalog lost. */
async function checkCatalogLog (pool: Pool, report: VerifyReport): Promise<void> {
  const file = path.join(pool.dir, catalogLogFile)
  if (!fs.existsSync(file)) return
  const state = await replayCatalogLog(file)
  if (state === null) { report.problems.push(`${catalogLogFile} is damaged (no header)`); return }
  // The pool's own list counts too: online, a commit may have appended to the log and not yet run its
  // transaction when this reads.
  const have = new Set([...pool.inspection.committedVolumeIds(), ...pool.list().map(v => v.id)])
  const missing = [...state.volumes.values()].filter(v => !have.has(v.id))
  if (state.logId !== pool.inspection.catalogLogId()) {
    report.problems.push(`${catalogLogFile} was written by another catalog (this one was truncated, rebuilt or replaced); it holds ${state.volumes.size} volumes, ` +
      `${missing.length} of them missing here: run vdiskfs repair to restore them`)
  } else if (missing.length > 0) {
    report.problems.push(`the catalog lost ${missing.length} volumes that ${catalogLogFile} holds (${missing.slice(0, 4).map(v => `${v.kind} ${v.name}`).join(', ')}): run vdiskfs repair to restore them`)
  }
}

/**
 * Pack and extent files the catalog does not account for, in packs/, extents/ and quarantine/: what
 * a truncated, rebuilt or partly lost catalog leaves behind (see chunk/pack-scan.ts). A catalog with
 * no volumes beside packs full of chunks is damage, not an empty pool.
 */
async function checkPoolFiles (pool: Pool, report: VerifyReport): Promise<void> {
  const registered = new Set(pool.inspection.packIds())
  const high = pool.inspection.chunkIdHigh()
  const files: Array<{ file: string, registered: boolean, quarantined: boolean }> = []
  const list = (dir: string) => { try { return fs.readdirSync(path.join(pool.dir, dir)) } catch { return [] } }
  for (const name of list(packsDir)) {
    const id = packIdOfFile(name)
    if (id !== null) files.push({ file: path.join(pool.dir, packsDir, name), registered: registered.has(id), quarantined: false })
  }
  for (const name of list(quarantineDir)) if (quarantinedKind(name) === 'pack') files.push({ file: path.join(pool.dir, quarantineDir, name), registered: false, quarantined: true })
  let records = 0
  let inQuarantine = 0
  const packs = new Set<string>()
  for (const { file, registered, quarantined } of files) {
    let scan
    try { scan = await scanPack(file) } catch (err) { report.problems.push(`${path.relative(pool.dir, file)}: ${(err as Error).message}`); continue }
    if (scan.packId === null) { report.problems.push(`${path.relative(pool.dir, file)}: ${scan.stopped ?? 'unreadable'}`); continue }
    const known = registered && scan.packId === packIdOfFile(path.basename(file))
    for (const record of scan.records) {
      if (pool.inspection.recordFate(record, known, high) !== 'unaccounted') continue
      records++
      if (quarantined) inQuarantine++
      packs.add(file)
    }
  }
  if (records > 0) {
    report.problems.push(`catalog has ${pool.list().length} volumes but ${packs.size} ${packs.size === 1 ? 'pack holds' : 'packs hold'} ${records} chunk records it does not account for ` +
      `(not indexed, not freed by gc)${inQuarantine > 0 ? `, ${inQuarantine} of them in ${quarantineDir}/` : ''}: the catalog lost them; vdiskfs repair brings back what the maps need, the rest is kept for a person to judge`)
  }
  const extents = new Set(pool.inspection.extentIds())
  // A file whose writer is a volume the catalog has is what an interrupted deletion leaves (gc and
  // sealing delete the row, then the file); one whose writer the catalog does not know is damage.
  const volumes = new Set(pool.inspection.committedVolumeIds())
  const strays = list(extentsDir).filter(name => {
    const id = extentIdOfFile(name)
    if (id === null || extents.has(id)) return false
    const owner = extentOwner(path.join(pool.dir, extentsDir, name))
    return owner === null || !volumes.has(owner)
  })
  const quarantinedExtents = list(quarantineDir).filter(name => quarantinedKind(name) === 'extent')
  await checkCatalogLog(pool, report)
  if (strays.length + quarantinedExtents.length > 0) {
    report.problems.push(`${strays.length + quarantinedExtents.length} delta extent files the catalog does not know (${[...strays.map(n => `${extentsDir}/${n}`), ...quarantinedExtents.map(n => `${quarantineDir}/${n}`)].slice(0, 4).join(', ')})`)
  }
}


/** The id of the volume that wrote an extent file, from its header; null when the header is not one. */
export function extentOwner (file: string): number | null {
  try {
    const fd = fs.openSync(file, 'r')
    try {
      const header = Buffer.alloc(extentHeaderFields.createdMs)
      if (fs.readSync(fd, header, 0, header.length, 0) < header.length || !header.subarray(0, extentMagic.length).equals(extentMagic)) return null
      return Number(header.readBigUInt64LE(extentHeaderFields.volumeId))
    } finally { fs.closeSync(fd) }
  } catch { return null }
}
