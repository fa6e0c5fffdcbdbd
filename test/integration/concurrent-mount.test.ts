/**
 * Issue #17 through a real mount: async file handles and child processes (dd, fallocate -p) write,
 * read, punch and truncate images in MNT/disks at once, while `vdiskfs backup`, `clone`, `sync` and
 * `gc` run beside them; every result is checked with the per-sector candidate rule of
 * test/helpers/concurrent-model.ts (after a round, each sector holds what some order of the round's
 * operations gives; a read or a backup taken during it, what the sector held at some moment of it).
 * Then the regressions of finding 2: backups of one name at once (exactly one succeeds), and `vdiskfs
 * cp` to a disk name racing a create of it through the mount. Each ends with sync, fsync, umount,
 * remount and a clean verify. VDISKFS_CONCURRENT_SEED replays a seed.
 */
import test, { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { Candidates, ContentOp, punchOp, truncateOp, writeOp } from '../helpers/concurrent-model'
import { CliResult, execFileAsync, run, vdiskfs, withMount } from '../helpers/mount'
import { call } from '../../src/control/client'
import { VdiskError } from '../../src/errors'

const seed = process.env.VDISKFS_CONCURRENT_SEED !== undefined ? Number(process.env.VDISKFS_CONCURRENT_SEED) : Date.now() % 1000000

/** mulberry32: a small seeded generator, so that a failing round can be replayed. */
function generator (start: number): () => number {
  let a = start >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Exits non-zero with one line on stderr, and no stack trace. */
function oneCleanLine (t: ExecutionContext, result: CliResult, what: string): void {
  t.not(result.code, 0, `${what} exits non-zero`)
  t.is(result.stderr.trim().split('\n').length, 1, `${what}: one line (${result.stderr})`)
  t.notRegex(result.stderr, /\n\s+at |internal error/, `${what}: no stack trace`)
}

function firstDifference (a: Buffer, b: Buffer): string {
  if (a.length !== b.length) return `sizes ${a.length} and ${b.length}`
  return `first difference at byte ${a.findIndex((x, i) => x !== b[i])}`
}

const imageBytes = 192 * 1024
const rounds = 6

test.serial('writes, reads, punches and truncates at once beside backup, clone, sync and gc fit the per-sector model', async t => {
  t.timeout(150000)
  const m = await withMount(t)
  const random = generator(seed)
  const int = (n: number): number => Math.floor(random() * n)
  t.log(`seed ${seed} (VDISKFS_CONCURRENT_SEED replays it)`)
  const disks = ['x.img', 'y.img']
  const model = new Map<string, Buffer>()
  for (const name of disks) {
    const data = crypto.randomBytes(imageBytes)
    fs.writeFileSync(m.image('disks', name), data)
    model.set(name, data)
  }
  const backups = new Map<string, Buffer>()
  const clones = new Map<string, string>()
  const payloads = path.join(m.dir, 'payloads')
  fs.mkdirSync(payloads)
  let operations = 0
  for (let round = 0; round < rounds; round++) {
    const tasks: Array<() => Promise<string | null>> = []
    const opsOf = new Map<string, ContentOp[]>(disks.map(d => [d, []]))
    const reads: Array<{ disk: string, offset: number, rule: 'any' | 'anyByte', got: () => Buffer }> = []
    const handles = new Map<string, fs.promises.FileHandle>()
    for (const disk of disks) handles.set(disk, await fs.promises.open(m.image('disks', disk), 'r+'))
    const where = (what: string): string => `round ${round}: ${what}`
    for (const disk of disks) {
      const image = m.image('disks', disk)
      const handle = handles.get(disk)!
      const size = () => model.get(disk)!.length
      // Writes gather on the first 48 KiB: overlapping, adjacent, sector-aligned or not; some past the end.
      for (let i = 0; i < 4 + int(4); i++) {
        const aligned = random() < 0.5
        const offset = aligned ? int(96) * 512 : int(48 * 1024)
        const length = aligned ? (1 + int(24)) * 512 : 1 + int(20000)
        const data = crypto.randomBytes(length)
        opsOf.get(disk)!.push(writeOp(offset, data))
        if (random() < 0.5) {
          tasks.push(async () => { const { bytesWritten } = await handle.write(data, 0, length, offset); return bytesWritten === length ? null : where(`short write ${bytesWritten} of ${length} at ${offset} of ${disk}`) })
        } else {
          const file = path.join(payloads, `${round}-${disk}-${i}`)
          fs.writeFileSync(file, data)
          tasks.push(async () => { await run('dd', [`if=${file}`, `of=${image}`, `bs=${length}`, 'count=1', `seek=${offset}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']); return null })
        }
      }
      if (random() < 0.7) {
        const offset = int(64) * 512 + (random() < 0.5 ? 0 : int(512))
        const length = 1 + int(24 * 1024)
        opsOf.get(disk)!.push(punchOp(offset, length))
        tasks.push(async () => { await execFileAsync('fallocate', ['-p', '-o', String(offset), '-l', String(length), image]); return null })
      }
      if (random() < 0.4) {
        const newSize = Math.max(0, random() < 0.5 ? size() - int(8) * 4096 - int(2) * 777 : size() + int(8) * 4096)
        opsOf.get(disk)!.push(truncateOp(newSize))
        tasks.push(async () => { await handle.truncate(newSize); return null })
      }
      // Buffered reads (the page cache's copy: each byte from some moment, docs/TRANSPORT.md "Caching")
      // and a direct read (what the daemon served: each sector from some moment).
      for (let i = 0; i < 2; i++) {
        const offset = int(48 * 1024)
        const buf = Buffer.alloc(1 + int(16 * 1024))
        let n = 0
        // eslint-disable-next-line vdiskfs/loop-capture-changed -- meant: got() is called after the task below has set n to the bytes read
        reads.push({ disk, offset, rule: 'anyByte', got: () => buf.subarray(0, n) })
        tasks.push(async () => { n = (await handle.read(buf, 0, buf.length, offset)).bytesRead; return null })
      }
      {
        const offset = int(48 * 1024)
        const length = 1 + int(16 * 1024)
        let direct = Buffer.alloc(0)
        // eslint-disable-next-line vdiskfs/loop-capture-changed -- meant: got() is called after the task below has set direct to the bytes read
        reads.push({ disk, offset, rule: 'any', got: () => direct })
        tasks.push(async () => {
          direct = (await execFileAsync('dd', [`if=${image}`, 'iflag=direct,skip_bytes,count_bytes', `skip=${offset}`, `bs=${length}`, `count=${length}`, 'status=none'], { encoding: 'buffer', maxBuffer: 1 << 20 })).stdout
          return null
        })
      }
    }
    // Beside them: a backup of each disk, a clone of an earlier backup, sync and gc.
    const taken: Array<{ name: string, disk: string }> = []
    for (const disk of disks) {
      if (random() < 0.7) {
        const name = `r${round}-${disk.replace('.img', '')}`
        taken.push({ name, disk })
        tasks.push(async () => { const r = await vdiskfs('backup', m.image('disks', disk), name); return r.code === 0 ? null : where(`backup ${name}: ${r.stderr}`) })
      }
    }
    const earlier = [...backups.keys()]
    let cloned: { name: string, of: string } | null = null
    if (earlier.length > 0) {
      const of = earlier[int(earlier.length)]
      cloned = { name: `k${round}`, of }
      const clone = cloned
      tasks.push(async () => { const r = await vdiskfs('clone', m.image('backups', `${of}.img`), clone.name); return r.code === 0 ? null : where(`clone ${clone.name}: ${r.stderr}`) })
    }
    tasks.push(async () => { const r = await vdiskfs('sync', m.mnt); return r.code === 0 ? null : where(`sync: ${r.stderr}`) })
    if (random() < 0.5) tasks.push(async () => { const r = await vdiskfs('gc', m.mnt); return r.code === 0 ? null : where(`gc: ${r.stderr}`) })
    operations += tasks.length
    const problems = (await Promise.all(tasks.map(async task => await task().catch(err => where(String(err)))))).filter(p => p !== null)
    for (const handle of handles.values()) await handle.close()
    t.deepEqual(problems, [], 'every operation succeeded')

    const candidates = new Map(disks.map(d => [d, new Candidates(model.get(d)!, opsOf.get(d)!)]))
    for (const r of reads) {
      const c = candidates.get(r.disk)!
      const got = r.got()
      const problem = c.check(got, r.offset, r.rule)
      t.is(problem, null, where(`a ${r.rule === 'any' ? 'direct' : 'buffered'} read of ${got.length} bytes at ${r.offset} of ${r.disk} (seed ${seed})`))
    }
    for (const disk of disks) {
      const c = candidates.get(disk)!
      const got = fs.readFileSync(m.image('disks', disk))
      t.true(c.finalSizes.has(got.length), where(`${disk} has size ${got.length}; possible ${[...c.finalSizes].join(', ')}`))
      t.is(c.check(got, 0, 'final'), null, where(`${disk} after the round`))
      model.set(disk, got)
    }
    for (const { name, disk } of taken) {
      const c = candidates.get(disk)!
      const got = fs.readFileSync(m.image('backups', `${name}.img`))
      t.true(c.anySizes.has(got.length), where(`backup ${name} has size ${got.length}; ${disk} had ${[...c.anySizes].join(', ')}`))
      t.is(c.check(got, 0, 'any'), null, where(`backup ${name} of ${disk}`))
      backups.set(name, got)
    }
    if (cloned !== null) {
      const got = fs.readFileSync(m.image('clones', `${cloned.name}.img`))
      t.true(got.equals(backups.get(cloned.of)!), where(`clone ${cloned.name} of ${cloned.of}: ${firstDifference(got, backups.get(cloned.of)!)}`))
      clones.set(cloned.name, cloned.of)
    }
  }
  // Everything again after umount and remount, and a clean verify.
  const umount = await vdiskfs('umount', m.mnt)
  t.is(umount.code, 0, `umount: ${umount.stderr}`)
  await m.mount()
  for (const [disk, data] of model) t.true(fs.readFileSync(m.image('disks', disk)).equals(data), `${disk} after remount`)
  for (const [name, data] of backups) t.true(fs.readFileSync(m.image('backups', `${name}.img`)).equals(data), `backup ${name} after remount`)
  for (const [name, of] of clones) t.true(fs.readFileSync(m.image('clones', `${name}.img`)).equals(backups.get(of)!), `clone ${name} after remount`)
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, `verify: ${verify.stdout}${verify.stderr}`)
  t.log(`${rounds} rounds, ${operations} operations at once in rounds, ${backups.size} backups, ${clones.size} clones`)
})

const writeAsync = promisify(fs.write)
const fsyncAsync = promisify(fs.fsync)

/**
 * Writes random pieces of `image` until `stop()` is true; returns how many. Plain descriptors, not
 * FileHandles: a FileHandle whose close failed (EIO from a broken pool) is closed again by the garbage
 * collector, which throws out of the test worker.
 */
async function writer (image: string, stop: () => boolean, random: () => number, from = 0): Promise<number> {
  const fd = fs.openSync(image, 'r+')
  let writes = 0
  try {
    while (!stop()) {
      const length = 512 + Math.floor(random() * 64 * 1024)
      await writeAsync(fd, crypto.randomBytes(length), 0, length, from + Math.floor(random() * (1024 * 1024 - length)))
      writes++
    }
    await fsyncAsync(fd)
  } finally {
    try { fs.closeSync(fd) } catch {}
  }
  return writes
}

const attempts = 6

test.serial('backups of one name at once while a writer writes: exactly one succeeds, the others fail with one line; sync, fsync, umount, remount and verify are clean', async t => {
  t.timeout(90000)
  const m = await withMount(t)
  const image = m.image('disks', 'x.img')
  fs.writeFileSync(image, crypto.randomBytes(1024 * 1024))
  let stopped = false
  // Two writers keep writes in flight, so that a backup waits in pause() for them: the window in which
  // a second backup of the same name used to pass the name check too.
  // A writer's failure (EIO once commits fail) is reported by the assertion below, not as an unhandled rejection.
  let writerError: unknown = null
  const writing = Promise.all([writer(image, () => stopped, generator(seed + 1)), writer(image, () => stopped, generator(seed + 3))])
    .then(counts => counts[0] + counts[1], err => { writerError = err; return -1 })
  const fd = fs.openSync(image, 'r+')
  try {
    for (let attempt = 0; attempt < attempts; attempt++) {
      const name = `same${attempt}`
      const results = await Promise.all(Array.from({ length: 2 + attempt % 2 }, async () => await vdiskfs('backup', image, name)))
      t.is(results.filter(r => r.code === 0).length, 1, `${name}: exactly one of ${results.length} backups succeeds (exit codes ${results.map(r => r.code).join(', ')}; ${results.map(r => r.stderr.trim()).filter(s => s !== '').join(' | ')})`)
      for (const r of results.filter(r => r.code !== 0)) {
        oneCleanLine(t, r, `a second backup named ${name}`)
        t.regex(r.stderr, /already exists/, `${name}: the refusal says the name is taken (${r.stderr.trim()})`)
      }
    }
    // The CLI processes start tens of milliseconds apart, wider than the race's window (a backup
    // waiting in pause() for the writes in flight): the same requests sent at once over the daemon's
    // control socket, as three CLIs started at the same instant would send them.
    for (let attempt = 0; attempt < attempts; attempt++) {
      const name = `direct${attempt}`
      const results = await Promise.allSettled([0, 1, 2].map(async () => await call(m.mnt, 'backup', { sourceKind: 'disk', sourceName: 'x.img', name: `${name}.img` })))
      const codes = results.map(r => r.status === 'fulfilled' ? 'ok' : (r.reason instanceof VdiskError ? r.reason.code : String(r.reason)))
      t.deepEqual(codes.sort(), ['EXISTS', 'EXISTS', 'ok'], `${name}: three backup requests at once (${results.map(r => r.status === 'rejected' ? (r.reason as Error).message : 'ok').join(' | ')})`)
    }
  } finally {
    stopped = true
  }
  try {
    t.true(await writing > 0, `the writers wrote meanwhile, without an error (${String(writerError)})`)
    const sync = await vdiskfs('sync', m.mnt)
    t.is(sync.code, 0, `sync after the races: ${sync.stderr}`)
    await t.notThrowsAsync(async () => await fsyncAsync(fd), 'fsync of the image after the races')
  } finally {
    try { fs.closeSync(fd) } catch {}
  }
  const listed = (await vdiskfs('ls', m.mnt, '--json')).stdout
  const umount = await vdiskfs('umount', m.mnt)
  t.is(umount.code, 0, `umount after the races: ${umount.stderr}`)
  await m.mount()
  for (let attempt = 0; attempt < attempts; attempt++) {
    for (const name of [`same${attempt}`, `direct${attempt}`]) t.true(fs.existsSync(m.image('backups', `${name}.img`)), `backup ${name} after remount (ls before: ${listed.slice(0, 200)})`)
  }
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, `verify after remount: ${verify.stdout}${verify.stderr}`)
})

test.serial('vdiskfs cp to a disk name racing a create of that name through the mount: exactly one wins; sync, umount, remount and verify are clean', async t => {
  t.timeout(90000)
  const m = await withMount(t)
  const source = m.image('disks', 'src.img')
  const head = 256 * 1024
  const sourceData = crypto.randomBytes(head)
  fs.writeFileSync(source, Buffer.concat([sourceData, Buffer.alloc(1024 * 1024)]))
  // A writer on the source past its first 256 KiB keeps writes in flight, so that the copy waits in
  // pause(): the window in which a create of the same name used to get through too. The copy's first
  // 256 KiB are then exact.
  let stopped = false
  let writerError: unknown = null
  const writing = writer(source, () => stopped, generator(seed + 2), head).catch(err => { writerError = err; return -1 })
  const expected = new Map<string, Buffer>()
  const create = async (target: string, marker: Buffer): Promise<string> => {
    try {
      const h = await fs.promises.open(target, 'wx')
      await h.write(marker, 0, marker.length, 0)
      await h.close()
      return 'created'
    } catch (err) {
      return (err as NodeJS.ErrnoException).code ?? String(err)
    }
  }
  try {
    for (let attempt = 0; attempt < 12; attempt++) {
      const name = `race${attempt}.img`
      const target = m.image('disks', name)
      const marker = Buffer.from(`created through the mount, attempt ${attempt}\n`)
      // Half through the CLI, half as the CLI's request sent at the same instant as the create.
      const direct = attempt % 2 === 1
      const [copied, created] = await Promise.all([
        direct
          ? call(m.mnt, 'cp', { sourceKind: 'disk', sourceName: 'src.img', name }).then(() => ({ code: 0, stdout: '', stderr: '' }), err => ({ code: 1, stdout: '', stderr: `vdiskfs cp: ${(err as Error).message}\n` }))
          : vdiskfs('cp', source, target),
        create(target, marker)
      ])
      if (copied.code === 0) {
        t.is(created, 'EEXIST', `${name}: cp won, so the create must fail with EEXIST`)
        expected.set(name, sourceData)
      } else {
        t.is(created, 'created', `${name}: cp failed (${copied.stderr.trim()}), so the create must have won`)
        oneCleanLine(t, copied, `cp onto ${name}, taken by a create`)
        t.regex(copied.stderr, /already exists/, `${name}: cp says the name is taken (${copied.stderr.trim()})`)
        expected.set(name, marker)
      }
    }
  } finally {
    stopped = true
  }
  t.true(await writing > 0, `the writer wrote meanwhile, without an error (${String(writerError)})`)
  const sync = await vdiskfs('sync', m.mnt)
  t.is(sync.code, 0, `sync after the races: ${sync.stderr}`)
  const holds = (name: string, data: Buffer): boolean => fs.readFileSync(m.image('disks', name)).subarray(0, data.length).equals(data)
  for (const [name, data] of expected) t.true(holds(name, data), `${name} holds the winner's bytes`)
  const umount = await vdiskfs('umount', m.mnt)
  t.is(umount.code, 0, `umount after the races: ${umount.stderr}`)
  await m.mount()
  for (const [name, data] of expected) t.true(holds(name, data), `${name} after remount`)
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, `verify after remount: ${verify.stdout}${verify.stderr}`)
})
