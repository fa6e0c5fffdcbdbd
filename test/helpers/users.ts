/**
 * The unprivileged user the security tests attack as (security.test.ts, hostile-users-and-streams.test.ts).
 */
import { spawnSync } from 'node:child_process'

export const testUser = 'vdiskfs-test'

export interface Account { uid: number, gid: number }

/** The unprivileged test user, created once (and left in place: it may have existed before). */
export function ensureUser (): Account {
  let id = spawnSync('id', ['-u', testUser], { encoding: 'utf8' })
  if (id.status !== 0) {
    const made = spawnSync('useradd', ['-M', '-s', '/usr/sbin/nologin', testUser], { encoding: 'utf8' })
    // Another test run may have made it meanwhile: useradd's "already exists" is fine.
    if (made.status !== 0 && made.status !== 9) throw new Error(`useradd failed: ${made.stderr}`)
    id = spawnSync('id', ['-u', testUser], { encoding: 'utf8' })
  }
  const gid = spawnSync('id', ['-g', testUser], { encoding: 'utf8' })
  return { uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()) }
}
