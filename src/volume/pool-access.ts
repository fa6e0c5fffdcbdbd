/**
 * Who may read a pool's files: its owner alone. The pool directory is 0700 and every file in it 0600,
 * whatever the umask: the daemon and the CLI run with umask 077 (they create every file), and opening a
 * pool tightens what an older vdiskfs or another umask left looser. Only the directory and its direct
 * entries are tightened: with the directory 0700, nothing below it is reachable by anybody else.
 */
import fs from 'node:fs'
import path from 'node:path'
import { fromSystemError, invalid, notPermitted } from '../errors'

/**
 * The pool directory to use for `dir`: its real path, created 0700 when missing (its parents as
 * usual, the last component alone and non-recursively, so nobody can slip one in between), and
 * refused unless it is a directory this process's user owns. A pool directory somebody else owns (an
 * empty one made ahead in /tmp, or a symbolic link to one) would let that user swap files under the
 * daemon: symbolic links where it writes its pid and log, an extent of their own making.
 * Errors: NOT_PERMITTED (owned by another user), INVALID (not a directory), IO.
 */
export function claimPoolDirectory (dir: string, create: boolean): string {
  let real: string
  try {
    real = fs.realpathSync(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw fromSystemError(err, `opening ${dir}`)
    try {
      fs.mkdirSync(path.dirname(dir), { recursive: true })
      fs.mkdirSync(dir, { mode: 0o700 })
      real = fs.realpathSync(dir)
    } catch (inner) {
      throw fromSystemError(inner, `creating ${dir}`)
    }
  }
  let stat: fs.Stats
  try { stat = fs.lstatSync(real) } catch (err) { throw fromSystemError(err, `opening ${dir}`) }
  if (!stat.isDirectory()) throw invalid(`${dir} is not a directory`)
  const uid = process.geteuid?.() ?? 0
  if (stat.uid !== uid) {
    throw notPermitted(`${dir} belongs to uid ${stat.uid}, not to you (uid ${uid}): a pool must be a directory of its own user's, or another user could change its files underneath`)
  }
  return real
}

/**
 * Makes `dir` 0700 and its direct entries 0600 (files) or 0700 (directories). Refuses an entry that is
 * a symbolic link or belongs to another user: nothing in a pool is either, and following one would
 * write where somebody else chose. Errors: NOT_PERMITTED, IO.
 */
export function securePoolDirectory (dir: string): void {
  const uid = process.geteuid?.() ?? 0
  try {
    if ((fs.statSync(dir).mode & 0o777) !== 0o700) fs.chmodSync(dir, 0o700)
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name)
      const stat = fs.lstatSync(file)
      if (stat.isSymbolicLink() || stat.uid !== uid) {
        throw notPermitted(`${file} is ${stat.isSymbolicLink() ? 'a symbolic link' : `owned by uid ${stat.uid}`}: a pool holds only its owner's files; move it away and mount again`)
      }
      const wanted = entry.isDirectory() ? 0o700 : 0o600
      if (!entry.isDirectory() && !entry.isFile()) continue
      if ((stat.mode & 0o777) !== wanted) fs.chmodSync(file, wanted)
    }
  } catch (err) {
    throw fromSystemError(err, `restricting ${dir} to its owner`)
  }
}
