/**
 * Processes the CLI waits for (`vdiskfs umount` waits for the daemon to exit).
 */
import fs from 'node:fs'

/** The state letter of process `pid` from /proc (R, S, D, Z, ...), or null when there is none. */
export function processState (pid: number): string | null {
  let stat: string
  try { stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8') } catch { return null }
  // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so the state follows the last ')'.
  const end = stat.lastIndexOf(')')
  return end < 0 ? null : stat.slice(end + 2, end + 3)
}

/**
 * Whether `pid` has exited: no such process (or none this user may signal), or a zombie. A daemon
 * `vdiskfs mount` started is reparented when the CLI exits, and after its own exit stays a zombie until
 * its new parent reaps it: init at once, a container's init as late as a second or more after. A
 * zombie still answers kill(pid, 0), but runs nothing and holds no file, mount or lock.
 */
export function processExited (pid: number): boolean {
  try { process.kill(pid, 0) } catch { return true }
  const state = processState(pid)
  return state === null || state === 'Z' || state === 'X'
}
