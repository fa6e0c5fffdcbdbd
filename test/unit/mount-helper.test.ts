/**
 * The mount(8) helper's argument mapping (issue #11): mount(8)'s helper arguments become `vdiskfs mount`
 * flags; the generic options mount(8) and systemd pass are ignored; what vdiskfs cannot honour is
 * refused with its reason; -s skips unknown options, -f is a check only.
 */
import test from 'ava'
import { HelperUsageError, planMount } from '../../src/cli/mount-helper'

test('our options map to vdiskfs mount flags; generic ones are ignored', t => {
  const plan = planMount(['/srv/pool', '/mnt/vd', '-o', 'rw,defaults,_netdev,nofail,noauto,user,nosuid,nodev,noexec,noatime,x-systemd.automount,comment=x,allow_other,xattrs,block_size=16K'])
  t.is(plan.pool, '/srv/pool')
  t.is(plan.mountpoint, '/mnt/vd')
  t.deepEqual(plan.flags, ['--allow-other', '--xattrs', '--block-size', '16K'])
  t.false(plan.fake)
  t.deepEqual(plan.skipped, [])
  t.deepEqual(planMount(['p', 'm']).flags, [])
  t.deepEqual(planMount(['p', 'm', '-oallow_other', '-t', 'fuse.vdiskfs', '-n']).flags, ['--allow-other'])
})

test('mount(8) flags: -f checks only, -v, -s skips unknown options', t => {
  const plan = planMount(['p', 'm', '-fv', '-s', '-o', 'frobnicate,allow_other'])
  t.true(plan.fake)
  t.true(plan.verbose)
  t.deepEqual(plan.skipped, ['frobnicate'])
  t.deepEqual(plan.flags, ['--allow-other'])
})

test('refused: ro, sync, allow_root, unknown options, a namespace, a wrong argument count', t => {
  for (const option of ['ro', 'sync', 'dirsync', 'allow_root', 'frobnicate', 'block_size=']) {
    t.throws(() => planMount(['p', 'm', '-o', option]), { instanceOf: HelperUsageError }, option)
  }
  t.regex(t.throws(() => planMount(['p', 'm', '-o', 'ro']))?.message ?? '', /read-only/)
  t.throws(() => planMount(['p', 'm', '-N', '/proc/1/ns/mnt']), { instanceOf: HelperUsageError })
  t.throws(() => planMount(['p']), { instanceOf: HelperUsageError })
  t.throws(() => planMount(['p', 'm', 'x']), { instanceOf: HelperUsageError })
  t.throws(() => planMount(['p', 'm', '-o']), { instanceOf: HelperUsageError })
  t.throws(() => planMount(['p', 'm', '--weird']), { instanceOf: HelperUsageError })
})
