/**
 * Reads /proc/self/mountinfo: which mounts exist and their device numbers. The daemon uses it to find
 * its own mount's device (for read-ahead) and to notice an unmount from outside, without touching the
 * mount itself (a call on its own mount from the daemon could wait on its own event loop).
 */
import fs from 'node:fs'

export interface MountEntry { mountpoint: string, device: string, fstype: string, source: string }

function unescape (field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, octal: string) => String.fromCharCode(parseInt(octal, 8)))
}

export function parseMountinfo (text: string): MountEntry[] {
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const fields = line.split(' ')
    const dash = fields.indexOf('-')
    if (dash < 0 || fields.length < dash + 3) continue
    out.push({ mountpoint: unescape(fields[4]), device: fields[2], fstype: fields[dash + 1], source: unescape(fields[dash + 2]) })
  }
  return out
}

export async function mounts (): Promise<MountEntry[]> {
  return parseMountinfo(await fs.promises.readFile('/proc/self/mountinfo', 'utf8'))
}

export function mountsSync (): MountEntry[] {
  return parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'))
}
