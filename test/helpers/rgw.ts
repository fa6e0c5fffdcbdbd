/**
 * Test helper: a real S3 server, Ceph RGW on a single-node cluster (scripts/ceph-rgw.sh: a monitor and one
 * BlueStore OSD on a sparse file), started in a temporary directory on free ports, with auth "none" inside
 * the cluster and one S3 user whose keys the tests pass through the standard AWS environment variables. It
 * always stops: the daemons by their pids (the script's stop, then SIGKILL of whatever is left), the
 * directory removed. RGW alone can be killed and restarted (the network-fault tests). Also what the
 * remote tests share: the CLI run with the server's credentials (rgwCli), scratch directories and files
 * of random data.
 */
import { execFile, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import type { ExecutionContext } from 'ava'
import { CliResult, cli, execFileAsync as execCli, repoRoot, waitForExit } from './mount'

const execFileAsync = promisify(execFile)
const script = path.join(repoRoot, 'scripts', 'ceph-rgw.sh')
const startTimeoutMs = 240000

export const rgwAccessKey = 'TESTACCESSKEY'
export const rgwSecretKey = 'TESTSECRETKEY0123456789'

/** A free TCP port on 127.0.0.1 (asked of the kernel, then released). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
}

export class Rgw {
  constructor (readonly dir: string, readonly port: number) {}

  get endpoint (): string { return `http://127.0.0.1:${this.port}` }

  /** The environment a CLI run needs to reach this server: the standard AWS variables. */
  get env (): NodeJS.ProcessEnv {
    return { ...process.env, AWS_ACCESS_KEY_ID: rgwAccessKey, AWS_SECRET_ACCESS_KEY: rgwSecretKey, AWS_REGION: 'us-east-1' }
  }

  private pid (daemon: string): number | null {
    try { return Number(fs.readFileSync(path.join(this.dir, `${daemon}.pid`), 'utf8')) } catch { return null }
  }

  /** SIGKILL of radosgw only (the cluster stays up): the S3 server dies mid-request. */
  async killRgw (): Promise<void> {
    const pid = this.pid('rgw')
    if (pid === null) return
    try { process.kill(pid, 'SIGKILL') } catch {}
    await waitForExit(pid)
  }

  /** Starts radosgw again, as the script does, and waits until it answers. */
  async restartRgw (): Promise<void> {
    const out = fs.openSync(path.join(this.dir, 'log', 'rgw.out'), 'a')
    const child = spawn('radosgw', ['-c', path.join(this.dir, 'ceph.conf'), '-n', 'client.rgw.a', '-f'], { detached: true, stdio: ['ignore', out, out] })
    fs.closeSync(out)
    child.unref()
    fs.writeFileSync(path.join(this.dir, 'rgw.pid'), `${String(child.pid)}\n`)
    for (let waited = 0; waited < startTimeoutMs; waited += 250) {
      if (await answers(this.port)) return
      await new Promise(resolve => setTimeout(resolve, 250))
    }
    throw new Error('radosgw did not answer after a restart')
  }

  async stop (): Promise<void> {
    try { await execFileAsync(script, ['stop', this.dir], { timeout: 60000 }) } catch {}
    for (const daemon of ['rgw', 'osd', 'mgr', 'mon']) {
      const pid = this.pid(daemon)
      if (pid === null) continue
      try { process.kill(pid, 'SIGKILL') } catch {}
      await waitForExit(pid)
    }
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

async function answers (port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/**
 * Starts a fresh RGW. Call stop() in an after.always hook (startRgw stops what it started when the start
 * fails). The OSD's sparse file is 4 GiB (about 300 MiB of memory in all).
 */
export async function startRgw (): Promise<Rgw> {
  const dir = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), 'vdiskfs-rgw-'))
  const rgw = new Rgw(path.join(dir, 'ceph'), await freePort())
  const [monPort, monPortV1] = [await freePort(), await freePort()]
  try {
    await execFileAsync(script, ['start', rgw.dir], {
      timeout: startTimeoutMs,
      env: { ...process.env, RGW_PORT: String(rgw.port), MON_PORT: String(monPort), MON_PORT_V1: String(monPortV1), OSD_SIZE: String(4 * 1024 ** 3), S3_KEY: rgwAccessKey, S3_SECRET: rgwSecretKey }
    })
  } catch (err) {
    await rgw.stop()
    fs.rmSync(dir, { recursive: true, force: true })
    throw new Error(`cannot start Ceph RGW: ${(err as Error).message}`)
  }
  const stop = rgw.stop.bind(rgw)
  rgw.stop = async () => { await stop(); fs.rmSync(dir, { recursive: true, force: true }) }
  return rgw
}

/** The CLI with an RGW's credentials: vd (any exit status, a given environment), ok (fails the test on a non-zero exit; stdout), json (with --json, parsed). */
export function rgwCli (server: () => Rgw): {
  vd: (env: NodeJS.ProcessEnv, ...args: string[]) => Promise<CliResult>
  ok: (t: ExecutionContext, ...args: string[]) => Promise<string>
  json: <T>(t: ExecutionContext, ...args: string[]) => Promise<T>
} {
  const vd = async (env: NodeJS.ProcessEnv, ...args: string[]): Promise<CliResult> => {
    try {
      const { stdout, stderr } = await execCli(cli, args, { encoding: 'utf8', env, maxBuffer: 64 * 1024 * 1024 })
      return { code: 0, stdout, stderr }
    } catch (err) {
      const e = err as { code?: number, stdout?: string, stderr?: string }
      return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
    }
  }
  const ok = async (t: ExecutionContext, ...args: string[]): Promise<string> => {
    const result = await vd(server().env, ...args)
    if (result.code !== 0) t.fail(`vdiskfs ${args.join(' ')} failed: ${result.stderr}`)
    return result.stdout
  }
  const json = async <T>(t: ExecutionContext, ...args: string[]): Promise<T> => JSON.parse(await ok(t, ...args, '--json')) as T
  return { vd, ok, json }
}

/** A temporary directory removed when the test ends. */
export function scratch (t: ExecutionContext, prefix = 'vdiskfs-remote-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** `dir/name`: `sizeMiB` MiB of random bytes (a file, so that pools and hosts can share them). */
export function randomFile (dir: string, name: string, sizeMiB: number): string {
  const file = path.join(dir, name)
  const fd = fs.openSync(file, 'w')
  try {
    for (let i = 0; i < sizeMiB; i++) fs.writeSync(fd, crypto.randomBytes(1024 * 1024))
  } finally { fs.closeSync(fd) }
  return file
}
