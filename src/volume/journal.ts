/**
 * The change journal: what the engine changed in memory since the last commit, appended as it happens,
 * so that a daemon that dies without committing loses no acknowledged write (docs/ARCHITECTURE.md,
 * "The change journal"; docs/FORMAT.md has the record layout).
 *
 * Why: a write is acknowledged once its bytes are in a delta extent, but the map entry that finds them
 * (a new slot, a hole, a new size) lives in memory until the next commit. A daemon killed before it
 * leaves the extent bytes behind and forgets where they go. That was a crash like a power cut (what was
 * not fsynced may be lost) as long as the mount died with the daemon; a FUSE 3 mount now outlives its
 * daemon (docs/TRANSPORT.md), and its users go on as if nothing happened, so nothing acknowledged may
 * vanish. The journal is written with write(2), not synced: it survives the process, not the machine;
 * after a power cut its records are taken as far as they are whole (each carries a CRC-32), like the
 * unsynced extent bytes they point at ("a value written to it, or zeros").
 *
 * Files: `journal.N` in the pool directory. The catalog's meta `journal_seq` is the N whose file holds
 * the changes after the last commit. A commit's snapshot starts file N+1 (synchronously, in the same
 * turn), its transaction records N+1, and once it succeeded files below N+1 are deleted. Opening a pool
 * replays, in order, every file from `journal_seq` on, then freezes every active extent (its slot count
 * comes from the file's size, which a power cut may have cut short: a new slot must never land where a
 * replayed entry points).
 *
 * Only after the death of a process, not of the machine: the journal is never synced, so after a power
 * cut it may hold an entry whose slot's bytes never reached the disk, and replaying it would replace an
 * fsynced value with zeros. Each file starts with the kernel's boot id; a file from another boot is not
 * replayed (the pool starts from its last commit, as it always did after a power cut).
 *
 * Records (32 bytes, little-endian): u32 kind, u32 CRC-32 of bytes 8..31 and the kind, then the kind's
 * fields. Kinds: boot (16 bytes: the boot id; first in every file), entry (f64 volume, f64 block, f64
 * map entry), size (f64 volume, f64 bytes), freeze (f64 volume), extent (f64 id: created after the last
 * commit; suspect after a replay).
 */
import fs from 'node:fs'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import { journalFileName, journalSeqOfFile } from '../format/pool-format'

export const journalRecordBytes = 32
export const enum JournalKind { Entry = 1, Size = 2, Freeze = 3, Extent = 4, Boot = 5 }

export interface JournalRecord { kind: JournalKind, a: number, b: number, c: number }

/** The kernel's id of this boot (changes at every restart of the machine), as 16 bytes. */
export function currentBootId (): Buffer {
  try {
    const text = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replace(/-/g, '')
    if (/^[0-9a-f]{32}$/.test(text)) return Buffer.from(text, 'hex')
  } catch {}
  // No boot id: no file can be proven to come from this boot, so none is ever replayed.
  return Buffer.alloc(16)
}

function encode (kind: JournalKind, a: number, b: number, c: number): Buffer {
  const record = Buffer.alloc(journalRecordBytes)
  record.writeUInt32LE(kind, 0)
  record.writeDoubleLE(a, 8)
  record.writeDoubleLE(b, 16)
  record.writeDoubleLE(c, 24)
  record.writeUInt32LE(checkOf(record), 4)
  return record
}

function encodeBoot (bootId: Buffer): Buffer {
  const record = Buffer.alloc(journalRecordBytes)
  record.writeUInt32LE(JournalKind.Boot, 0)
  bootId.copy(record, 8, 0, 16)
  record.writeUInt32LE(checkOf(record), 4)
  return record
}

function checkOf (record: Buffer): number {
  const covered = Buffer.concat([record.subarray(0, 4), record.subarray(8, journalRecordBytes)])
  return crc32(covered) >>> 0
}

/**
 * The records of one journal file, up to the first one that is not whole (a torn tail), or null when
 * the file was not written in the boot `bootId` (its first record names another, or none).
 */
export function readJournal (file: string, bootId: Buffer): JournalRecord[] | null {
  const bytes = fs.readFileSync(file)
  if (bytes.length < journalRecordBytes) return []
  const first = bytes.subarray(0, journalRecordBytes)
  if (first.readUInt32LE(0) !== JournalKind.Boot || first.readUInt32LE(4) !== checkOf(first) || !first.subarray(8, 24).equals(bootId) || bootId.equals(Buffer.alloc(16))) return null
  const records: JournalRecord[] = []
  for (let at = journalRecordBytes; at + journalRecordBytes <= bytes.length; at += journalRecordBytes) {
    const record = bytes.subarray(at, at + journalRecordBytes)
    if (record.readUInt32LE(4) !== checkOf(record)) break
    const kind = record.readUInt32LE(0)
    if (kind < JournalKind.Entry || kind > JournalKind.Extent) break
    records.push({ kind, a: record.readDoubleLE(8), b: record.readDoubleLE(16), c: record.readDoubleLE(24) })
  }
  return records
}

/** The journal files in `dir` by sequence number, ascending. */
export function journalFiles (dir: string): Array<{ seq: number, file: string }> {
  const found: Array<{ seq: number, file: string }> = []
  for (const name of fs.readdirSync(dir)) {
    const seq = journalSeqOfFile(name)
    if (seq !== null) found.push({ seq, file: path.join(dir, name) })
  }
  return found.sort((x, y) => x.seq - y.seq)
}

export class ChangeJournal {
  private fd: number | null = null
  /** Sequence numbers of the files there are (made here, or left by an earlier run and replayed). */
  private readonly files = new Set<number>()
  /** Off while a pool replays its journal (replayed changes are already in the files being read). */
  enabled = true
  /** Called once when a record could not be written. */
  onFailure: (() => void) | null = null

  constructor (private readonly dir: string, public seq: number, private readonly log: (message: string) => void, readonly bootId: Buffer = currentBootId()) {}

  entry (volumeId: number, block: number, entry: number): void { this.append(JournalKind.Entry, volumeId, block, entry) }
  size (volumeId: number, bytes: number): void { this.append(JournalKind.Size, volumeId, bytes, 0) }
  freeze (volumeId: number): void { this.append(JournalKind.Freeze, volumeId, 0, 0) }
  extent (id: number): void { this.append(JournalKind.Extent, id, 0, 0) }

  /**
   * Starts the next file (a commit's snapshot, in the same turn): changes from now on go there.
   * Returns its sequence number, for the commit to record.
   */
  rotate (): number {
    this.closeFile()
    this.seq++
    return this.seq
  }

  /** Deletes the files below `seq` (their changes are committed). */
  dropBefore (seq: number): void {
    for (const n of this.files) {
      if (n >= seq) continue
      fs.rmSync(path.join(this.dir, journalFileName(n)), { force: true })
      this.files.delete(n)
    }
  }

  /** A file left by an earlier run (replayed, or older than the last commit), deleted at the next commit. */
  adopt (seq: number): void { this.files.add(seq) }

  close (): void { this.closeFile() }

  /**
   * After a failed fdatasync: the kernel may have dropped the pages the journal's entries point at, so
   * the journal is deleted and written no more. A daemon taking over then starts from the last good
   * commit, as a mount after the failure does.
   */
  discard (): void {
    this.closeFile()
    this.enabled = false
    this.discarded = true
    for (const n of this.files) fs.rmSync(path.join(this.dir, journalFileName(n)), { force: true })
    this.files.clear()
  }

  /** Set once discard() ran: nothing is journaled any more. */
  discarded = false

  /**
   * The current file's descriptor (opened now if it is not), for the FUSE addon's own records of its
   * first writes (fast-reads.ts): it writes them with write(2) on a duplicate, which shares the file
   * position with this one (each write lands whole after the other). -2 when nothing is journaled.
   */
  nativeFd (): number {
    if (!this.enabled || this.discarded) return -2
    try {
      return this.open()
    } catch (err) {
      this.log(`the change journal could not be opened (${(err as Error).message}): the addon's first writes are not journaled until the next commit`)
      return -2
    }
  }

  private open (): number {
    if (this.fd === null) {
      // 'w': a file of this number left by a run that died before its first commit is replaced
      // (replay read it already, and this run's seq is past every replayed one).
      this.fd = fs.openSync(path.join(this.dir, journalFileName(this.seq)), 'w', 0o600)
      this.files.add(this.seq)
      fs.writeSync(this.fd, encodeBoot(this.bootId))
    }
    return this.fd
  }

  private append (kind: JournalKind, a: number, b: number, c: number): void {
    if (!this.enabled) return
    try {
      fs.writeSync(this.open(), encode(kind, a, b, c))
    } catch (err) {
      // Only a daemon's death between this change and the next commit could lose it. The daemon then
      // stops its holder (onFailure): a death ends the mount (ENOTCONN, as without a holder) instead of
      // a takeover that would go on without the changes.
      this.log(`the change journal could not be written (${(err as Error).message}): a daemon killed before the next commit would lose the changes since the last one`)
      const failed = this.onFailure
      this.onFailure = null
      failed?.()
    }
  }

  private closeFile (): void {
    if (this.fd === null) return
    try { fs.closeSync(this.fd) } catch {}
    this.fd = null
  }
}
