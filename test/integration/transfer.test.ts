/**
 * Export and import through real mounts (issue #12): a full and an incremental stream from one pool
 * make byte-identical backups in a second pool served by a second daemon (cmp), also through a pipe;
 * diff --json gives the ranges that were written; an incremental stream without its base, or a
 * tampered stream, is refused and no backup appears; SIGKILL of the daemon, or of the CLI, in the
 * middle of an import leaves nothing visible, and the same import run again completes without
 * storing again what it had stored.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { call, openStream, readReply } from '../../src/control/client'
import { frameEnd, frameHead, frameZero } from '../../src/transfer/wire'
import { cli, run, vdiskfs, withMount, TestMount } from '../helpers/mount'

const blockBytes = 64 * 1024

function writeAt (file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try { fs.writeSync(fd, data, 0, data.length, offset); fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

async function cliOk (t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<string> {
  const result = await vdiskfs(...args)
  t.is(result.code, 0, `vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

/** Runs a shell pipeline; returns its exit status and stderr. */
async function shell (script: string): Promise<{ code: number, stderr: string }> {
  return await new Promise(resolve => {
    const child = spawn('bash', ['-o', 'pipefail', '-c', script], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', chunk => { stderr += chunk })
    child.on('close', code => resolve({ code: code ?? 1, stderr }))
  })
}

async function cmp (a: string, b: string): Promise<boolean> {
  try { await run('cmp', [a, b]); return true } catch { return false }
}

/** The partial imports the daemon keeps, through the control socket (no CLI command shows them). */
async function imports (m: TestMount): Promise<Array<{ key: string, blocks: number }>> {
  return await call(m.mnt, 'imports') as Array<{ key: string, blocks: number }>
}

test.serial('full and incremental streams make identical backups in a second pool; diff gives what was written; pipes work; a missing base is refused', async t => {
  const source = await withMount(t)
  const target = await withMount(t)
  const disk = source.image('disks', 'web.img')
  await run('truncate', ['-s', '64M', disk])
  writeAt(disk, 0, crypto.randomBytes(8 * 1024 * 1024))
  writeAt(disk, 40 * 1024 * 1024, Buffer.alloc(4 * 1024 * 1024, 'compressible text '))
  await cliOk(t, 'backup', disk, 'mon')
  // Changes: two block-aligned ranges, one block made zeros, and the size grows.
  writeAt(disk, 3 * blockBytes, crypto.randomBytes(2 * blockBytes))
  writeAt(disk, 20 * 1024 * 1024, crypto.randomBytes(5 * blockBytes))
  writeAt(disk, 100 * blockBytes, Buffer.alloc(blockBytes))
  await run('truncate', ['-s', String(64 * 1024 * 1024 + 3 * blockBytes + 100), disk])
  writeAt(disk, 64 * 1024 * 1024 + blockBytes, crypto.randomBytes(100))
  await cliOk(t, 'backup', disk, 'tue')
  const mon = source.image('backups', 'mon.img')
  const tue = source.image('backups', 'tue.img')

  const ranges = JSON.parse(await cliOk(t, 'diff', mon, tue, '--json')) as Array<{ start: number, length: number }>
  t.deepEqual(ranges, [
    { start: 3 * blockBytes, length: 2 * blockBytes },
    { start: 100 * blockBytes, length: blockBytes },
    { start: 20 * 1024 * 1024, length: 5 * blockBytes },
    // Past the old size: the new size's span (its second block holds the 100 bytes).
    { start: 64 * 1024 * 1024, length: 3 * blockBytes + 100 }
  ])
  t.deepEqual(JSON.parse(await cliOk(t, 'diff', mon, mon, '--json')), [])

  const full = path.join(source.dir, 'mon.vds')
  const incremental = path.join(source.dir, 'tue.vds')
  await cliOk(t, 'export', mon, '-o', full)
  const summary = JSON.parse(await cliOk(t, 'export', tue, '--since', 'mon', '-o', incremental, '--json')) as { blocks: number, streamBytes: number }
  // 2 + 5 + 1 changed blocks, and the one written past the old size (the others there are holes).
  t.is(summary.blocks, 9)
  t.true(fs.statSync(incremental).size < 12 * blockBytes)

  // The incremental one first: its base is not there yet.
  const refused = await vdiskfs('import', target.mnt, incremental, 'tue')
  t.is(refused.code, 1)
  t.regex(refused.stderr, /^vdiskfs import: this incremental stream needs its base backup .* import the base first\n$/)
  t.false(fs.existsSync(target.image('backups', 'tue.img')))

  await cliOk(t, 'import', target.mnt, full, 'monday-copy')
  await cliOk(t, 'import', target.mnt, incremental, 'tuesday-copy')
  t.true(await cmp(mon, target.image('backups', 'monday-copy.img')))
  t.true(await cmp(tue, target.image('backups', 'tuesday-copy.img')))
  // The copy keeps the source's identity and creation time.
  const listed = JSON.parse(await cliOk(t, 'ls', target.mnt, '--json')) as Array<{ name: string, created: string }>
  const sourceListed = JSON.parse(await cliOk(t, 'ls', source.mnt, '--json')) as Array<{ name: string, created: string }>
  t.is(listed.find(v => v.name === 'monday-copy.img')?.created, sourceListed.find(v => v.name === 'mon.img')?.created)

  // export | import through a pipe, full and incremental, into a third name each... of a new lineage:
  // a pool holds one copy per identity, so the pipe goes into a fresh pool.
  const third = await withMount(t)
  const piped = await shell(`${cli} export ${mon} | ${cli} import ${third.mnt} - a && ${cli} export ${tue} --since ${mon} -o - | ${cli} import ${third.mnt} - b`)
  t.is(piped.code, 0, piped.stderr)
  t.true(await cmp(tue, third.image('backups', 'b.img')))
  t.true(await cmp(mon, third.image('backups', 'a.img')))
  // The same identity twice is refused.
  const twice = await vdiskfs('import', third.mnt, full, 'again')
  t.is(twice.code, 1)
  t.regex(twice.stderr, /already exists/)
})

test.serial('a tampered stream is refused and no backup appears, wherever the byte is', async t => {
  const source = await withMount(t)
  const target = await withMount(t)
  const disk = source.image('disks', 'd.img')
  await run('truncate', ['-s', '16M', disk])
  writeAt(disk, 0, crypto.randomBytes(4 * 1024 * 1024))
  await cliOk(t, 'backup', disk, 'b')
  const stream = path.join(source.dir, 'b.vds')
  await cliOk(t, 'export', source.image('backups', 'b.img'), '-o', stream)
  const bytes = fs.readFileSync(stream)
  // In a block's payload (found by its BLAKE3 id), in the header, and in the trailer's checksum.
  for (const at of [bytes.length >> 1, 20, bytes.length - 5]) {
    const damaged = Buffer.from(bytes)
    damaged[at] ^= 0x40
    const file = path.join(source.dir, `damaged-${at}.vds`)
    fs.writeFileSync(file, damaged)
    const result = await vdiskfs('import', target.mnt, file, `x${at}`)
    t.is(result.code, 1, `byte ${at}`)
    t.regex(result.stderr, /^vdiskfs import: [^\n]*(damaged|checksum)[^\n]*\n$/, `byte ${at}`)
    t.false(fs.existsSync(target.image('backups', `x${at}.img`)), `byte ${at}`)
  }
  t.deepEqual(fs.readdirSync(path.join(target.mnt, 'backups')), [])
  // The good stream still goes in (what the damaged ones stored is reused).
  await cliOk(t, 'import', target.mnt, stream, 'good')
  t.true(await cmp(source.image('backups', 'b.img'), target.image('backups', 'good.img')))
})

/** Starts `vdiskfs import MNT - NAME` and feeds it the first `bytes` of `file`; the rest is up to the caller. */
function startImport (mnt: string, file: string, name: string, bytes: number): { child: ReturnType<typeof spawn>, done: Promise<{ code: number, stdout: string, stderr: string }>, rest: () => void } {
  const child = spawn(cli, ['import', mnt, '-', name, '--json'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', chunk => { stdout += chunk })
  child.stderr?.on('data', chunk => { stderr += chunk })
  child.stdin?.on('error', () => {})
  const all = fs.readFileSync(file)
  child.stdin?.write(all.subarray(0, bytes))
  const done = new Promise<{ code: number, stdout: string, stderr: string }>(resolve => child.on('close', code => resolve({ code: code ?? 1, stdout, stderr })))
  return { child, done, rest: () => { child.stdin?.end(all.subarray(bytes)) } }
}

async function waitForProgress (m: TestMount, blocks: number): Promise<number> {
  for (let i = 0; i < 600; i++) {
    const partial = await imports(m).catch(() => [])
    if (partial.length > 0 && partial[0].blocks >= blocks) return partial[0].blocks
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error('the import made no progress')
}

test.serial('SIGKILL of the CLI, then of the daemon, in the middle of an import: nothing visible, and the import run again completes from where it was', async t => {
  const source = await withMount(t)
  const target = await withMount(t)
  const disk = source.image('disks', 'big.img')
  await run('truncate', ['-s', '160M', disk])
  writeAt(disk, 0, crypto.randomBytes(128 * 1024 * 1024))
  await cliOk(t, 'backup', disk, 'big')
  const backup = source.image('backups', 'big.img')
  const stream = path.join(source.dir, 'big.vds')
  await cliOk(t, 'export', backup, '-o', stream)
  const size = fs.statSync(stream).size

  // 1. The CLI is killed once a batch or more is stored (the daemon keeps what arrived).
  const first = startImport(target.mnt, stream, 'copy', Math.floor(size * 0.5))
  const stored = await waitForProgress(target, 256)
  first.child.kill('SIGKILL')
  await first.done
  t.false(fs.existsSync(target.image('backups', 'copy.img')))

  // 2. The daemon is killed once more is stored; its restart runs gc.
  const second = startImport(target.mnt, stream, 'copy', Math.floor(size * 0.8))
  const storedBeforeKill = await waitForProgress(target, stored + 256)
  await target.kill()
  const secondResult = await second.done
  t.not(secondResult.code, 0)
  t.regex(secondResult.stderr, /^vdiskfs import: [^\n]+\n$/)
  await target.mount()
  t.false(fs.existsSync(target.image('backups', 'copy.img')))
  t.deepEqual(fs.readdirSync(path.join(target.mnt, 'backups')), [])
  t.true((await imports(target))[0].blocks >= storedBeforeKill)

  // 3. Run again, whole: it completes, and what was stored before is not stored again.
  const third = startImport(target.mnt, stream, 'copy', 0)
  third.rest()
  const result = await third.done
  t.is(result.code, 0, result.stderr)
  const report = JSON.parse(result.stdout) as { resumedBlocks: number, newChunks: number, blocks: number }
  t.is(report.blocks, 2048)
  t.true(report.resumedBlocks >= storedBeforeKill, `resumed ${report.resumedBlocks}`)
  // What was stored before survived the restart and its gc: only the rest is stored now.
  t.is(report.newChunks, 2048 - report.resumedBlocks)
  t.true(await cmp(backup, target.image('backups', 'copy.img')))
  t.deepEqual(await imports(target), [])
})

test.serial('prune through a mount: dry run lists keep/remove and the rule, then removes; clones keep their blocks; groups and --match; no rule is refused', async t => {
  const m = await withMount(t)
  const web = m.image('disks', 'web.img')
  const db = m.image('disks', 'db.img')
  await run('truncate', ['-s', '8M', web])
  await run('truncate', ['-s', '8M', db])
  for (let i = 1; i <= 4; i++) {
    writeAt(web, 0, crypto.randomBytes(blockBytes))
    await cliOk(t, 'backup', web, `web-${i}`)
  }
  writeAt(db, 0, crypto.randomBytes(blockBytes))
  await cliOk(t, 'backup', db, 'db-1')
  await cliOk(t, 'clone', m.image('backups', 'web-1.img'), 'old')
  const cloneBefore = fs.readFileSync(m.image('clones', 'old.img'))

  for (const args of [[], ['--keep-last', '0'], ['--keep-daily', 'x']]) {
    const refused = await vdiskfs('prune', m.mnt, ...args)
    t.is(refused.code, 2, args.join(' '))
    t.regex(refused.stderr, /^vdiskfs prune: [^\n]+\n$/)
  }

  const dry = JSON.parse(await cliOk(t, 'prune', m.mnt, '--keep-last', '2', '--match', 'web-*', '--dry-run', '--json')) as { dryRun: boolean, backups: Array<{ name: string, keep: boolean, rule: string | null, removed: boolean }> }
  t.true(dry.dryRun)
  t.deepEqual(dry.backups.map(b => [b.name, b.keep, b.rule, b.removed]), [
    ['web-4.img', true, 'last', false], ['web-3.img', true, 'last', false], ['web-2.img', false, null, false], ['web-1.img', false, null, false]
  ])
  t.is(fs.readdirSync(path.join(m.mnt, 'backups')).length, 5)

  const text = await cliOk(t, 'prune', m.mnt, '--keep-last', '2')
  t.regex(text, /web-1\.img .* removed/)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'backups')).sort(), ['db-1.img', 'web-3.img', 'web-4.img'])
  // The clone of a removed backup reads what it read before.
  t.true(cloneBefore.equals(fs.readFileSync(m.image('clones', 'old.img'))))
})

test.serial('SIGKILL of the daemon in the middle of an export: one line, exit 1, and neither FILE nor its partial file is left', async t => {
  const source = await withMount(t)
  const disk = source.image('disks', 'big.img')
  await run('truncate', ['-s', '256M', disk])
  writeAt(disk, 0, crypto.randomBytes(192 * 1024 * 1024))
  await cliOk(t, 'backup', disk, 'big')
  const file = path.join(source.dir, 'big.vds')
  const child = spawn(cli, ['export', source.image('backups', 'big.img'), '-o', file], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', chunk => { stderr += chunk })
  const done = new Promise<number>(resolve => child.on('close', code => resolve(code ?? 1)))
  // The stream is written to a new file with a random name beside FILE (.big.vds.RANDOM.partial).
  const partial = (): string | undefined => fs.readdirSync(source.dir).filter(f => /^\.big\.vds\.[0-9a-f]+\.partial$/.test(f)).map(f => path.join(source.dir, f))[0]
  // Once part of the stream is written, the daemon goes.
  for (let i = 0; i < 600 && !(partial() !== undefined && fs.statSync(partial() as string).size > 8 * 1024 * 1024); i++) await new Promise(resolve => setTimeout(resolve, 25))
  t.true(partial() !== undefined, 'the export did not start')
  await source.kill()
  t.is(await done, 1)
  t.regex(stderr, /^vdiskfs export: [^\n]+\n$/)
  t.false(fs.existsSync(file))
  t.is(partial(), undefined)
})

test.serial('a backup keeps its identity through a catalog rebuilt by repair (catalog.log records it)', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('truncate', ['-s', '4M', disk])
  writeAt(disk, 0, crypto.randomBytes(blockBytes))
  await cliOk(t, 'backup', disk, 'b')
  const uuid = (await call(m.mnt, 'uuid', { kind: 'backup', name: 'b.img' }) as { uuid: string }).uuid
  t.regex(uuid, /^[0-9a-f-]{36}$/)
  await m.umount()
  const catalog = path.join(m.pool, 'catalog.sqlite')
  for (const f of fs.readdirSync(m.pool)) if (f.startsWith('catalog.sqlite-')) fs.rmSync(path.join(m.pool, f))
  const fd = fs.openSync(catalog, 'r+')
  fs.writeSync(fd, Buffer.alloc(100, 0x41), 0, 100, 0)
  fs.closeSync(fd)
  const repair = await vdiskfs('repair', m.pool)
  t.is(repair.code, 0, repair.stderr)
  await m.mount()
  t.is((await call(m.mnt, 'uuid', { kind: 'backup', name: 'b.img' }) as { uuid: string }).uuid, uuid)
})

test.serial('the daemon checks what an import connection sends: a creation time past the year 9999, and frames out of order, are refused', async t => {
  const m = await withMount(t)
  const header = { name: 'x', blockBytes, uuid: crypto.randomUUID(), baseUuid: null, size: 4 * blockBytes, createdMs: 8.7e15, records: 2 }
  await t.throwsAsync(openStream(m.mnt, 'importStream', { name: 'far.img', header }), { message: /year 9999/ })
  const opened = await openStream(m.mnt, 'importStream', { name: 'order.img', header: { ...header, createdMs: Date.now() } })
  try {
    opened.socket.write(Buffer.concat([frameHead(frameZero, 2, null), frameHead(frameZero, 1, null), frameHead(frameEnd, 0, null)]))
    await t.throwsAsync(readReply('importStream', opened.socket, opened.rest, m.mnt), { message: /out of order/ })
  } finally {
    opened.socket.destroy()
  }
  t.false(fs.existsSync(m.image('backups', 'order.img')))
  t.false(fs.existsSync(m.image('backups', 'far.img')))
})

test.serial('export -o never replaces an existing file (one line, exit 1, the file unchanged, no partial file left)', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('truncate', ['-s', '1M', disk])
  writeAt(disk, 0, crypto.randomBytes(blockBytes))
  await cliOk(t, 'backup', disk, 'b')
  const file = path.join(m.dir, 'taken.vds')
  fs.writeFileSync(file, 'keep me\n')
  const result = await vdiskfs('export', m.image('backups', 'b.img'), '-o', file)
  t.is(result.code, 1)
  t.regex(result.stderr, /^vdiskfs export: [^\n]*exists[^\n]*\n$/)
  t.is(fs.readFileSync(file, 'utf8'), 'keep me\n')
  t.deepEqual(fs.readdirSync(m.dir).filter(f => f.endsWith('.partial')), [])
})
