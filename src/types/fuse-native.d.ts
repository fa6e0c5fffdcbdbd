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
  export type Operations = Record<string, Callback>
  class Fuse {
    constructor (mnt: string, ops: Operations, opts?: FuseOptions)
    mount (cb: (err: Error | null) => void): void
    unmount (cb: (err: Error | null) => void): void
    _fuseOptions (): string
    static unmount (mnt: string, cb: (err: Error | null) => void): void
  }
  export default Fuse
}
