/**
 * Power cuts and failed fdatasyncs at every sync boundary, on the engine over the fault-injecting
 * file layer (test/helpers/fault-io.ts), checked against a model of what was acknowledged (issue #9).
 * A random workload (4 KiB records written to disks, commits, backups, clones, seal passes, gc) runs
 * once to count its syncs; then again with the power cut at each sync in turn: the pool is let go as
 * a crash would, unsynced writes are undone, and the pool reopened must hold, for every record of
 * every volume acknowledged by the last successful commit, that commit's value or a value written
 * after it; every acknowledged backup exactly. A failed fdatasync must fail every later commit (a
 * retry would "succeed" after Linux dropped the pages) and lose nothing acknowledged before it.
 * Each workload also runs on a pool of 16 KiB blocks, where a record written over a sealed block is a
 * partial slot (issue #10): its sectors, checksums and base entry must survive a cut together.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { FaultFileIo } from '../helpers/fault-io'
import { storesOf } from '../helpers/stores'

/** Bytes of one record: a sector. Pools have blocks of one record, or of four (partial slots). */
const blockBytes = 4096
const records = 48
const partialBlockBytes = 4 * blockBytes

type Op =
  | { op: 'write', disk: number, record: number, count: number, seed: number }
  | { op: 'commit' } | { op: 'backup', disk: number } | { op: 'clone' } | { op: 'seal' } | { op: 'gc' } | { op: 'create' }

function randomOps (seed: number, length: number): Op[] {
  let state = seed
  const next = (n: number): number => { state = (state * 1103515245 + 12345) % 2147483648; return state % n }
  const ops: Op[] = [{ op: 'create' }]
  for (let i = 0; i < length; i++) {
    const roll = next(100)
    if (roll < 55) ops.push({ op: 'write', disk: next(3), record: next(records), count: 1 + next(3), seed: next(1e9) })
    else if (roll < 70) ops.push({ op: 'commit' })
    else if (roll < 78) ops.push({ op: 'backup', disk: next(3) })
    else if (roll < 82) ops.push({ op: 'clone' })
    else if (roll < 90) ops.push({ op: 'seal' })
    else if (roll < 95) ops.push({ op: 'gc' })
    else ops.push({ op: 'create' })
  }
  return ops
}

function recordBytes (seed: number, record: number): Buffer {
  return crypto.createHash('sha256').update(`${seed}/${record}`).digest().subarray(0, 16).toString('hex').repeat(blockBytes / 32).length === blockBytes
    ? Buffer.from(crypto.createHash('sha256').update(`${seed}/${record}`).digest().toString('hex').repeat(blockBytes / 64))
    : Buffer.alloc(blockBytes)
}

interface ModelVolume { key: string, kind: 'disk' | 'backup' | 'clone', name: string, recordsOf: Array<string | null> }

/** Runs `ops`; returns the model as of the last acknowledged commit and what was written since. */
async function runWorkload (pool: Pool, ops: Op[]): Promise<{ acked: Map<string, ModelVolume>, since: Map<string, Array<Set<string>>>, error: unknown }> {
  const current = new Map<string, ModelVolume>()
  let acked = new Map<string, ModelVolume>()
  let since = new Map<string, Array<Set<string>>>()
  let counter = 0
  const disks = () => [...current.values()].filter(v => v.kind !== 'backup').sort((a, b) => a.key.localeCompare(b.key))
  const snapshot = (): void => {
    acked = new Map([...current].map(([k, v]) => [k, { ...v, recordsOf: [...v.recordsOf] }]))
    since = new Map()
  }
  try {
    for (const op of ops) {
      switch (op.op) {
        case 'create': {
          const name = `d${counter++}.img`
          await pool.createDisk(name)
          current.set(`disk/${name}`, { key: `disk/${name}`, kind: 'disk', name, recordsOf: Array(records).fill(null) })
          snapshot()
          break
        }
        case 'write': {
          const list = disks()
          const v = list[op.disk % list.length]
          const count = Math.min(op.count, records - op.record)
          const data = Buffer.concat(Array.from({ length: count }, (_, i) => recordBytes(op.seed, op.record + i)))
          // Before the write: a failed write may still have landed some records.
          const touched = since.get(v.key) ?? Array.from({ length: records }, () => new Set<string>())
          since.set(v.key, touched)
          for (let i = 0; i < count; i++) touched[op.record + i].add(`${op.seed}/${op.record + i}`)
          await pool.get(v.kind, v.name).write(data, op.record * blockBytes)
          for (let i = 0; i < count; i++) v.recordsOf[op.record + i] = `${op.seed}/${op.record + i}`
          break
        }
        case 'commit': await pool.commit(); snapshot(); break
        case 'backup': {
          const list = disks()
          const v = list[op.disk % list.length]
          const name = `b${counter++}.img`
          await pool.backup(pool.get(v.kind, v.name), name)
          current.set(`backup/${name}`, { key: `backup/${name}`, kind: 'backup', name, recordsOf: [...v.recordsOf] })
          snapshot()
          break
        }
        case 'clone': {
          const backups = [...current.values()].filter(v => v.kind === 'backup')
          if (backups.length === 0) break
          const b = backups[backups.length - 1]
          const name = `c${counter++}.img`
          await pool.clone(pool.get('backup', b.name), name)
          current.set(`clone/${name}`, { key: `clone/${name}`, kind: 'clone', name, recordsOf: [...b.recordsOf] })
          snapshot()
          break
        }
        case 'seal': {
          const report = await new Sealer(pool, () => {}).sealPending(true)
          if (report.failed.length > 0) throw new Error(`seal failed: ${report.failed[0]}`)
          break
        }
        case 'gc': await pool.gc(0.99); break
      }
    }
    return { acked, since, error: null }
  } catch (err) {
    // A user retries fsync after an error: whatever a commit then acknowledges must be durable.
    try { await pool.commit(); snapshot() } catch {}
    return { acked, since, error: err }
  }
}

async function check (pool: Pool, acked: Map<string, ModelVolume>, since: Map<string, Array<Set<string>>>): Promise<string | null> {
  for (const v of acked.values()) {
    const volume = pool.find(v.kind, v.name)
    if (volume === undefined) return `${v.key} is gone`
    const data = Buffer.alloc(records * blockBytes)
    try { await volume.read(data, 0) } catch (err) { return `${v.key}: read failed: ${(err as Error).message}` }
    for (let r = 0; r < records; r++) {
      const got = data.subarray(r * blockBytes, (r + 1) * blockBytes)
      const allowed = [v.recordsOf[r], ...(since.get(v.key)?.[r] ?? [])]
      const ok = allowed.some(value => value === null ? got.equals(Buffer.alloc(blockBytes)) : got.equals(recordBytes(Number(value.split('/')[0]), r)))
      if (!ok) return `${v.key} record ${r}: neither the acknowledged value (${String(v.recordsOf[r])}) nor one written since`
    }
  }
  return null
}

function tempDir (t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-powercut-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

const seeds = Number(process.env.VDISKFS_POWERCUT_SEEDS ?? 1)
/**
 * A power cut restarts the machine: the pool opens again in another boot, so the change journal (never
 * synced, volume/journal.ts) is not replayed, as it would not be after a real one.
 */
const afterRestart = Buffer.from('00000000000000000000000000000001', 'hex')
/** Operations per workload: 28 in `make test`, 40 in `make crash-test` (VDISKFS_POWERCUT_OPS). */
const opsPerRun = Number(process.env.VDISKFS_POWERCUT_OPS ?? 28)

/** The power-cut and failed-fdatasync tests of workload `seed` on a pool of `poolBlockBytes` blocks. */
function cutTests (seed: number, poolBlockBytes: number): void {
  const blocks = poolBlockBytes === blockBytes ? '' : ', 16 KiB blocks (partial slots)'
  test.serial(`power cut at every sync boundary, workload ${seed}${blocks}`, async t => {
    const dir = tempDir(t)
    const ops = randomOps(seed, opsPerRun)
    // Count the workload's syncs once.
    const counting = new FaultFileIo()
    const first = Pool.open(path.join(dir, 'count'), { create: true, blockBytes: poolBlockBytes, workers: 1, io: counting })
    const clean = await runWorkload(first, ops)
    t.is(clean.error, null)
    await first.close()
    const total = counting.syncs
    t.true(total > 10, `${total} syncs`)
    let cuts = 0
    for (let cutAt = 1; cutAt <= total; cutAt++) {
      const poolDir = path.join(dir, `cut-${cutAt}`)
      const io = new FaultFileIo()
      io.cutAtSync = cutAt
      const pool = Pool.open(poolDir, { create: true, blockBytes: poolBlockBytes, workers: 1, io })
      const { acked, since } = await runWorkload(pool, ops)
      await pool.abandon()
      // Odd cut points keep a random half of the unsynced writes (written back before the cut).
      let coin = cutAt * 7919
      io.powerCut(cutAt % 2 === 1 ? () => { coin = (coin * 1103515245 + 12345) % 2147483648; return coin % 2 === 0 } : undefined)
      const reopened = Pool.open(poolDir, { workers: 1, bootId: afterRestart })
      try {
        // As the daemon does at start: the extents written since the last commit get their
        // checksums back; every read after this is checked, so a torn sector would fail here.
        await reopened.recover()
        const problem = await check(reopened, acked, since)
        t.is(problem, null, `power cut at sync ${cutAt} of ${total}`)
        // The pool works on: gc and a seal pass after the crash keep every byte.
        await reopened.gc(0.99)
        await new Sealer(reopened, () => {}).sealPending(true)
        t.is(await check(reopened, acked, since), null, `after gc and sealing, cut at sync ${cutAt}`)
      } finally {
        await reopened.close()
        fs.rmSync(poolDir, { recursive: true, force: true })
      }
      cuts++
    }
    t.log(`${cuts} power cuts`)
  })

  test.serial(`a failed fdatasync is fatal for later commits and loses nothing acknowledged, workload ${seed}${blocks}`, async t => {
    const dir = tempDir(t)
    const ops = randomOps(seed + 1000, opsPerRun)
    const counting = new FaultFileIo()
    const first = Pool.open(path.join(dir, 'count'), { create: true, blockBytes: poolBlockBytes, workers: 1, io: counting })
    t.is((await runWorkload(first, ops)).error, null)
    await first.close()
    let fatal = 0
    let walFatal = 0
    for (let failAt = 1; failAt <= counting.syncs; failAt++) {
      const poolDir = path.join(dir, `fail-${failAt}`)
      const io = new FaultFileIo()
      io.failSyncAt = failAt
      const pool = Pool.open(poolDir, { create: true, blockBytes: poolBlockBytes, workers: 1, io })
      const { acked, since, error } = await runWorkload(pool, [...ops, { op: 'commit' }])
      if (error !== null && /fdatasync of the (pool's extents|catalog's WAL) failed/.test((error as Error).message)) {
        // A failed commit sync is fatal: no later commit may claim success. The catalog's WAL is
        // synced by the commit itself, in the thread pool, not by SQLite on the event loop.
        fatal++
        if (/catalog's WAL/.test((error as Error).message)) walFatal++
        await t.throwsAsync(pool.commit(), undefined, `a commit after the failed sync ${failAt}`)
      }
      await pool.close().catch(() => {})
      io.powerCut()
      const reopened = Pool.open(poolDir, { workers: 1, bootId: afterRestart })
      try {
        t.is(await check(reopened, acked, since), null, `failed sync ${failAt}`)
      } finally {
        await reopened.close()
        fs.rmSync(poolDir, { recursive: true, force: true })
      }
    }
    t.true(fatal > 0, 'some failures hit a commit')
    t.true(walFatal > 0, 'some failures hit the sync of the catalog\'s WAL')
    t.log(`${counting.syncs} failed syncs, ${fatal} of them in a commit (${walFatal} the catalog's WAL)`)
  })
}

for (let seed = 1; seed <= seeds; seed++) for (const poolBlockBytes of [blockBytes, partialBlockBytes]) cutTests(seed, poolBlockBytes)

test.serial('a power cut that lands a block without its checksum (or the reverse) is recovered, not reported as damage', async t => {
  const dir = tempDir(t)
  for (const keepNewest of [true, false]) {
    const poolDir = path.join(dir, `torn-${String(keepNewest)}`)
    const io = new FaultFileIo()
    const pool = Pool.open(poolDir, { create: true, blockBytes, workers: 1, io })
    const disk = await pool.createDisk('d.img')
    const acknowledged = crypto.randomBytes(blockBytes)
    await disk.write(acknowledged, 0)
    await pool.commit()
    const overwritten = crypto.randomBytes(blockBytes)
    await disk.write(overwritten, 0) // in place: the block's bytes, then its checksum, both unsynced
    await pool.abandon()
    let undone = 0
    io.powerCut(() => (undone++ === 0) === keepNewest) // keep exactly one of the two writes
    const reopened = Pool.open(poolDir, { workers: 1, bootId: afterRestart })
    try {
      await reopened.recover()
      const back = Buffer.alloc(blockBytes)
      await reopened.get('disk', 'd.img').read(back, 0)
      t.true(back.equals(acknowledged) || back.equals(overwritten), 'the acknowledged block or its overwrite')
      t.deepEqual(storesOf(reopened).extents.damaged, [])
    } finally {
      await reopened.close()
    }
  }
})

test.serial('a power cut that lands a partial slot\'s new sector without its bytes (or the reverse) reads the chunk under it or the new bytes, never zeros', async t => {
  const dir = tempDir(t)
  for (const keepNewest of [true, false]) {
    const poolDir = path.join(dir, `torn-partial-${String(keepNewest)}`)
    const io = new FaultFileIo()
    const pool = Pool.open(poolDir, { create: true, blockBytes: partialBlockBytes, workers: 1, io })
    const disk = await pool.createDisk('d.img')
    const sealed = crypto.randomBytes(partialBlockBytes)
    await disk.write(sealed, 0)
    await new Sealer(pool, () => {}).sealPending(true)
    const first = crypto.randomBytes(blockBytes)
    await disk.write(first, 0) // a partial slot over the chunk: sector 0 written
    await pool.commit()
    const second = crypto.randomBytes(blockBytes)
    await disk.write(second, blockBytes) // sector 1, never written before: its bytes, then its checksum, both unsynced
    await pool.abandon()
    let undone = 0
    io.powerCut(() => (undone++ === 0) === keepNewest) // keep exactly one of the two writes
    const reopened = Pool.open(poolDir, { workers: 1, bootId: afterRestart })
    try {
      await reopened.recover()
      const back = Buffer.alloc(partialBlockBytes)
      await reopened.get('disk', 'd.img').read(back, 0)
      t.true(back.subarray(0, blockBytes).equals(first), 'the acknowledged sector')
      const sector = back.subarray(blockBytes, 2 * blockBytes)
      t.true(sector.equals(sealed.subarray(blockBytes, 2 * blockBytes)) || sector.equals(second), `keep newest ${String(keepNewest)}: the chunk's sector or the new one`)
      t.true(back.subarray(2 * blockBytes).equals(sealed.subarray(2 * blockBytes)), 'the sectors never written')
      t.deepEqual(storesOf(reopened).extents.damaged, [])
    } finally {
      await reopened.close()
    }
  }
})

test.serial('a slot whose checksums landed without its bytes before a power cut is reused cleanly: no stale checksum fails its next first write', async t => {
  const dir = tempDir(t)
  const poolDir = path.join(dir, 'stale-sums')
  const io = new FaultFileIo()
  const pool = Pool.open(poolDir, { create: true, blockBytes: partialBlockBytes, workers: 1, io })
  const disk = await pool.createDisk('d.img')
  const first = crypto.randomBytes(blockBytes)
  await disk.write(first, 0) // slot 0, sector 0
  await pool.commit()
  await disk.write(crypto.randomBytes(blockBytes), partialBlockBytes + 2 * blockBytes) // slot 1, sector 2: never synced
  await pool.abandon()
  let undone = 0
  io.powerCut(() => undone++ === 0) // the newest write (the checksum) reached the disk, the bytes did not
  const reopened = Pool.open(poolDir, { workers: 1, bootId: afterRestart })
  try {
    await reopened.recover()
    const volume = reopened.get('disk', 'd.img')
    await volume.truncate(3 * partialBlockBytes) // so that the whole of block 2 is read below
    const third = crypto.randomBytes(blockBytes)
    await volume.write(third, 2 * partialBlockBytes) // a first write into the next free slot
    const back = Buffer.alloc(3 * partialBlockBytes)
    await volume.read(back, 0)
    const expected = Buffer.alloc(3 * partialBlockBytes)
    first.copy(expected, 0)
    third.copy(expected, 2 * partialBlockBytes)
    t.true(back.equals(expected))
    t.deepEqual(storesOf(reopened).extents.damaged, [])
  } finally {
    await reopened.close()
  }
})
