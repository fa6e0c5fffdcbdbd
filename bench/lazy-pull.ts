/**
 * The lazy pull alone (issue #22's bar: `pull --lazy` of a pushed 1 GiB backup returns, and its first MiB
 * reads, within 2 s of the command), for measuring changes to it: `node dist/bench/lazy-pull.js`. Starts
 * its own RGW, builds the same disk as bench/remote.ts (an ext4 of VDISKFS_BENCH_REMOTE_MIB MiB, default
 * 1024, filled with a copy of /usr), pushes its backup once, then pulls it lazily
 * VDISKFS_BENCH_LAZY_RUNS times (default 3), each into a new pool, printing for each: the command's wall
 * time, the first MiB's, the load average, and the command's own trace (VDISKFS_TRACE=1: each step's
 * time since the process started) and the daemon's (its log's `lazy pull timing` line).
 * VDISKFS_BENCH_LAZY_NODE_OPTIONS: NODE_OPTIONS for the mounts of the pulls' pools (their daemons).
 * With VDISKFS_BENCH_LAZY_WAIT=DIR, after the runs it waits for DIR/go (run again: removes it), DIR/stop
 * (ends), so that a rebuilt dist can be measured against the same store without building it again.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { startRgw } from '../test/helpers/rgw'

const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const workRoot = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
const mib = 1024 * 1024
const dataBytes = Number(process.env.VDISKFS_BENCH_REMOTE_MIB ?? 1024) * mib
const runs = Number(process.env.VDISKFS_BENCH_LAZY_RUNS ?? 3)
const waitDir = process.env.VDISKFS_BENCH_LAZY_WAIT

function load (): string { return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ') }

function readSeconds (file: string, offset: number, bytes: number): number {
  const started = process.hrtime.bigint()
  const fd = fs.openSync(file, 'r')
  try {
    const buffer = Buffer.alloc(bytes)
    for (let done = 0; done < bytes;) {
      const n = fs.readSync(fd, buffer, done, bytes - done, offset + done)
      if (n === 0) break
      done += n
    }
  } finally { fs.closeSync(fd) }
  return Number(process.hrtime.bigint() - started) / 1e9
}

async function main (): Promise<void> {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'lazy-'))
  const mounts: string[] = []
  const rgw = await startRgw()
  const vdiskfs = (...args: string[]): string => execFileSync(cli, args, { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
  const pool = (name: string): string => {
    const mnt = path.join(dir, `${name}-mnt`)
    fs.mkdirSync(mnt, { recursive: true })
    // VDISKFS_BENCH_LAZY_NODE_OPTIONS: NODE_OPTIONS for the mounts of the pulls' pools (a --require that profiles the daemon, say).
    const options = process.env.VDISKFS_BENCH_LAZY_NODE_OPTIONS
    execFileSync(cli, ['mount', path.join(dir, `${name}-pool`), mnt], { encoding: 'utf8', env: options === undefined || name === 'source' ? rgw.env : { ...rgw.env, NODE_OPTIONS: options } })
    mounts.push(mnt)
    vdiskfs('remote', 'add', mnt, 'bench', 's3://vdiskfs-bench/store', '--endpoint', rgw.endpoint)
    return mnt
  }
  try {
    const a = pool('source')
    const built = path.join(dir, 'usr.img')
    const fsMount = path.join(dir, 'usr-mnt')
    fs.mkdirSync(fsMount)
    execFileSync('truncate', ['-s', String(dataBytes), built])
    execFileSync('mkfs.ext4', ['-q', '-F', built])
    execFileSync('mount', ['-o', 'loop', built, fsMount])
    try {
      try { execFileSync('cp', ['-a', '/usr/.', fsMount], { stdio: 'ignore' }) } catch {}
    } finally { execFileSync('umount', [fsMount]) }
    const disk = path.join(a, 'disks', 'bench.img')
    execFileSync('cp', ['--sparse=always', built, disk])
    fs.rmSync(built)
    vdiskfs('backup', disk, 'b1')
    vdiskfs('sync', a)
    const pushed = JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b1.img'), 'bench', '--json')) as { id: string, chunksUploaded: number }
    console.log(`pushed ${pushed.id}: ${pushed.chunksUploaded} chunks`)
    let n = 0
    const once = (): void => {
      const mnt = pool(`lazy-${n++}`)
      const loadBefore = load()
      const started = process.hrtime.bigint()
      const out = spawnSync(cli, ['pull', mnt, 'bench', pushed.id, 'lazy', '--lazy', '--json'], { encoding: 'utf8', env: { ...rgw.env, VDISKFS_TRACE: '1' }, maxBuffer: 64 * mib })
      const command = Number(process.hrtime.bigint() - started) / 1e9
      if (out.status !== 0) throw new Error(`pull --lazy failed: ${out.stderr}`)
      const image = path.join(mnt, 'backups', 'lazy.img')
      const first = readSeconds(image, 0, mib)
      const fromCommand = Number(process.hrtime.bigint() - started) / 1e9
      const middle = readSeconds(image, Math.floor(dataBytes / 2 / mib) * mib + 5 * mib, mib)
      const result = JSON.parse(out.stdout) as { hydratorPid: number | null }
      if (result.hydratorPid !== null) { try { process.kill(result.hydratorPid, 'SIGKILL') } catch {} }
      const daemonLog = fs.readFileSync(path.join(dir, `lazy-${n - 1}-pool`, 'daemon.log'), 'utf8').split('\n').filter(line => line.includes('lazy pull timing') || line.includes('import: backup'))
      console.log(`run ${n}: command ${command.toFixed(2)} s, first MiB ${first.toFixed(2)} s, from the command ${fromCommand.toFixed(2)} s, middle MiB ${middle.toFixed(2)} s; load ${loadBefore} before, ${load()} after`)
      console.log(out.stderr.split('\n').filter(line => line.startsWith('trace')).map(line => '  ' + line).join('\n'))
      console.log(daemonLog.map(line => '  daemon: ' + line).join('\n'))
      try { execFileSync(cli, ['umount', mnt], { stdio: 'ignore', timeout: 120000 }) } catch {}
      mounts.splice(mounts.indexOf(mnt), 1)
    }
    for (let i = 0; i < runs; i++) once()
    if (waitDir !== undefined) {
      fs.mkdirSync(waitDir, { recursive: true })
      console.log(`waiting: touch ${waitDir}/go to run again, ${waitDir}/stop to end`)
      for (;;) {
        if (fs.existsSync(path.join(waitDir, 'stop'))) break
        if (fs.existsSync(path.join(waitDir, 'go'))) {
          const times = Number(fs.readFileSync(path.join(waitDir, 'go'), 'utf8').trim() || '1')
          fs.rmSync(path.join(waitDir, 'go'))
          for (let i = 0; i < times; i++) { try { once() } catch (err) { console.log(`run failed: ${(err as Error).message}`) } }
          console.log('waiting')
        }
        await new Promise(resolve => setTimeout(resolve, 500))
      }
    }
  } finally {
    for (const mnt of mounts.reverse()) { try { execFileSync(cli, ['umount', mnt], { stdio: 'ignore', timeout: 120000 }) } catch {} }
    await rgw.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(`bench lazy-pull: ${(err as Error).message}`); process.exitCode = 1 })
