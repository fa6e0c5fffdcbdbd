/**
 * repair: brings a damaged pool back to a state that mounts, rebuilding what can be rebuilt and
 * quarantining what cannot, and says exactly which volumes and byte ranges lost data. Offline only
 * (the CLI runs it under the pool lock).
 *
 *  - A catalog SQLite cannot open is moved aside and a new one made from what can still be read of it.
 *  - The chunk index is rebuilt from the pack files (each record names its chunk id and hash).
 *  - Every chunk is read and checked against its hash; a damaged or missing one is dropped.
 *  - Extents whose file is gone or whose header is damaged are dropped; extent and pack files the
 *    catalog does not know, and foreign files, are moved to quarantine/.
 *  - Map pages that are gone are replaced by pages of lost entries; map entries that name dropped
 *    chunks, dropped extents or slots past an extent's end become lost entries: reads of those blocks
 *    fail with EIO (never zeros, never garbage) until the whole block is written again.
 *  - Each volume's counters are recounted.
 */
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { catalogFile, daemonLogFile, daemonPidFile, extentsDir, packsDir, poolHeaderFile } from '../format/pool-format'
import { chunkHeaderBytes, chunkHeaderFields, chunkMagic, packHeaderBytes, packMagic } from '../chunk/pack-format'
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entrySlot, lostEntry } from '../format/map-format'
import { pageEntries } from '../limits'
import { VdiskError } from '../errors'
import { Pool } from './pool'
import { VerifyReport, verifyPool } from './verify'

export interface RepairReport {
  catalogRebuilt: boolean
  chunksReindexed: number
  chunksDropped: number
  extentsDropped: number
  pagesReplaced: number
  entriesLost: number
  quarantined: string[]
  notes: string[]
  after: VerifyReport
}

export async function repairPool (dir: string): Promise<RepairReport> {
  dir = path.resolve(dir)
  const report: Omit<RepairReport, 'after'> = { catalogRebuilt: false, chunksReindexed: 0, chunksDropped: 0, extentsDropped: 0, pagesReplaced: 0, entriesLost: 0, quarantined: [], notes: [] }
  const quarantine = (file: string, why: string) => {
    const target = path.join(dir, 'quarantine', `${Date.now()}-${path.basename(file)}`)
    fs.mkdirSync(path.dirname(target), { recursive: true })
    fs.renameSync(file, target)
    report.quarantined.push(`${path.relative(dir, file)} -> ${path.relative(dir, target)} (${why})`)
  }
  // 1. The catalog: open it, or move it aside and salvage what can be read.
  let pool: Pool
  try {
    pool = Pool.open(dir)
    const problems = pool.catalog.integrityCheck()
    if (problems.length > 0) { await pool.close(); throw new VdiskError('CORRUPT', problems.join('; ')) }
  } catch (err) {
    if (!(err instanceof VdiskError) || err.code !== 'CORRUPT') throw err
    const damaged = path.join(dir, `${catalogFile}.damaged-${Date.now()}`)
    fs.renameSync(path.join(dir, catalogFile), damaged)
    for (const suffix of ['-wal', '-shm']) fs.rmSync(path.join(dir, catalogFile + suffix), { force: true })
    report.catalogRebuilt = true
    report.notes.push(`the catalog was damaged (${err.message}); it was moved to ${path.basename(damaged)} and rebuilt`)
    pool = Pool.open(dir)
    salvageCatalog(damaged, pool, report.notes)
    await pool.close()
    pool = Pool.open(dir)
  }
  try {
    const catalog = pool.catalog
    // 2. Foreign files at the top level.
    const known = new Set([poolHeaderFile, catalogFile, `${catalogFile}-wal`, `${catalogFile}-shm`, extentsDir, packsDir, 'quarantine', daemonLogFile, daemonPidFile])
    for (const name of fs.readdirSync(dir)) {
      if (!known.has(name) && !name.startsWith(`${catalogFile}.damaged-`) && !name.endsWith('.tmp')) quarantine(path.join(dir, name), 'not a pool file')
    }
    // 3. Extents: files against the registry.
    const registered = new Set(catalog.extents().map(e => e.id))
    const extentDir = path.join(dir, extentsDir)
    for (const name of fs.readdirSync(extentDir)) {
      const id = /^(\d+)\.dx$/.exec(name)
      if (id === null || !registered.has(Number(id[1]))) quarantine(path.join(extentDir, name), id === null ? 'not an extent file' : 'extent the catalog does not know')
    }
    const goodExtents = new Map<number, number>()
    for (const id of registered) {
      try {
        goodExtents.set(id, (await pool.extents.get(id)).nextSlot)
      } catch (err) {
        catalog.deleteExtent(id)
        report.extentsDropped++
        report.notes.push(`extent ${id}: ${(err as Error).message}`)
      }
    }
    // 4. Packs: rebuild the chunk index from the records.
    const packDir = path.join(dir, packsDir)
    const knownPacks = new Set(catalog.packUsage().map(p => p.id))
    const scanned = new Map<number, { packId: number, offset: number, storedBytes: number, rawBytes: number, compressed: boolean, hash: Buffer }>()
    for (const name of fs.readdirSync(packDir)) {
      const match = /^(\d+)\.pack$/.exec(name)
      if (match === null) { quarantine(path.join(packDir, name), 'not a pack file'); continue }
      const packId = Number(match[1])
      const bytes = fs.readFileSync(path.join(packDir, name))
      if (bytes.length < packHeaderBytes || !bytes.subarray(0, 8).equals(packMagic) || Number(bytes.readBigUInt64LE(16)) !== packId) {
        quarantine(path.join(packDir, name), 'bad pack header')
        continue
      }
      if (!knownPacks.has(packId)) { catalog.insertPack(packId, Date.now()); report.notes.push(`pack ${packId} was missing from the catalog; re-registered`) }
      let at = packHeaderBytes
      while (at + chunkHeaderBytes <= bytes.length) {
        if (bytes.readUInt32LE(at + chunkHeaderFields.magic) !== chunkMagic) { report.notes.push(`pack ${packId}: no record at offset ${at}; the rest of the pack is ignored`); break }
        const storedBytes = bytes.readUInt32LE(at + chunkHeaderFields.storedBytes)
        const end = at + chunkHeaderBytes + storedBytes
        if (end > bytes.length) { report.notes.push(`pack ${packId} is truncated at offset ${at}`); break }
        scanned.set(Number(bytes.readBigUInt64LE(at + chunkHeaderFields.id)), {
          packId,
          offset: at + chunkHeaderBytes,
          storedBytes,
          rawBytes: bytes.readUInt32LE(at + chunkHeaderFields.rawBytes),
          compressed: (bytes.readUInt32LE(at + chunkHeaderFields.flags) & 1) === 1,
          hash: Buffer.from(bytes.subarray(at + chunkHeaderFields.hash, at + chunkHeaderFields.hash + 32))
        })
        at = end
      }
    }
    const indexed = new Set(catalog.chunkIds())
    catalog.transaction(() => {
      for (const [id, found] of scanned) {
        const row = indexed.has(id) ? catalog.chunk(id) : undefined
        if (row !== undefined && row.packId === found.packId && row.offset === found.offset) continue
        if (row !== undefined) catalog.moveChunk(id, found.packId, found.offset)
        else if (catalog.chunkByHash(found.hash) === undefined) catalog.insertChunk({ id, ...found })
        else continue
        report.chunksReindexed++
      }
      for (const id of indexed) {
        if (!scanned.has(id)) { catalog.deleteChunk(id); report.chunksDropped++; report.notes.push(`chunk ${id}: its record is gone from the packs`) }
      }
    })
    pool.chunks.forgetCache()
    // 5. Every chunk against its hash.
    const ids = catalog.chunkIds()
    const bad: number[] = []
    for (let i = 0; i < ids.length; i += 8) {
      for (const [id, why] of await pool.chunks.check(ids.slice(i, i + 8))) { bad.push(id); report.notes.push(`chunk ${id}: ${why}`) }
    }
    pool.chunks.forget(bad)
    report.chunksDropped += bad.length
    const liveChunks = new Set(catalog.chunkIds())
    // 6. Maps: replace missing pages, turn entries naming what is gone into lost entries.
    for (const volume of pool.list()) {
      const root = volume.map.root
      const blocks = Math.ceil(volume.size / pool.blockBytes)
      for (let p = 0; p < root.length; p++) {
        if (root[p] === 0) continue
        let page
        try {
          page = pool.pageStore.get(root[p])
        } catch (err) {
          page = pool.pageStore.create(volume.map.epoch)
          for (let i = 0; i < pageEntries && p * pageEntries + i < blocks; i++) page.entries[i] = lostEntry
          root[p] = page.id
          volume.map.rootDirty = true
          report.pagesReplaced++
          report.notes.push(`${volume.label}: map page ${p} was unreadable (${(err as Error).message})`)
          continue
        }
        let changed = false
        for (let i = 0; i < page.entries.length; i++) {
          const entry = page.entries[i]
          if (entry === 0) continue
          const kind = entryKind(entry)
          const gone = kind === entryKindDelta
            ? !(goodExtents.has(entryExtentId(entry)) && entrySlot(entry) < (goodExtents.get(entryExtentId(entry)) as number))
            : kind === entryKindChunk && !liveChunks.has(entryChunkId(entry))
          if (gone) { page.entries[i] = lostEntry; changed = true; report.entriesLost++ }
        }
        if (changed) pool.pageStore.markDirty(page)
      }
    }
    pool.recount()
    await pool.commit()
    const after = await verifyPool(pool)
    return { ...report, after }
  } finally {
    await pool.close()
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
  const tables = ['meta', 'volumes', 'pages', 'extents', 'packs', 'chunks']
  try {
    for (const table of tables) {
      try {
        const rows = old.prepare(`SELECT * FROM ${table}`).all() as Array<Record<string, unknown>>
        const copied = pool.catalog.importRows(table, rows)
        notes.push(`salvaged ${copied} of ${rows.length} ${table} rows`)
      } catch (err) {
        notes.push(`table ${table} could not be read: ${(err as Error).message}`)
      }
    }
  } finally { old.close() }
}
