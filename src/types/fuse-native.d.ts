/** The part of fuse-native's API vdiskfs uses (the package ships no types). */
declare module 'fuse-native' {
  type Callback = (...args: any[]) => void
  export interface FuseOptions {
    timeout?: number | false
    force?: boolean
    mkdir?: boolean
    allowOther?: boolean
    defaultPermissions?: boolean
    fsname?: string
    subtype?: string
    autoCache?: boolean
    kernelCache?: boolean
    attrTimeout?: number
    entryTimeout?: number
    debug?: boolean
  }
  /**
   * Operations by name, each taking fuse-native's arguments and a callback with a (negative) errno.
   * With our patch (patches/fuse-native+2.2.6.patch) this includes
   * `fallocate(path, mode, offset, length, fd, cb)`, mode being the FALLOC_FL_* bits.
   */
  export type Operations = Record<string, Callback>
  class Fuse {
    constructor (mnt: string, ops: Operations, opts?: FuseOptions)
    /** Patched: per-thread records made (each a libuv async handle) and those idle for reuse. */
    threadStats (): { records: number, idle: number } | null
    mount (cb: (err: Error | null) => void): void
    unmount (cb: (err: Error | null) => void): void
    _fuseOptions (): string
    static unmount (mnt: string, cb: (err: Error | null) => void): void
  }
  export default Fuse
}
