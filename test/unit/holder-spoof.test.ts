/**
 * The CLI waits for a takeover while a holder (vdiskfs-holder) keeps a mount whose daemon is gone; it finds
 * the holder by its command line, which any local user can forge. A process of another user's, named
 * vdiskfs-holder with root's mountpoint among its arguments, must not be taken for the holder: root's
 * commands on that mountpoint would wait 30 s and then blame a "holder" (vdiskfs-test, made with useradd
 * if missing, driven with runuser).
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import { holderOf } from '../../src/control/client'
import { ensureUser, testUser } from '../helpers/users'

/** A process named vdiskfs-holder, `mountpoint` among its arguments, as `user` (or this process's user); stopped at the test's end. */
async function fakeHolder (t: { teardown: (f: () => void) => void }, mountpoint: string, user: string | null): Promise<number> {
  const script = `exec -a vdiskfs-holder ${JSON.stringify(process.execPath)} -e 'setTimeout(() => {}, 60000)' -- ${JSON.stringify(mountpoint)}`
  const child = user === null ? spawn('bash', ['-c', script], { stdio: 'ignore' }) : spawn('runuser', ['-u', user, '--', 'bash', '-c', script], { stdio: 'ignore', cwd: '/' })
  t.teardown(() => { child.kill('SIGKILL') })
  // runuser forks: the forged process is its child, found by its command line once it has exec'd.
  for (let i = 0; i < 100; i++) {
    const found = spawnedPid(mountpoint)
    if (found !== null) { t.teardown(() => { try { process.kill(found, 'SIGKILL') } catch {} }); return found }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error('the forged holder did not start')
}

function spawnedPid (mountpoint: string): number | null {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      if (args[0] === 'vdiskfs-holder' && args.includes(mountpoint)) return Number(entry)
    } catch {}
  }
  return null
}

test.serial('a process of another user\'s named vdiskfs-holder is not taken for a mount\'s holder; one of ours is', async t => {
  ensureUser()
  const theirs = `/nonexistent/vdiskfs-holder-spoof-${process.pid}/mnt`
  const pid = await fakeHolder(t, theirs, testUser)
  t.is(holderOf(theirs), null, `pid ${pid} (${testUser}'s) taken for the holder`)
  const ours = `/nonexistent/vdiskfs-holder-own-${process.pid}/mnt`
  const own = await fakeHolder(t, ours, null)
  t.is(holderOf(ours), own)
})
