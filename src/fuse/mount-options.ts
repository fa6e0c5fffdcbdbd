/**
 * The mount options vdiskfs passes to libfuse, including two fuse-native has no key for.
 *
 * fuse-native builds its `-o` string in `Fuse#_fuseOptions()` from a fixed list of keys, and has none
 * for `big_writes`/`max_write`: without them the kernel sends 4 KiB writes (about 46 MB/s here instead
 * of 0.65-0.95 GB/s). `VdiskFuse` extends that one method and appends the extra options; the values go
 * to libfuse 2.9's option parser, which accepts them. The README's "Write sizes" section has the
 * measurement (make bench-basic, with VDISKFS_NO_BIG_WRITES=1 for the 4 KiB case).
 */
import Fuse from 'fuse-native'
import { fuseBackgroundMax, fuseCongestionThreshold, fuseMaxReadBytes, fuseMaxWriteBytes } from '../limits'

export function extraMountOptions (): string[] {
  // No attribute or name caching: the CLI changes names and sizes behind the kernel's back (rm,
  // restore), and libfuse 2's high-level API cannot tell the kernel to drop what it cached.
  // fuse-native skips a timeout of 0 (it tests the value for truth), so they are passed here.
  const caching = ['entry_timeout=0', 'attr_timeout=0', 'negative_timeout=0']
  if (process.env.VDISKFS_NO_BIG_WRITES === '1') return caching
  return [
    ...caching,
    'big_writes',
    `max_write=${fuseMaxWriteBytes}`,
    `max_read=${fuseMaxReadBytes}`,
    `max_background=${fuseBackgroundMax}`,
    `congestion_threshold=${fuseCongestionThreshold}`
  ]
}

export class VdiskFuse extends Fuse {
  /**
   * How many per-thread records (each with its libuv async handle) fuse-native has made for libfuse's
   * threads. fuse-native allocates each through `_malloc` and keeps it in `_threads`; unpatched, it made
   * a new one for every thread libfuse started, forever (issue #10). Our patch (patches/) reuses those
   * of ended threads, so this stays at the most threads that were ever alive at once.
   */
  get threadRecords (): number {
    return (this as unknown as { _threads?: Set<unknown> })._threads?.size ?? 0
  }

  override _fuseOptions (): string {
    const base: string = super._fuseOptions()
    const extra = extraMountOptions()
    if (extra.length === 0) return base
    return base === '' ? '-o' + extra.join(',') : base + ',' + extra.join(',')
  }
}
