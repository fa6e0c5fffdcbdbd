/**
 * Reading a pack's chunk records from its bytes alone (pack-format.ts), and deciding whether the
 * catalog accounts for each of them. This is what keeps gc, compaction and repair from deleting data
 * the catalog lost (issue #9, item 6): a pack file is deleted only when every record in it is
 *
 *  - indexed: the chunk index has a row with the record's id and hash (the live copy, here or in the
 *    pack compaction moved it to), or
 *  - retired: gc proved the chunk unreferenced in a healthy catalog and kept its id in
 *    retired_chunks until the pack is gone, or
 *  - never indexed: the pack is one the catalog registered and the record's id lies above the
 *    catalog's chunk id high-water mark (or was handed out again to another hash), i.e. a seal pass
 *    wrote it and never committed it; its blocks are still in the extent it came from.
 *
 * Any other record is unaccounted for: the catalog may have lost it (a truncated or rebuilt catalog,
 * a lost index row). A pack holding one is quarantined, never deleted, and verify reports it.
 *
 * Reads only; every length read from the file is checked before it is used.
 */
import fs from 'node:fs'
import path from 'node:path'
import { Catalog } from '../catalog/catalog'
import { chunkFlagCompressed, chunkHeaderBytes, chunkHeaderFields, chunkMagic, packHeaderBytes, packMagic } from './pack-format'

export interface PackRecord {
  id: number
  hash: Buffer
  /** Offset of the payload in the pack file. */
  offset: number
  storedBytes: number
  rawBytes: number
  compressed: boolean
}

export interface PackScan {
  /** The pack id its header names, or null when the header is unreadable. */
  packId: number | null
  records: PackRecord[]
  /** Why the scan stopped before the end of the file (null: it read every byte). */
  stopped: string | null
  /** The scan stopped on a partial record at the very end (an append cut short), not on garbage. */
  tornTail: boolean
  bytes: number
}

/** Reads the header and every record header of a pack file. Throws only when the file cannot be opened. */
export async function scanPack (file: string): Promise<PackScan> {
  const handle = await fs.promises.open(file, 'r')
  try {
    const bytes = (await handle.stat()).size
    const scan: PackScan = { packId: null, records: [], stopped: null, tornTail: false, bytes }
    const header = Buffer.alloc(packHeaderBytes)
    const got = (await handle.read(header, 0, packHeaderBytes, 0)).bytesRead
    if (got < packHeaderBytes || !header.subarray(0, packMagic.length).equals(packMagic)) {
      scan.stopped = 'bad pack header'
      return scan
    }
    scan.packId = Number(header.readBigUInt64LE(16))
    const record = Buffer.alloc(chunkHeaderBytes)
    let at = packHeaderBytes
    while (at < bytes) {
      if (at + chunkHeaderBytes > bytes) { scan.stopped = `partial record header at offset ${at}`; scan.tornTail = true; break }
      await handle.read(record, 0, chunkHeaderBytes, at)
      if (record.readUInt32LE(chunkHeaderFields.magic) !== chunkMagic) { scan.stopped = `no record at offset ${at}`; break }
      const storedBytes = record.readUInt32LE(chunkHeaderFields.storedBytes)
      const end = at + chunkHeaderBytes + storedBytes
      const entry: PackRecord = {
        id: Number(record.readBigUInt64LE(chunkHeaderFields.id)),
        hash: Buffer.from(record.subarray(chunkHeaderFields.hash, chunkHeaderFields.hash + 32)),
        offset: at + chunkHeaderBytes,
        storedBytes,
        rawBytes: record.readUInt32LE(chunkHeaderFields.rawBytes),
        compressed: (record.readUInt32LE(chunkHeaderFields.flags) & chunkFlagCompressed) !== 0
      }
      if (end > bytes) { scan.stopped = `record ${entry.id} at offset ${at} is cut short`; scan.tornTail = true; scan.records.push(entry); break }
      scan.records.push(entry)
      at = end
    }
    return scan
  } finally { await handle.close() }
}

export type RecordFate = 'indexed' | 'retired' | 'never indexed' | 'unaccounted'

/**
 * What the catalog says about `record` of a pack. `registered`: the pack is in the catalog's packs
 * table; `movedHere`: ids compaction is moving out of this pack right now (indexed after its commit).
 */
export function recordFate (catalog: Catalog, record: PackRecord, registered: boolean, high: number, movedHere?: Set<number>): RecordFate {
  if (movedHere?.has(record.id) === true) return 'indexed'
  const row = catalog.chunk(record.id)
  if (row !== undefined && row.hash.equals(record.hash)) return 'indexed'
  if (catalog.isRetired(record.id)) return 'retired'
  if (registered && (record.id > high || row !== undefined)) return 'never indexed'
  return 'unaccounted'
}

/**
 * How many records of pack file `file` the catalog does not account for (see above); Infinity when
 * the file cannot be parsed (its bytes are kept whole). A missing file holds nothing.
 */
export async function unaccountedRecords (catalog: Catalog, file: string, registered: boolean, movedHere?: Set<number>): Promise<number> {
  let scan: PackScan
  try {
    scan = await scanPack(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
    return Number.POSITIVE_INFINITY
  }
  if (scan.packId === null || (scan.stopped !== null && !scan.tornTail)) return Number.POSITIVE_INFINITY
  const high = catalog.maxChunkId()
  let count = 0
  for (const record of scan.records) if (recordFate(catalog, record, registered, high, movedHere) === 'unaccounted') count++
  return count
}

/**
 * Moves `file` into the pool's quarantine directory (`dir`, made 0700) as `<ms>-<name>`, mode 0600,
 * and makes both directories durable. Returns the new path.
 */
export async function quarantineFile (file: string, dir: string): Promise<string> {
  await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 })
  const target = path.join(dir, `${Date.now()}-${path.basename(file)}`)
  await fs.promises.rename(file, target)
  await fs.promises.chmod(target, 0o600)
  for (const d of [dir, path.dirname(file)]) {
    const handle = await fs.promises.open(d, 'r')
    try { await handle.sync() } finally { await handle.close() }
  }
  return target
}
