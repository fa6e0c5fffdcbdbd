/**
 * Repair never makes damage permanent (issue #9, item 6): a flipped byte in a map page costs at most
 * the entries it hit (none when the page's checksums can prove the original), a damaged page is never
 * served as some other block's data, a truncated catalog beside full packs is reported as damage, and
 * gc and compaction never delete a pack whose chunk records the catalog does not account for: such a
 * pack goes to quarantine/, from which repair brings back what the maps need.
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { run, vdiskfs, withMount } from '../helpers/mount'
import { firstPieceOf, storedRootOf } from '../helpers/roots'

const blockBytes = 65536

function readBlocks (file: string, count: number): Array<Buffer | string> {
  const out: Array<Buffer | string> = []
  const fd = fs.openSync(file, 'r')
  try {
    for (let b = 0; b < count; b++) {
      const buf = Buffer.alloc(blockBytes)
      try { fs.readSync(fd, buf, 0, blockBytes, b * blockBytes); out.push(buf) } catch (err) { out.push((err as NodeJS.ErrnoException).code ?? 'error') }
    }
  } finally { fs.closeSync(fd) }
  return out
}

/** Every block reads back as written or fails with EIO; returns how many failed. */
function eioOrOriginal (t: { true: (v: boolean, m?: string) => void }, blocks: Array<Buffer | string>, original: Buffer, what: string): number {
  let failed = 0
  blocks.forEach((b, i) => {
    if (Buffer.isBuffer(b)) t.true(b.equals(original.subarray(i * blockBytes, (i + 1) * blockBytes)), `${what} block ${i} reads back what was written`)
    else { t.true(b === 'EIO', `${what} block ${i}: ${b}`); failed++ }
  })
  return failed
}

function packFiles (pool: string): string[] {
  const out: string[] = []
  for (const dir of ['packs', 'quarantine']) {
    const full = path.join(pool, dir)
    if (fs.existsSync(full)) for (const f of fs.readdirSync(full)) if (f.endsWith('.pack')) out.push(path.join(dir, f))
  }
  return out.sort()
}

/** Changes one byte of the page that holds block 0 of disk `name` (offset within the page's stored bytes). */
function flipPageByte (pool: string, name: string, at: number, xor: number, legacy = false): void {
  const db = new Database(path.join(pool, 'catalog.sqlite'))
  try {
    const pageId = Number(storedRootOf(db, 'disk', name).readBigUInt64LE(0))
    const page = db.prepare('SELECT entries FROM pages WHERE id = ?').get(pageId) as { entries: Buffer }
    // legacy: the page as vdiskfs wrote it before map pages had checksums (the entries alone)
    const entries = Buffer.from(legacy ? page.entries.subarray(0, 32768) : page.entries)
    entries[at] ^= xor
    db.prepare('UPDATE pages SET entries = ? WHERE id = ?').run(entries, pageId)
  } finally { db.close() }
}

async function diskWithBackupSealed (m: Awaited<ReturnType<typeof withMount>>, blocks: number): Promise<Buffer> {
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', `count=${blocks}`, 'conv=fsync', 'status=none'])
  const original = fs.readFileSync(disk)
  const backup = await vdiskfs('backup', disk, 'b')
  if (backup.code !== 0) throw new Error(backup.stderr)
  const sync = await vdiskfs('sync', m.mnt)
  if (sync.code !== 0) throw new Error(sync.stderr)
  return original
}

test.serial('a flipped high byte in a map page costs no block, and the next mount deletes no pack', async t => {
  const m = await withMount(t)
  const original = await diskWithBackupSealed(m, 100)
  await m.umount()
  const packs = packFiles(m.pool)
  t.true(packs.length >= 1)
  flipPageByte(m.pool, 'd.img', 10 * 8 + 7, 0xff) // entry 10's top byte: an impossible value
  const verify = await vdiskfs('verify', m.pool)
  t.is(verify.code, 1, verify.stdout)
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  const report = JSON.parse(repair.stdout) as { entriesLost: number, pagesReplaced: number }
  t.is(report.pagesReplaced, 0, 'the page is repaired, not replaced')
  t.true(report.entriesLost <= 1, `${report.entriesLost} entries lost`)
  await m.mount()
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  const lostDisk = eioOrOriginal(t, readBlocks(m.image('disks', 'd.img'), 100), original, 'disk')
  const lostBackup = eioOrOriginal(t, readBlocks(m.image('backups', 'b.img'), 100), original, 'backup')
  t.true(lostDisk <= 1 && lostBackup <= 1, `${lostDisk} and ${lostBackup} blocks lost`)
  t.deepEqual(packFiles(m.pool).filter(f => f.startsWith('packs/')), packs, 'every pack is still there')
})

test.serial('a flipped low byte in a map page is never served as another block\'s data; repair restores it', async t => {
  const m = await withMount(t)
  const original = await diskWithBackupSealed(m, 100)
  await m.umount()
  flipPageByte(m.pool, 'd.img', 20 * 8, 0x01) // entry 20 now names a neighbouring chunk
  const mounted = await vdiskfs('mount', m.pool, m.mnt)
  if (mounted.code === 0) {
    m.pid = Number(fs.readFileSync(path.join(m.pool, 'daemon.pid'), 'utf8'))
    const failed = eioOrOriginal(t, readBlocks(m.image('disks', 'd.img'), 100), original, 'disk')
    t.true(failed >= 1, 'the damaged page is EIO, not wrong data')
    t.is((await vdiskfs('verify', m.mnt)).code, 1)
    await m.umount()
  } else {
    t.regex(mounted.stderr, /repair/)
  }
  t.is((await vdiskfs('verify', m.pool)).code, 1)
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  const report = JSON.parse(repair.stdout) as { entriesLost: number, after: { ok: boolean } }
  t.is(report.entriesLost, 0, 'one flipped byte is corrected from the page\'s checksums')
  t.true(report.after.ok)
  await m.mount()
  t.is(eioOrOriginal(t, readBlocks(m.image('disks', 'd.img'), 100), original, 'disk'), 0)
  t.is(eioOrOriginal(t, readBlocks(m.image('backups', 'b.img'), 100), original, 'backup'), 0)
})

test.serial('a truncated catalog beside full packs is damage: verify and repair say so, and no pack is deleted', async t => {
  const m = await withMount(t)
  await diskWithBackupSealed(m, 100)
  await m.umount()
  const packs = packFiles(m.pool)
  const packBytes = packs.reduce((sum, f) => sum + fs.statSync(path.join(m.pool, f)).size, 0)
  fs.truncateSync(path.join(m.pool, 'catalog.sqlite'), 0)
  for (const f of fs.readdirSync(m.pool)) if (f.startsWith('catalog.sqlite-')) fs.rmSync(path.join(m.pool, f))
  fs.rmSync(path.join(m.pool, 'catalog.log'), { force: true }) // no second copy of the metadata either
  const verify = await vdiskfs('verify', m.pool)
  t.is(verify.code, 1, verify.stdout)
  t.regex(verify.stdout, /catalog has 0 volumes but \d+ packs? holds? 100 chunk records/)
  const repair = await vdiskfs('repair', m.pool)
  t.is(repair.code, 0, repair.stderr)
  t.notRegex(repair.stdout, /no data is damaged|no damage/)
  t.regex(repair.stdout, /100 chunk records/)
  await m.mount()
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  await m.umount()
  const after = packFiles(m.pool)
  t.true(after.reduce((sum, f) => sum + fs.statSync(path.join(m.pool, f)).size, 0) >= packBytes, `packs kept: ${after.join(', ')}`)
  for (const f of after.filter(f => f.startsWith('quarantine/'))) t.is(fs.statSync(path.join(m.pool, f)).mode & 0o777, 0o600)
  const again = await vdiskfs('verify', m.pool)
  t.is(again.code, 1, 'still damage until a person decides')
  t.regex(again.stdout, /100 chunk records/)
})

test.serial('gc quarantines a pack whose records the index lost; repair brings it back for the maps that need it', async t => {
  const m = await withMount(t)
  const original = await diskWithBackupSealed(m, 50)
  await m.umount()
  const packs = packFiles(m.pool)
  const db = new Database(path.join(m.pool, 'catalog.sqlite'))
  db.exec('DELETE FROM chunks')
  db.close()
  await m.mount()
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  await m.umount()
  const quarantined = packFiles(m.pool).filter(f => f.startsWith('quarantine/'))
  t.is(quarantined.length + packFiles(m.pool).filter(f => f.startsWith('packs/')).length >= packs.length, true, 'no pack deleted')
  for (const f of quarantined) t.is(fs.statSync(path.join(m.pool, f)).mode & 0o777, 0o600)
  t.is((await vdiskfs('verify', m.pool)).code, 1)
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  const report = JSON.parse(repair.stdout) as { entriesLost: number, after: { ok: boolean } }
  t.is(report.entriesLost, 0)
  await m.mount()
  t.is(eioOrOriginal(t, readBlocks(m.image('disks', 'd.img'), 50), original, 'disk'), 0)
  t.is(eioOrOriginal(t, readBlocks(m.image('backups', 'b.img'), 50), original, 'backup'), 0)
})

test.serial('a truncated catalog is rebuilt from catalog.log: every volume and every byte comes back', async t => {
  const m = await withMount(t)
  const original = await diskWithBackupSealed(m, 100)
  t.is((await vdiskfs('clone', m.image('backups', 'b.img'), 'c')).code, 0)
  const clone = m.image('clones', 'c.img')
  const fd = fs.openSync(clone, 'r+')
  const written = Buffer.alloc(3 * blockBytes, 0x5a)
  fs.writeSync(fd, written, 0, written.length, 40 * blockBytes)
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  const cloneBytes = Buffer.from(original)
  written.copy(cloneBytes, 40 * blockBytes)
  await m.umount()
  fs.truncateSync(path.join(m.pool, 'catalog.sqlite'), 0)
  for (const f of fs.readdirSync(m.pool)) if (f.startsWith('catalog.sqlite-')) fs.rmSync(path.join(m.pool, f))
  // Serving the truncated catalog would start a second history over the first (ids, epochs, pages).
  const refused = await vdiskfs('mount', m.pool, m.mnt)
  if (refused.code === 0) { m.pid = Number(fs.readFileSync(path.join(m.pool, 'daemon.pid'), 'utf8')); await m.umount() }
  t.not(refused.code, 0, 'a catalog that lost its log\'s volumes is not served')
  t.regex(refused.stderr, /catalog\.log.*vdiskfs repair/)
  t.is(refused.stderr.trim().split('\n').length, 1)
  const verify = await vdiskfs('verify', m.pool)
  t.is(verify.code, 1, verify.stdout)
  t.regex(verify.stdout, /catalog\.log/)
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  const report = JSON.parse(repair.stdout) as { entriesLost: number, notes: string[], after: { ok: boolean, problems: string[] } }
  t.is(report.entriesLost, 0)
  t.true(report.after.ok, report.after.problems.join('; '))
  await m.mount()
  t.is(eioOrOriginal(t, readBlocks(m.image('disks', 'd.img'), 100), original, 'disk'), 0)
  t.is(eioOrOriginal(t, readBlocks(m.image('backups', 'b.img'), 100), original, 'backup'), 0)
  t.is(eioOrOriginal(t, readBlocks(clone, 100), cloneBytes, 'clone'), 0)
  // The clone is still writable and still shares its base: a write to it leaves the backup alone.
  fs.writeFileSync(clone, Buffer.alloc(blockBytes, 1), { flag: 'r+' })
  t.is(eioOrOriginal(t, readBlocks(m.image('backups', 'b.img'), 100), original, 'backup after a clone write'), 0)
  await m.umount()
  t.is((await vdiskfs('verify', m.pool)).code, 0)
})

test.serial('a damaged page id in a volume\'s root never sends its reads to another volume\'s page; repair restores the root', async t => {
  const m = await withMount(t)
  const d = m.image('disks', 'd.img')
  const e = m.image('disks', 'e.img')
  await run('dd', ['if=/dev/urandom', `of=${d}`, 'bs=64k', 'count=20', 'conv=fsync', 'status=none'])
  await run('dd', ['if=/dev/urandom', `of=${e}`, 'bs=64k', 'count=20', 'conv=fsync', 'status=none'])
  const original = fs.readFileSync(d)
  await m.umount()
  const db = new Database(path.join(m.pool, 'catalog.sqlite'))
  // The root's first page id is in its first piece (catalog/root-pieces.ts): the byte is damaged there.
  const hash = firstPieceOf(db, 'disk', 'd.img')
  const piece = Buffer.from(db.prepare('SELECT ids FROM root_pieces WHERE hash = ?').pluck().get(hash) as Buffer)
  const other = storedRootOf(db, 'disk', 'e.img').readBigUInt64LE(0)
  t.not(piece.readBigUInt64LE(0), other)
  piece[0] = Number(other & 0xffn) // one damaged byte: d's page id now names e's page
  t.is(piece.readBigUInt64LE(0), other)
  db.prepare('UPDATE root_pieces SET ids = ? WHERE hash = ?').run(piece, hash)
  db.close()
  const mounted = await vdiskfs('mount', m.pool, m.mnt)
  if (mounted.code === 0) {
    m.pid = Number(fs.readFileSync(path.join(m.pool, 'daemon.pid'), 'utf8'))
    eioOrOriginal(t, readBlocks(d, 20), original, 'disk')
    await m.umount()
  } else {
    t.regex(mounted.stderr, /root.*vdiskfs repair/)
  }
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  await m.mount()
  t.is(eioOrOriginal(t, readBlocks(d, 20), original, 'disk'), 0)
})

test.serial('while a map holds lost blocks gc frees nothing and says why; rewriting them lifts the hold', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=20', 'conv=fsync', 'status=none'])
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  await m.umount()
  const pack = path.join(m.pool, 'packs', fs.readdirSync(path.join(m.pool, 'packs'))[0])
  fs.truncateSync(pack, fs.statSync(pack).size - 2 * 65536) // the last two chunks are gone
  t.is((await vdiskfs('repair', m.pool)).code, 0)
  await m.mount()
  const blocks = readBlocks(disk, 20)
  const lost = blocks.flatMap((b, i) => b === 'EIO' ? [i] : [])
  t.true(lost.length >= 2)
  // Garbage that gc would free in a healthy pool: a second disk, sealed, then removed.
  const other = m.image('disks', 'other.img')
  await run('dd', ['if=/dev/urandom', `of=${other}`, 'bs=64k', 'count=10', 'conv=fsync', 'status=none'])
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  fs.unlinkSync(other)
  const held = await vdiskfs('gc', m.mnt, '--json')
  const heldReport = JSON.parse(held.stdout) as { chunksFreed: number, held?: string }
  t.is(heldReport.chunksFreed, 0)
  t.regex(heldReport.held ?? '', /lost/)
  t.regex((await vdiskfs('gc', m.mnt)).stdout, /freed no map pages, extents or chunks: .*lost/)
  const fd = fs.openSync(disk, 'r+')
  for (const b of lost) fs.writeSync(fd, Buffer.alloc(65536, 9), 0, 65536, b * 65536)
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  const freed = JSON.parse((await vdiskfs('gc', m.mnt, '--json')).stdout) as { chunksFreed: number, held?: string }
  t.is(freed.held, undefined)
  t.true(freed.chunksFreed >= 10, `${freed.chunksFreed} chunks freed`)
})

test.serial('after repair drops a lost extent, its volume takes new writes', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'e.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=4', 'conv=fsync', 'status=none'])
  await m.terminate()
  fs.rmSync(path.join(m.pool, 'extents', '1.dx')) // e.img's active extent, not sealed yet
  t.is((await vdiskfs('repair', m.pool)).code, 0)
  await m.mount()
  const block = Buffer.alloc(65536, 3)
  const fd = fs.openSync(disk, 'r+')
  try {
    fs.writeSync(fd, block, 0, block.length, 0)
    fs.fsyncSync(fd)
  } finally { fs.closeSync(fd) }
  t.true((readBlocks(disk, 1)[0] as Buffer).equals(block))
})

test.serial('a flipped byte in a legacy (unchecksummed) map page costs only that entry, and no pack is deleted', async t => {
  const m = await withMount(t)
  const original = await diskWithBackupSealed(m, 100)
  await m.umount()
  const packs = packFiles(m.pool)
  flipPageByte(m.pool, 'd.img', 10 * 8 + 7, 0xff, true)
  t.is((await vdiskfs('verify', m.pool)).code, 1)
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  const report = JSON.parse(repair.stdout) as { entriesLost: number, pagesReplaced: number }
  t.is(report.pagesReplaced, 0)
  t.is(report.entriesLost, 1, 'entry 10 alone: nothing proves what it held')
  await m.mount()
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  t.is(eioOrOriginal(t, readBlocks(m.image('disks', 'd.img'), 100), original, 'disk'), 1)
  t.is(eioOrOriginal(t, readBlocks(m.image('backups', 'b.img'), 100), original, 'backup'), 1)
  t.deepEqual(packFiles(m.pool).filter(f => f.startsWith('packs/')), packs, 'every pack is still there')
})

test.serial('an extent file an interrupted deletion left behind is not reported as damage; one of an unknown volume is', async t => {
  const m = await withMount(t)
  await run('dd', ['if=/dev/urandom', `of=${m.image('disks', 'd.img')}`, 'bs=64k', 'count=4', 'conv=fsync', 'status=none'])
  await m.umount()
  const extents = path.join(m.pool, 'extents')
  const source = path.join(extents, fs.readdirSync(extents).filter(f => f.endsWith('.dx'))[0] ?? '1.dx')
  // gc and sealing delete the catalog row first, then the file: a kill in between leaves this.
  fs.copyFileSync(source, path.join(extents, '990.dx'))
  const verify = await vdiskfs('verify', m.pool)
  t.is(verify.code, 0, verify.stdout)
  // The same file written by a volume the catalog does not know: the catalog lost something.
  const foreign = Buffer.from(fs.readFileSync(source))
  foreign.writeBigUInt64LE(777n, 24)
  fs.writeFileSync(path.join(extents, '991.dx'), foreign)
  const damaged = await vdiskfs('verify', m.pool)
  t.is(damaged.code, 1)
  t.regex(damaged.stdout, /extents\/991\.dx/)
  t.notRegex(damaged.stdout, /990\.dx/)
})
