/**
 * Test helper: a real vdiskfs mount served by a separate daemon process, started through the real CLI
 * (`bin/vdiskfs mount`), and torn down without leaks: loop devices detached, the daemon killed by pid,
 * the mount removed with fusermount3 -uz, the temporary directory deleted.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import type { ExecutionContext } from 'ava'
import { socketPathsFor } from '../../src/control/protocol'
import { processExited } from '../../src/cli/processes'

export const execFileAsync = promisify(execFile)
export const repoRoot = path.resolve(__dirname, '..', '..', '..')
export const cli = path.join(repoRoot, 'bin', 'vdiskfs')

export interface CliResult { code: number, stdout: string, stderr: string }

/** Runs bin/vdiskfs; never throws for a non-zero exit. */
export async function vdiskfs (...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await execFileAsync(cli, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number, stdout?: string, stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

export async function run (command: string, args: string[], options: { input?: string } = {}): Promise<string> {
  const { stdout } = await execFileAsync(command, args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, ...options })
  return stdout
}

export class TestMount {
  pid = 0
  private readonly loopMounts: string[] = []

  constructor (readonly dir: string, readonly pool: string, readonly mnt: string) {}

  image (kind: 'disks' | 'backups' | 'clones', name: string): string {
    return path.join(this.mnt, kind, name)
  }

  async mount (...extra: string[]): Promise<void> {
    const result = await vdiskfs('mount', this.pool, this.mnt, ...extra)
    if (result.code !== 0) throw new Error(`mount failed: ${result.stderr}`)
    this.pid = Number(fs.readFileSync(path.join(this.pool, 'daemon.pid'), 'utf8'))
  }

  async umount (): Promise<void> {
    const result = await vdiskfs('umount', this.mnt)
    if (result.code !== 0) throw new Error(`umount failed: ${result.stderr}`)
  }

  /** SIGTERM: the daemon commits and unmounts, without the sealing `vdiskfs umount` asks for. */
  async terminate (): Promise<void> {
    process.kill(this.pid, 'SIGTERM')
    if (!await waitForExit(this.pid)) throw new Error('the daemon did not exit on SIGTERM')
  }

  /**
   * SIGKILL of the daemon, then the dead mount is removed. A FUSE 3 mount's holder is killed first: it
   * would otherwise start a daemon that takes the mount over (takeoverAfterKill tests that).
   */
  async kill (): Promise<void> {
    this.killHolders()
    try { process.kill(this.pid, 'SIGKILL') } catch {}
    await waitForExit(this.pid)
    spawnSync('fusermount3', ['-uz', this.mnt])
  }

  /** Pids of the FUSE 3 holders keeping this mount (native/fuse3/vdiskfs_holder.c; its command line names the pool). */
  holderPids (): number[] {
    return holderPidsOf(this.pool)
  }

  /** SIGKILL of this mount's holders: a daemon killed after this leaves a dead mount (ENOTCONN), no takeover. */
  killHolders (): void {
    for (const pid of this.holderPids()) { try { process.kill(pid, 'SIGKILL') } catch {} }
  }

  /**
   * SIGKILL of the daemon alone, on a FUSE 3 mount with a holder: waits (up to timeoutMs) until the
   * daemon the holder started has taken the mount over (a new pid in daemon.pid, alive) and returns it.
   */
  async takeoverAfterKill (timeoutMs = 60000): Promise<number> {
    const old = this.pid
    const takeovers = (): number => {
      try { return fs.readFileSync(path.join(this.pool, 'daemon.log'), 'utf8').match(/took over the mount/g)?.length ?? 0 } catch { return 0 }
    }
    const before = takeovers()
    process.kill(old, 'SIGKILL')
    const pid = await this.takenOverFrom(old, timeoutMs)
    // Serving, not only started: a daemon killed again before it took the mount over (a loaded machine)
    // is not the takeover the caller asked for.
    for (let waited = 0; takeovers() === before; waited += 50) {
      if (waited >= timeoutMs) throw new Error(`daemon ${pid} did not take the mount over within ${timeoutMs} ms`)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    return pid
  }

  /** Waits (up to timeoutMs) until daemon `old` has died and one the holder started has taken the mount over; returns its pid. */
  async takenOverFrom (old: number, timeoutMs = 60000): Promise<number> {
    await waitForExit(old)
    for (let waited = 0; waited < timeoutMs; waited += 50) {
      let pid = 0
      try { pid = Number(fs.readFileSync(path.join(this.pool, 'daemon.pid'), 'utf8')) } catch {}
      if (pid !== 0 && pid !== old) {
        let alive = true
        try { process.kill(pid, 0) } catch { alive = false }
        if (alive) { this.pid = pid; return pid }
      }
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    throw new Error(`no daemon took the mount over within ${timeoutMs} ms`)
  }

  /** Loop-mounts an image at a new directory; undone by cleanup. */
  async loopMount (image: string, options = 'loop'): Promise<string> {
    const target = fs.mkdtempSync(path.join(this.dir, 'loop-'))
    await run('mount', ['-o', options, image, target])
    this.loopMounts.push(target)
    return target
  }

  async loopUmount (target: string): Promise<void> {
    await run('umount', [target])
    this.loopMounts.splice(this.loopMounts.indexOf(target), 1)
  }

  async cleanup (beforeRemove?: () => void): Promise<void> {
    for (const target of this.loopMounts.reverse()) spawnSync('umount', ['-l', target])
    // Detach any loop device still backed by a file under this mount.
    const loops = spawnSync('losetup', ['-a', '-n', '-O', 'NAME,BACK-FILE', '--raw'], { encoding: 'utf8' }).stdout ?? ''
    for (const line of loops.split('\n')) {
      const [device, file] = line.trim().split(/\s+/, 2)
      if (file !== undefined && (file.startsWith(this.mnt + '/') || file.startsWith(this.dir + '/'))) spawnSync('losetup', ['-d', device])
    }
    this.killHolders()
    // The daemon now serving (after a takeover, not the one this.pid names), if daemon.pid names a live
    // daemon of this pool (a pid file left by a killed daemon may name a reused pid).
    let current = 0
    try {
      const pid = Number(fs.readFileSync(path.join(this.pool, 'daemon.pid'), 'utf8'))
      if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(this.pool)) current = pid
    } catch {}
    for (const pid of new Set([this.pid, current])) {
      if (pid === 0 || Number.isNaN(pid)) continue
      try { process.kill(pid, 'SIGKILL') } catch {}
      await waitForExit(pid)
    }
    spawnSync('fusermount3', ['-uz', this.mnt])
    // A killed daemon leaves its control socket behind: remove it (the daemon's socket of a
    // mountpoint is found the way the CLI finds it).
    for (const socket of socketPathsFor(this.mnt)) fs.rmSync(socket, { force: true })
    beforeRemove?.()
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

/**
 * The daemon log of `pool` once every pattern matches it, waiting up to `timeoutMs`: the daemon appends
 * its lines asynchronously (src/daemon/daemon-log.ts), so a line can land just after the reply it
 * explains. Returns the log as it is then (the caller's t.regex shows what is missing).
 */
export async function logMatching (pool: string, patterns: RegExp[], timeoutMs = 10000): Promise<string> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let log = ''
    try { log = fs.readFileSync(path.join(pool, 'daemon.log'), 'utf8') } catch {}
    if (patterns.every(p => p.test(log)) || Date.now() > deadline) return log
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

export async function waitForExit (pid: number, timeoutMs = 20000): Promise<boolean> {
  for (let waited = 0; waited < timeoutMs; waited += 25) {
    if (processExited(pid)) return true
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  return false
}

/** A fresh pool and mountpoint under a temporary directory, mounted; cleaned up after the test. */
export async function withMount (t: ExecutionContext, ...extra: string[]): Promise<TestMount> {
  const dir = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), 'vdiskfs-test-'))
  const mount = new TestMount(dir, path.join(dir, 'pool'), path.join(dir, 'mnt'))
  fs.mkdirSync(mount.mnt)
  t.teardown(async () => await mount.cleanup())
  await mount.mount(...extra)
  return mount
}

/**
 * withMount with `env` in the daemon's environment (set for the mount command only: serial tests; the
 * variables are restored after, whatever happens).
 */
export async function withMountEnv (t: ExecutionContext, env: Record<string, string>, ...extra: string[]): Promise<TestMount> {
  const saved = Object.fromEntries(Object.keys(env).map(name => [name, process.env[name]]))
  Object.assign(process.env, env)
  try {
    return await withMount(t, ...extra)
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name]
      else process.env[name] = value
    }
  }
}

export function sha256 (file: string): string {
  return execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0]
}

export function isMounted (mnt: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some(line => line.split(' ')[4] === mnt)
}

/** Pids of the holders keeping a mount of `pool` (native/fuse3/vdiskfs_holder.c; its command line names the pool). */
export function holderPidsOf (pool: string): number[] {
  const pids: number[] = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let args: string[]
    try { args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0') } catch { continue }
    if (path.basename(args[0] ?? '') === 'vdiskfs-holder' && args.includes(pool)) pids.push(Number(entry))
  }
  return pids
}
