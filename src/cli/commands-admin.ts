/**
 * CLI commands of issue #11: map (the allocation map, as qemu-img map prints it), cp (a volume to a new
 * disk, O(1): what cp --reflink cannot do through FUSE here) and promote (a clone becomes a disk).
 */
import fs from 'node:fs'
import path from 'node:path'
import { call } from '../control/client'
import { invalid } from '../errors'
import { AllocationRange } from '../volume/pool'
import { checkName } from '../volume/names'
import { VolumeInfo } from '../volume/volume'
import { Command, dirOfKind, imagePath, jsonVolume, newImageName, print } from './command'

interface MapResult { size: number, blockBytes: number, backing: { kind: string, name: string } | null, ranges: AllocationRange[] }
type CopyResult = VolumeInfo & { from: VolumeInfo, elapsedMs: number }

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
 * Where `vdiskfs cp` puts its copy: DST is MNT/disks/NAME (in SRC's mount), the MNT/disks directory
 * itself (the copy takes SRC's name), or a plain NAME (disks/NAME.img, as backup and clone name theirs).
 */
function copyTarget (destination: string, source: { mountpoint: string, name: string }): string {
  if (!destination.includes('/')) return newImageName(destination)
  const resolved = path.resolve(destination)
  let isDirectory = false
  try { isDirectory = fs.statSync(resolved).isDirectory() } catch {}
  const target = isDirectory ? { ...imagePath(path.join(resolved, source.name)) } : imagePath(destination)
  if (target.mountpoint !== source.mountpoint) throw invalid(`${destination} is not in the same vdiskfs mount as the source (${source.mountpoint})`)
  if (target.kind !== 'disk') throw invalid(`${destination}: a copy is a new disk: give MNT/disks/NAME, MNT/disks, or a plain NAME`)
  checkName(target.name)
  return target.name
}

export const adminCommands: Record<string, Command> = {
  map: {
    usage: 'map IMAGE [--json]',
    summary: "the image's allocation map (qemu-img map's shape): data, zero and unallocated ranges; depth 1 is a clone's backup",
    spec: { positionals: ['IMAGE'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image], flags }) {
      const target = imagePath(image)
      const result = await call(target.mountpoint, 'map', { targetKind: target.kind, targetName: target.name }) as MapResult
      print(flags.json === true, result.ranges, () => humanMap(path.join(target.mountpoint, dirOfKind[target.kind], target.name), target.mountpoint, result))
    }
  },

  cp: {
    usage: 'cp SRC DST [--json]',
    summary: 'copy any image to a new disk (MNT/disks/NAME, or a plain NAME) in O(1): the two share blocks until either writes (cp --reflink cannot do this through FUSE)',
    spec: { positionals: ['SRC', 'DST'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image, destination], flags }) {
      const source = imagePath(image)
      const name = copyTarget(destination, source)
      const result = await call(source.mountpoint, 'cp', { sourceKind: source.kind, sourceName: source.name, name }) as CopyResult
      const { from, ...copy } = result
      print(flags.json === true, { ...jsonVolume(copy), from: jsonVolume(from) }, () =>
        `copied ${path.join(source.mountpoint, dirOfKind[source.kind], source.name)} to ${path.join(source.mountpoint, 'disks', result.name)} (${result.elapsedMs.toFixed(1)} ms in the daemon)`)
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
      const result = await call(source.mountpoint, 'promote', { sourceKind: source.kind, sourceName: source.name, name }) as CopyResult
      const { from, ...disk } = result
      print(flags.json === true, { ...jsonVolume(disk), from: jsonVolume(from) }, () =>
        `promoted ${path.join(source.mountpoint, 'clones', source.name)} to ${path.join(source.mountpoint, 'disks', result.name)} (${result.elapsedMs.toFixed(1)} ms in the daemon)`)
    }
  }
}
