/**
 * Plain against encrypted push, alternated, for measuring the encrypted push (issue #22's bar: 0.8x of one
 * SDK PUT of the same size): `node dist/bench/remote-push.js`. Starts its own RGW, builds the disk of
 * bench/remote.ts (VDISKFS_BENCH_REMOTE_MIB, default 1024), backs it up, then pushes it
 * VDISKFS_BENCH_PUSH_RUNS times (default 2) to a new plain store and to a new encrypted store in turns,
 * and PUTs one object of its size through the SDK between them; prints each push's wall time, its CLI's
 * CPU (user + system, every thread, /usr/bin/time), the PUT's, and the load average.
 * VDISKFS_BENCH_PUSH_PROF=DIR: each push's CLI profiled (node --cpu-prof) into DIR/REMOTE.
 * VDISKFS_BENCH_PUSH_WORKERS=1: each run also pushes to a third, encrypted store with the sealing in the
 * CLI's worker threads (VDISKFS_PUSH_SEAL_WORKERS=1, how it sealed before), after the encrypted push.
 */
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { rgwAccessKey, rgwSecretKey, startRgw } from '../test/helpers/rgw'
import { BenchPools, buildUsrDisk, cli, dataBytes, loadAverages, mib, workRoot } from './remote-common'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'
const runs = Number(process.env.VDISKFS_BENCH_PUSH_RUNS ?? 2)
/** VDISKFS_BENCH_PUSH_PROF=DIR: the pushes' CLIs profiled (node --cpu-prof, every thread) into DIR. */
const profDir = process.env.VDISKFS_BENCH_PUSH_PROF
const alsoWorkers = process.env.VDISKFS_BENCH_PUSH_WORKERS === '1'

async function main (): Promise<void> {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'push-'))
  const rgw = await startRgw()
  const pools = new BenchPools(dir, rgw.env)
  const vdiskfs = (...args: string[]): string => execFileSync(cli, args, { encoding: 'utf8', env: rgw.env, maxBuffer: 64 * mib })
  try {
    const a = pools.mount('source', { name: 'bench', url: 's3://vdiskfs-bench/warm', endpoint: rgw.endpoint })
    const disk = path.join(a, 'disks', 'bench.img')
    buildUsrDisk(dir, disk)
    vdiskfs('backup', disk, 'b1')
    vdiskfs('sync', a)
    const keyFile = path.join(dir, 'bench.key')
    vdiskfs('key', 'create', keyFile)
    const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: rgwAccessKey, secretAccessKey: rgwSecretKey }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' })
    const body = crypto.randomBytes(dataBytes)
    const timeFile = path.join(dir, 'time.out')
    const push = (remote: string, env: NodeJS.ProcessEnv = {}): string => {
      const started = process.hrtime.bigint()
      const load = loadAverages()
      const command = profDir === undefined ? [cli] : [process.execPath, '--cpu-prof', `--cpu-prof-dir=${path.join(profDir, remote)}`, cli]
      execFileSync('/usr/bin/time', ['-f', '%U %S', '-o', timeFile, ...command, 'push', path.join(a, 'backups', 'b1.img'), remote, '--json'], { encoding: 'utf8', env: { ...rgw.env, ...env }, maxBuffer: 64 * mib })
      const seconds = Number(process.hrtime.bigint() - started) / 1e9
      const [user, system] = fs.readFileSync(timeFile, 'utf8').trim().split('\n').pop()?.split(' ').map(Number) ?? [0, 0]
      return `${seconds.toFixed(2)} s (${(dataBytes / 1e6 / seconds).toFixed(1)} MB/s), CLI CPU ${(user + system).toFixed(2)} s, load ${load}`
    }
    for (let run = 1; run <= runs; run++) {
      vdiskfs('remote', 'add', a, `plain${run}`, `s3://vdiskfs-bench/plain${run}`, '--endpoint', rgw.endpoint)
      vdiskfs('remote', 'add', a, `sealed${run}`, `s3://vdiskfs-bench/sealed${run}`, '--endpoint', rgw.endpoint, '--key', keyFile)
      execFileSync('sync')
      console.log(`run ${run}: plain push ${push(`plain${run}`)}`)
      execFileSync('sync')
      const started = process.hrtime.bigint()
      const load = loadAverages()
      await client.send(new PutObjectCommand({ Bucket: 'vdiskfs-bench', Key: `baseline${run}`, Body: body }))
      const seconds = Number(process.hrtime.bigint() - started) / 1e9
      console.log(`run ${run}: one ${dataBytes / mib} MiB PUT ${seconds.toFixed(2)} s (${(dataBytes / 1e6 / seconds).toFixed(1)} MB/s), load ${load}`)
      execFileSync('sync')
      console.log(`run ${run}: encrypted push ${push(`sealed${run}`)}`)
      if (alsoWorkers) {
        vdiskfs('remote', 'add', a, `workers${run}`, `s3://vdiskfs-bench/workers${run}`, '--endpoint', rgw.endpoint, '--key', keyFile)
        execFileSync('sync')
        console.log(`run ${run}: encrypted push, sealed in worker threads ${push(`workers${run}`, { VDISKFS_PUSH_SEAL_WORKERS: '1' })}`)
      }
    }
    client.destroy()
  } finally {
    pools.unmountAll()
    await rgw.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(`bench remote-push: ${(err as Error).message}`); process.exitCode = 1 })
