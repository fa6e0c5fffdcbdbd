/**
 * repair: brings a damaged pool back to a state that mounts, rebuilding what can be rebuilt and
 * quarantining what cannot, and says exactly which volumes and byte ranges lost data. Offline only
 * (the CLI runs it under the pool lock).
 *
 *  - A catalog SQLite cannot open is moved aside and a new one made from what can still be read of it.
 *  - The chunk index is rebuilt from the pack files and the packs in quarantine/ (each record names
 *    its chunk id and hash) for every chunk a map names; records no map names are left unindexed and
 *    reported (the catalog may have lost their volumes), never deleted.
 *  - Every chunk is read and checked against its hash; a damaged or missing one is dropped.
 *  - Extents whose file is gone or whose header is damaged are dropped; extent files the catalog does
 *    not know, and foreign files, are moved to quarantine/.
 *  - Map pages are checked against their checksums; a damaged byte is corrected when a checksum
 *    proves it, a damaged group taken from a copy whose bytes the checksum proves identical, and
 *    only what nothing proves becomes lost. Map pages that are gone are replaced by pages of lost
 *    entries; map entries that name dropped chunks, dropped extents or slots past an extent's end
 *    become lost entries: reads of those blocks fail with EIO (never zeros, never garbage) until the
 *    whole block is written again. Repair deletes no file: what it cannot use it moves aside.
 *  - Each volume's counters are recounted.
 */
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import {
  catalogFile, catalogLogFile, damagedCatalogFileName, extentIdOfFile, extentsDir, isPoolFile, packFileName, packIdOfFile, packsDir, poolHeaderFile, quarantineDir, quarantineFileName, quarantinedKind
} from '../format/pool-format'
import { PackScan, scanPack } from '../chunk/pack-scan'
import { Catalog, PageRow, VolumeRow, absentPackId } from '../catalog/catalog'
import { LogState, logRootPiecesMeta, replayCatalogLog } from '../catalog/catalog-log'
import {
  DecodedPage, decodePage, decodeRoot, describePageDamage, encodePage, encodeRoot, entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entrySlot, lostEntry,
  pageGroupCrc, pageGroupEntries, pageIsSound, pageTrailerHeaderBytes, storedPageBytes
} from '../format/map-format'
import { pageBytes, pageEntries, verifyBatchChunks } from '../limits'
import { VdiskError } from '../errors'
import { Pool } from '../volume/pool'
import { BlockMap } from '../map/block-map'
import { VerifyReport, extentOwner, verifyPool } from './verify'

export interface RepairReport {
  catalogRebuilt: boolean
  chunksReindexed: number
  chunksDropped: number
  extentsDropped: number
  pagesReplaced: number
  /** Volume roots that failed their checksum and were taken from catalog.log, or replaced by lost pages. */
  rootsRepaired: number
  entriesLost: number
  /** Volumes brought back from catalog.log (the catalog had lost them). */
  volumesRestored: number
  /** Chunk records in packs that no volume the catalog knows references: kept, unindexed. */
  orphanRecords: number
  quarantined: string[]
  notes: string[]
  after: VerifyReport
}

/** What every step of one repair shares. */
interface RepairRun {
  dir: string
  blockBytes: number
  /** catalog.log, read before anything is changed; null when there is none. */
  logState: LogState | null
  report: Omit<RepairReport, 'after'>
  /** Moves a file to quarantine/ and reports it. */
  quarantine: (file: string, why: string) => void
}

/**
 * Repairs the pool in `dir` in the steps below, in this order (each later step relies on what the
 * earlier ones settled), then recounts every volume, commits, restarts catalog.log and verifies.
 */
export async function repairPool (dir: string): Promise<RepairReport> {
  dir = path.resolve(dir)
  const report: Omit<RepairReport, 'after'> = { catalogRebuilt: false, chunksReindexed: 0, chunksDropped: 0, extentsDropped: 0, pagesReplaced: 0, rootsRepaired: 0, entriesLost: 0, volumesRestored: 0, orphanRecords: 0, quarantined: [], notes: [] }
  const run: RepairRun = {
    dir,
    blockBytes: (JSON.parse(fs.readFileSync(path.join(dir, poolHeaderFile), 'utf8')) as { blockBytes: number }).blockBytes,
    logState: await replayCatalogLog(path.join(dir, catalogLogFile)),
    report,
    quarantine: (file: string, why: string) => {
      const target = path.join(dir, quarantineDir, quarantineFileName(Date.now(), path.basename(file)))
      fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 })
      fs.renameSync(file, target)
      fs.chmodSync(target, 0o600)
      report.quarantined.push(`${path.relative(dir, file)} -> ${path.relative(dir, target)} (${why})`)
    }
  }
  const pool = await restoreCatalogLog(run, await openCatalog(run))
  try {
    quarantineForeignFiles(run)
    const maps = readStoredMaps(pool)
    const goodExtents = await checkExtents(run, pool, maps)
    await reindexChunks(run, pool, maps)
    const liveChunks = await checkChunks(run, pool)
    repairMaps(run, pool, maps, goodExtents, liveChunks)
    pool.recount()
    await pool.commit()
    // Repair wrote pages straight to the catalog: the log starts again from the repaired catalog.
    if (!pool.inspection.catalogLogDetached) await pool.inspection.restartCatalogLog()
    const after = await verifyPool(pool)
    return { ...report, after }
  } finally {
    await pool.close()
  }
}

/** Roots that fail their checksum, put right before the pool opens (it refuses them). */
function fixRoots (run: RepairRun): void {
  let catalog: Catalog
  // A catalog that does not open (missing, damaged, in use) is for the steps below to handle.
  try { catalog = Catalog.open(path.join(run.dir, catalogFile), false) } catch { return }
  try {
    // gc's reference counts a clean close stored are that close's state; repair changes it behind them.
    catalog.deleteRefCounts()
    // Root pieces written here are not in catalog.log: until a snapshot holds them (at the next commit,
    // even if this repair stops before restarting the log), appends must not count on the log having
    // every piece the catalog does.
    catalog.setMeta(logRootPiecesMeta, '0')
    repairRoots(catalog, run.blockBytes, run.logState, run.report)
    // The root pieces' references recounted from the lists (a salvaged or repaired catalog's may be off).
    const pieces = catalog.recountRootPieces()
    if (pieces.recounted + pieces.deleted > 0) run.report.notes.push(`root pieces: ${pieces.recounted} reference counts set from the lists, ${pieces.deleted} pieces no list names deleted`)
    if (pieces.held) run.report.notes.push('root pieces: a root list fails its check; no piece was deleted')
  } finally { catalog.close() }
}

/**
 * Step 1, the catalog: roots that fail their checksum put right (they keep the pool from opening); a
 * catalog that does not open, or fails its own checks, moved aside with its WAL and a new one made
 * from what can still be read of it. Report: catalogRebuilt, rootsRepaired (and pagesReplaced,
 * entriesLost for roots nothing proves). Returns the pool, open.
 */
async function openCatalog (run: RepairRun): Promise<Pool> {
  let pool: Pool
  try {
    fixRoots(run)
    pool = Pool.open(run.dir)
    const problems = pool.inspection.catalogProblems()
    if (problems.length > 0) { await pool.close(); throw new VdiskError('CORRUPT', problems.join('; ')) }
  } catch (err) {
    if (!(err instanceof VdiskError) || err.code !== 'CORRUPT') throw err
    const damaged = path.join(run.dir, damagedCatalogFileName(Date.now()))
    fs.renameSync(path.join(run.dir, catalogFile), damaged)
    // The WAL goes with it (it may hold committed transactions the salvage can still read); the
    // shared-memory index is rebuilt from the WAL by whoever opens it.
    if (fs.existsSync(path.join(run.dir, `${catalogFile}-wal`))) fs.renameSync(path.join(run.dir, `${catalogFile}-wal`), `${damaged}-wal`)
    fs.rmSync(path.join(run.dir, `${catalogFile}-shm`), { force: true })
    run.report.catalogRebuilt = true
    run.report.notes.push(`the catalog was damaged (${err.message}); it was moved to ${path.basename(damaged)} and rebuilt`)
    pool = Pool.open(run.dir)
    salvageCatalog(damaged, pool, run.report.notes)
    await pool.close()
    fixRoots(run)
    pool = Pool.open(run.dir)
  }
  return pool
}

/**
 * Step 1b, catalog.log: volumes and map pages the catalog lost come back from the pool's second copy.
 * A log this catalog does not name (it was truncated, rebuilt or replaced) is moved to quarantine/
 * once read; the repaired catalog starts a new one. Report: volumesRestored. Returns the pool, open
 * (again, when it had to be closed).
 */
async function restoreCatalogLog (run: RepairRun, pool: Pool): Promise<Pool> {
  const logState = run.logState
  if (logState === null) return pool
  const restored = restoreFromLog(pool.inspection.offlineCatalog, logState, run.report.notes)
  run.report.volumesRestored = restored
  const pulls = restoreLazyPulls(pool.inspection.offlineCatalog, logState, run.report.notes)
  if (restored + pulls === 0 && !pool.inspection.catalogLogDetached) return pool
  const detached = pool.inspection.catalogLogDetached
  await pool.close()
  if (detached) run.quarantine(path.join(run.dir, catalogLogFile), `written by another catalog; its ${logState.volumes.size} volumes were restored from it`)
  return Pool.open(run.dir)
}

/** Step 2, foreign files at the top of the pool directory: moved to quarantine/ (report: quarantined). */
function quarantineForeignFiles (run: RepairRun): void {
  for (const name of fs.readdirSync(run.dir)) {
    // Change journal files (journal.ts) are pool files: the open replayed them; the next commit deletes them.
    if (!isPoolFile(name)) run.quarantine(path.join(run.dir, name), 'not a pool file')
  }
}

/** What the stored maps hold, read once (step 3) and used by the steps after it. */
interface StoredMaps {
  /** Each page the volumes' roots name that the catalog has, decoded (checked; correctable bytes corrected). */
  decoded: Map<number, { row: PageRow, page: DecodedPage }>
  /** Chunks the maps name (step 4 adds the ones under partial slots). */
  referenced: Set<number>
  referencedExtents: Set<number>
  /** Delta entries the maps hold, for the chunks under their partial slots (read once the extents are). */
  deltaEntries: Set<number>
}

/**
 * Step 3, the maps, read from their stored bytes: each page checked against its checksums, single
 * damaged bytes corrected where a checksum proves the original. What they reference decides which
 * pack records the index must hold. Writes nothing and reports nothing (step 7 does).
 */
function readStoredMaps (pool: Pool): StoredMaps {
  const catalog = pool.inspection.offlineCatalog
  const decoded = new Map<number, { row: PageRow, page: DecodedPage }>()
  const referenced = new Set<number>()
  const referencedExtents = new Set<number>()
  const deltaEntries = new Set<number>()
  for (const volume of pool.list()) {
    // A volume's active extent counts as referenced: its file is where its next writes go.
    if (volume.activeExtentId !== null) referencedExtents.add(volume.activeExtentId)
    for (const id of volume.map.root) {
      if (id === 0 || decoded.has(id)) continue
      const row = catalog.page(id)
      if (row === undefined) continue
      const page = decodePage(row.entries, id, true)
      decoded.set(id, { row, page })
      for (const entry of page.entries) {
        if (entryKind(entry) === entryKindChunk) referenced.add(entryChunkId(entry))
        else if (entryKind(entry) === entryKindDelta) { referencedExtents.add(entryExtentId(entry)); deltaEntries.add(entry) }
      }
    }
  }
  return { decoded, referenced, referencedExtents, deltaEntries }
}

/**
 * Step 4, extents: files against the registry. A file the catalog lost but a map points into is
 * registered again (its header names the volume that wrote it); other strays go to quarantine/; an
 * extent that cannot be opened is dropped. Report: extentsDropped, quarantined. Returns the extents
 * kept, with their slot counts; adds the chunks under partial slots to `maps.referenced`.
 */
async function checkExtents (run: RepairRun, pool: Pool, maps: StoredMaps): Promise<Map<number, number>> {
  const catalog = pool.inspection.offlineCatalog
  const registered = new Set(catalog.extents().map(e => e.id))
  const extentDir = path.join(run.dir, extentsDir)
  for (const name of fs.readdirSync(extentDir)) {
    const id = extentIdOfFile(name)
    if (id !== null && !registered.has(id) && maps.referencedExtents.has(id)) {
      const owner = extentOwner(path.join(extentDir, name))
      if (owner !== null) {
        catalog.insertExtent({ id, volumeId: owner, createdMs: Date.now() })
        registered.add(id)
        run.report.notes.push(`extent ${id} was missing from the catalog; re-registered (the maps point into it)`)
        continue
      }
    }
    if (id === null || !registered.has(id)) run.quarantine(path.join(extentDir, name), id === null ? 'not an extent file' : 'extent the catalog does not know')
  }
  const goodExtents = new Map<number, number>()
  for (const id of registered) {
    try {
      goodExtents.set(id, await pool.inspection.extentSlots(id))
    } catch (err) {
      catalog.deleteExtent(id)
      run.report.extentsDropped++
      run.report.notes.push(`extent ${id}: ${(err as Error).message}`)
    }
  }
  // A volume does not keep writing to an extent that is gone: its next write starts a new one.
  for (const volume of pool.list()) {
    for (const id of [...volume.writableExtents]) if (!goodExtents.has(id)) volume.writableExtents.delete(id)
    if (volume.activeExtentId !== null && !goodExtents.has(volume.activeExtentId)) { volume.activeExtentId = null; volume.rowDirty = true }
  }
  // A partial slot needs the chunk under it (issue #10): that chunk is referenced too.
  for (const entry of maps.deltaEntries) {
    if (!goodExtents.has(entryExtentId(entry))) continue
    const under = pool.inspection.underSlot(entry)
    if (under.kind === 'chunk') maps.referenced.add(under.chunkId)
  }
  return goodExtents
}

/**
 * Step 5, packs (and packs in quarantine/): the chunk index rebuilt from their records. A record the
 * maps reference is indexed; one nobody references is left as it is, unindexed: the catalog may have
 * lost the volumes that need it, so it is kept (compaction quarantines, never deletes). A quarantined
 * pack holding records the maps need goes back to packs/. Report: chunksReindexed, chunksDropped
 * (records gone), orphanRecords, quarantined.
 */
async function reindexChunks (run: RepairRun, pool: Pool, maps: StoredMaps): Promise<void> {
  const catalog = pool.inspection.offlineCatalog
  const knownPacks = new Set(catalog.packUsage().map(p => p.id))
  const packs = await scanPackFiles(run, catalog, knownPacks)
  const chosen = chooseRecords(run, catalog, maps, packs.scans)
  restoreQuarantinedPacks(run, catalog, knownPacks, chosen)
  catalog.transaction(() => {
    for (const [id, found] of chosen.scanned) {
      const row = chosen.indexed.has(id) ? catalog.chunk(id) : undefined
      if (row !== undefined && row.packId === found.packId && row.offset === found.offset) continue
      // An absent chunk (a lazy pull's) whose bytes a pack holds (filled, and the catalog lost the fill): filled now.
      if (row !== undefined && row.packId === absentPackId) catalog.fillChunk({ id, ...found })
      else if (row !== undefined) catalog.moveChunk(id, found.packId, found.offset)
      else if (catalog.chunkByHash(found.hash) === undefined) catalog.insertChunk({ id, ...found })
      else continue
      run.report.chunksReindexed++
    }
    for (const id of chosen.indexed) {
      // An absent chunk has no record anywhere yet: it stays (its lazy pull fills it in).
      if (!chosen.scanned.has(id) && catalog.chunk(id)?.packId !== absentPackId) { catalog.deleteChunk(id); run.report.chunksDropped++; run.report.notes.push(`chunk ${id}: its record is gone from the packs`) }
    }
    // After a catalog lost rows, every id found in a pack counts as handed out: none is issued
    // again, and the records nobody references stay "unaccounted for" (verify reports them).
    if (run.report.catalogRebuilt || packs.catalogLostRows) catalog.raiseIdHigh('chunk_id_high', chosen.highestRecord)
  })
  if (chosen.orphans > 0) {
    run.report.orphanRecords = chosen.orphans
    run.report.notes.push(`${chosen.orphans} chunk records in ${chosen.orphanPacks.size} pack${chosen.orphanPacks.size === 1 ? '' : 's'} (${[...chosen.orphanPacks].slice(0, 4).join(', ')}) belong to no volume the catalog knows: ` +
      'kept, unindexed; gc moves such packs to quarantine/ and never deletes them')
  }
}

type OfflineCatalog = Pool['inspection']['offlineCatalog']
interface ScannedPack { file: string, scan: PackScan, quarantined: boolean }
interface FoundRecord { packId: number, offset: number, storedBytes: number, rawBytes: number, compressed: boolean, hash: Buffer }

/**
 * Step 5a: every pack in packs/ scanned (a file that is not one, or whose header does not match its
 * name, quarantined; a pack the catalog lost re-registered), then the packs in quarantine/.
 */
async function scanPackFiles (run: RepairRun, catalog: OfflineCatalog, knownPacks: Set<number>): Promise<{ scans: ScannedPack[], catalogLostRows: boolean }> {
  const packDir = path.join(run.dir, packsDir)
  const quarantineFull = path.join(run.dir, quarantineDir)
  let catalogLostRows = false
  const scans: ScannedPack[] = []
  for (const name of fs.readdirSync(packDir)) {
    const named = packIdOfFile(name)
    if (named === null) { run.quarantine(path.join(packDir, name), 'not a pack file'); continue }
    const scan = await scanPack(path.join(packDir, name))
    if (scan.packId === null || scan.packId !== named) { run.quarantine(path.join(packDir, name), 'bad pack header'); continue }
    if (scan.stopped !== null) run.report.notes.push(`pack ${scan.packId}: ${scan.stopped}; the rest of the pack is ignored`)
    if (!knownPacks.has(scan.packId)) {
      catalog.insertPack(scan.packId, Date.now())
      knownPacks.add(scan.packId)
      catalogLostRows = true
      run.report.notes.push(`pack ${scan.packId} was missing from the catalog; re-registered`)
    }
    scans.push({ file: path.join(packDir, name), scan, quarantined: false })
  }
  if (fs.existsSync(quarantineFull)) {
    for (const name of fs.readdirSync(quarantineFull)) {
      if (quarantinedKind(name) !== 'pack') continue
      try {
        const scan = await scanPack(path.join(quarantineFull, name))
        if (scan.packId !== null) { scans.push({ file: path.join(quarantineFull, name), scan, quarantined: true }); catalog.raiseIdHigh('pack_id_high', scan.packId) }
      } catch {}
    }
  }
  return { scans, catalogLostRows }
}

/** What step 5b chose from the scanned packs. */
interface ChosenRecords {
  /** The chunk ids the index held before. */
  indexed: Set<number>
  /** The record to index for each chunk id. */
  scanned: Map<number, FoundRecord>
  /** Quarantined packs holding records the maps need. */
  restore: Array<{ file: string, packId: number }>
  orphans: number
  orphanPacks: Set<string>
  highestRecord: number
}

/**
 * Step 5b: the record to index for each chunk: the indexed one where it still stands (over a stale copy
 * elsewhere), else one the maps reference; the records nobody references counted as orphans.
 */
function chooseRecords (run: RepairRun, catalog: OfflineCatalog, maps: StoredMaps, scans: ScannedPack[]): ChosenRecords {
  const chosen: ChosenRecords = { indexed: new Set(catalog.chunkIds()), scanned: new Map(), restore: [], orphans: 0, orphanPacks: new Set(), highestRecord: 0 }
  const { indexed, scanned } = chosen
  for (const { file, scan, quarantined } of scans) {
    const packId = scan.packId as number
    let needed = false
    for (const record of scan.records) {
      if (record.offset + record.storedBytes > scan.bytes) continue // cut short
      chosen.highestRecord = Math.max(chosen.highestRecord, record.id)
      const row = indexed.has(record.id) ? catalog.chunk(record.id) : undefined
      const found = { packId, offset: record.offset, storedBytes: record.storedBytes, rawBytes: record.rawBytes, compressed: record.compressed, hash: record.hash }
      if (row !== undefined) {
        // The record at the indexed place wins over a stale copy elsewhere (a compaction cut short).
        if (!quarantined && row.hash.equals(record.hash) && (!scanned.has(record.id) || (row.packId === packId && row.offset === record.offset))) scanned.set(record.id, found)
        continue
      }
      if (!maps.referenced.has(record.id) || scanned.has(record.id) || catalog.isRetired(record.id)) {
        if (!maps.referenced.has(record.id) && !catalog.isRetired(record.id)) { chosen.orphans++; chosen.orphanPacks.add(path.relative(run.dir, file)) }
        continue
      }
      scanned.set(record.id, found)
      if (quarantined) needed = true
    }
    if (needed) chosen.restore.push({ file, packId })
  }
  return chosen
}

/**
 * Step 5c: quarantined packs that hold records the maps need go back to packs/ under their own id; one
 * whose place is taken stays, and its records are not indexed.
 */
function restoreQuarantinedPacks (run: RepairRun, catalog: OfflineCatalog, knownPacks: Set<number>, chosen: ChosenRecords): void {
  const packDir = path.join(run.dir, packsDir)
  for (const { file, packId } of chosen.restore) {
    const target = path.join(packDir, packFileName(packId))
    if (fs.existsSync(target)) {
      run.report.notes.push(`${path.relative(run.dir, file)} holds chunks the maps need, but ${path.relative(run.dir, target)} exists; left in quarantine`)
      for (const [id, found] of chosen.scanned) if (found.packId === packId && !chosen.indexed.has(id)) chosen.scanned.delete(id)
      continue
    }
    fs.renameSync(file, target)
    fs.chmodSync(target, 0o600)
    if (!knownPacks.has(packId)) { catalog.insertPack(packId, Date.now()); knownPacks.add(packId) }
    run.report.notes.push(`${path.relative(run.dir, file)} holds chunks the maps need; moved back to ${path.relative(run.dir, target)}`)
  }
}

/** Step 6, every chunk read and checked against its hash; a damaged one dropped (report: chunksDropped). Returns the chunks left. */
async function checkChunks (run: RepairRun, pool: Pool): Promise<Set<number>> {
  pool.inspection.forgetChunkCache()
  const ids = pool.inspection.offlineCatalog.chunkIds()
  const bad: number[] = []
  for (let i = 0; i < ids.length; i += verifyBatchChunks) {
    for (const [id, why] of await pool.inspection.checkChunks(ids.slice(i, i + verifyBatchChunks))) { bad.push(id); run.report.notes.push(`chunk ${id}: ${why}`) }
  }
  pool.inspection.forgetChunks(bad)
  run.report.chunksDropped += bad.length
  return new Set(pool.inspection.offlineCatalog.chunkIds())
}

/**
 * Step 7, maps: a page that is gone becomes a page of lost entries; in a damaged page, a group of
 * entries that fails its checksum is taken from another page that provably held the same bytes (the
 * log's copy, or a copy-on-write copy at the same place in another volume), else marked lost; an
 * impossible entry, or one naming a dropped chunk or extent or a slot past an extent's end, becomes
 * lost. Pages are written in place. Report: pagesReplaced, entriesLost.
 */
function repairMaps (run: RepairRun, pool: Pool, maps: StoredMaps, goodExtents: Map<number, number>, liveChunks: Set<number>): void {
  /** A partial slot whose base entry is damaged, or whose chunk is gone, cannot be read whole. */
  const baseIsLive = (entry: number): boolean => {
    // A base table that was not loaded reads as a whole slot here (repair's reading since issue #10).
    const under = pool.inspection.underSlot(entry)
    return under.kind === 'whole' || under.kind === 'unloaded' || (under.kind === 'chunk' && liveChunks.has(under.chunkId))
  }
  const repaired = new Set<number>()
  for (const volume of pool.list()) {
    volume.map.pinRoot() // in memory until the commit (ids are written into the array below: it must stay the map's)
    volume.map.widenRoot() // ids are written into it below, a new page's maybe past 32 bits (block-map.ts, RootIds)
    const root = volume.map.root
    const blocks = Math.ceil(volume.size / pool.blockBytes)
    for (let p = 0; p < root.length; p++) {
      if (root[p] === 0 || repaired.has(root[p])) continue
      repaired.add(root[p])
      const stored = maps.decoded.get(root[p])
      if (stored === undefined) {
        const page = pool.inspection.newPage(volume.map.epoch)
        for (let i = 0; i < pageEntries && p * pageEntries + i < blocks; i++) page.entries[i] = lostEntry
        root[p] = page.id
        volume.map.rootDirty = true
        run.report.pagesReplaced++
        run.report.notes.push(`${volume.label}: map page ${p} is missing from the catalog`)
        continue
      }
      const { row, page } = stored
      const entries = page.entries
      let changed = !pageIsSound(page)
      if (changed) run.report.notes.push(`${volume.label}: map page ${row.id} (blocks ${p * pageEntries}-${(p + 1) * pageEntries - 1}): ${describePageDamage(page)}`)
      for (const g of page.unverified) {
        const source = copyOfGroup(pool, row, g, p, run.logState?.pages)
        if (source === null) continue
        entries.set(source.entries.subarray(g * pageGroupEntries, (g + 1) * pageGroupEntries), g * pageGroupEntries)
        page.unverified = page.unverified.filter(x => x !== g)
        run.report.notes.push(`${volume.label}: map page ${row.id} entries ${g * pageGroupEntries}-${(g + 1) * pageGroupEntries - 1} restored from map page ${source.id}, which its checksum proves identical`)
      }
      const unverified = new Set(page.unverified)
      const invalid = new Set(page.invalid)
      for (let i = 0; i < entries.length; i++) {
        const entry = entries[i]
        if (entry === 0) continue
        if (p * pageEntries + i >= blocks && unverified.has(Math.floor(i / pageGroupEntries))) { entries[i] = 0; changed = true; continue }
        const kind = entryKind(entry)
        const gone = unverified.has(Math.floor(i / pageGroupEntries)) || invalid.has(i) || (kind === entryKindDelta
          ? !(goodExtents.has(entryExtentId(entry)) && entrySlot(entry) < (goodExtents.get(entryExtentId(entry)) as number) && baseIsLive(entry))
          : kind === entryKindChunk && !liveChunks.has(entryChunkId(entry)))
        if (gone && entry !== lostEntry) { entries[i] = lostEntry; changed = true }
        if (gone) run.report.entriesLost++
      }
      if (!changed) continue
      // Written in place, under the same id: every volume sharing the page keeps sharing it.
      pool.inspection.dropPage(row.id)
      pool.inspection.offlineCatalog.putPage(row.id, row.epoch, encodePage(entries, row.id))
    }
  }
}

/** Copies whatever rows can still be read from a damaged catalog into the new one. */
function salvageCatalog (damaged: string, pool: Pool, notes: string[]): void {
  let old: Database.Database
  try {
    old = new Database(damaged, { readonly: true, fileMustExist: true })
  } catch (err) {
    notes.push(`nothing could be read from the damaged catalog: ${(err as Error).message}; its volumes are lost, the data stays in the packs`)
    return
  }
  const tables = ['meta', 'volumes', 'roots', 'root_pieces', 'root_piece_refs', 'pages', 'extents', 'packs', 'chunks', 'retired_chunks']
  try {
    for (const table of tables) {
      try {
        const rows = old.prepare(`SELECT * FROM ${table}`).all() as Array<Record<string, unknown>>
        const copied = pool.inspection.offlineCatalog.importRows(table, rows)
        notes.push(`salvaged ${copied} of ${rows.length} ${table} rows`)
      } catch (err) {
        notes.push(`table ${table} could not be read: ${(err as Error).message}`)
      }
    }
  } finally { old.close() }
}

/**
 * Another stored page at the same place `p` of another volume's root whose group `g` passes the
 * damaged page's own checksum for that group (seeded with the damaged page's id): proof that it holds
 * exactly the bytes that were lost. Null when no page proves it.
 */
function copyOfGroup (pool: Pool, damaged: PageRow, g: number, p: number, logPages?: LogState['pages']): { id: number, entries: Float64Array } | null {
  if (damaged.entries.byteLength !== storedPageBytes) return null
  const expected = damaged.entries.readUInt32LE(pageBytes + pageTrailerHeaderBytes + 4 * g)
  // The log's copy of the same page first, then copy-on-write copies in other volumes.
  const logged = logPages?.get(damaged.id)
  if (logged !== undefined && logged.entries.byteLength >= pageBytes && pageGroupCrc(logged.entries, g, damaged.id) === expected) {
    return { id: damaged.id, entries: decodePage(logged.entries, damaged.id).entries }
  }
  for (const volume of pool.list()) {
    const id = volume.map.root[p]
    if (id === undefined || id === 0 || id === damaged.id) continue
    const row = pool.inspection.offlineCatalog.page(id)
    if (row === undefined || row.entries.byteLength < pageBytes) continue
    if (pageGroupCrc(row.entries, g, damaged.id) !== expected) continue
    const copy = decodePage(row.entries, id)
    return { id, entries: copy.entries }
  }
  return null
}

/**
 * Puts back the lazy pulls catalog.log knows whose backup the catalog has (restored from the log, or its
 * own): each absent chunk the log lists that the catalog lacks (by id and by hash) comes back absent, and
 * the pull's row and list come back when the catalog has no row for it and some chunk of it is absent.
 * Step 5 then fills those a pack holds, and the next open takes them off the list (or ends the pull):
 * what a rebuilt catalog lost stays resumable, never lost. Returns how many pulls came back.
 */
function restoreLazyPulls (catalog: Catalog, state: LogState, notes: string[]): number {
  let restored = 0
  let chunks = 0
  catalog.transaction(() => {
    const have = new Set(catalog.lazyPulls().map(row => row.uuid))
    for (const [uuid, { pull, absent }] of state.lazy) {
      if (catalog.volumeByUuid(uuid) === undefined) continue
      const listed: number[] = []
      for (const chunk of absent.values()) {
        const row = catalog.chunk(chunk.id)
        if (row === undefined && catalog.chunkByHash(chunk.hash) === undefined) {
          catalog.insertChunk({ id: chunk.id, hash: chunk.hash, packId: absentPackId, offset: 0, storedBytes: 0, rawBytes: chunk.rawBytes, compressed: false })
          chunks++
          listed.push(chunk.id)
        } else if (row !== undefined && row.packId === absentPackId && row.hash.equals(chunk.hash)) listed.push(chunk.id)
      }
      if (!have.has(uuid)) {
        if (listed.length === 0) continue
        catalog.putLazyPull({ ...pull, chunks: Math.max(pull.chunks, absent.size) })
        restored++
      }
      for (const id of listed) catalog.putLazyChunk(uuid, id)
    }
  })
  if (restored + chunks > 0) notes.push(`restored ${restored} lazy pulls in progress and ${chunks} absent chunks from catalog.log (their blocks are fetched by the pull, not lost)`)
  return restored + chunks
}

/**
 * Puts back the volumes catalog.log knows and the catalog lacks, with every map page of theirs the
 * catalog lacks, and map pages of the catalog's own volumes that are missing; raises next_epoch to
 * the log's. Returns how many volumes came back.
 */
function restoreFromLog (catalog: Catalog, state: LogState, notes: string[]): number {
  const have = catalog.volumesWithRoots()
  const ids = new Set(have.map(v => v.id))
  const names = new Set(have.map(v => `${v.kind}/${v.name}`))
  let restored = 0
  let pages = 0
  catalog.transaction(() => {
    const putPages = (root: Buffer) => {
      for (let at = 0; at + 8 <= root.length; at += 8) {
        const id = Number(root.readBigUInt64LE(at))
        const logged = state.pages.get(id)
        if (id === 0 || logged === undefined || catalog.page(id) !== undefined) continue
        catalog.putPage(id, logged.epoch, logged.entries)
        pages++
      }
    }
    for (const [id, row] of state.volumes) {
      if (ids.has(id)) continue
      if (names.has(`${row.kind}/${row.name}`)) { notes.push(`catalog.log knows ${row.kind} ${row.name} (id ${id}), but the catalog has another by that name; not restored`); continue }
      catalog.insertVolume(Object.assign({ uid: null, gid: null, mode: null }, row) as unknown as VolumeRow)
      putPages(row.root)
      restored++
    }
    for (const row of have) putPages(row.root)
    const epoch = Number(state.meta.next_epoch ?? '0')
    if (epoch > Number(catalog.getMeta('next_epoch') ?? '1')) catalog.setMeta('next_epoch', String(epoch))
    // The change journal files older than the last commit the log holds are not replayed (journal.ts).
    const journalSeq = Number(state.meta.journal_seq ?? '0')
    if (journalSeq > Number(catalog.getMeta('journal_seq') ?? '0')) catalog.setMeta('journal_seq', String(journalSeq))
  })
  for (const unresolved of state.rootsUnresolved) notes.push(`catalog.log: the root of ${unresolved} could not be assembled from the pieces it holds`)
  if (restored + pages > 0) notes.push(`restored ${restored} volumes and ${pages} map pages from catalog.log (${state.records} records${state.skippedBytes > 0 ? `, ${state.skippedBytes} damaged bytes skipped` : ''})`)
  return restored
}


/**
 * Every volume root that fails its checksum is taken from catalog.log's copy when that passes; when
 * nothing proves the page ids, the volume gets pages of lost entries (EIO for all its blocks), never
 * another volume's pages.
 */
function repairRoots (catalog: Catalog, blockBytes: number, logState: LogState | null, report: Omit<RepairReport, 'after'>): void {
  catalog.transaction(() => {
    for (const info of catalog.volumes()) {
      const blocks = Math.ceil(info.size / blockBytes)
      const count = BlockMap.pagesFor(blocks)
      // A list whose piece is missing or fails its hash is a damaged root too (catalog.rootState).
      const stored = catalog.rootState(info.id)
      const row = { ...info, root: stored !== undefined && 'root' in stored ? stored.root : Buffer.alloc(0) }
      let why: string
      try {
        if (stored !== undefined && 'damaged' in stored) throw new RangeError(stored.damaged)
        decodeRoot(row.root, count, row.id)
        continue
      } catch (err) { why = (err as Error).message }
      report.rootsRepaired++
      const logged = logState?.volumes.get(row.id)
      if (logged !== undefined && logged.size === row.size) {
        try {
          decodeRoot(logged.root, count, row.id)
          catalog.updateVolume({ ...row, root: logged.root }, true)
          report.notes.push(`${row.kind} ${row.name}: its map root was damaged (${why}); restored from catalog.log`)
          continue
        } catch {}
      }
      const ids = new Float64Array(count)
      let next = catalog.maxPageId() + 1
      for (let p = 0; p < count; p++) {
        const entries = new Float64Array(pageEntries)
        for (let i = 0; i < pageEntries && p * pageEntries + i < blocks; i++) entries[i] = lostEntry
        catalog.putPage(next, row.epoch, encodePage(entries, next))
        ids[p] = next++
        report.pagesReplaced++
      }
      catalog.updateVolume({ ...row, root: encodeRoot(ids, row.id) }, true)
      report.entriesLost += blocks
      report.notes.push(`${row.kind} ${row.name}: its map root was damaged (${why}) and no copy proves it; all ${blocks} blocks marked lost`)
    }
  })
}
