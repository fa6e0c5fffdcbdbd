/**
 * Who holds an image open: loop devices backed by it (/sys/block/loop* /loop/backing_file) and
 * processes with a descriptor on it (/proc/PID/fd). For the one line `rm` and `restore` print when the
 * daemon refuses an image in use. It runs in the CLI process, never in the daemon, and reads only /sys
 * and /proc: a readlink of /proc/PID/fd/N names the file without touching the mount.
 */
import fs from 'node:fs'

export type Holder =
  | { kind: 'loop', device: string, backingFile: string }
  | { kind: 'process', pid: number, command: string }

/** Holders of `file` (an absolute, resolved path); an empty list when none can be seen. */
export function findHolders (file: string): Holder[] {
  const holders: Holder[] = []
  let blocks: string[] = []
  try { blocks = fs.readdirSync('/sys/block').filter(name => name.startsWith('loop')) } catch {}
  for (const name of blocks) {
    let backingFile: string
    try { backingFile = fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim() } catch { continue }
    if (backingFile === file) holders.push({ kind: 'loop', device: `/dev/${name}`, backingFile })
  }
  let pids: string[] = []
  try { pids = fs.readdirSync('/proc').filter(name => /^\d+$/.test(name) && Number(name) !== process.pid) } catch {}
  for (const pid of pids) {
    let fds: string[]
    try { fds = fs.readdirSync(`/proc/${pid}/fd`) } catch { continue } // gone, or another user's
    const holds = fds.some(fd => { try { return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === file } catch { return false } })
    if (!holds) continue
    let command = '?'
    try { command = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() } catch {}
    holders.push({ kind: 'process', pid: Number(pid), command })
  }
  return holders
}

/**
 * "loop device /dev/loop3 (backing file F), pid 1234 (qemu-img)", at most three named. Control
 * characters are escaped: any user can name a process (and a file) with terminal escapes.
 */
export function describeHolders (holders: Holder[]): string {
  const named = holders.slice(0, 3).map(h => h.kind === 'loop' ? `loop device ${h.device} (backing file ${printable(h.backingFile)})` : `pid ${h.pid} (${printable(h.command)})`)
  if (holders.length > 3) named.push(`${holders.length - 3} more`)
  return named.join(', ')
}

/** `text` with control characters shown as \xHH, safe to print on a terminal. */
export function printable (text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, c => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
}

/**
 * `text` (several lines) with every control character but the newline shown as \xHH: what the CLI's
 * text output goes through, since volume names may hold any byte but '/' and NUL (a newline in a name
 * still breaks its line; --json carries names exactly).
 */
export function printableLines (text: string): string {
  return text.split('\n').map(printable).join('\n')
}
