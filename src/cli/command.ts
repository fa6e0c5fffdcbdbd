/**
 * What every CLI command shares: the Command shape, image paths inside a mount, output in text or
 * JSON, progress bars, and running against a mounted or an offline pool. Commands live in main.ts
 * and in the commands-*.ts modules that main.ts merges.
 */
import fs from 'node:fs'
import path from 'node:path'
import type { SingleBar } from 'cli-progress'
import { VdiskError, invalid } from '../errors'
import { call } from '../control/client'
import type { Pool } from '../volume/pool'
import { checkName } from '../volume/names'
import { poolHeaderFile } from '../format/pool-format'
import { progressIntervalMs } from '../limits'
import { Parsed, Spec } from './args'
import { printableLines } from './holders'
import { dirOfKind as kindDirs } from '../volume/names'
import type { VolumeKind } from '../catalog/catalog'

export interface Command { usage: string, summary: string, spec: Spec, run: (args: Parsed) => Promise<void> }

export const kindOfDir: Record<string, VolumeKind | undefined> = { disks: 'disk', backups: 'backup', clones: 'clone' }
/** The mount's folder of each kind (volume/names.ts), indexed by the kind strings the CLI parses. */
export const dirOfKind: Record<string, string> = kindDirs

/** An image in a mount: MNT/KIND/NAME's parts. */
export interface ImageTarget { mountpoint: string, kind: VolumeKind, name: string }

/** Splits MNT/KIND/NAME into its parts. */
export function imagePath (image: string): ImageTarget {
  const absolute = path.resolve(image)
  const kind = kindOfDir[path.basename(path.dirname(absolute))]
  if (kind === undefined) throw invalid(`${image} is not an image in a vdiskfs mount (expected MNT/disks/NAME, MNT/backups/NAME or MNT/clones/NAME)`)
  let mountpoint = path.dirname(path.dirname(absolute))
  try { mountpoint = fs.realpathSync(mountpoint) } catch {}
  return { mountpoint, kind, name: path.basename(absolute) }
}

export function mountpointArg (mnt: string): string {
  try { return fs.realpathSync(mnt) } catch { return path.resolve(mnt) }
}

/** The file name a new backup or clone gets: NAME.img, checked against the name rule. */
export function newImageName (name: string): string {
  if (name === '' || name === '.' || name === '..' || name.includes('/')) throw invalid(`invalid name '${name}': give a plain name such as web-monday`)
  const file = name.endsWith('.img') ? name : `${name}.img`
  checkName(file)
  return file
}

/** Prints `value` as JSON, or the text `human()` gives with control characters escaped (names may hold them). */
export function print (json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : printableLines(human()) + '\n')
}

/** Times as the text shows them (ISO 8601, UTC): a volume's createdMs/mtimeMs become created/modified. */
export function jsonVolume<T extends { createdMs: number, mtimeMs: number }> (volume: T): Omit<T, 'createdMs' | 'mtimeMs'> & { created: string, modified: string } {
  const { createdMs, mtimeMs, ...rest } = volume
  return { ...rest, created: time(createdMs), modified: time(mtimeMs) }
}

export function time (ms: number): string { return new Date(ms).toISOString() }

/**
 * Runs a command against the daemon serving `target` (a mountpoint), or, when `target` is a pool no
 * daemon serves, against the pool opened here under its lock.
 */
export async function onlineOrOffline<T> (target: string, label: string, online: (mountpoint: string) => Promise<T>, offline: (pool: Pool) => Promise<T>): Promise<T> {
  const resolved = mountpointArg(target)
  let mounted = true
  try { await call(resolved, 'status') } catch { mounted = false }
  if (mounted) return await withProgress(resolved, label, online(resolved))
  if (!fs.existsSync(path.join(resolved, poolHeaderFile))) throw invalid(`${target} is neither a mounted vdiskfs pool nor a pool directory`)
  let pool: Pool
  try {
    // The engine loads here, for the commands run offline only (main.ts).
    pool = (await import('../volume/pool')).Pool.open(resolved)
  } catch (err) {
    if (err instanceof VdiskError && err.code === 'BUSY') throw new VdiskError('BUSY', `${target} is mounted: run this command on its mountpoint instead`)
    throw err
  }
  try { return await offline(pool) } finally { await pool.close() }
}

/**
 * A progress bar drawn on stderr (a terminal's): cli-progress is loaded here, at the first bar, not by
 * every command (a command whose stderr is not a terminal draws none).
 */
export function newBar (options: { format: string, stream: NodeJS.WriteStream, hideCursor: boolean, clearOnComplete: boolean }): SingleBar {
  const { SingleBar, Presets } = require('cli-progress') as typeof import('cli-progress')
  return new SingleBar(options, Presets.shades_classic)
}

/**
 * Shows a progress bar on a terminal while `work` runs (the daemon's sealing progress), and nothing
 * when stderr is not a terminal.
 */
export async function withProgress<T> (mountpoint: string, label: string, work: Promise<T>): Promise<T> {
  if (process.stderr.isTTY !== true) return await work
  const bar = newBar({ format: `${label} [{bar}] {value}/{total}`, stream: process.stderr, hideCursor: true, clearOnComplete: true })
  let started = false
  const timer = setInterval(() => {
    call(mountpoint, 'progress').then(p => {
      const { done, total } = p
      if (!started) { bar.start(Math.max(total, 1), done); started = true } else { bar.setTotal(Math.max(total, 1)); bar.update(done) }
    }, () => {})
  }, progressIntervalMs)
  try { return await work } finally { clearInterval(timer); if (started) bar.stop() }
}

