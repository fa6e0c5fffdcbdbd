/**
 * Test helper for xfstests' fsx and fsstress (third_party/xfstests/, built by `make xfstests-tools` into
 * build/xfstests/): running one of them with a time limit (killed by pid, its process group with it),
 * and the churn beside it: `vdiskfs sync`, `vdiskfs backup` under new names (old ones removed) and
 * `vdiskfs gc`, each in its own loop every few hundred ms, until stopped; and, since each CLI call costs
 * half a second of node start-up, a fast loop making the same requests straight over the control socket
 * (src/control/client.ts's call, as the CLI does): a backup every ~50 ms, a sync every 3rd and a gc
 * every 5th turn, old backups removed.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import type { ExecutionContext } from 'ava'
import { call } from '../../src/control/client'
import { repoRoot, vdiskfs, waitForExit } from './mount'

export const fsxBin = path.join(repoRoot, 'build', 'xfstests', 'fsx')
export const fsstressBin = path.join(repoRoot, 'build', 'xfstests', 'fsstress')

/** Fails the test early, with the make target to run, when the tools were not built. */
export function requireTools (t: ExecutionContext): boolean {
  for (const bin of [fsxBin, fsstressBin]) {
    if (!fs.existsSync(bin)) {
      t.fail(`${bin} is missing: run make xfstests-tools (make test does)`)
      return false
    }
  }
  return true
}

export interface ProgramResult { code: number | null, signal: NodeJS.Signals | null, output: string, ms: number, timedOut: boolean }

/**
 * Runs a program in its own process group; after timeoutMs the group is killed (SIGKILL) and the result
 * says so. Output (stdout and stderr interleaved) is kept up to its last 4 MiB.
 */
export async function runProgram (command: string, args: string[], timeoutMs: number, cwd?: string): Promise<ProgramResult> {
  const started = Date.now()
  const child = spawn(command, args, { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const keep = (chunk: Buffer): void => { output += chunk.toString('utf8'); if (output.length > 8 << 20) output = output.slice(-(4 << 20)) }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  let timedOut = false
  const killGroup = (): void => { if (child.pid !== undefined) { try { process.kill(-child.pid, 'SIGKILL') } catch {} } }
  const timer = setTimeout(() => { timedOut = true; killGroup() }, timeoutMs)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => {
    child.on('error', err => { output += `spawn error: ${String(err)}\n`; resolve([null, null]) })
    child.on('close', (c, s) => resolve([c, s]))
  })
  clearTimeout(timer)
  // fsstress forks its workers: none may outlive the run.
  killGroup()
  if (child.pid !== undefined) await waitForExit(child.pid, 5000)
  return { code, signal, output, ms: Date.now() - started, timedOut }
}

export function tail (text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n')
}

export interface ChurnStats { syncs: number, backups: number, removed: number, gcs: number, fast: { backups: number, removed: number, syncs: number, gcs: number }, failures: string[] }

/**
 * `vdiskfs sync MNT`, `vdiskfs backup IMAGE PREFIX-N` (keeping the last `keep` of them: older ones are
 * removed with `vdiskfs rm`, so gc has something to free) and `vdiskfs gc MNT`, each in its own loop,
 * pausing pauseMs between calls, until stop() is called; stop() resolves to the counts and to every
 * command that failed (non-zero exit), with its output.
 */
export function startChurn (mnt: string, image: string, prefix: string, options: { pauseMs?: number, keep?: number, backupEveryMs?: number, sync?: boolean, gc?: boolean, fast?: boolean } = {}): { stop: () => Promise<ChurnStats>, backups: string[] } {
  const pauseMs = options.pauseMs ?? 250
  const keep = options.keep ?? 3
  const stats: ChurnStats = { syncs: 0, backups: 0, removed: 0, gcs: 0, fast: { backups: 0, removed: 0, syncs: 0, gcs: 0 }, failures: [] }
  const live: string[] = []
  const all: string[] = []
  let stopped = false
  const pause = async (): Promise<void> => await new Promise(resolve => setTimeout(resolve, pauseMs))
  const check = (what: string, result: { code: number, stdout: string, stderr: string }): boolean => {
    if (result.code !== 0) stats.failures.push(`${what}: exit ${result.code}: ${(result.stderr + result.stdout).trim()}`)
    return result.code === 0
  }
  const loops: Array<Promise<void>> = []
  if (options.sync !== false) {
    loops.push((async () => {
      while (!stopped) { if (check('sync', await vdiskfs('sync', mnt))) stats.syncs++; await pause() }
    })())
  }
  if (options.backupEveryMs !== undefined) {
    // A `vdiskfs backup` started every backupEveryMs, whether or not the previous one has ended.
    const every = options.backupEveryMs
    loops.push((async () => {
      const pending: Array<Promise<void>> = []
      for (let n = 0; !stopped; n++) {
        const name = `${prefix}-${n}`
        pending.push(vdiskfs('backup', image, name).then(result => {
          if (check(`backup ${image} ${name}`, result)) { stats.backups++; all.push(path.join(mnt, 'backups', `${name}.img`)) }
        }))
        await new Promise(resolve => setTimeout(resolve, every))
      }
      await Promise.all(pending)
    })())
  } else {
    loops.push((async () => {
      let n = 0
      while (!stopped) {
        const name = `${prefix}-${n++}`
        if (check(`backup ${image} ${name}`, await vdiskfs('backup', image, name))) {
          stats.backups++
          const file = path.join(mnt, 'backups', `${name}.img`)
          live.push(file)
          all.push(file)
          while (live.length > keep) {
            const old = live.shift() as string
            if (check(`rm ${old}`, await vdiskfs('rm', old))) stats.removed++
          }
        }
        await pause()
      }
    })())
  }
  if (options.gc !== false) {
    loops.push((async () => {
      while (!stopped) { if (check('gc', await vdiskfs('gc', mnt))) stats.gcs++; await pause() }
    })())
  }
  if (options.fast !== false) {
    const kind = ({ disks: 'disk', clones: 'clone' } as Record<string, 'disk' | 'clone'>)[path.basename(path.dirname(image))]
    const sourceName = path.basename(image)
    const fastLive: string[] = []
    const request = async (what: string, sent: () => Promise<unknown>): Promise<boolean> => {
      try { await sent(); return true } catch (err) { stats.failures.push(`${what} (control socket): ${String(err)}`); return false }
    }
    loops.push((async () => {
      for (let n = 0; !stopped; n++) {
        const name = `${prefix}-fast-${n}.img`
        if (await request(`backup ${sourceName} ${name}`, async () => await call(mnt, 'backup', { sourceKind: kind, sourceName, name }))) {
          stats.fast.backups++
          fastLive.push(name)
          while (fastLive.length > keep) {
            const old = fastLive.shift() as string
            if (await request(`rm ${old}`, async () => await call(mnt, 'rm', { targetKind: 'backup', targetName: old }))) stats.fast.removed++
          }
        }
        if (n % 3 === 1 && await request('sync', async () => await call(mnt, 'sync'))) stats.fast.syncs++
        if (n % 5 === 2 && await request('gc', async () => await call(mnt, 'gc'))) stats.fast.gcs++
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    })())
  }
  return {
    backups: all,
    stop: async () => { stopped = true; await Promise.all(loops); return stats }
  }
}
