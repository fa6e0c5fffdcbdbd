// Times the steps of a backup's commit in-process, on the build (dist/) of the tree ROOT:
//   node bench/commit-steps.js ROOT [DISK_BYTES] [BACKUPS]
// a pool in a temporary directory ($TMPDIR or /var/tmp), a disk of DISK_BYTES (1 GiB) with a 64 KiB block
// every 64 MiB and a commit (the peak RSS after it), then BACKUPS (30) backups, the median time of each
// commit step. Reaches into the Pool's stores (as test/helpers/stores.ts does) and works on older trees
// (docs/PERFORMANCE.md, "Current figures": it was run on 87dc6ad, d63666c and 2824e40 too).
const path = require('node:path'), fs = require('node:fs'), os = require('node:os')
const root = path.resolve(process.argv[2] ?? '.')
const { Pool } = require(path.join(root, 'dist/src/volume/pool'))
const now = () => Number(process.hrtime.bigint()) / 1e6
async function main () {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/var/tmp', 'ssm-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, workers: 1 })
  const state = pool.state ?? pool
  const times = {}
  const wrap = (obj, name, label) => {
    const orig = obj[name].bind(obj)
    obj[name] = (...a) => {
      const t0 = now(); const r = orig(...a)
      if (r && typeof r.then === 'function') return r.then(v => { (times[label] ??= []).push(now() - t0); return v })
      ;(times[label] ??= []).push(now() - t0); return r
    }
  }
  if (state.extents?.syncPending) wrap(state.extents, 'syncPending', 'extents fdatasync')
  if (state.catalogLog) wrap(state.catalogLog, 'append', 'catalog.log append+fdatasync')
  if (state.catalog) wrap(state.catalog, 'transaction', 'sqlite transaction')
  if (state.journal) { wrap(state.journal, 'rotate', 'journal rotate'); wrap(state.journal, 'dropBefore', 'journal dropBefore') }
  if (state.catalogLog) wrap(state.catalogLog, 'afterCommit', 'catalog.log afterCommit')
  const disk = await pool.createDisk('d.img')
  const bytes = Number(process.argv[3] || 1024 ** 3)
  await disk.truncate(bytes)
  const block = Buffer.alloc(64 * 1024, 0x5a)
  for (let off = 0; off < bytes; off += 64 * 1024 ** 2) await disk.write(block, off)
  await pool.commit()
  const hwm = () => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) / 1024
  console.log(`peak RSS after writing every 64 MiB of ${bytes / 1024 ** 3} GiB and a commit: ${hwm().toFixed(0)} MiB`)
  for (const k of Object.keys(times)) times[k] = []
  const total = []
  for (let i = 0; i < Number(process.argv[4] ?? 30); i++) {
    const t0 = now(); await pool.backup(disk, `b${i}.img`); total.push(now() - t0)
  }
  const med = a => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
  if (total.length) console.log(`backup total median ${med(total).toFixed(2)} ms`)
  if (total.length) for (const [k, v] of Object.entries(times)) console.log(`  ${k}: median ${med(v).toFixed(3)} ms (n=${v.length})`)
  await pool.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
main().catch(e => { console.error(e); process.exit(1) })
