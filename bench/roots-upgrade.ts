/**
 * The schema 5 -> 6 upgrade's cost (docs/PERFORMANCE.md, "Roots paged and shared"): a schema 5 catalog
 * of VDISKFS_BENCH_UPGRADE_BACKUPS (default 10,000) backups of a 1 TiB disk, each root dense (4,096 page
 * ids and the trailer) and 4 ids changed at random places between each (4 MiB of random 1 MiB writes
 * touch about 4 pages: the scale bench's disk), then opened: the upgrade makes every root a list of
 * shared pieces. Prints the catalog's bytes before, after the open (the WAL holding the transaction),
 * after the next transaction (free pages handed back) and after the close, and the open's time; and
 * the time to read every root before and after (CPU: a measure only on a quiet machine).
 * `node dist/bench/roots-upgrade.js`; only the catalog, no pool.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { Catalog } from '../src/catalog/catalog'
import { encodeRoot } from '../src/format/map-format'

const backups = Number(process.env.VDISKFS_BENCH_UPGRADE_BACKUPS ?? 10000)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-roots-upgrade-'))
const file = path.join(dir, 'catalog.sqlite')
const size = (): number => fs.statSync(file).size + (fs.existsSync(`${file}-wal`) ? fs.statSync(`${file}-wal`).size : 0)
try {
  Catalog.open(file, true).close()
  // What schema 5 had: no pieces, a dense root in each roots row.
  const db = new Database(file)
  db.exec("DROP TABLE root_pieces; DROP TABLE root_piece_refs; UPDATE meta SET value = '5' WHERE key = 'schema_version'")
  const ids = new Float64Array(4096)
  let next = 1
  let seed = 1
  const random = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed }
  const put = db.prepare('INSERT INTO roots (id, root) VALUES (?, ?)')
  const row = db.prepare("INSERT INTO volumes (id, kind, name, size, created_ms, mtime_ms, epoch, root, allocated_blocks, stored_bytes) VALUES (?, ?, ?, ?, 0, 0, ?, X'', 0, 0)")
  db.transaction(() => {
    for (let id = 2; id <= backups + 1; id++) {
      for (let k = 0; k < 4; k++) ids[random() % 4096] = next++
      put.run(id, encodeRoot(ids, id))
      row.run(id, 'backup', `b${id}.img`, 2 ** 40, id)
    }
    put.run(1, encodeRoot(ids, 1))
    row.run(1, 'disk', 'd.img', 2 ** 40, backups + 2)
  })()
  db.pragma('wal_checkpoint(TRUNCATE)')
  // Every dense root read, as Catalog.root read them before schema 6 (one row each).
  const read = db.prepare('SELECT COALESCE(r.root, v.root) FROM volumes v LEFT JOIN roots r ON r.id = v.id WHERE v.id = ?').pluck()
  let denseMs = performance.now()
  for (let id = 1; id <= backups + 1; id++) read.get(id)
  denseMs = performance.now() - denseMs
  db.close()
  process.stdout.write(`schema 5: ${backups + 1} dense roots, catalog ${size()} bytes\n`)
  const started = performance.now()
  const catalog = Catalog.open(file, false)
  const ms = performance.now() - started
  process.stdout.write(`open (the upgrade): ${Math.round(ms)} ms; ${JSON.stringify(catalog.rootsMigration)}; catalog + WAL ${size()} bytes\n`)
  let listMs = performance.now()
  for (let id = 1; id <= backups + 1; id++) if (catalog.root(id)?.length !== 4096 * 8 + 8) throw new Error(`root ${id} did not read back`)
  listMs = performance.now() - listMs
  process.stdout.write(`every root read: ${Math.round(denseMs)} ms dense (schema 5), ${Math.round(listMs)} ms assembled from its pieces, each checked (schema 6)\n`)
  catalog.transaction(() => { catalog.setMeta('bench', '1') })
  process.stdout.write(`after the next transaction: ${size()} bytes\n`)
  catalog.close()
  process.stdout.write(`after the close: ${size()} bytes\n`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}
