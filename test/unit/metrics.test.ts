/**
 * The daemon's measurements (daemon/metrics.ts): wrapped FUSE callbacks still reply what they replied, with
 * the same `this`, and are counted (errors: negative replies); a background job is listed with its progress
 * while it runs and not after, whether it succeeds or fails.
 */
import test from 'ava'
import { DaemonMetrics } from '../../src/daemon/metrics'

test('wrapped operations reply as before and are counted by name', async t => {
  const metrics = new DaemonMetrics()
  t.teardown(() => metrics.stop())
  const operations: Record<string, (...args: any[]) => void> = {
    read (this: unknown, _path: string, _fh: number, buf: Buffer, len: number, _pos: number, cb: (bytes: number) => void) {
      t.is(this, operations)
      setImmediate(() => cb(len === buf.length ? len : -5))
    },
    getattr (_path: string, cb: (code: number, stat?: object) => void) { cb(-2) }
  }
  metrics.measureOperations(operations)
  const buf = Buffer.alloc(4096)
  for (let i = 0; i < 10; i++) t.is(await new Promise<number>(resolve => operations.read('/disks/a.img', 1, buf, 4096, 0, resolve)), 4096)
  t.is(await new Promise<number>(resolve => operations.read('/disks/a.img', 1, buf, 100, 0, resolve)), -5)
  const replies = await new Promise<unknown[]>(resolve => operations.getattr('/nope', (...args: unknown[]) => resolve(args)))
  t.deepEqual(replies, [-2])
  const { operations: report, windowSeconds } = metrics.operationReport()
  t.true(windowSeconds > 0)
  t.is(report.read.count, 11)
  t.is(report.read.errors, 1)
  t.true(report.read.perSecond > 0)
  const latency = report.read.latency
  t.truthy(latency)
  if (latency !== null) t.true(latency.p50Ms > 0 && latency.p50Ms <= latency.p90Ms && latency.p90Ms <= latency.p99Ms)
  t.is(report.getattr.errors, 1)
  t.false('write' in report, 'operations that never ran are left out')
})

test('a job is listed with its progress while it runs, and not after', async t => {
  const metrics = new DaemonMetrics()
  t.teardown(() => metrics.stop())
  const progress = { done: 0, total: 4 }
  let finish = (): void => {}
  const running = metrics.job('verify', async () => await new Promise<void>(resolve => { finish = resolve }), () => progress)
  progress.done = 3
  const [job] = metrics.runningJobs()
  t.is(job.name, 'verify')
  t.deepEqual(job.progress, { done: 3, total: 4 })
  t.true(job.startedMs !== null && job.startedMs <= Date.now())
  finish()
  await running
  t.deepEqual(metrics.runningJobs(), [])
  await t.throwsAsync(metrics.job('gc', async () => { throw new Error('no') }), { message: 'no' })
  t.deepEqual(metrics.runningJobs(), [])
})
