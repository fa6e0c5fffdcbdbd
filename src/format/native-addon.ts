/**
 * Functions of the FUSE 3 addon (native/fuse3) that the formats use when it loads, in the daemon and
 * in the workers alike: its CRC-32 (crc32_fast.c, carry-less multiplication where the CPU has it).
 * Each caller keeps a JavaScript fallback that computes the same values, so a pool written with one
 * is read with the other (test/unit/crc32.test.ts).
 */
import path from 'node:path'

let addon: Record<string, unknown> | null | undefined

/** The addon's function `name`, or null when the addon or the function is not there. Loaded at the first call. */
export function addonFunction<T extends (...args: never[]) => unknown> (name: string): T | null {
  if (addon === undefined) {
    try {
      const file = process.env.VDISKFS_FUSE3_ADDON ?? path.join(__dirname, '..', '..', '..', 'native', 'fuse3', 'build', 'vdiskfs_fuse3.node')
      addon = require(file) as Record<string, unknown>
    } catch {
      addon = null
    }
  }
  const fn = addon?.[name]
  return typeof fn === 'function' ? fn as T : null
}
