/**
 * xfstests' fsstress on ext4 in an image of the mount (issue #17): mkfs.ext4 on MNT/disks/ext4.img,
 * `mount -o loop`, fsstress -p 2 runs (fresh seeds, one after another) while `vdiskfs backup` of the
 * image is taken every ~1.5 s and `vdiskfs sync` and `vdiskfs gc` run beside it. Every backup was taken
 * with ext4 mounted and busy, so it must be crash-consistent: a clone of it, after `e2fsck -fp` (preen:
 * journal replay, orphans and summary counts, the repairs a crash may call for; anything else is "errors
 * left uncorrected", exit 4), must pass `e2fsck -fn` (exit 0). The image itself, unmounted cleanly, must
 * pass `e2fsck -fn` as it is.
 *
 * VDISKFS_FSSTRESS_SECONDS sets how long fsstress runs (default 12); VDISKFS_FSSTRESS_SEED the first seed
 * (default random; every seed is logged).
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { execFile } from 'node:child_process'
import { run, vdiskfs, withMount } from '../helpers/mount'
import { fsstressBin, requireTools, runProgram, startChurn, tail } from '../helpers/xfstests'

const seconds = Number(process.env.VDISKFS_FSSTRESS_SECONDS ?? 12)
const opsPerRun = 3000

async function e2fsck (args: string[], image: string): Promise<{ code: number, output: string }> {
  return await new Promise(resolve => {
    execFile('e2fsck', [...args, image], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 99
      resolve({ code, output: stdout + stderr })
    })
  })
}

test.serial('fsstress on loop-mounted ext4 with backups every 1.5 s: every backup is crash-consistent (e2fsck)', async t => {
  if (!requireTools(t)) return
  const m = await withMount(t)
  const image = m.image('disks', 'ext4.img')
  await run('truncate', ['-s', String(1 << 30), image])
  await run('mkfs.ext4', ['-q', '-F', image])
  const dir = await m.loopMount(image)
  const firstSeed = Number(process.env.VDISKFS_FSSTRESS_SEED ?? crypto.randomInt(1, 1_000_000_000))
  // A backup started every 1.5 s (all kept: each is checked below); sync and gc beside them.
  const churn = startChurn(m.mnt, image, 'fsstress', { backupEveryMs: 1500, pauseMs: 1000, fast: false })
  const started = Date.now()
  const runs: string[] = []
  let failed = false
  for (let i = 0; !failed && (i === 0 || Date.now() - started < seconds * 1000); i++) {
    const seed = firstSeed + i
    const work = path.join(dir, `run${i}`)
    // -c: the run's tree is removed at its end, so the file system never fills up.
    const args = ['-d', work, '-n', String(opsPerRun), '-p', '2', '-s', String(seed), '-c']
    const result = await runProgram(fsstressBin, args, 300_000)
    runs.push(`fsstress ${args.join(' ')}: exit ${String(result.code)} in ${(result.ms / 1000).toFixed(1)} s`)
    if (result.code !== 0) {
      failed = true
      t.log(`fsstress output (last 40 lines):\n${tail(result.output, 40)}`)
    }
  }
  const stats = await churn.stop()
  t.log(`${runs.length} fsstress runs (${opsPerRun} ops per process, 2 processes, seeds ${firstSeed}..${firstSeed + runs.length - 1}):\n  ${runs.join('\n  ')}`)
  t.log(`beside them: ${stats.backups} backups, ${stats.syncs} syncs, ${stats.gcs} gcs`)
  t.false(failed, 'every fsstress run exits 0')
  t.deepEqual(stats.failures, [], 'backup/sync/gc beside fsstress')
  t.true(stats.backups >= Math.min(5, Math.floor(seconds / 3)), `backups taken while ext4 was busy: ${stats.backups}`)
  await m.loopUmount(dir)

  const clean = await e2fsck(['-fn'], image)
  t.is(clean.code, 0, `e2fsck -fn of the cleanly unmounted image:\n${clean.output}`)
  let consistent = 0
  let replayed = 0
  for (const [i, backup] of churn.backups.entries()) {
    const name = `check-${i}`
    const cloned = await vdiskfs('clone', backup, name)
    t.is(cloned.code, 0, cloned.stderr)
    const clone = m.image('clones', `${name}.img`)
    const preen = await e2fsck(['-fp'], clone)
    const check = await e2fsck(['-fn'], clone)
    const ok = (preen.code === 0 || preen.code === 1) && check.code === 0
    if (ok) consistent++
    if (/recovering journal/i.test(preen.output)) replayed++
    else t.log(`${path.basename(backup)}: e2fsck -fp exit ${preen.code}, then e2fsck -fn exit ${check.code}:\n${tail(preen.output, 30)}\n${tail(check.output, 30)}`)
    t.true(ok, `${path.basename(backup)} is crash-consistent ext4`)
    t.is((await vdiskfs('rm', clone)).code, 0)
  }
  t.log(`${consistent} of ${churn.backups.length} backups crash-consistent (e2fsck -fp, then e2fsck -fn clean); ${replayed} needed their journal replayed`)
  const verify = await vdiskfs('verify', m.mnt)
  t.is(verify.code, 0, verify.stdout + verify.stderr)
  t.true(fs.existsSync(image))
})
