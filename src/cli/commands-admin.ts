/**
 * CLI commands of issue #11: map (the allocation map, as qemu-img map prints it), cp (a volume to a new
 * disk, O(1): what cp --reflink cannot do through FUSE here; or out of the pool, reading only the data
 * ranges, since FUSE here cannot answer SEEK_DATA) and promote (a clone becomes a disk).
 */
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { call } from '../control/client'
import { CopyResult, MapResult } from '../control/results'
import { VdiskError, exists, fromSystemError, invalid } from '../errors'
import { copyOutPieceBytes } from '../limits'
import { AllocationRange } from '../volume/pool'
import { checkName } from '../volume/names'
import { VolumeInfo } from '../volume/volume'
import { Command, dirOfKind, imagePath, jsonVolume, newImageName, print } from './command'
import { bytes } from './format'
import { createPartial, publish } from './new-file'
import { describeHolders, findHolders } from './holders'


/** qemu-img map's human format: one line per data range, offsets in hex ("%#-16x"). */
function humanMap (image: string, mountpoint: string, result: MapResult): string {
  const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16)
  const backingFile = result.backing === null ? image : path.join(mountpoint, dirOfKind[result.backing.kind], result.backing.name)
  const lines = [`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File`]
  for (const range of result.ranges) {
    if (!range.data) continue
    lines.push(`${hex(range.start)}${hex(range.length)}${hex(range.offset ?? range.start)}${range.depth === 0 ? image : backingFile}`)
  }
  return lines.join('\n')
}

/**
 * Where `vdiskfs cp` puts its copy: a new disk of SRC's pool when DST is MNT/disks/NAME in SRC's mount
 * or a plain NAME (disks/NAME.img, as backup and clone name theirs); a file anywhere else. A directory
 * DST takes SRC's name.
 */
function copyTarget (destination: string, source: { mountpoint: string, name: string }): { name: string } | { file: string } {
  if (!destination.includes('/')) return { name: newImageName(destination) }
  let resolved = path.resolve(destination)
  try { if (fs.statSync(resolved).isDirectory()) resolved = path.join(resolved, source.name) } catch {}
  let target: { mountpoint: string, kind: string, name: string } | null = null
  try { target = imagePath(resolved) } catch {}
  if (target === null || target.mountpoint !== source.mountpoint) return { file: resolved }
  if (target.kind !== 'disk') throw invalid(`${destination}: a copy in the pool is a new disk: give MNT/disks/NAME, MNT/disks, or a plain NAME`)
  checkName(target.name)
  return { name: target.name }
}

const closeFd = promisify(fs.close)
const ftruncate = promisify(fs.ftruncate)
const pwrite = promisify(fs.write)
const fsync = promisify(fs.fsync)

/**
 * Copies the image `sourceFile` (read through the mount) to a new file `destination`, reading and
 * writing only its data ranges (`ranges`, from map) and leaving holes elsewhere. The copy is written to
 * a partial file beside `destination` and takes its name only when complete and synced (new-file.ts):
 * an interrupted copy never leaves a file under that name, so running it again works. A file that
 * exists is not overwritten (EXISTS). Blocks written to the image while it is copied may or may not be
 * in the copy: copy a backup for a point in time.
 */
async function copyOut (sourceFile: string, destination: string, size: number, ranges: AllocationRange[]): Promise<number> {
  if (fs.existsSync(destination)) throw exists(destination)
  const partial = createPartial(destination)
  const fd = partial.fd
  let open = true
  const close = async (): Promise<void> => { if (open) { open = false; await closeFd(fd) } }
  let copied = 0
  try {
    const input = await fs.promises.open(sourceFile, 'r')
    try {
      await ftruncate(fd, size)
      const piece = Buffer.allocUnsafe(copyOutPieceBytes)
      for (const range of ranges) {
        if (!range.data) continue
        for (let at = range.start; at < range.start + range.length;) {
          const length = Math.min(piece.length, range.start + range.length - at)
          const { bytesRead } = await input.read(piece, 0, length, at)
          if (bytesRead !== length) throw new VdiskError('IO', `${sourceFile}: short read at byte ${at} (the image shrank while it was copied?)`)
          const { bytesWritten } = await pwrite(fd, piece, 0, length, at)
          if (bytesWritten !== length) throw new VdiskError('IO', `${destination}: short write at byte ${at}`)
          at += length
          copied += length
        }
      }
      await fsync(fd)
    } finally {
      await input.close()
    }
    await close()
    publish(partial.path, destination, () => new VdiskError('EXISTS', `${destination} appeared during the copy: cp never replaces a file (the copy was not kept)`))
  } catch (err) {
    await close().catch(() => {})
    fs.rmSync(partial.path, { force: true })
    throw err instanceof VdiskError ? err : fromSystemError(err, `copying ${sourceFile} to ${destination}`)
  } finally {
    partial.forget()
  }
  return copied
}

/** protect / unprotect a backup. */
async function protection (image: string, on: boolean, json: boolean): Promise<void> {
  const target = imagePath(image)
  if (target.kind !== 'backup') throw invalid(`${image} is not a backup: only backups are protected`)
  const result = await call(target.mountpoint, 'protect', { targetKind: target.kind, targetName: target.name, on })
  print(json, jsonVolume(result), () => `${on ? 'protected' : 'unprotected'} ${image}`)
}

export const adminCommands: Record<string, Command> = {
  map: {
    usage: 'map IMAGE [--json]',
    summary: "the image's allocation map (qemu-img map's shape): data, zero and unallocated ranges; depth 1 is a clone's backup",
    spec: { positionals: ['IMAGE'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image], flags }) {
      const target = imagePath(image)
      const result = await call(target.mountpoint, 'map', { targetKind: target.kind, targetName: target.name })
      print(flags.json === true, result.ranges, () => humanMap(path.join(target.mountpoint, dirOfKind[target.kind], target.name), target.mountpoint, result))
    }
  },

  cp: {
    usage: 'cp SRC DST [--json]',
    summary: 'copy any image to a new disk (MNT/disks/NAME, or a plain NAME) in O(1): the two share blocks until either writes (cp --reflink cannot do this through FUSE); to a path outside the mount, a sparse copy of the data ranges only',
    spec: { positionals: ['SRC', 'DST'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image, destination], flags }) {
      const source = imagePath(image)
      const target = copyTarget(destination, source)
      const sourceFile = path.join(source.mountpoint, dirOfKind[source.kind], source.name)
      if ('file' in target) {
        const started = Date.now()
        const map = await call(source.mountpoint, 'map', { targetKind: source.kind, targetName: source.name })
        const copied = await copyOut(sourceFile, target.file, map.size, map.ranges)
        const elapsedMs = Date.now() - started
        print(flags.json === true, { source: sourceFile, target: target.file, size: map.size, copiedBytes: copied, elapsedMs }, () =>
          `copied ${sourceFile} to ${target.file}: ${bytes(copied)} of data, the rest of its ${bytes(map.size)} left as holes (${(elapsedMs / 1000).toFixed(1)} s)`)
        return
      }
      const name = target.name
      const result = await call(source.mountpoint, 'cp', { sourceKind: source.kind, sourceName: source.name, name })
      const { from, ...copy } = result
      print(flags.json === true, { ...jsonVolume(copy), from: jsonVolume(from) }, () =>
        `copied ${sourceFile} to ${path.join(source.mountpoint, 'disks', result.name)} (${result.elapsedMs.toFixed(1)} ms in the daemon)`)
    }
  },

  protect: {
    usage: 'protect BACKUP [--json]',
    summary: 'protect a backup: prune keeps it and rm refuses it, even with --force, until unprotect',
    spec: { positionals: ['BACKUP'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image], flags }) { await protection(image, true, flags.json === true) }
  },

  unprotect: {
    usage: 'unprotect BACKUP [--json]',
    summary: 'lift the protection of a backup (prune and rm may remove it again)',
    spec: { positionals: ['BACKUP'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image], flags }) { await protection(image, false, flags.json === true) }
  },

  note: {
    usage: 'note IMAGE TEXT [--json]',
    summary: "set an image's note, shown by ls and info ('' clears it)",
    spec: { positionals: ['IMAGE', 'TEXT'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image, text], flags }) {
      const target = imagePath(image)
      const result = await call(target.mountpoint, 'note', { targetKind: target.kind, targetName: target.name, note: text })
      print(flags.json === true, jsonVolume(result), () => result.note === null ? `cleared the note of ${image}` : `noted ${image}: ${result.note}`)
    }
  },

  rename: {
    usage: 'rename IMAGE NEWNAME [--json]',
    summary: 'rename a disk, backup or clone within its directory (never replaces one; refused while the image is open)',
    spec: { positionals: ['IMAGE', 'NEWNAME'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image, newName], flags }) {
      const source = imagePath(image)
      const name = newImageName(newName)
      let result: VolumeInfo & { from: VolumeInfo }
      try {
        result = await call(source.mountpoint, 'rename', { targetKind: source.kind, targetName: source.name, name })
      } catch (err) {
        // Refused while open: name who holds it, as rm and promote do.
        if (!(err instanceof VdiskError) || err.code !== 'BUSY') throw err
        const holders = findHolders(path.join(source.mountpoint, dirOfKind[source.kind], source.name))
        if (holders.length === 0) throw err
        throw new VdiskError('BUSY', `${dirOfKind[source.kind]}/${source.name} is in use by ${describeHolders(holders)}: close it first`)
      }
      const { from, ...renamed } = result
      print(flags.json === true, { ...jsonVolume(renamed), from: jsonVolume(from) }, () =>
        `renamed ${path.join(source.mountpoint, dirOfKind[source.kind], source.name)} to ${path.join(source.mountpoint, dirOfKind[renamed.kind], renamed.name)}`)
    }
  },

  promote: {
    usage: 'promote CLONE [NEWNAME] [--json]',
    summary: 'turn a clone into an independent disk (disks/NEWNAME, by default the same name) in O(1); refused while the clone is open',
    spec: { positionals: ['CLONE'], optional: ['NEWNAME'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image, newName], flags }) {
      const source = imagePath(image)
      if (source.kind !== 'clone') throw invalid(`${image} is not a clone (only clones are promoted; vdiskfs cp copies anything to a new disk)`)
      const name = newName === undefined ? source.name : newImageName(newName)
      let result: CopyResult
      try {
        result = await call(source.mountpoint, 'promote', { sourceKind: source.kind, sourceName: source.name, name })
      } catch (err) {
        // Refused while open: name who holds it, as rm and restore do.
        if (!(err instanceof VdiskError) || err.code !== 'BUSY') throw err
        const holders = findHolders(path.join(source.mountpoint, 'clones', source.name))
        if (holders.length === 0) throw err
        throw new VdiskError('BUSY', `clones/${source.name} is in use by ${describeHolders(holders)}: close it first`)
      }
      const { from, ...disk } = result
      print(flags.json === true, { ...jsonVolume(disk), from: jsonVolume(from) }, () =>
        `promoted ${path.join(source.mountpoint, 'clones', source.name)} to ${path.join(source.mountpoint, 'disks', result.name)} (${result.elapsedMs.toFixed(1)} ms in the daemon)`)
    }
  }
}
