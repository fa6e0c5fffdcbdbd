/**
 * The lazy pull alone (issue #22's bar: `pull --lazy` of a pushed 1 GiB backup returns, and its first MiB
 * reads, within 2 s of the command), for measuring changes to it: `node dist/bench/lazy-pull.js`. Starts
 * its own RGW, builds the same disk as bench/remote.ts (an ext4 of VDISKFS_BENCH_REMOTE_MIB MiB, default
 * 1024, filled with a copy of /usr), pushes its backup once, then pulls it lazily
 * VDISKFS_BENCH_LAZY_RUNS times (default 3), each into a new pool, printing for each: the command's wall
 * time, the first MiB's, the load average, and the command's own trace (VDISKFS_TRACE=1: each step's
 * time since the process started) and the daemon's (its log's `lazy pull timing` line).
 * VDISKFS_BENCH_LAZY_NODE_OPTIONS: NODE_OPTIONS for the mounts of the pulls' pools (their daemons).
 * Each run starts after a `sync` (the push's writes, and the run before's, flushed), as in bench/remote.ts.
 * With VDISKFS_BENCH_LAZY_WAIT=DIR, after the runs it waits for DIR/go (run again: removes it), DIR/stop
 * (ends), so that a rebuilt dist can be measured against the same store without building it again.
 */
import fs from 'node:fs'
import path from 'node:path'
import { startRgw } from '../test/helpers/rgw'
import { BenchPools, buildUsrDisk, cli, lazyPull, mib, workRoot } from './remote-common'
import { execFileSync } from 'node:child_process'

const runs = Number(process.env.VDISKFS_BENCH_LAZY_RUNS ?? 3)
const waitDir = process.env.VDISKFS_BENCH_LAZY_WAIT

async function main (): Promise<void> {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'lazy-'))
  const rgw = await startRgw()
  const pools = new BenchPools(dir, rgw.env)
  const remote = { name: 'bench', url: 's3://vdiskfs-bench/store', endpoint: rgw.endpoint }
  const vdiskfs = (...args: string[]): string => execFileSync(cli, args, { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
  // VDISKFS_BENCH_LAZY_NODE_OPTIONS: NODE_OPTIONS for the mounts of the pulls' pools (a --require that profiles the daemon, say).
  const options = process.env.VDISKFS_BENCH_LAZY_NODE_OPTIONS
  try {
    const a = pools.mount('source', remote)
    const disk = path.join(a, 'disks', 'bench.img')
    buildUsrDisk(dir, disk)
    vdiskfs('backup', disk, 'b1')
    vdiskfs('sync', a)
    const pushed = JSON.parse(vdiskfs('push', path.join(a, 'backups', 'b1.img'), 'bench', '--json')) as { id: string, chunksUploaded: number }
    console.log(`pushed ${pushed.id}: ${pushed.chunksUploaded} chunks`)
    // The push's writes (RGW's OSD, the source pool) flushed before the first run, as each run's are before the next.
    execFileSync('sync')
    let n = 0
    const once = (): void => {
      const name = `lazy-${n++}`
      const mnt = pools.mount(name, remote, options === undefined ? {} : { NODE_OPTIONS: options })
      const run = lazyPull(rgw.env, mnt, 'bench', pushed.id, 'lazy', path.join(a, 'backups', 'b1.img'))
      const daemonLog = fs.readFileSync(path.join(pools.pool(name), 'daemon.log'), 'utf8').split('\n').filter(line => line.includes('lazy pull timing') || line.includes('import: backup') || line.includes('references applied'))
      console.log(`run ${n}: command ${run.command.toFixed(2)} s, first MiB ${run.firstMiB.toFixed(2)} s, from the command ${run.firstMiBFromCommand.toFixed(2)} s, middle MiB ${run.middleMiB.toFixed(2)} s; load ${run.loadBefore} before, ${run.loadAfter} after`)
      console.log(run.trace.map(line => '  ' + line).join('\n'))
      console.log(daemonLog.map(line => '  daemon: ' + line).join('\n'))
      pools.unmount(mnt)
      execFileSync('sync')
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
    pools.unmountAll()
    await rgw.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(`bench lazy-pull: ${(err as Error).message}`); process.exitCode = 1 })
