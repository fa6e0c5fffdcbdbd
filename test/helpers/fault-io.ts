/**
 * A fault-injecting FileIo for crash tests (LevelDB/RocksDB's FaultInjectionTestEnv idea). It writes
 * through to the real files, and keeps an undo record of every write that no fdatasync has covered
 * yet. `powerCut()` then puts back what a machine losing power would have on disk: every unsynced
 * write undone (newest first, sizes restored), and files created since their directory was last
 * synced deleted.
 *
 * Faults: `cutAtSync = N` makes the Nth sync (fdatasync or directory sync) the moment the power goes:
 * it fails, and every later call fails too (the machine is off). `failSyncAt = N` fails the Nth sync
 * with EIO as Linux does: the kernel dropped the dirty pages, so the writes it should have covered are
 * never durable, and a later fdatasync that "succeeds" does not make them so.
 * Not modelled: a deletion undone by a power cut (deletions count as durable at once); and SQLite's own
 * writes (the catalog and its WAL go through SQLite's file layer, not this one): a power cut here keeps
 * every catalog transaction, synced or not, so these tests cannot catch an act on a commit's durability
 * before its WAL sync (Committer.syncCatalogWal). The WAL's fdatasync itself is a sync here (counted,
 * cut and failed like the others).
 */
import fs from 'node:fs'
import path from 'node:path'
import { FileIo, nodeFileIo } from '../../src/io/file-io'

interface Undo { position: number, old: Buffer, oldSize: number }

function ioError (what: string): NodeJS.ErrnoException {
  const err = new Error(`EIO: i/o error, ${what} (injected)`) as NodeJS.ErrnoException
  err.code = 'EIO'
  return err
}

export class FaultFileIo implements FileIo {
  /** Syncs (fdatasync and directory syncs) seen so far. */
  syncs = 0
  cutAtSync: number | null = null
  failSyncAt: number | null = null
  /** Set once the power is cut. */
  off = false
  private readonly paths = new Map<number, string>()
  private readonly undo = new Map<string, Undo[]>()
  /** Writes whose fdatasync failed: never durable, whatever later syncs say. */
  private readonly lost = new Map<string, Undo[]>()
  private readonly created = new Set<string>()

  private check (what: string): void { if (this.off) throw ioError(what) }

  /** Counts a sync; true when this one must fail. */
  private syncFails (what: string): boolean {
    this.check(what)
    this.syncs++
    if (this.syncs === this.cutAtSync) { this.off = true; throw ioError(`${what}: power cut`) }
    return this.syncs === this.failSyncAt
  }

  async open (file: string, flags: string, mode?: number): Promise<number> {
    this.check('open')
    const existed = fs.existsSync(file)
    const fd = await nodeFileIo.open(file, flags, mode)
    this.paths.set(fd, file)
    if (!existed) this.created.add(file)
    return fd
  }

  async close (fd: number): Promise<void> {
    this.paths.delete(fd)
    await nodeFileIo.close(fd)
  }

  async read (fd: number, target: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    this.check('read')
    return await nodeFileIo.read(fd, target, offset, length, position)
  }

  private remember (fd: number, position: number, length: number): void {
    const file = this.paths.get(fd)
    if (file === undefined) throw new Error('write to a descriptor the fault layer did not open')
    const oldSize = fs.fstatSync(fd).size
    const old = Buffer.alloc(Math.max(0, Math.min(length, oldSize - position)))
    if (old.length > 0) fs.readSync(fd, old, 0, old.length, position)
    const list = this.undo.get(file) ?? []
    list.push({ position, old, oldSize })
    this.undo.set(file, list)
  }

  async write (fd: number, data: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> {
    this.check('write')
    this.remember(fd, position, length)
    return await nodeFileIo.write(fd, data, offset, length, position)
  }

  async writev (fd: number, buffers: Uint8Array[], position: number): Promise<{ bytesWritten: number }> {
    this.check('writev')
    this.remember(fd, position, buffers.reduce((sum, b) => sum + b.length, 0))
    return await nodeFileIo.writev(fd, buffers, position)
  }

  async fdatasync (fd: number): Promise<void> {
    const file = this.paths.get(fd) as string
    if (this.syncFails('fdatasync')) {
      this.lost.set(file, [...(this.lost.get(file) ?? []), ...(this.undo.get(file) ?? [])])
      this.undo.delete(file)
      throw ioError('fdatasync')
    }
    // Only the writes made before the fdatasync started are covered by it: one made while it runs
    // stays undoable (its undo record was dropped too, before: issue #17's audit).
    const list = this.undo.get(file)
    const covered = list?.length ?? 0
    await nodeFileIo.fdatasync(fd)
    // A list replaced meanwhile (a failed sync moved it to `lost`, or the file was removed) is not ours.
    if (list !== undefined && this.undo.get(file) === list) {
      list.splice(0, covered)
      if (list.length === 0) this.undo.delete(file)
    }
  }

  async fstat (fd: number): Promise<{ size: number }> {
    this.check('fstat')
    return await nodeFileIo.fstat(fd)
  }

  async truncate (fd: number, size: number): Promise<void> {
    this.check('truncate')
    const oldSize = fs.fstatSync(fd).size
    this.remember(fd, size, Math.max(0, oldSize - size))
    await nodeFileIo.truncate(fd, size)
  }

  async sizeOf (file: string): Promise<number> { return await nodeFileIo.sizeOf(file) }

  async remove (file: string): Promise<void> {
    this.check('remove')
    this.undo.delete(file)
    this.lost.delete(file)
    this.created.delete(file)
    await nodeFileIo.remove(file)
  }

  async syncDirectory (dir: string): Promise<void> {
    if (this.syncFails('directory sync')) throw ioError('directory sync')
    // Only the files created before the sync started are made durable by it.
    const covered = [...this.created].filter(file => path.dirname(file) === dir)
    await nodeFileIo.syncDirectory(dir)
    for (const file of covered) this.created.delete(file)
  }

  /**
   * Puts the files back as a power cut would leave them. Call once the engine has let go. With
   * `reachedDisk`, some unsynced writes are kept, as if the kernel had written them back before the
   * power went (in any order, each whole): the case where a block and its checksum disagree.
   */
  powerCut (reachedDisk: () => boolean = () => false): void {
    this.off = true
    for (const [file, list] of [...this.undo.entries(), ...this.lost.entries()]) {
      if (!fs.existsSync(file)) continue
      const fd = fs.openSync(file, 'r+')
      try {
        for (const entry of [...list].reverse()) {
          if (reachedDisk()) continue
          if (entry.old.length > 0) fs.writeSync(fd, entry.old, 0, entry.old.length, entry.position)
          if (fs.fstatSync(fd).size > entry.oldSize) fs.ftruncateSync(fd, entry.oldSize)
        }
      } finally { fs.closeSync(fd) }
    }
    this.undo.clear()
    this.lost.clear()
    for (const file of this.created) fs.rmSync(file, { force: true })
    this.created.clear()
  }
}
