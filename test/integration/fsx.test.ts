/**
 * xfstests' fsx against the mount (issue #17, "no wrong byte under concurrency"): fsx keeps a model of
 * its file in memory and checks every read (buffered and mmap) against it, through random writes, mapped
 * writes, truncates, fallocate (with and without keep-size), punch hole, zero range and copy range.
 * Beside every fsx run, `vdiskfs sync`, `vdiskfs backup` of the image (old backups removed) and
 * `vdiskfs gc` run in loops every few hundred ms, and the same requests go over the control socket
 * every ~50 ms (test/helpers/xfstests.ts). Configurations: a disk on a default pool; a disk on a
 * pool of 16 KiB blocks; a clone of a sealed backup (fsx -k starts from the clone's content); O_DIRECT
 * (-Z) on the 16 KiB pool; the FUSE 3 transport on 4 KiB blocks, where copy range shares blocks. After each run the image, quiet, must equal a backup of it; after each
 * configuration `vdiskfs verify` must pass, and after umount and mount every image must be unchanged.
 *
 * Flags: third_party/xfstests/README.md. Seeds: fixed ones and VDISKFS_FSX_RANDOM_SEEDS random ones
 * (default 1; VDISKFS_FSX_SEED replaces the random ones with one given seed), each printed with t.log.
 * VDISKFS_FSX_OPS sets the operations per run (make test: 1200; make fsx-long: 30,000, with 2 random seeds).
 * A failing run's .fsxlog, .fsxgood and .fsxops are kept under VDISKFS_TEST_DIR or the temporary
 * directory (the path is logged).
 */
import test from 'ava'
import type { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { run, sha256, vdiskfs, withMount } from '../helpers/mount'
import type { TestMount } from '../helpers/mount'
import { fsxBin, requireTools, runProgram, startChurn, tail } from '../helpers/xfstests'

const ops = Number(process.env.VDISKFS_FSX_OPS ?? 1200)
const randomSeeds = Number(process.env.VDISKFS_FSX_RANDOM_SEEDS ?? 1)
const givenSeed = process.env.VDISKFS_FSX_SEED

/** The fixed seeds first, then the random ones (or the one given). */
function seeds (fixed: number[]): number[] {
  if (givenSeed !== undefined) return [...fixed, Number(givenSeed)]
  return [...fixed, ...Array.from({ length: randomSeeds }, () => crypto.randomInt(1, 1_000_000_000))]
}

/** Unsupported operations off (collapse, insert, clone, dedupe, exchange, unshare, atomic writes). */
const common = ['-C', '-I', '-J', '-B', '-0', '-u', '-a']
/**
 * Buffered and mapped runs (all but seeds 1 and 3, which keep fsx's defaults) close and reopen the file
 * at 1 in 16 operations: the kernel serves reads from its page cache, which vdiskfs keeps across opens
 * (keep_cache), and fsx's close-open drops every clean page (it writes /proc/sys/vm/drop_caches, as
 * root), so the reads after a reopen check what the daemon holds, not what the kernel kept.
 */
const reopen = ['-c', '16']
/** O_DIRECT: every read goes to the daemon; no mapped reads or writes; 4 KiB-aligned I/O. */
const direct = ['-Z', '-R', '-W', '-r', '4096', '-w', '4096']

interface Run { label: string, file: string, seed: number, extra: string[] }

/**
 * One fsx run with the churn beside it; checks fsx's verdict, the churn's commands and that a backup
 * of the quiet image equals it. Returns the image's hash.
 */
async function fsx (t: ExecutionContext, m: TestMount, r: Run): Promise<string> {
  const logDir = fs.mkdtempSync(path.join(m.dir, `fsx-${r.seed}-`))
  const args = [...common, ...r.extra, '-N', String(ops), '-S', String(r.seed), '-P', logDir, '-q', r.file]
  const command = `fsx ${args.join(' ')}`
  t.log(`${r.label}: seed ${r.seed}, ${ops} ops: ${command}`)
  const churn = startChurn(m.mnt, r.file, `churn-${r.seed}`)
  const result = await runProgram(fsxBin, args, 120_000 + ops * 30, logDir)
  const stats = await churn.stop()
  const ok = result.code === 0 && result.output.includes(`All ${ops} operations completed A-OK!`)
  t.log(`${r.label}: seed ${r.seed}: ${ok ? 'A-OK' : `FAILED (exit ${String(result.code)}${result.signal !== null ? `, signal ${result.signal}` : ''}${result.timedOut ? ', timed out' : ''})`} in ${(result.ms / 1000).toFixed(1)} s; ` +
    `beside it ${stats.syncs} syncs, ${stats.backups} backups (${stats.removed} removed), ${stats.gcs} gcs by the CLI; ` +
    `${stats.fast.backups} backups (${stats.fast.removed} removed), ${stats.fast.syncs} syncs, ${stats.fast.gcs} gcs over the control socket`)
  if (!ok) {
    const keep = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), `vdiskfs-fsx-failed-${r.seed}-`))
    for (const name of fs.readdirSync(logDir)) fs.copyFileSync(path.join(logDir, name), path.join(keep, name))
    fs.writeFileSync(path.join(keep, 'command'), `${command}\n`)
    fs.writeFileSync(path.join(keep, 'output'), result.output)
    t.log(`fsx output (last 80 lines; all of it, the .fsxlog, .fsxgood and .fsxops in ${keep}):\n${tail(result.output, 80)}`)
  }
  t.true(ok, `${r.label}: fsx seed ${r.seed} (${command})`)
  t.deepEqual(stats.failures, [], `${r.label}: sync/backup/rm/gc beside fsx seed ${r.seed}`)
  t.true(stats.backups > 0 && stats.fast.backups > 0, 'backups were taken beside fsx, by the CLI and over the control socket')
  // Quiet now: a backup of the image is the image.
  const hash = sha256(r.file)
  const final = `final-${r.seed}`
  const backup = await vdiskfs('backup', r.file, final)
  t.is(backup.code, 0, backup.stderr)
  t.is(sha256(m.image('backups', `${final}.img`)), hash, `${r.label}: seed ${r.seed}: a backup of the quiet image equals it`)
  return hash
}

/** vdiskfs verify, then umount and mount again: every image must read back as it was. */
async function verifyAndRemount (t: ExecutionContext, m: TestMount, hashes: Map<string, string>, mountArgs: string[]): Promise<void> {
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, `vdiskfs verify: ${verify.stdout}${verify.stderr}`)
  await m.umount()
  await m.mount(...mountArgs)
  for (const [file, hash] of hashes) t.is(sha256(file), hash, `${file} after umount and mount`)
}

async function disks (t: ExecutionContext, label: string, mountArgs: string[], runs: Array<{ seed: number, extra: string[] }>, afterRuns?: (m: TestMount) => Promise<void>): Promise<void> {
  if (!requireTools(t)) return
  const m = await withMount(t, ...mountArgs)
  const hashes = new Map<string, string>()
  for (const r of runs) {
    const file = m.image('disks', `fsx-${r.seed}${r.extra.includes('-Z') ? '-direct' : ''}.img`)
    fs.writeFileSync(file, '') // there before fsx opens it, for the first backups beside it
    hashes.set(file, await fsx(t, m, { label, file, seed: r.seed, extra: [...r.extra, '-l', '1m', '-o', '128k'] }))
  }
  if (afterRuns !== undefined) await afterRuns(m)
  await verifyAndRemount(t, m, hashes, mountArgs)
}

test.serial('fsx with mapped reads and writes on a disk of a default pool, beside sync, backup and gc', async t => {
  await disks(t, 'default pool, mapped', [], seeds([1, 2]).map(seed => ({ seed, extra: seed === 1 ? [] : reopen })))
})

test.serial('fsx with mapped reads and writes on a disk of a pool of 16 KiB blocks, beside sync, backup and gc', async t => {
  await disks(t, '16 KiB blocks, mapped', ['--block-size', '16k'], seeds([3, 4]).map(seed => ({ seed, extra: seed === 3 ? [] : reopen })))
})

test.serial('fsx with O_DIRECT on a disk of a pool of 16 KiB blocks, beside sync, backup and gc', async t => {
  await disks(t, '16 KiB blocks, O_DIRECT', ['--block-size', '16k'], seeds([5]).map(seed => ({ seed, extra: direct })))
})

// copy_file_range shares whole blocks. fsx aligns a copy's source to -r and its target to -w: on 4 KiB blocks with both at
// 4 KiB, every copy shares its whole blocks (within the file) and copies its tail.
test.serial('fsx with copy_file_range sharing blocks on the FUSE 3 transport, 4 KiB blocks, mapped, beside sync, backup and gc', async t => {
  await disks(t, 'FUSE 3, 4 KiB blocks, copy range', ['--block-size', '4k'], seeds([7]).map(seed => ({ seed, extra: ['-r', '4096', '-w', '4096', ...reopen] })), async m => {
    // fsx turns copy range off by itself when the filesystem refuses it: the daemon must have served some.
    const status = JSON.parse((await vdiskfs('status', m.mnt, '--json')).stdout) as { operations: Record<string, { count: number, errors: number }> }
    const copies = status.operations.copy_file_range
    t.true(copies !== undefined && copies.count > 0 && copies.errors === 0, `copy_file_range requests served: ${JSON.stringify(copies)}`)
  })
})

test.serial('fsx -k on a clone of a sealed backup starts from its content; the backup never changes', async t => {
  if (!requireTools(t)) return
  const m = await withMount(t)
  const hashes = new Map<string, string>()
  for (const seed of seeds([6])) {
    // 2 MiB: 1.5 MiB of random bytes, the rest never written (a hole in the backup's map).
    const disk = m.image('disks', `base-${seed}.img`)
    await run('truncate', ['-s', String(2 << 20), disk])
    const fd = fs.openSync(disk, 'r+')
    fs.writeSync(fd, crypto.randomBytes(1536 << 10), 0, 1536 << 10, 0)
    fs.closeSync(fd)
    t.is((await vdiskfs('backup', disk, `base-${seed}`)).code, 0)
    const backup = m.image('backups', `base-${seed}.img`)
    const synced = await vdiskfs('sync', m.mnt)
    t.is(synced.code, 0, synced.stderr)
    const info = JSON.parse((await vdiskfs('info', backup, '--json')).stdout) as { unsealedBytes: number }
    t.is(info.unsealedBytes, 0, 'the backup is sealed before it is cloned')
    const backupHash = sha256(backup)
    t.is((await vdiskfs('clone', backup, `fsx-${seed}`)).code, 0)
    const clone = m.image('clones', `fsx-${seed}.img`)
    t.is(sha256(clone), backupHash)
    hashes.set(clone, await fsx(t, m, { label: 'clone of a sealed backup, -k', file: clone, seed, extra: ['-k', ...reopen, '-o', '128k'] }))
    t.is(sha256(backup), backupHash, 'the backup the clone came from is unchanged')
    hashes.set(backup, backupHash)
  }
  await verifyAndRemount(t, m, hashes, [])
})
