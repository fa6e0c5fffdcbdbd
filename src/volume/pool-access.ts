/**
 * Who may read a pool's files: its owner alone. The pool directory is 0700 and every file in it 0600,
 * whatever the umask: the daemon and the CLI run with umask 077 (they create every file), and opening a
 * pool tightens what an older vdiskfs or another umask left looser. Only the directory and its direct
 * entries are tightened: with the directory 0700, nothing below it is reachable by anybody else.
 */
import fs from 'node:fs'
import path from 'node:path'
import { fromSystemError } from '../errors'

/** Makes `dir` 0700 and its direct entries 0600 (files) or 0700 (directories). Errors: IO. */
export function securePoolDirectory (dir: string): void {
  try {
    if ((fs.statSync(dir).mode & 0o777) !== 0o700) fs.chmodSync(dir, 0o700)
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name)
      const wanted = entry.isDirectory() ? 0o700 : 0o600
      if (!entry.isDirectory() && !entry.isFile()) continue
      if ((fs.lstatSync(file).mode & 0o777) !== wanted) fs.chmodSync(file, wanted)
    }
  } catch (err) {
    throw fromSystemError(err, `restricting ${dir} to its owner`)
  }
}
