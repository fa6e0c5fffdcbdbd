/**
 * Damage to a pool (issue #5): a damaged catalog, a truncated pack, a lost extent file and foreign
 * files. Each is refused with one clear line or served with EIO for exactly the damaged ranges;
 * `vdiskfs verify` names them and exits non-zero; `vdiskfs repair` rebuilds what it can and the pool
 * mounts again, with every undamaged byte intact.
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { run, vdiskfs, withMount } from '../helpers/mount'

function readBlocks (file: string, blockBytes: number, count: number): Array<Buffer | string> {
  const out: Array<Buffer | string> = []
  for (let b = 0; b < count; b++) {
    const fd = fs.openSync(file, 'r')
    try {
      const buf = Buffer.alloc(blockBytes)
      fs.readSync(fd, buf, 0, blockBytes, b * blockBytes)
      out.push(buf)
    } catch (err) { out.push((err as NodeJS.ErrnoException).code ?? 'error') } finally { fs.closeSync(fd) }
  }
  return out
}

test.serial('a truncated pack: verify names the damage, repair quarantines it, the rest reads back', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=200', 'status=none'])
  const original = fs.readFileSync(disk)
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  await m.umount()
  const pack = path.join(m.pool, 'packs', fs.readdirSync(path.join(m.pool, 'packs'))[0])
  fs.truncateSync(pack, fs.statSync(pack).size - 10 * 65536)
  fs.writeFileSync(path.join(m.pool, 'stray.txt'), 'not ours')
  const verify = await vdiskfs('verify', m.pool)
  t.is(verify.code, 1)
  t.regex(verify.stdout, /DAMAGE FOUND/)
  t.regex(verify.stdout, /disks\/d\.img bytes \d+-\d+/)
  const repair = await vdiskfs('repair', m.pool)
  t.is(repair.code, 0, repair.stderr)
  t.regex(repair.stdout, /blocks marked lost/)
  t.regex(repair.stdout, /quarantined stray\.txt/)
  t.false(fs.existsSync(path.join(m.pool, 'stray.txt')))
  await m.mount()
  const blocks = readBlocks(disk, 65536, 200)
  const lost = blocks.filter(b => b === 'EIO').length
  t.true(lost >= 10 && lost <= 11, `${lost} blocks fail with EIO`)
  blocks.forEach((b, i) => { if (Buffer.isBuffer(b)) t.true(b.equals(original.subarray(i * 65536, (i + 1) * 65536)), `block ${i}`) })
  // Writing the whole block replaces a lost one.
  const lostIndex = blocks.indexOf('EIO')
  const fd = fs.openSync(disk, 'r+')
  fs.writeSync(fd, Buffer.alloc(65536, 7), 0, 65536, lostIndex * 65536)
  fs.closeSync(fd)
  t.true((readBlocks(disk, 65536, lostIndex + 1)[lostIndex] as Buffer).equals(Buffer.alloc(65536, 7)))
})

test.serial('a lost extent file: EIO for its blocks only, and repair makes the pool consistent', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'e.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=20', 'conv=fsync', 'status=none'])
  const other = m.image('disks', 'other.img')
  await run('dd', ['if=/dev/urandom', `of=${other}`, 'bs=64k', 'count=5', 'conv=fsync', 'status=none'])
  const otherBytes = fs.readFileSync(other)
  await m.terminate()
  // e.img's active extent (the first one made) holds its 20 blocks; it is not sealed yet (idle < 10 s).
  fs.rmSync(path.join(m.pool, 'extents', '1.dx'))
  await m.mount()
  t.deepEqual(readBlocks(disk, 65536, 20).filter(b => b === 'EIO').length, 20)
  t.true(fs.readFileSync(other).equals(otherBytes))
  const verify = await vdiskfs('verify', m.mnt, '--json')
  t.is(verify.code, 1)
  const report = JSON.parse(verify.stdout) as { damaged: Array<{ volume: string }> }
  t.deepEqual([...new Set(report.damaged.map(d => d.volume))], ['e.img'])
  await m.umount()
  t.is((await vdiskfs('repair', m.pool)).code, 0)
  await m.mount()
  t.true(fs.readFileSync(other).equals(otherBytes))
  t.is(readBlocks(disk, 65536, 20).filter(b => b === 'EIO').length, 20)
})

test.serial('a damaged catalog is refused with one line; repair makes the pool mountable again', async t => {
  const m = await withMount(t)
  fs.writeFileSync(m.image('disks', 'x.img'), 'data')
  await m.umount()
  const catalog = path.join(m.pool, 'catalog.sqlite')
  for (const f of fs.readdirSync(m.pool)) if (f.startsWith('catalog.sqlite-')) fs.rmSync(path.join(m.pool, f))
  const fd = fs.openSync(catalog, 'r+')
  fs.writeSync(fd, Buffer.alloc(100, 0x41), 0, 100, 0)
  fs.closeSync(fd)
  const refused = await vdiskfs('mount', m.pool, m.mnt)
  t.not(refused.code, 0)
  t.is(refused.stderr.trim().split('\n').length, 1)
  t.regex(refused.stderr, /catalog .* is damaged.*vdiskfs repair/)
  const repair = await vdiskfs('repair', m.pool)
  t.is(repair.code, 0, repair.stderr)
  t.regex(repair.stdout, /catalog rebuilt/)
  await m.mount()
  t.true(fs.existsSync(path.join(m.mnt, 'disks')))
})

test.serial('a pool from a newer format, or a directory that is not a pool, is refused with one line', async t => {
  const m = await withMount(t)
  await m.umount()
  const header = path.join(m.pool, 'vdiskfs-pool.json')
  const json = JSON.parse(fs.readFileSync(header, 'utf8'))
  fs.writeFileSync(header, JSON.stringify({ ...json, formatVersion: 99 }))
  const newer = await vdiskfs('mount', m.pool, m.mnt)
  t.regex(newer.stderr, /^vdiskfs mount: .* format version 99, newer than this vdiskfs reads/)
  fs.writeFileSync(header, JSON.stringify({ ...json, magic: 'other' }))
  t.regex((await vdiskfs('mount', m.pool, m.mnt)).stderr, /is not a vdiskfs pool/)
  const notPool = path.join(m.dir, 'notpool')
  fs.mkdirSync(notPool)
  fs.writeFileSync(path.join(notPool, 'file'), 'x')
  const result = await vdiskfs('mount', notPool, m.mnt)
  t.regex(result.stderr, /^vdiskfs mount: .*notpool exists but is not a vdiskfs pool/)
  t.is(result.stderr.trim().split('\n').length, 1)
  fs.writeFileSync(header, JSON.stringify(json))
})
