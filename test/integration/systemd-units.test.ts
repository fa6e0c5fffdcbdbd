/**
 * The systemd examples (issue #11) pass `systemd-analyze verify` without a warning: the service template
 * (an instance per mountpoint), the .mount unit and the backup timer with its service. The installed
 * path /usr/local/bin/vdiskfs is pointed at this tree's bin/vdiskfs for the check (verify wants the
 * command to exist).
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { repoRoot } from '../helpers/mount'

test('examples/systemd units verify cleanly', t => {
  const source = path.join(repoRoot, 'examples', 'systemd')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-units-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const instances: Record<string, string> = {
    'vdiskfs@.service': 'vdiskfs@mnt-vd.service',
    'vdiskfs-backup@.service': 'vdiskfs-backup@web.service',
    'vdiskfs-backup@.timer': 'vdiskfs-backup@web.timer',
    'mnt-vd.mount': 'mnt-vd.mount'
  }
  t.deepEqual(fs.readdirSync(source).sort(), Object.keys(instances).sort())
  for (const [file, instance] of Object.entries(instances)) {
    const text = fs.readFileSync(path.join(source, file), 'utf8').replaceAll('/usr/local/bin/vdiskfs', path.join(repoRoot, 'bin', 'vdiskfs'))
    fs.writeFileSync(path.join(dir, file), text)
    if (instance !== file) fs.writeFileSync(path.join(dir, instance), text)
  }
  const result = spawnSync('systemd-analyze', ['verify', ...Object.values(instances).map(name => path.join(dir, name))], { encoding: 'utf8', timeout: 60000 })
  t.is(result.error, undefined, 'systemd-analyze runs (Debian 12 has systemd)')
  t.is(result.status, 0, result.stderr)
  t.is((result.stdout + result.stderr).trim(), '', 'no warnings')
})
