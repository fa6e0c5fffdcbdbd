/**
 * Issue #18: a thread-safe function against a shared ring for getting a request from native threads to
 * the JavaScript thread and its reply back (docs/TRANSPORT.md, "A thread-safe function, not a shared
 * ring"). Drives the standalone addon bench/handoff/handoff.c (built by `make bench-handoff`; its header
 * describes both mechanisms): 1 and 4 producer threads, 1 and 16 requests in flight per thread, each a
 * 4 KiB READ record whose reply carries 4 KiB of data. Per mechanism and configuration: requests/s,
 * round-trip latency (median, p99, measured by the producer threads), and the JavaScript thread's CPU time
 * per request (getrusage RUSAGE_THREAD) beside the whole process's. Medians of 3 runs; the mechanisms
 * alternate within each repetition, so they share the machine's load.
 *
 * Usage: node dist/bench/handoff.js [--seconds S] [--reps N]
 * Writes bench/results/handoff-latest.json and .md.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

const repoRoot = path.resolve(__dirname, '..', '..')
const addonPath = path.join(repoRoot, 'bench', 'handoff', 'build', 'handoff.node')

interface HandoffAddon {
  sharedSize: number
  start: (mech: number, threads: number, depth: number, dispatch: (...args: unknown[]) => void, onDone: () => void) => void
  stop: () => void
  finish: () => { requests: number, mismatches: number, latencies: Uint32Array }
  aReply: (handle: unknown, data: Buffer, length: number) => void
  ringInit: (shared: Uint8Array, drain: () => void) => void
  ringWake: (producer: number) => void
  threadCpuUs: () => [number, number]
  probeNotify: (word: Int32Array) => void
  probeResult: () => number
}

// The shared buffer's layout, as bench/handoff/handoff.c.
const RING = 256
const CELL_U32 = 16
const CELLS_OFF = 64
const MAX_PRODUCERS = 8
const MAX_DEPTH = 16
const DATA_SIZE = 4096
const DONE_OFF = CELLS_OFF + RING * CELL_U32 * 4
const REPLY_OFF = DONE_OFF + MAX_PRODUCERS * 64
const DATA_OFF = REPLY_OFF + MAX_PRODUCERS * MAX_DEPTH * 4
const OP_READ = 7

// ring: replies go back through the shared buffer, one ringWake() per drain (a transport would have a native
// thread do their fuse_reply_*); ring + reply call: one ringWake(p) per reply, as an engine that answers
// each request in its own callback would call the addon per reply.
type Mechanism = 'tsfn' | 'ring' | 'ring + reply call'
const mechanisms: Mechanism[] = ['tsfn', 'ring', 'ring + reply call']
const configs = [{ threads: 1, depth: 1 }, { threads: 4, depth: 1 }, { threads: 1, depth: 16 }, { threads: 4, depth: 16 }]

interface Run { requestsPerSecond: number, medianUs: number, p99Us: number, jsCpuUsPerRequest: number, jsUserUsPerRequest: number, jsSystemUsPerRequest: number, processCpuUsPerRequest: number, recordsPerWake: number | null, mismatches: number }

function argument (name: string, fallback: number): number {
  const at = process.argv.indexOf(name)
  return at >= 0 ? Number(process.argv[at + 1]) : fallback
}

const median = (values: number[]): number => { const s = [...values].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] }
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const uptime = (): string => { try { return execFileSync('uptime', { encoding: 'utf8' }).trim() } catch { return `load average ${os.loadavg().map(l => l.toFixed(2)).join(', ')}` } }

async function main (): Promise<void> {
  if (!fs.existsSync(addonPath)) throw new Error(`${addonPath} is missing: make bench-handoff builds it`)
  const addon = require(addonPath) as HandoffAddon
  const seconds = argument('--seconds', 2)
  const reps = argument('--reps', 3)

  // Can Atomics.notify wake a native thread in FUTEX_WAIT on a SharedArrayBuffer's word? (V8 keeps its
  // own waiter list.) The notify is sent 100 ms into a 500 ms wait, the word left at 0.
  const word = new Int32Array(new SharedArrayBuffer(4))
  addon.probeNotify(word)
  await sleep(100)
  const notified = Atomics.notify(word, 0)
  let probe = 0
  while ((probe = addon.probeResult()) === 0) await sleep(50)
  const notifyReachesFutex = probe === 1
  process.stderr.write(`Atomics.notify woke ${notified} V8 waiter(s); the native futex waiter ${notifyReachesFutex ? 'was woken' : probe === 2 ? 'timed out (not woken)' : 'did not wait'}\n`)

  // The JavaScript side's work per request, the same for both: echo the offset into the reply's 4 KiB.
  const replyData = Buffer.alloc(DATA_SIZE)
  let badOps = 0
  const serve = (op: number, fh: number, offset: number): void => {
    if (op !== OP_READ || fh < 2 ** 32) badOps++
    replyData.writeUInt32LE(offset % 2 ** 32, 0)
  }

  // A: per request, dispatch(op, handle, ino, fh, size, offset) and aReply.
  const dispatch = (...args: unknown[]): void => {
    const [op, handle, , fh, size, offset] = args as [number, unknown, number, number, number, number]
    serve(op, fh, offset)
    addon.aReply(handle, replyData, size)
  }

  // B: drain every record present, reply into the shared buffer, one wake-up call (or one per reply).
  const shared = new SharedArrayBuffer(addon.sharedSize)
  const u32 = new Uint32Array(shared)
  const bytes = new Uint8Array(shared)
  let dequeue = 0
  let perReply = false
  let drains = 0
  let drained = 0
  const drainOnce = (): number => {
    let n = 0
    for (;;) {
      const base = CELLS_OFF / 4 + (dequeue % RING) * CELL_U32
      if (Atomics.load(u32, base) !== ((dequeue + 1) >>> 0)) break
      const op = u32[base + 1]
      const tag = u32[base + 2]
      const length = u32[base + 3]
      const id = u32[base + 4]
      const fh = u32[base + 6] * 2 ** 32 + u32[base + 5]
      const offset = u32[base + 8] * 2 ** 32 + u32[base + 7]
      Atomics.store(u32, base, (dequeue + RING) >>> 0)
      dequeue = (dequeue + 1) >>> 0
      const producer = tag >>> 8
      const slot = producer * MAX_DEPTH + (tag & 0xff)
      serve(op, fh, offset)
      bytes.set(length === DATA_SIZE ? replyData : replyData.subarray(0, length), DATA_OFF + slot * DATA_SIZE)
      Atomics.store(u32, REPLY_OFF / 4 + slot, id)
      Atomics.add(u32, DONE_OFF / 4 + producer * 16, 1)
      if (perReply) addon.ringWake(producer)
      n++
    }
    return n
  }
  // After a batch's wake-up, look again before going back to the event loop: a woken producer's next
  // record may already be in (the thread-safe function's dispatch likewise looks at its queue again).
  const drain = (): void => {
    drains++
    for (;;) {
      const n = drainOnce()
      drained += n
      if (n === 0) break
      if (!perReply) addon.ringWake(-1)
    }
  }
  addon.ringInit(bytes, drain)

  const once = async (mechanism: Mechanism, threads: number, depth: number, ms: number): Promise<Run> => {
    dequeue = 0
    drains = 0
    drained = 0
    perReply = mechanism === 'ring + reply call'
    let jsUser = 0
    let jsSystem = 0
    let processUs = 0
    let elapsed = 0
    const done = new Promise<void>(resolve => {
      const jsCpu = addon.threadCpuUs()
      const processCpu = process.cpuUsage()
      const start = process.hrtime.bigint()
      addon.start(mechanism === 'tsfn' ? 0 : 1, threads, depth, dispatch, () => {
        elapsed = Number(process.hrtime.bigint() - start) / 1e9
        const [user, system] = addon.threadCpuUs()
        jsUser = user - jsCpu[0]
        jsSystem = system - jsCpu[1]
        const used = process.cpuUsage(processCpu)
        processUs = used.user + used.system
        resolve()
      })
    })
    const timer = setTimeout(() => addon.stop(), ms)
    await done
    clearTimeout(timer)
    const result = addon.finish()
    const sorted = result.latencies.sort()
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] / 1e3
    return {
      requestsPerSecond: result.requests / elapsed,
      medianUs: at(0.5),
      p99Us: at(0.99),
      jsCpuUsPerRequest: (jsUser + jsSystem) / result.requests,
      jsUserUsPerRequest: jsUser / result.requests,
      jsSystemUsPerRequest: jsSystem / result.requests,
      processCpuUsPerRequest: processUs / result.requests,
      recordsPerWake: mechanism === 'tsfn' ? null : drained / Math.max(1, drains),
      mismatches: result.mismatches,
    }
  }

  const loadBefore = uptime()
  process.stderr.write(`${loadBefore}\n`)
  for (const m of mechanisms) for (const c of configs) await once(m, c.threads, c.depth, 200) // warm-up
  const runs = new Map<string, Run[]>()
  for (let rep = 0; rep < reps; rep++) {
    for (const c of configs) {
      // Alternate which mechanism goes first.
      const order = rep % 2 === 0 ? mechanisms : [...mechanisms].reverse()
      for (const m of order) {
        const r = await once(m, c.threads, c.depth, seconds * 1000)
        const key = `${m}|${c.threads}|${c.depth}`
        runs.set(key, [...(runs.get(key) ?? []), r])
        process.stderr.write(`rep ${rep + 1} ${c.threads} thread(s) x ${c.depth} in flight, ${m}: ${Math.round(r.requestsPerSecond)} req/s, median ${r.medianUs.toFixed(1)} µs, p99 ${r.p99Us.toFixed(1)} µs, JS ${r.jsCpuUsPerRequest.toFixed(2)} µs/req\n`)
      }
    }
  }
  const loadAfter = uptime()
  if (badOps > 0) throw new Error(`${badOps} records read wrong on the JavaScript side`)

  const figures = []
  for (const c of configs) {
    for (const m of mechanisms) {
      const rs = runs.get(`${m}|${c.threads}|${c.depth}`) ?? []
      const pick = (f: (r: Run) => number): number => median(rs.map(f))
      figures.push({
        mechanism: m, threads: c.threads, depth: c.depth,
        requestsPerSecond: pick(r => r.requestsPerSecond),
        medianUs: pick(r => r.medianUs),
        p99Us: pick(r => r.p99Us),
        jsCpuUsPerRequest: pick(r => r.jsCpuUsPerRequest),
        jsUserUsPerRequest: pick(r => r.jsUserUsPerRequest),
        jsSystemUsPerRequest: pick(r => r.jsSystemUsPerRequest),
        processCpuUsPerRequest: pick(r => r.processCpuUsPerRequest),
        recordsPerWake: m === 'tsfn' ? null : pick(r => r.recordsPerWake ?? 0),
        mismatches: rs.reduce((sum, r) => sum + r.mismatches, 0),
        runs: rs,
      })
    }
  }
  const mismatches = figures.reduce((sum, f) => sum + f.mismatches, 0)
  const date = new Date().toISOString()
  const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), Linux ${os.release()}, Node ${process.version}`
  const lines = [
    `# node dist/bench/handoff.js, ${date}`, '',
    `Machine: ${machine}. ${reps} runs of ${seconds} s per row, medians; the mechanisms alternate within each run.`,
    `Load before: \`${loadBefore}\``, `Load after: \`${loadAfter}\``, '',
    'Each request is a 4 KiB READ record (op, 64-bit handle, offset, length) from a native producer thread; its reply carries 4 KiB (bench/handoff/handoff.c).',
    'tsfn: a record per request through a napi_threadsafe_function, dispatch called with napi values, a reply call per request (native/fuse3 today).',
    'ring: records in a SharedArrayBuffer ring, one uv_async_send wake-up (coalesced), the drain reads typed arrays and writes each reply into the buffer, one wake-up call per drain.',
    'ring + reply call: the same ring, but one addon call per reply (as an engine answering each request in its own callback would make); at 1 in flight it is the same as ring, so their difference there is noise.',
    'Latency is the round trip seen by the producer. "JS CPU" is the JavaScript thread\'s CPU time (getrusage RUSAGE_THREAD) per request; "process CPU" includes the producers.', '',
    '| threads x in flight | mechanism | requests/s | vs tsfn | median µs | p99 µs | JS CPU µs/req (user + sys) | vs tsfn | process CPU µs/req | records per drain |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for (const f of figures) {
    const base = figures.find(g => g.mechanism === 'tsfn' && g.threads === f.threads && g.depth === f.depth)
    const ratio = (a: number, b: number | undefined): string => b === undefined || f.mechanism === 'tsfn' ? '' : `${(a / b).toFixed(2)}x`
    lines.push(`| ${f.threads} x ${f.depth} | ${f.mechanism} | ${Math.round(f.requestsPerSecond).toLocaleString('en-US')} | ${ratio(f.requestsPerSecond, base?.requestsPerSecond)} | ${f.medianUs.toFixed(1)} | ${f.p99Us.toFixed(1)} | ${f.jsCpuUsPerRequest.toFixed(2)} (${f.jsUserUsPerRequest.toFixed(2)} + ${f.jsSystemUsPerRequest.toFixed(2)}) | ${ratio(f.jsCpuUsPerRequest, base?.jsCpuUsPerRequest)} | ${f.processCpuUsPerRequest.toFixed(2)} | ${f.recordsPerWake === null ? '' : f.recordsPerWake.toFixed(1)} |`)
  }
  lines.push('', `Replies checked: ${mismatches === 0 ? 'every reply echoed its request\'s offset' : `${mismatches} replies did not echo their request's offset`}.`)
  lines.push(`Atomics.notify on the word a native thread waits on with FUTEX_WAIT: ${notifyReachesFutex ? 'wakes it' : 'does not wake it (V8 keeps its own waiters), so the ring\'s replies wake producers through the addon'}.`, '')
  const md = lines.join('\n')
  fs.mkdirSync(path.join(repoRoot, 'bench', 'results'), { recursive: true })
  fs.writeFileSync(path.join(repoRoot, 'bench', 'results', 'handoff-latest.json'), JSON.stringify({ date, machine, loadBefore, loadAfter, seconds, reps, notifyReachesFutex, figures }, null, 2) + '\n')
  fs.writeFileSync(path.join(repoRoot, 'bench', 'results', 'handoff-latest.md'), md)
  process.stdout.write(md)
  if (mismatches > 0) process.exitCode = 1
}

main().catch(err => { process.stderr.write(`${(err as Error).stack ?? String(err)}\n`); process.exit(1) })
