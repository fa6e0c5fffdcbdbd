/**
 * Issue #20's fast path (docs/FASTPATH.md): READs of whole delta slots and holes answered by the addon's
 * threads. Every read here is a direct read (dd iflag=direct: the daemon serves it, not the kernel's page
 * cache), compared with a model of the image after each change the engine makes under the published
 * words: overwrites in place, new slots after a backup froze the extent, a shrink and a grow, a restore,
 * sealing and gc removing the extents the words named. The addon's counters show it served them. And
 * damage that appears after a block was published is still EIO plus a report, never the damaged bytes.
 */
import test, { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { logMatching, run, TestMount, vdiskfs, withMount } from '../helpers/mount'
import { slotOffset } from '../../src/format/extent-format'
import { blake3Hex } from '../../src/remote/remote-format'

const execFileAsync = promisify(execFile)
const KiB = 1024
const MiB = 1024 * KiB

interface FastStats { fastOn: number, fastServed: number, fastHanded: number, fastMismatches: number, fastExtents: number }

async function fastStats (mnt: string): Promise<FastStats> {
  const result = await vdiskfs('status', mnt, '--json')
  if (result.code !== 0) throw new Error(result.stderr)
  return (JSON.parse(result.stdout) as { daemon: { fuse3: FastStats } }).daemon.fuse3
}

/** `length` bytes at `offset` of `file` read with O_DIRECT in 4 KiB requests (offset and length whole 4 KiB). */
async function readDirect (file: string, offset: number, length: number, scratch: string): Promise<Buffer> {
  await run('dd', [`if=${file}`, `of=${scratch}`, 'bs=4k', `skip=${offset / 4096}`, `count=${length / 4096}`, 'iflag=direct', 'status=none'])
  return fs.readFileSync(scratch)
}

/** Writes `data` at `offset` of `file` and of `model`, fsynced. */
function writeBoth (file: string, model: Buffer, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try {
    fs.writeSync(fd, data, 0, data.length, offset)
    fs.fsyncSync(fd)
  } finally { fs.closeSync(fd) }
  data.copy(model, offset)
}

test.serial('the addon answers READs of delta slots and holes, and sees every change the engine makes', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'fast.img')
  const scratch = path.join(m.dir, 'read.bin')
  const size = 8 * MiB
  const model = Buffer.alloc(size)
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, size)
  writeBoth(disk, model, 0, crypto.randomBytes(4 * MiB))
  const check = async (what: string): Promise<void> => {
    const got = await readDirect(disk, 0, size, scratch)
    t.is(got.length, model.length, `${what}: length`)
    t.true(got.equals(model), `${what}: the image reads as the model`)
    // A second pass: the first taught the addon the blocks the engine served.
    t.true((await readDirect(disk, 0, size, scratch)).equals(model), `${what}: again`)
  }
  await check('written')
  const first = await fastStats(m.mnt)
  t.is(first.fastOn, 1)
  t.true(first.fastServed > 0, 'the addon served reads itself')

  // Overwrites in place (the extent is still writable): aligned, odd offsets, across blocks.
  writeBoth(disk, model, 64 * KiB, crypto.randomBytes(4 * KiB))
  writeBoth(disk, model, 100_000, crypto.randomBytes(70_000))
  writeBoth(disk, model, 6 * MiB + 123, crypto.randomBytes(300)) // into a hole: a new slot
  await check('overwritten')

  // A backup freezes the extent: the next writes take new slots, the words must follow them.
  t.is((await vdiskfs('backup', disk, 'fast-b1')).code, 0)
  const backupModel = Buffer.from(model)
  writeBoth(disk, model, 0, crypto.randomBytes(256 * KiB))
  writeBoth(disk, model, 3 * MiB - 5, crypto.randomBytes(10))
  await check('after a backup')

  // A shrink, then a grow: what was cut reads as zeros.
  fs.truncateSync(disk, 1 * MiB + 512)
  fs.truncateSync(disk, size)
  model.fill(0, 1 * MiB + 512)
  await check('shrunk and grown')

  // Restore: every block reads the backup's bytes again.
  const restored = await vdiskfs('restore', m.image('backups', 'fast-b1.img'), disk)
  t.is(restored.code, 0, restored.stderr)
  backupModel.copy(model)
  await check('restored')

  // Sealing repoints the blocks to chunks and gc removes the extents the words named.
  writeBoth(disk, model, 2 * MiB, crypto.randomBytes(128 * KiB))
  await check('before sealing')
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  await check('sealed and collected')
  writeBoth(disk, model, 2 * MiB + 4096, crypto.randomBytes(8 * KiB))
  await check('written after sealing')

  // A volume removed and one made under the same name: nothing of the old one is served.
  t.is((await vdiskfs('rm', disk)).code, 0)
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, size)
  model.fill(0)
  writeBoth(disk, model, 1 * MiB, crypto.randomBytes(64 * KiB))
  await check('a new volume under the old name')

  const last = await fastStats(m.mnt)
  t.true(last.fastServed > first.fastServed, 'served more of them')
  t.is(last.fastMismatches, 0)
  // What an admin sees: a line in status, counters for Prometheus.
  t.regex((await vdiskfs('status', m.mnt)).stdout, /^fast path: +\d+ READs answered in the addon's threads, \d+ handed to the engine/m)
  const metrics = (await vdiskfs('status', m.mnt, '--prometheus')).stdout
  const served = /^vdiskfs_fast_reads_total(?:\{[^}]*\})? (\d+)$/m.exec(metrics)
  t.truthy(served, 'vdiskfs_fast_reads_total is exported')
  t.true(Number(served?.[1]) >= last.fastServed)
})

test.serial('damage found by the addon after a block was published is EIO and a report, never the bytes', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'damage.img')
  const scratch = path.join(m.dir, 'read.bin')
  const data = crypto.randomBytes(64 * KiB)
  fs.writeFileSync(disk, data)
  const fd = fs.openSync(disk, 'r+')
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  // Twice: the engine answers the first read and publishes the block, the addon the second.
  t.true((await readDirect(disk, 0, 64 * KiB, scratch)).equals(data))
  const before = await fastStats(m.mnt)
  t.true((await readDirect(disk, 0, 64 * KiB, scratch)).equals(data))
  const published = await fastStats(m.mnt)
  t.is(published.fastServed - before.fastServed, 16, 'the addon served the second read (16 requests of 4 KiB)')
  // One bit flipped in the extent's slot 0, behind the daemon's back (its descriptors see it at once).
  const extents = fs.readdirSync(path.join(m.pool, 'extents')).filter(f => f.endsWith('.dx'))
  t.is(extents.length, 1)
  const file = path.join(m.pool, 'extents', extents[0])
  const at = slotOffset(0, 64 * KiB) + 5000
  const efd = fs.openSync(file, 'r+')
  const byte = Buffer.alloc(1)
  fs.readSync(efd, byte, 0, 1, at)
  byte[0] ^= 0x10
  fs.writeSync(efd, byte, 0, 1, at)
  fs.closeSync(efd)
  // The sector holding it fails; the others still read.
  await t.throwsAsync(readDirect(disk, 4096, 4096, scratch), { message: /Input\/output error/ })
  t.true((await readDirect(disk, 8192, 8192, scratch)).equals(data.subarray(8192, 16384)))
  const after = await fastStats(m.mnt)
  t.true(after.fastMismatches > published.fastMismatches, 'the addon met the damage and handed the read over')
  t.regex(fs.readFileSync(path.join(m.pool, 'daemon.log'), 'utf8'), /corruption: delta extent \d+ slot 0 sector 1: checksum mismatch/)
})

async function sha256 (file: string): Promise<string> {
  return crypto.createHash('sha256').update(await fs.promises.readFile(file)).digest('hex')
}

test.serial('native overwrites: fio verifies every block while backups, sealing and gc run beside it, and no backup changes after it was taken', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'writes.img')
  const size = 32 * MiB
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, size)
  // The engine writes every block first (new slots) and publishes them: fio's overwrites are native.
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', `count=${size / MiB}`, 'conv=notrunc,fsync', 'status=none'])
  const before = await fastStats(m.mnt) as FastStats & { fastWritten: number, fastWriteHanded: number }
  // fio overwrites 4 KiB blocks at random for 6 s (direct I/O: every request reaches the daemon) while
  // backups, sealing and gc run beside it; then it writes every block once more, each with a checksum
  // of its own, and reads them all back and checks them.
  const fio = execFileAsync('fio', ['--name=overwrite', `--filename=${disk}`, '--rw=randwrite', '--bs=4k', `--size=${size}`, '--direct=1',
    '--ioengine=psync', '--time_based', '--runtime=6'])
  let fioDone = false
  void fio.then(() => { fioDone = true }, () => { fioDone = true })
  const backups: Array<{ name: string, hash: string }> = []
  for (let i = 0; !fioDone && i < 60; i++) {
    const name = `w${i}`
    t.is((await vdiskfs('backup', disk, name)).code, 0)
    backups.push({ name, hash: await sha256(m.image('backups', `${name}.img`)) })
    if (i % 3 === 2) t.is((await vdiskfs('sync', m.mnt)).code, 0)
    if (i % 5 === 4) t.is((await vdiskfs('gc', m.mnt)).code, 0)
  }
  await fio
  const verified = await execFileAsync('fio', ['--name=verify', `--filename=${disk}`, '--rw=randwrite', '--bs=4k', `--size=${size}`, '--direct=1',
    '--ioengine=psync', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1']).then(r => ({ ok: true, out: r.stdout + r.stderr }),
    (err: Error & { stdout?: string, stderr?: string }) => ({ ok: false, out: `${err.message} ${err.stdout ?? ''} ${err.stderr ?? ''}` }))
  t.true(verified.ok, `fio verify: ${verified.out}`)
  t.true(backups.length > 0, 'backups were taken while fio wrote')
  for (const b of backups) t.is(await sha256(m.image('backups', `${b.name}.img`)), b.hash, `backup ${b.name} holds what it held when it was taken`)
  const after = await fastStats(m.mnt) as FastStats & { fastWritten: number, fastWriteHanded: number }
  t.true(after.fastWritten > before.fastWritten, 'the addon overwrote slots itself')
  t.true(after.fastWriteHanded > before.fastWriteHanded, 'writes after each backup went to the engine (copy-on-write)')
  t.regex((await vdiskfs('status', m.mnt)).stdout, /WRITEs written in the addon's threads \(\d+ blocks in new slots\)/)
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
  // What fsync made durable is what the next mount reads.
  const fd = fs.openSync(disk, 'r+')
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  const hash = await sha256(disk)
  await m.umount()
  await m.mount()
  t.is(await sha256(disk), hash, 'the image after umount and mount')
})

/** fio writing `bs` pieces of `file` at random for `seconds` (direct I/O: every request reaches the daemon). */
async function fioRandwrite (file: string, size: number, seconds: number, bs: string): Promise<unknown> {
  return await execFileAsync('fio', ['--name=first', `--filename=${file}`, '--rw=randwrite', `--bs=${bs}`, `--size=${size}`, '--direct=1',
    '--ioengine=psync', '--numjobs=2', '--time_based', `--runtime=${seconds}`])
}

/** fio writing every 4 KiB block of `file` once more, each with a checksum of its own, then reading all back: its verdict. */
async function fioVerify (file: string, size: number, bs = '4k'): Promise<{ ok: boolean, out: string }> {
  return await execFileAsync('fio', ['--name=verify', `--filename=${file}`, '--rw=randwrite', `--bs=${bs}`, `--size=${size}`, '--direct=1',
    '--ioengine=psync', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1']).then(r => ({ ok: true, out: r.stdout + r.stderr }),
    (err: Error & { stdout?: string, stderr?: string }) => ({ ok: false, out: `${err.message} ${err.stdout ?? ''} ${err.stderr ?? ''}` }))
}

test.serial('native first writes: holes, sealed chunks and shared blocks get new slots in the addon (partial slots over chunks too); fio verifies, backups beside them keep their bytes, and SIGKILL after fsync loses nothing', async t => {
  const m = await withMount(t)
  const size = 32 * MiB
  type Stats = FastStats & { fastWritten: number, fastAllocated: number }
  // A fresh disk (every block a hole), and a clone of a sealed backup of random data (every block a chunk).
  const disk = m.image('disks', 'first.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, size)
  const source = m.image('disks', 'source.img')
  fs.writeFileSync(source, '')
  fs.truncateSync(source, size)
  await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', `count=${size / MiB}`, 'conv=notrunc,fsync', 'status=none'])
  t.is((await vdiskfs('backup', source, 'base')).code, 0)
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'base.img'), 'c')).code, 0)
  const clone = m.image('clones', 'c.img')
  const baseHash = await sha256(m.image('backups', 'base.img'))
  // The addon learns the blocks from a read of each image (reads publish their map pages).
  await readDirect(disk, 0, MiB, path.join(m.dir, 'scratch.bin'))
  await readDirect(clone, 0, MiB, path.join(m.dir, 'scratch.bin'))
  // A second clone, written at random 4 KiB pieces of known bytes (each the first write of part of a
  // sealed block, or an overwrite of a partial slot), read back with O_DIRECT against a model: the
  // pieces written, and the chunk's bytes around them.
  t.is((await vdiskfs('clone', m.image('backups', 'base.img'), 'c2')).code, 0)
  const clone2 = m.image('clones', 'c2.img')
  const model = fs.readFileSync(source)
  await readDirect(clone2, 0, MiB, path.join(m.dir, 'scratch.bin'))
  const start = await fastStats(m.mnt) as Stats
  const fd2 = fs.openSync(clone2, 'r+')
  for (let i = 0; i < 1500; i++) {
    const piece = crypto.randomBytes(4096)
    const at = crypto.randomInt(size / 4096) * 4096
    fs.writeSync(fd2, piece, 0, piece.length, at)
    piece.copy(model, at)
  }
  fs.fsyncSync(fd2)
  fs.closeSync(fd2)
  const partial = await fastStats(m.mnt) as Stats
  t.true(partial.fastAllocated > start.fastAllocated, `the addon made partial slots over the chunks (${partial.fastAllocated - start.fastAllocated})`)
  t.true((await readDirect(clone2, 0, size, path.join(m.dir, 'scratch.bin'))).equals(model), 'the clone written in pieces reads as the model')
  const before = await fastStats(m.mnt) as Stats
  // Random 4 KiB writes (pieces of 64 KiB blocks) on both for 5 s, while backups of both, sealing and
  // gc run beside them: first writes of part of a hole (a fresh slot), of part of a sealed chunk (a
  // partial slot over it, its base entry written by the addon), and overwrites of both.
  const writers = Promise.all([fioRandwrite(disk, size, 5, '4k'), fioRandwrite(clone, size, 5, '4k')])
  let done = false
  void writers.then(() => { done = true }, () => { done = true })
  const backups: Array<{ image: string, hash: string }> = []
  for (let i = 0; !done && i < 40; i++) {
    for (const [file, name] of [[disk, `f${i}`], [clone, `c${i}`]]) {
      t.is((await vdiskfs('backup', file, name)).code, 0)
      backups.push({ image: m.image('backups', `${name}.img`), hash: await sha256(m.image('backups', `${name}.img`)) })
    }
    if (i % 3 === 2) t.is((await vdiskfs('sync', m.mnt)).code, 0)
    if (i % 4 === 3) t.is((await vdiskfs('gc', m.mnt)).code, 0)
  }
  await writers
  const middle = await fastStats(m.mnt) as Stats
  t.true(middle.fastAllocated > before.fastAllocated, `the addon gave blocks new slots itself (${middle.fastAllocated - before.fastAllocated})`)
  // Every block once more, each with a checksum of its own, then read back: a fresh disk's holes and
  // a clone's chunks alike (the blocks fio did not reach above are still first writes).
  for (const [file, bs] of [[disk, '4k'], [clone, '64k']]) {
    const verified = await fioVerify(file, size, bs)
    t.true(verified.ok, `fio verify of ${path.basename(file)}: ${verified.out}`)
  }
  t.true(backups.length > 0, 'backups were taken while fio wrote')
  for (const b of backups) t.is(await sha256(b.image), b.hash, `${path.basename(b.image)} holds what it held when it was taken`)
  t.is(await sha256(m.image('backups', 'base.img')), baseHash, 'the clone\'s sealed backup is unchanged')
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
  // fsync, then SIGKILL: what fsync made durable is what the next daemon reads.
  const hashes: string[] = []
  for (const file of [disk, clone]) {
    const fd = fs.openSync(file, 'r+')
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    hashes.push(await sha256(file))
  }
  await m.kill()
  await m.mount()
  t.deepEqual([await sha256(disk), await sha256(clone)], hashes, 'the images after SIGKILL and a new mount')
  t.true((await readDirect(clone2, 0, size, path.join(m.dir, 'scratch.bin'))).equals(model), 'the clone written in pieces, after SIGKILL and a new mount')
  const again = await vdiskfs('verify', m.mnt)
  t.is(again.code, 0, again.stdout + again.stderr)
})

test.serial('native overwrites show in the mtime at once, and a time set afterwards stays', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'times.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, MiB)
  // The engine writes the block first (and publishes it), then overwrites are native.
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'])
  const before = await fastStats(m.mnt) as FastStats & { fastWritten: number }
  fs.utimesSync(disk, new Date('2001-01-01T00:00:00Z'), new Date('2001-01-01T00:00:00Z'))
  const started = Date.now()
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=4k', 'count=1', 'seek=3', 'oflag=direct', 'conv=notrunc', 'status=none'])
  t.true((await fastStats(m.mnt) as FastStats & { fastWritten: number }).fastWritten > before.fastWritten, 'the overwrite was native')
  // The kernel keeps attributes for a second: past that, stat asks the daemon.
  await new Promise(resolve => setTimeout(resolve, 1200))
  t.true(fs.statSync(disk).mtimeMs >= started - 1000, 'stat after a native write shows its time, not the one before')
  // A time set after native writes is the time, also after the daemon's next commits (every commitIntervalMs).
  fs.utimesSync(disk, new Date('2000-01-01T00:00:00Z'), new Date('2000-01-01T00:00:00Z'))
  await new Promise(resolve => setTimeout(resolve, 7000))
  t.is(fs.statSync(disk).mtime.toISOString(), '2000-01-01T00:00:00.000Z')
  await m.umount()
  await m.mount()
  t.is(fs.statSync(disk).mtime.toISOString(), '2000-01-01T00:00:00.000Z', 'and after umount and mount')
})

/**
 * A child that, for `ms`, reads (mode 'read') or writes (mode 'write') the 4 KiB sector at offset 0 of
 * `file` with O_DIRECT. A writer fills the sector with one 8-byte value repeated, a new value each time;
 * a reader checks that each read is one whole version (all 512 values equal) and counts EIO and torn
 * reads. Prints `{ ops, eio, torn }`.
 */
const sectorRacer = `
const fs = require('fs')
const [mode, file, ms, seed] = process.argv.slice(2)
const fd = fs.openSync(file, (mode === 'read' ? fs.constants.O_RDONLY : fs.constants.O_WRONLY) | fs.constants.O_DIRECT)
const buf = Buffer.alloc(4096)
const end = Date.now() + Number(ms)
let ops = 0, eio = 0, torn = 0, value = BigInt(seed) << 40n
while (Date.now() < end) {
  ops++
  if (mode === 'write') {
    value++
    for (let i = 0; i < 512; i++) buf.writeBigUInt64LE(value, i * 8)
    fs.writeSync(fd, buf, 0, 4096, 0)
    continue
  }
  try { fs.readSync(fd, buf, 0, 4096, 0) } catch (err) { if (err.code === 'EIO') { eio++; continue } throw err }
  const first = buf.readBigUInt64LE(0)
  for (let i = 1; i < 512; i++) if (buf.readBigUInt64LE(i * 8) !== first) { torn++; break }
}
console.log(JSON.stringify({ ops, eio, torn }))
`

async function raceOneSector (t: ExecutionContext, fastWrites: boolean): Promise<void> {
  const saved = process.env.VDISKFS_FAST_WRITES
  if (!fastWrites) process.env.VDISKFS_FAST_WRITES = '0'
  let m: TestMount
  try { m = await withMount(t) } finally { if (saved === undefined) delete process.env.VDISKFS_FAST_WRITES; else process.env.VDISKFS_FAST_WRITES = saved }
  const disk = m.image('disks', 'race.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, MiB)
  // The engine writes the block first (a new slot); the racing overwrites are in place.
  await run('dd', ['if=/dev/zero', `of=${disk}`, 'bs=4k', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none'])
  const script = path.join(m.dir, 'racer.js')
  fs.writeFileSync(script, sectorRacer)
  const racer = async (mode: string, seed: number): Promise<{ ops: number, eio: number, torn: number }> =>
    JSON.parse((await execFileAsync(process.execPath, [script, mode, disk, '6000', String(seed)])).stdout)
  const [reads, ...writes] = await Promise.all([racer('read', 0), racer('write', 1), racer('write', 2)])
  t.log(`reads ${reads.ops}, writes ${writes.map(w => w.ops).join(' + ')}`)
  t.true(reads.ops > 0 && writes.every(w => w.ops > 0))
  t.is(reads.torn, 0, 'every read is one whole version of the sector')
  t.is(reads.eio, 0, 'no read of a sector being overwritten fails')
  t.notRegex(fs.readFileSync(path.join(m.pool, 'daemon.log'), 'utf8'), /corruption/, 'and none is reported as damage')
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
}

test.serial('O_DIRECT reads of a sector that writers keep overwriting are whole versions, never EIO (native writes)', async t => {
  await raceOneSector(t, true)
})

test.serial('O_DIRECT reads of a sector that writers keep overwriting are whole versions, never EIO (engine writes)', async t => {
  await raceOneSector(t, false)
})

test.serial('the addon reads sealed chunks itself: a clone of a sealed backup reads as its source, across compaction, a 4k read opens one 16 KiB piece, and damage is EIO plus a report', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'sealed.img')
  const scratch = path.join(m.dir, 'read.bin')
  const size = 8 * MiB
  const blocks = size / (64 * KiB)
  // Half random (pieces kept raw in their frames), half compressible (zstd pieces: docs/FORMAT.md), each block its own chunk.
  const text = Array.from({ length: blocks / 2 }, (_, b) => Buffer.alloc(64 * KiB, `vdiskfs sealed chunk ${b} `))
  const model = Buffer.concat([crypto.randomBytes(size / 2), ...text])
  fs.writeFileSync(disk, model)
  t.is((await vdiskfs('backup', disk, 'b0')).code, 0)
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b0.img'), 'c0')).code, 0)
  const clone = m.image('clones', 'c0.img')
  const before = await fastStats(m.mnt) as FastStats & { fastChunkReads: number }
  // The first pass goes to the engine (and publishes the words), the second is the addon's.
  t.true((await readDirect(clone, 0, size, scratch)).equals(model), 'the clone reads as its source')
  t.true((await readDirect(clone, 0, size, scratch)).equals(model), 'and again')
  t.true((await readDirect(m.image('backups', 'b0.img'), 0, size, scratch)).equals(model), 'the backup too')
  const after = await fastStats(m.mnt) as FastStats & { fastChunkReads: number }
  t.true(after.fastChunkReads - before.fastChunkReads >= size / (64 * KiB), `the addon read the sealed chunks (${after.fastChunkReads - before.fastChunkReads} reads)`)
  t.regex((await vdiskfs('status', m.mnt)).stdout, /reads of sealed chunks in the addon's threads, \d+ 16 KiB pieces opened/)

  // Compaction moves the chunks the clone names to a new pack and deletes the old one: a backup of
  // other data, sealed into the same pack and then removed, leaves it sparse enough to be compacted.
  const other = m.image('disks', 'other.img')
  fs.writeFileSync(other, crypto.randomBytes(24 * MiB))
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.true((await readDirect(clone, 0, size, scratch)).equals(model), 'the clone beside more sealed data')
  t.is((await vdiskfs('rm', other)).code, 0)
  t.is((await vdiskfs('rm', disk)).code, 0)
  const gc = await vdiskfs('gc', m.mnt, '--json')
  t.is(gc.code, 0, gc.stderr)
  t.true((JSON.parse(gc.stdout) as { packsFreed: number }).packsFreed > 0, `compaction moved chunks out of a pack and deleted it: ${gc.stdout}`)
  for (let pass = 0; pass < 2; pass++) t.true((await readDirect(clone, 0, size, scratch)).equals(model), `the clone after gc, pass ${pass}`)

  // A new daemon: nothing verified is cached anywhere. A read of another block publishes the map
  // page's words, so the next READs are the addon's: a 4 KiB read of a compressible (pieced) block
  // opens and checks the one 16 KiB piece it lies in, not the whole chunk.
  await m.umount()
  await m.mount()
  await run('dd', [`if=${clone}`, `of=${scratch}`, 'bs=4k', 'skip=80', 'count=1', 'iflag=direct', 'status=none'])
  type ChunkStats = FastStats & { fastChunkMismatches: number, fastChunkPieces: number }
  const beforePiece = await fastStats(m.mnt) as ChunkStats
  const pieced = blocks / 2 + 5
  await run('dd', [`if=${clone}`, `of=${scratch}`, 'bs=4k', `skip=${pieced * 16 + 5}`, 'count=1', 'iflag=direct', 'status=none'])
  t.true(fs.readFileSync(scratch).equals(model.subarray(pieced * 64 * KiB + 20 * KiB, pieced * 64 * KiB + 24 * KiB)), 'the 4k read of a pieced chunk')
  const afterPiece = await fastStats(m.mnt) as ChunkStats
  t.is(afterPiece.fastChunkPieces - beforePiece.fastChunkPieces, 1, 'one piece opened for a 4k read')
  t.is(afterPiece.fastChunkMismatches, beforePiece.fastChunkMismatches)
  // And of a random (incompressible) block: its pieces are kept raw in their frames, one read all the same.
  await run('dd', [`if=${clone}`, `of=${scratch}`, 'bs=4k', `skip=${7 * 16 + 9}`, 'count=1', 'iflag=direct', 'status=none'])
  t.true(fs.readFileSync(scratch).equals(model.subarray(7 * 64 * KiB + 36 * KiB, 7 * 64 * KiB + 40 * KiB)), 'the 4k read of an incompressible chunk')
  const afterRaw = await fastStats(m.mnt) as ChunkStats
  t.is(afterRaw.fastChunkPieces - afterPiece.fastChunkPieces, 1, 'one piece opened for a 4k read of an incompressible chunk')

  // Damage in chunks the addon has read: block 0's (random: a byte of its table's values), a byte in the third frame of
  // a pieced one, and a byte of another pieced one's table of values (its frames still decompress to the
  // right block: the table is checked too). Each fails its check in the addon; the engine reads it too
  // and reports it. Every record of them in any pack is damaged (a copy compaction left behind in a pack
  // not yet removed is not the one the index names).
  const piecedFrame = blocks / 2 + 1
  const piecedTable = blocks / 2 + 3
  const targets = new Map<string, (bytes: Buffer, payload: number) => number>([
    [blake3Hex(model.subarray(0, 64 * KiB)), (_bytes, payload) => payload + 100],
    [blake3Hex(model.subarray(piecedFrame * 64 * KiB, (piecedFrame + 1) * 64 * KiB)), (bytes, payload) => {
      t.is(bytes.readUInt32LE(payload), 0x184d2a56, 'a pieced payload')
      return payload + 164 + bytes.readUInt32LE(payload + 20) + bytes.readUInt32LE(payload + 24) + 3
    }],
    [blake3Hex(model.subarray(piecedTable * 64 * KiB, (piecedTable + 1) * 64 * KiB)), (bytes, payload) => {
      t.is(bytes.readUInt32LE(payload), 0x184d2a56, 'a pieced payload')
      return payload + 20 + 16 + 32 + 7
    }]
  ])
  const flipped = new Set<string>()
  for (const name of fs.readdirSync(path.join(m.pool, 'packs'))) {
    const file = path.join(m.pool, 'packs', name)
    const bytes = fs.readFileSync(file)
    for (let at = 64; at + 56 <= bytes.length;) {
      if (bytes.readUInt32LE(at) !== 0x4b434456) break
      const stored = bytes.readUInt32LE(at + 12)
      const where = targets.get(bytes.subarray(at + 16, at + 48).toString('hex'))
      if (where !== undefined) {
        const byte = where(bytes, at + 56)
        const fd = fs.openSync(file, 'r+')
        fs.writeSync(fd, Buffer.from([bytes[byte] ^ 0x10]), 0, 1, byte)
        fs.closeSync(fd)
        flipped.add(bytes.subarray(at + 16, at + 48).toString('hex'))
      }
      at += 56 + stored
    }
  }
  t.is(flipped.size, 3, 'the three chunks were found in a pack')
  await m.umount()
  await m.mount()
  await run('dd', [`if=${clone}`, `of=${scratch}`, 'bs=4k', 'skip=80', 'count=1', 'iflag=direct', 'status=none'])
  const damaged = await fastStats(m.mnt) as ChunkStats
  // Every block of the clone: the damaged ones fail (whichever thread reads them), no other does.
  const failed: number[] = []
  for (let block = 0; block < blocks; block++) {
    try {
      await run('dd', [`if=${clone}`, `of=${scratch}`, 'bs=4k', `skip=${block * 16}`, 'count=16', 'iflag=direct', 'status=none'])
      t.true(fs.readFileSync(scratch).equals(model.subarray(block * 64 * KiB, (block + 1) * 64 * KiB)), `block ${block}`)
    } catch { failed.push(block) }
  }
  t.deepEqual(failed, [0, piecedFrame, piecedTable], 'exactly the damaged blocks fail with EIO')
  const end = await fastStats(m.mnt) as ChunkStats
  t.true(end.fastChunkMismatches >= damaged.fastChunkMismatches + 3, `the addon met the damage and handed the reads over (${end.fastChunkMismatches - damaged.fastChunkMismatches})`)
  t.regex(await logMatching(m.pool, [/corruption: chunk \d+/]), /corruption: chunk \d+/)
})

test.serial('native overwrites of several blocks in one WRITE: 128 KiB and 1 MiB requests verify, and a backup taken before keeps its bytes', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'spans.img')
  const size = 16 * MiB
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, size)
  // The engine writes every block first (new slots); a read publishes them; then a backup, and the
  // engine's copy-on-write after it gives every block a slot of the disk's own again.
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', `count=${size / MiB}`, 'conv=notrunc,fsync', 'status=none'])
  t.is((await vdiskfs('backup', disk, 'before')).code, 0)
  const backupHash = await sha256(m.image('backups', 'before.img'))
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', `count=${size / MiB}`, 'conv=notrunc,fsync', 'oflag=direct', 'status=none'])
  await readDirect(disk, 0, size, path.join(m.dir, 'read.bin'))
  for (const bs of ['128k', '1M']) {
    const before = await fastStats(m.mnt) as FastStats & { fastWritten: number }
    const verified = await execFileAsync('fio', [`--name=spans${bs}`, `--filename=${disk}`, '--rw=write', `--bs=${bs}`, `--size=${size}`, '--direct=1',
      '--ioengine=psync', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1']).then(r => ({ ok: true, out: r.stdout + r.stderr }),
      (err: Error & { stdout?: string, stderr?: string }) => ({ ok: false, out: `${err.message} ${err.stdout ?? ''} ${err.stderr ?? ''}` }))
    t.true(verified.ok, `fio ${bs} verify: ${verified.out}`)
    const after = await fastStats(m.mnt) as FastStats & { fastWritten: number }
    // fio's verify writes each request once: most of them several blocks, overwritten in the addon.
    t.true(after.fastWritten - before.fastWritten >= size / (bs === '1M' ? MiB : 128 * KiB) / 2, `${bs}: ${after.fastWritten - before.fastWritten} native WRITEs`)
  }
  t.is(await sha256(m.image('backups', 'before.img')), backupHash, 'the backup holds what it held')
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
  const hash = await sha256(disk)
  await m.umount()
  await m.mount()
  t.is(await sha256(disk), hash, 'the image after umount and mount')
})

test.serial('a sparse disk\'s published words take memory for the blocks it holds, not for its size; its blocks and the holes beside them read right through writes, a backup and a shrink', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'sparse.img')
  const scratch = path.join(m.dir, 'read.bin')
  const size = 8 * 1024 * MiB
  const stride = 256 * MiB // one map page of 4,096 blocks of 64 KiB: 32 pages
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, size)
  // One block of data in each page (at a different place in its run of 64 blocks), holes around it.
  const blocks = new Map<number, Buffer>()
  const fd = fs.openSync(disk, 'r+')
  for (let k = 0; k < size / stride; k++) {
    const offset = k * stride + (k % 7) * 64 * KiB
    const data = crypto.randomBytes(64 * KiB)
    fs.writeSync(fd, data, 0, data.length, offset)
    blocks.set(offset, data)
  }
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  const expected = (offset: number, length: number): Buffer => {
    const out = Buffer.alloc(length)
    for (const [at, data] of blocks) {
      if (at + data.length <= offset || at >= offset + length) continue
      data.copy(out, Math.max(0, at - offset), Math.max(0, offset - at), Math.min(data.length, offset + length - at))
    }
    return out
  }
  // The block, the block before it (or after it) and one far in its page, twice: the engine answers
  // and publishes, then the addon answers.
  const regions = [...blocks.keys()].flatMap(at => [[at === 0 ? 0 : at - 64 * KiB, 192 * KiB], [at - (at % stride) + 200 * MiB, 64 * KiB]])
  const readAll = async (what: string, limit = size): Promise<void> => {
    for (const [offset, length] of regions) {
      if (offset + length > limit) continue
      t.true((await readDirect(disk, offset, length, scratch)).equals(expected(offset, length)), `${what}: ${length} bytes at ${offset}`)
    }
  }
  await readAll('first reads')
  const before = await fastStats(m.mnt)
  await readAll('second reads')
  const after = await fastStats(m.mnt) as FastStats & { fastWordBytes: number }
  t.true(after.fastServed - before.fastServed >= regions.length * 16, 'the addon served the second reads')
  // Dense pages would take 32 KiB each, 1 MiB for these 32; here 512 bytes a page and 512 a run of 64 words that is not all holes.
  t.true(after.fastWordBytes > 0 && after.fastWordBytes < 128 * KiB, `published words take ${after.fastWordBytes} bytes`)
  // Writes into holes beside the blocks (native first writes into runs of holes), a backup, and
  // writes again: the backup keeps what it had.
  const write = (offset: number, data: Buffer): void => {
    const wfd = fs.openSync(disk, 'r+')
    fs.writeSync(wfd, data, 0, data.length, offset)
    fs.fsyncSync(wfd)
    fs.closeSync(wfd)
    blocks.set(offset, data)
  }
  for (const at of [...blocks.keys()].filter((_, i) => i % 8 === 0)) write(at + 64 * KiB, crypto.randomBytes(64 * KiB))
  await readAll('after writes into holes')
  const taken = await vdiskfs('backup', disk, 'sparse-b')
  t.is(taken.code, 0, taken.stderr)
  const backupHolds = new Map(blocks)
  for (const at of [...blocks.keys()].filter((_, i) => i % 8 === 1)) write(at + 128 * KiB, crypto.randomBytes(64 * KiB))
  await readAll('after writes beside a backup')
  const backup = m.image('backups', 'sparse-b.img')
  for (const [at, data] of backupHolds) {
    if (at % (1024 * MiB) !== 0) continue
    t.true((await readDirect(backup, at, 64 * KiB, scratch)).equals(data), `the backup at ${at}`)
  }
  // A shrink to the middle of a run of 64 blocks, and a grow back: what lay past the new end reads as zeros.
  const cut = 4 * 1024 * MiB + 96 * KiB
  fs.truncateSync(disk, cut)
  fs.truncateSync(disk, size)
  for (const at of [...blocks.keys()]) if (at + 64 * KiB > cut) blocks.delete(at)
  await readAll('after a shrink and a grow')
  await readAll('read again')
})
