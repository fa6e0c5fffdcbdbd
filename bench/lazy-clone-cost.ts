/**
 * What a pending clone adds to a lazy pull's apply (docs/REMOTE.md, "A clone of a pending backup"), in
 * the engine without S3: a pool of 64 KiB blocks with 64 distinct chunks sealed, a lazy pull of
 * VDISKFS_BENCH_REFS references (default 65,536) naming them in turn, applied in batches of
 * VDISKFS_BENCH_BATCH (default: the daemon's, 16,384); the apply held until the clone is made (or not),
 * then timed to its end. Three runs each, alternated. `node dist/bench/lazy-clone-cost.js`.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { lazyRefsBatchRefs } from '../src/limits'
import { blake3Hex } from '../src/remote/remote-format'
import { Sealer } from '../src/seal/sealer'
import { Pool } from '../src/volume/pool'
import { Volume } from '../src/volume/volume'

const bs = 65536
const distinct = 64
const refsCount = Number(process.env.VDISKFS_BENCH_REFS ?? 65536)
const batch = Number(process.env.VDISKFS_BENCH_BATCH ?? lazyRefsBatchRefs)
const hash = (block: Buffer): Buffer => Buffer.from(blake3Hex(block), 'hex')

async function once (withClone: boolean): Promise<number> {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-clone-cost-')), 'pool')
  const pool = Pool.open(dir, { create: true, blockBytes: bs, workers: 1 })
  try {
    pool.lazyRefsBatchRefs = batch
    const data = Array.from({ length: distinct }, () => crypto.randomBytes(bs))
    const disk = await pool.createDisk('d.img')
    for (let i = 0; i < distinct; i++) await disk.write(data[i], i * bs)
    await new Sealer(pool, () => {}).sealPending(true)
    let release = (): void => {}
    const held = new Promise<void>(resolve => { release = resolve })
    pool.lazyRefsSeams = { beforeApply: async () => await held }
    const uuid = crypto.randomUUID()
    const key = `${uuid}:full`
    const session = pool.imports.begin({ key, uuid, baseUuid: null, size: (refsCount + 1) * bs, blockBytes: bs, createdMs: Date.now(), source: null, lazy: true }, 'b.img')
    pool.lazy.begin({ uuid, importKey: key, remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 0, startedMs: Date.now() })
    const refs = pool.lazyRefs(uuid)
    let backup: Volume
    try {
      await session.store([{ index: 0, data: data[0], hash: hash(data[0]) }])
      for (let i = 1; i <= refsCount; i++) await refs.push(i, hash(data[i % distinct]))
      backup = await pool.finishLazy(session, refs)
    } finally { session.close() }
    pool.lazy.started(uuid)
    const pending = backup.pendingMap
    if (pending === null) throw new Error('the backup is not pending')
    if (withClone) await pool.clone(backup, 'c.img')
    const started = performance.now()
    release()
    await pending.done
    return performance.now() - started
  } finally {
    await pool.close()
    fs.rmSync(path.dirname(dir), { recursive: true, force: true })
  }
}

async function main (): Promise<void> {
  const ms: { without: number[], with: number[] } = { without: [], with: [] }
  for (let run = 0; run < 3; run++) {
    ms.without.push(await once(false))
    ms.with.push(await once(true))
  }
  const round = (values: number[]): number[] => values.map(v => Math.round(v))
  console.log(JSON.stringify({ references: refsCount, batch, batches: Math.ceil(refsCount / batch), applyMs: { without: round(ms.without), withClone: round(ms.with) }, loadAverage: os.loadavg() }))
}

main().catch(err => { console.error(err); process.exit(1) })
