/**
 * What bench/remote.ts and bench/lazy-pull.ts share: the paths, the disk of real data they push (an ext4
 * of `bytes`, filled with a copy of /usr, built outside the pool and copied in sparse), pools mounted
 * for the bench, and one lazy pull measured from its command to its first MiB and a MiB in the middle.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

export const repoRoot = path.resolve(__dirname, '..', '..')
export const cli = path.join(repoRoot, 'bin', 'vdiskfs')
export const workRoot = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
export const mib = 1024 * 1024
/** The disk's size: VDISKFS_BENCH_REMOTE_MIB MiB (default 1024). */
export const dataBytes = Number(process.env.VDISKFS_BENCH_REMOTE_MIB ?? 1024) * mib

/** The load average (1, 5 and 15 minutes): these figures move with it. */
export function loadAverages (): string { return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') }

/** The load average now (1 minute). */
export function load (): number { return Number(loadAverages().split(' ')[0]) }

/** `bytes` bytes of `file` at `offset`. */
function bytesAt (file: string, offset: number, bytes: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const buffer = Buffer.alloc(bytes)
    let done = 0
    while (done < bytes) {
      const n = fs.readSync(fd, buffer, done, bytes - done, offset + done)
      if (n === 0) break
      done += n
    }
    return buffer.subarray(0, done)
  } finally { fs.closeSync(fd) }
}

/** Seconds to open `file`, read `bytes` at `offset` and close it. */
export function readSeconds (file: string, offset: number, bytes: number): number {
  const started = process.hrtime.bigint()
  bytesAt(file, offset, bytes)
  return Number(process.hrtime.bigint() - started) / 1e9
}

/**
 * Writes the bench's disk to `disk` (in a pool, so copied in sparse): an ext4 of dataBytes holding as
 * much of /usr as fits, built in `dir` (loop-mounted there, then unmounted and removed).
 */
export function buildUsrDisk (dir: string, disk: string): void {
  const built = path.join(dir, 'usr.img')
  const fsMount = path.join(dir, 'usr-mnt')
  fs.mkdirSync(fsMount, { recursive: true })
  execFileSync('truncate', ['-s', String(dataBytes), built])
  execFileSync('mkfs.ext4', ['-q', '-F', built])
  execFileSync('mount', ['-o', 'loop', built, fsMount])
  try {
    // cp stops on ENOSPC at the first file that does not fit: what is copied by then is the data.
    try { execFileSync('cp', ['-a', '/usr/.', fsMount], { stdio: 'ignore' }) } catch {}
  } finally { execFileSync('umount', [fsMount]) }
  execFileSync('cp', ['--sparse=always', built, disk])
  fs.rmSync(built)
}

/** Pools mounted for a bench (each POOL, MNT in `dir`), unmounted by unmountAll(). */
export class BenchPools {
  readonly mounts: string[] = []

  constructor (private readonly dir: string, private readonly env: NodeJS.ProcessEnv) {}

  /** Mounts pool `name` (the daemon with `extraEnv` besides), with the remote `remote` at `url`: its mount point. */
  mount (name: string, remote: { name: string, url: string, endpoint: string }, extraEnv: NodeJS.ProcessEnv = {}): string {
    const mnt = path.join(this.dir, `${name}-mnt`)
    fs.mkdirSync(mnt, { recursive: true })
    execFileSync(cli, ['mount', this.pool(name), mnt], { encoding: 'utf8', env: { ...this.env, ...extraEnv } })
    this.mounts.push(mnt)
    execFileSync(cli, ['remote', 'add', mnt, remote.name, remote.url, '--endpoint', remote.endpoint], { encoding: 'utf8', env: this.env })
    return mnt
  }

  pool (name: string): string { return path.join(this.dir, `${name}-pool`) }

  unmount (mnt: string): void {
    try { execFileSync(cli, ['umount', mnt], { stdio: 'ignore', timeout: 120000 }) } catch {}
    this.mounts.splice(this.mounts.indexOf(mnt), 1)
  }

  unmountAll (): void { for (const mnt of [...this.mounts].reverse()) this.unmount(mnt) }
}

/** One lazy pull's figures (seconds), its output, and the CLI's trace lines (VDISKFS_TRACE=1). */
export interface LazyRun { command: number, firstMiB: number, firstMiBFromCommand: number, middleMiB: number, trace: string[], loadBefore: string, loadAfter: string }

/**
 * `vdiskfs pull MNT REMOTE ID NAME --lazy` timed from the command: when it returns, its first MiB read
 * (open, read, close), then a MiB in the middle of the image (fetched on demand); its hydrator is then
 * killed by its pid (the figures are the command's, not the background walk's). Both MiBs are then read
 * again and compared with the same bytes of `source` (the pushed backup's image): a pull that reads back
 * other bytes fails the bench.
 */
export function lazyPull (env: NodeJS.ProcessEnv, mnt: string, remote: string, id: string, name: string, source: string): LazyRun {
  const loadBefore = loadAverages()
  const started = process.hrtime.bigint()
  const out = spawnSync(cli, ['pull', mnt, remote, id, name, '--lazy', '--json'], { encoding: 'utf8', env: { ...env, VDISKFS_TRACE: '1' }, maxBuffer: 64 * mib })
  const command = Number(process.hrtime.bigint() - started) / 1e9
  if (out.status !== 0) throw new Error(`pull --lazy failed: ${out.stderr}`)
  const image = path.join(mnt, 'backups', `${name}.img`)
  const firstMiB = readSeconds(image, 0, mib)
  const firstMiBFromCommand = Number(process.hrtime.bigint() - started) / 1e9
  const middleMiB = readSeconds(image, Math.floor(dataBytes / 2 / mib) * mib + 5 * mib, mib)
  const result = JSON.parse(out.stdout) as { hydratorPid: number | null }
  if (result.hydratorPid !== null) { try { process.kill(result.hydratorPid, 'SIGKILL') } catch {} }
  for (const offset of [0, Math.floor(dataBytes / 2 / mib) * mib + 5 * mib]) {
    if (!bytesAt(image, offset, mib).equals(bytesAt(source, offset, mib))) throw new Error(`pull --lazy: ${image} reads other bytes than ${source} at ${offset}`)
  }
  return { command, firstMiB, firstMiBFromCommand, middleMiB, trace: out.stderr.split('\n').filter(line => line.startsWith('trace')), loadBefore, loadAfter: loadAverages() }
}
