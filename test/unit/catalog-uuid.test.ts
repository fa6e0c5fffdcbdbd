/**
 * Schema 3 gives every volume a stable identity: a new row gets a random UUID (the same one catalog.log
 * was told before the insert), an imported backup keeps the one it is expected with, a schema 2
 * catalog's volumes get one at open; partial imports hold their chunks, and an abandoned one is dropped.
 */
import test from 'ava'
import Database from 'better-sqlite3'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Catalog, VolumeRow } from '../../src/catalog/catalog'
import { importAbandonedMs } from '../../src/limits'

function tempFile (): string {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-uuid-')), 'catalog.sqlite')
}

function row (id: number, name: string): VolumeRow {
  return { id, kind: 'backup', name, size: 0, createdMs: 1, mtimeMs: 1, sourceId: null, sourceLabel: null, epoch: 1, root: Buffer.alloc(0), allocatedBlocks: 0, storedBytes: 0, activeExtent: null, uid: 0, gid: 0, mode: 0o400 }
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

test('a new volume gets the identity it was promised; an expected one keeps its own', t => {
  const file = tempFile()
  const catalog = Catalog.open(file, true)
  const promised = catalog.volumeUuid(1)
  t.regex(promised, uuidPattern)
  catalog.transaction(() => catalog.insertVolume(row(1, 'a.img')))
  t.is(catalog.volumeUuid(1), promised)
  t.is(catalog.volumes()[0].uuid, promised)
  const imported = '0f0e0d0c-0b0a-4908-8706-050403020100'
  catalog.putImport({ key: `${imported}:full`, name: 'b.img', size: 0, blockBytes: 65536, baseUuid: null, startedMs: Date.now(), updatedMs: Date.now() })
  catalog.putImportBlocks(`${imported}:full`, [{ block: 0, chunkId: 7 }, { block: 1, chunkId: null }])
  t.deepEqual(catalog.heldChunkIds(), [7])
  catalog.expectVolume(2, imported, `${imported}:full`)
  catalog.transaction(() => catalog.insertVolume(row(2, 'b.img')))
  t.is(catalog.volumeByUuid(imported), 2)
  t.deepEqual(catalog.imports(), [])
  t.deepEqual(catalog.heldChunkIds(), [])
  catalog.close()
})

test('a schema 2 catalog is migrated: every volume gets an identity; abandoned imports are dropped at open', t => {
  const file = tempFile()
  const catalog = Catalog.open(file, true)
  catalog.transaction(() => { catalog.insertVolume(row(1, 'a.img')); catalog.insertVolume(row(2, 'b.img')) })
  catalog.putImport({ key: 'old', name: 'c.img', size: 0, blockBytes: 65536, baseUuid: null, startedMs: 0, updatedMs: Date.now() - importAbandonedMs - 1000 })
  catalog.putImport({ key: 'recent', name: 'd.img', size: 0, blockBytes: 65536, baseUuid: null, startedMs: 0, updatedMs: Date.now() })
  catalog.putImportBlocks('old', [{ block: 0, chunkId: 5 }])
  catalog.close()
  // Back to what schema 2 had: no uuid column.
  const db = new Database(file)
  db.exec('DROP INDEX volumes_by_uuid; ALTER TABLE volumes DROP COLUMN uuid')
  db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('2', 'schema_version')
  db.close()
  const reopened = Catalog.open(file, false)
  const uuids = reopened.volumes().map(v => v.uuid)
  t.is(uuids.length, 2)
  for (const uuid of uuids) t.regex(uuid as string, uuidPattern)
  t.not(uuids[0], uuids[1])
  t.is(reopened.getMeta('schema_version'), '6')
  t.deepEqual(reopened.imports().map(i => i.key), ['recent'])
  t.deepEqual(reopened.heldChunkIds(), [])
  reopened.close()
})

test('a schema 3 catalog is migrated to 4: nothing protected, no notes, each volume told the identity of its source while that source is here', t => {
  const file = tempFile()
  const catalog = Catalog.open(file, true)
  catalog.transaction(() => {
    catalog.insertVolume({ ...row(1, 'web.img'), kind: 'disk', mode: 0o600 })
    catalog.insertVolume({ ...row(2, 'mon.img'), sourceId: 1, sourceLabel: 'disk web.img' })
    catalog.insertVolume({ ...row(3, 'old.img'), sourceId: 9, sourceLabel: 'disk gone.img' })
  })
  const diskUuid = catalog.volumeUuid(1)
  catalog.close()
  // Back to what schema 3 had.
  const db = new Database(file)
  db.exec('ALTER TABLE volumes DROP COLUMN protected; ALTER TABLE volumes DROP COLUMN note; ALTER TABLE volumes DROP COLUMN source_uuid; ALTER TABLE volumes DROP COLUMN group_name')
  db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('3', 'schema_version')
  db.close()
  const reopened = Catalog.open(file, false)
  t.is(reopened.getMeta('schema_version'), '6')
  const rows = reopened.volumes()
  t.deepEqual(rows.map(v => [v.name, v.protected, v.note, v.sourceUuid]), [['web.img', false, null, null], ['mon.img', false, null, diskUuid], ['old.img', false, null, null]])
  // The new columns are written and read back.
  reopened.transaction(() => reopened.updateVolume({ ...rows[1], root: Buffer.alloc(0), protected: true, note: 'before the upgrade' }, false))
  const updated = reopened.volumes()[1]
  t.true(updated.protected)
  t.is(updated.note, 'before the upgrade')
  reopened.close()
})

test('a removed volume\'s id is never given again, not even by a catalog opened anew (the kernel may still know its inode)', t => {
  const file = tempFile()
  const catalog = Catalog.open(file, true)
  catalog.transaction(() => { catalog.insertVolume(row(1, 'a.img')); catalog.insertVolume(row(2, 'b.img')) })
  catalog.transaction(() => catalog.deleteVolume(2))
  t.is(catalog.maxVolumeId(), 2)
  catalog.close()
  const again = Catalog.open(file, false)
  t.is(again.maxVolumeId(), 2)
  again.close()
})

test('a schema 4 catalog is migrated to 5: each volume\'s root moves to the roots table, and reads back the same', t => {
  const file = tempFile()
  const catalog = Catalog.open(file, true)
  const root = Buffer.alloc(64, 0x3c)
  catalog.transaction(() => {
    catalog.insertVolume({ ...row(1, 'web.img'), kind: 'disk', mode: 0o600, root })
    catalog.insertVolume({ ...row(2, 'mon.img'), sourceId: 1, sourceLabel: 'disk web.img' })
  })
  catalog.close()
  // Back to what schema 4 had: the roots in the volumes' rows.
  const db = new Database(file)
  db.exec('UPDATE volumes SET root = (SELECT r.root FROM roots r WHERE r.id = volumes.id); DELETE FROM roots')
  db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('4', 'schema_version')
  db.close()
  const reopened = Catalog.open(file, false)
  t.is(reopened.getMeta('schema_version'), '6')
  t.true(reopened.volumesWithRoots()[0].root.equals(root))
  t.true(reopened.root(1)?.equals(root))
  // A row's other fields are written without its root, which stays.
  reopened.transaction(() => reopened.updateVolume({ ...reopened.volumes()[0], storedBytes: 7, root: Buffer.alloc(0) }, false))
  t.true(reopened.volumesWithRoots()[0].root.equals(root))
  t.true(reopened.root(1)?.equals(root))
  t.is(reopened.volumes()[0].storedBytes, 7)
  reopened.close()
  const check = new Database(file)
  t.is((check.prepare('SELECT COUNT(*) FROM roots').pluck().get() as number), 2)
  t.is((check.prepare('SELECT SUM(length(root)) FROM volumes').pluck().get() as number), 0)
  check.close()
})
