/**
 * An attacker's pass over the surfaces of issues #11 and #12 (export/import streams, names, the mount
 * helper, remotes, status), tried for real: root runs the CLI against a pool it mounted, and the
 * unprivileged user vdiskfs-test (made here with useradd if missing, driven with runuser) prepares
 * what root then touches. Each test states the attack and what must hold.
 */
import test from 'ava'
import { spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { Blake3Hasher } from '@napi-rs/blake-hash'
import { call } from '../../src/control/client'
import { StreamDecoder, StreamEncoder, StreamHeader, StreamItem } from '../../src/transfer/stream'
import { cli, run, vdiskfs, withMount, TestMount } from '../helpers/mount'
import { Account, ensureUser, testUser } from '../helpers/users'

const user = testUser
const blockBytes = 64 * 1024

/** Runs a command as the test user; throws unless it succeeds. */
function asUser (command: string, args: string[]): void {
  const result = spawnSync('runuser', ['-u', user, '--', command, ...args], { encoding: 'utf8', cwd: '/', timeout: 60000 })
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} as ${user}: ${result.stderr}`)
}

/** A directory the test user owns (0755), in a root-only temporary directory the user can traverse. */
function userDir (t: { teardown: (f: () => void) => void }, account: Account): { outer: string, dir: string } {
  const outer = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), 'vdiskfs-attacks-'))
  t.teardown(() => fs.rmSync(outer, { recursive: true, force: true }))
  fs.chmodSync(outer, 0o711)
  const dir = path.join(outer, 'shared')
  fs.mkdirSync(dir, { mode: 0o755 })
  fs.chownSync(dir, account.uid, account.gid)
  return { outer, dir }
}

async function backupOf (m: TestMount, name: string): Promise<string> {
  const disk = m.image('disks', `${name}.img`)
  await run('truncate', ['-s', '1M', disk])
  const fd = fs.openSync(disk, 'r+')
  try { fs.writeSync(fd, crypto.randomBytes(blockBytes), 0, blockBytes, 0); fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
  const made = await vdiskfs('backup', disk, `${name}-b`)
  if (made.code !== 0) throw new Error(`backup: ${made.stderr}`)
  return m.image('backups', `${name}-b.img`)
}

// Attack: root exports into a directory another user can write (a shared backup directory; /tmp too
// where fs.protected_symlinks is 0, as on this machine). The user plants FILE.partial as a symlink to a
// file of root's: export opened it with O_TRUNC and no O_NOFOLLOW, and wrote the stream through it.
test.serial('export -o FILE does not follow a symlink another user planted at FILE.partial (root file clobbered)', async t => {
  const account = ensureUser()
  const m = await withMount(t)
  const backup = await backupOf(m, 'clobber')
  const { outer, dir } = userDir(t, account)
  const victim = path.join(outer, 'victim.conf')
  fs.writeFileSync(victim, 'root configuration\n', { mode: 0o600 })
  const output = path.join(dir, 'out.vds')
  asUser('ln', ['-s', victim, `${output}.partial`])
  const result = await vdiskfs('export', backup, '-o', output)
  t.is(fs.readFileSync(victim, 'utf8'), 'root configuration\n', `export wrote through the planted symlink into ${victim} (exit ${result.code}: ${result.stderr.trim()})`)
})

// Attack: the user pre-creates FILE.partial as their own 0666 regular file (and may keep it open):
// export writes the backup's bytes into it and renames it to FILE, which stays the user's and readable.
test.serial('export -o FILE does not write a backup into a file another user owns at FILE.partial (backup disclosed)', async t => {
  const account = ensureUser()
  const m = await withMount(t)
  const backup = await backupOf(m, 'leak')
  const { dir } = userDir(t, account)
  const output = path.join(dir, 'leak.vds')
  asUser('touch', [`${output}.partial`])
  asUser('chmod', ['666', `${output}.partial`])
  const result = await vdiskfs('export', backup, '-o', output)
  for (const file of [output, `${output}.partial`]) {
    let stat: fs.Stats
    try { stat = fs.lstatSync(file) } catch { continue }
    if (stat.size === 0) continue
    t.is(stat.uid, 0, `${file} holds the exported stream (${stat.size} bytes) but belongs to uid ${stat.uid} (exit ${result.code}: ${result.stderr.trim()})`)
    t.is(stat.mode & 0o077, 0, `${file} holds the exported stream with mode ${(stat.mode & 0o777).toString(8)}`)
  }
  t.pass()
})

/**
 * Writes a one-block full stream with the given header fields. The encoder refuses a creation time a
 * stream may not carry, so the stream is encoded with time 0 and the field patched in afterwards, with
 * the header's CRC-32 and the trailer's checksum made to match (stream-format.ts offsets).
 */
async function craftStream (file: string, fields: { createdMs: number, size?: number }): Promise<void> {
  const encoder = new StreamEncoder({ name: 'hostile', blockBytes, uuid: crypto.randomUUID(), baseUuid: null, size: fields.size ?? blockBytes, createdMs: 0, records: 1 })
  const chunks: Buffer[] = []
  encoder.on('data', (chunk: Buffer) => chunks.push(chunk))
  const ended = new Promise((resolve, reject) => { encoder.on('end', resolve); encoder.on('error', reject) })
  encoder.write({ index: 0, data: crypto.randomBytes(blockBytes) })
  encoder.end()
  await ended
  const bytes = Buffer.concat(chunks)
  const nameBytes = bytes.readUInt16LE(10)
  bytes.writeBigUInt64LE(BigInt(fields.createdMs), 56)
  bytes.writeUInt32LE(zlib.crc32(bytes.subarray(80, 80 + nameBytes), zlib.crc32(bytes.subarray(0, 76))), 76)
  const hasher = new Blake3Hasher()
  hasher.update(bytes.subarray(0, bytes.length - 48))
  hasher.digestBuffer().copy(bytes, bytes.length - 48 + 16)
  fs.writeFileSync(file, bytes)
}

// Attack: a stream (from another host, a remote, anyone) whose header carries a creation time past
// what a Date can hold (8.64e15 ms) but below 2^53, which the decoder and the daemon accept. The import
// said "internal error: Invalid time value", yet the backup was made; from then on `vdiskfs ls`
// (text and --json) and `vdiskfs prune` of the whole pool failed with that internal error.
test.serial('import of a stream dated past the Date range is refused and leaves ls and prune working', async t => {
  const m = await withMount(t)
  const stream = path.join(m.dir, 'far-future.vds')
  await craftStream(stream, { createdMs: 8.7e15 })
  const imported = await vdiskfs('import', m.mnt, stream, 'far')
  t.not(imported.code, 0, 'the import of a stream with an impossible creation time must be refused')
  t.false(/internal error/.test(imported.stderr), `the refusal names the problem, not an internal error: ${imported.stderr.trim()}`)
  t.false(fs.existsSync(m.image('backups', 'far.img')), 'no backup appears from a refused stream')
  const ls = await vdiskfs('ls', m.mnt, '--json')
  t.is(ls.code, 0, `vdiskfs ls --json after the import: ${ls.stderr.trim()}`)
  const prune = await vdiskfs('prune', m.mnt, '--keep-last', '5', '--dry-run')
  t.is(prune.code, 0, `vdiskfs prune --dry-run after the import: ${prune.stderr.trim()}`)
})

/** The header of the stream in `bytes`, and a copy of it with `records` changed. */
async function headerOf (bytes: Buffer): Promise<StreamHeader> {
  const decoder = new StreamDecoder()
  return await new Promise((resolve, reject) => {
    decoder.on('data', (item: StreamItem) => { if (item.kind === 'header') { resolve(item.header); decoder.destroy() } })
    decoder.on('error', reject)
    decoder.end(bytes)
  })
}

/** The stream of `header` (records replaced) carrying `blocks`, without its trailer: a cut stream. */
async function cutStream (header: StreamHeader, blocks: Array<{ index: number, data: Buffer }>): Promise<Buffer> {
  const encoder = new StreamEncoder({ ...header, records: blocks.length })
  const chunks: Buffer[] = []
  encoder.on('data', (chunk: Buffer) => chunks.push(chunk))
  const ended = new Promise(resolve => encoder.on('end', resolve))
  for (const block of blocks) encoder.write(block)
  encoder.end()
  await ended
  const all = Buffer.concat(chunks)
  return all.subarray(0, all.length - 48)
}

/**
 * Runs `vdiskfs import MNT - NAME` fed `bytes` through a pipe held open `holdMs` before it ends (as a
 * transfer cut in the middle does): the blocks before the cut reach the daemon as progress.
 */
async function cutImport (mnt: string, bytes: Buffer, name: string, holdMs: number): Promise<void> {
  const child = spawn(cli, ['import', mnt, '-', name], { stdio: ['pipe', 'ignore', 'ignore'] })
  const exited = new Promise(resolve => child.on('close', resolve))
  child.stdin.on('error', () => {})
  child.stdin.write(bytes)
  await new Promise(resolve => setTimeout(resolve, holdMs))
  child.stdin.end()
  await exited
}

// Attack: an export stream's identity (uuid) is no secret: it is in every stream's header. Whoever
// feeds the victim a stream (the far end of an ssh pipe, a remote store another host writes to) sends
// one with the identity of a backup the victim will import later, carrying data at blocks that backup
// leaves as holes, and cuts it. The import keeps that as progress under the identity's key; the later,
// genuine and fully checked import of that identity resumes it, and the attacker's block ends up in
// the backup (cmp differs; verify finds nothing, the chunk is sound). A resumed import must keep only
// what the stream it finishes with carries.
test.serial('a cut hostile stream with a backup\'s identity does not put its blocks into the genuine import of that backup', async t => {
  const source = await withMount(t)
  const target = await withMount(t)
  const backup = await backupOf(source, 'genuine') // block 0 data, blocks 1-15 holes
  const genuine = path.join(source.dir, 'genuine.vds')
  const exported = await vdiskfs('export', backup, '-o', genuine)
  t.is(exported.code, 0, exported.stderr)
  const header = await headerOf(fs.readFileSync(genuine))
  const hostile = await cutStream(header, [{ index: 5, data: Buffer.alloc(blockBytes, 'ATTACKER') }])
  let recorded = 0
  for (let attempt = 1; attempt <= 5 && recorded === 0; attempt++) {
    await cutImport(target.mnt, hostile, 'bait', 500 * attempt)
    const imports = await call(target.mnt, 'imports') as Array<{ blocks: number }>
    recorded = imports.reduce((sum, row) => sum + row.blocks, 0)
  }
  t.true(recorded > 0, 'setup: the cut stream\'s block reached the daemon as progress')
  const imported = await vdiskfs('import', target.mnt, genuine, 'copy')
  if (imported.code !== 0) { t.pass(`the genuine import was refused: ${imported.stderr.trim()}`); return }
  const copy = target.image('backups', 'copy.img')
  t.true(await same(backup, copy), 'the imported backup differs from the exported one: it holds the cut stream\'s block 5')
})

async function same (a: string, b: string): Promise<boolean> {
  try { await run('cmp', [a, b]); return true } catch { return false }
}

// `vdiskfs export B -o /dev/null` (to time an export, or check it reads) wrote /dev/null.partial and
// renamed it over /dev/null: as root, the machine's /dev/null became a 0600 regular file (it happened
// on this shared machine today). Shown on a null device node of the test's own, not the real one:
// export must write into an existing device (or refuse), never replace it.
test.serial('export -o a device node does not replace the device with a regular file', async t => {
  const m = await withMount(t)
  const backup = await backupOf(m, 'devnull')
  const device = path.join(m.dir, 'null')
  await run('mknod', ['-m', '666', device, 'c', '1', '3'])
  const result = await vdiskfs('export', backup, '-o', device)
  t.true(fs.lstatSync(device).isCharacterDevice(), `export -o ${device} (exit ${result.code}: ${result.stderr.trim()}) replaced the device node with a ${fs.lstatSync(device).isFile() ? 'regular file' : 'something else'}`)
})

// Names starting with '.' are ordinary now (issue #11), so `.fuse_hidden0000000a0000000b` is a name a
// user may give. But a rename of an OPEN volume to such a name was taken as libfuse 2 hiding a file
// unlinked while open: the volume left readdir and `vdiskfs ls`, answered to no name once closed, and
// was gone: an image lost to a plain mv while a VM had it open. Later it was hidden until closed. On
// FUSE 3 nothing renames a file unlinked while open, so the name is an ordinary one throughout: listed
// while open, after the close, and across a remount.
test.serial('mv of an open image to a .fuse_hidden-like name neither loses nor hides the image', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'vm.img')
  const renamed = m.image('disks', '.fuse_hidden0000000a0000000b')
  const listed = async (): Promise<string[]> => (JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout) as Array<{ kind: string, name: string }>).map(v => `${v.kind}/${v.name}`)
  fs.writeFileSync(disk, 'important data\n')
  const fd = fs.openSync(disk, 'r')
  try {
    fs.renameSync(disk, renamed)
    t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['.fuse_hidden0000000a0000000b'], 'listed while open')
    t.deepEqual(await listed(), ['disk/.fuse_hidden0000000a0000000b'])
  } finally { fs.closeSync(fd) }
  // The last release reaches the daemon after close(2) returns: give it a moment, then look.
  await new Promise(resolve => setTimeout(resolve, 500))
  t.is(fs.readFileSync(renamed, 'utf8'), 'important data\n', 'after the close')
  t.deepEqual(await listed(), ['disk/.fuse_hidden0000000a0000000b'])
  await m.umount()
  await m.mount()
  t.is(fs.readFileSync(renamed, 'utf8'), 'important data\n', 'after a remount')
})

/** The path of `name` (raw bytes) in directory `dir`, as a Buffer: the kernel passes the bytes as given. */
function rawPath (dir: string, name: Buffer): Buffer {
  return Buffer.concat([Buffer.from(dir + '/'), name])
}

// Names may hold any byte but '/' and NUL (issue #11), but the daemon sees them as JS strings: bytes
// that are not UTF-8 became U+FFFD, so '\xff.img' and '\xfe.img' (two names to the kernel, to rsync,
// to a Latin-1 file set) were one image: writing the second overwrote the first, and readdir listed a
// third name (EF BF BD). Each name must be its own image, or the names be refused (EINVAL), never
// alias another.
test.serial('names that are not UTF-8 do not alias one another (writing \\xfe.img overwrote \\xff.img)', async t => {
  const m = await withMount(t)
  const disks = path.join(m.mnt, 'disks')
  const first = rawPath(disks, Buffer.from([0xff, 0x2e, 0x69, 0x6d, 0x67]))
  const second = rawPath(disks, Buffer.from([0xfe, 0x2e, 0x69, 0x6d, 0x67]))
  let firstMade = true
  try { fs.writeFileSync(first, 'first image\n') } catch { firstMade = false }
  try { fs.writeFileSync(second, 'second image\n') } catch {}
  if (!firstMade) { t.pass('a name that is not UTF-8 is refused'); return }
  t.is(fs.readFileSync(first, 'utf8'), 'first image\n', 'writing disks/\\xfe.img changed disks/\\xff.img')
})
