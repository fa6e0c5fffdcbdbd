/**
 * A new file that appears under its name only when complete (export -o FILE, cp IMAGE FILE): written
 * under a random name beside it (O_EXCL, mode 0600: never a file or link someone else planted), synced,
 * then given its name with link(), which never replaces a file there. An interrupted run (Ctrl-C,
 * SIGTERM, a failure) removes its partial file; after SIGKILL one `.NAME.RANDOM.partial` is left beside
 * NAME, and NAME itself is untouched, so the same command can simply be run again.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { VdiskError, fromSystemError } from '../errors'

export interface PartialFile {
  readonly fd: number
  readonly path: string
  /** Stops removing the file on a signal (after publish, or once removed). */
  forget: () => void
}

const exitSignals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

/** Creates the partial file for `output`; removed if the process is interrupted by a signal. Errors: IO. */
export function createPartial (output: string): PartialFile {
  const partial = path.join(path.dirname(path.resolve(output)), `.${path.basename(output)}.${crypto.randomBytes(6).toString('hex')}.partial`)
  let fd: number
  try { fd = fs.openSync(partial, 'wx', 0o600) } catch (err) { throw fromSystemError(err, `creating ${partial}`) }
  const onSignal = (signal: NodeJS.Signals): void => {
    fs.rmSync(partial, { force: true })
    process.stderr.write(`vdiskfs: interrupted (${signal}); ${output} was not written\n`)
    process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1))
  }
  for (const signal of exitSignals) process.on(signal, onSignal)
  const forget = (): void => { for (const signal of exitSignals) process.off(signal, onSignal) }
  return { fd, path: partial, forget }
}

/**
 * Gives the complete file `partial` the name `output` without replacing anything there (link, which
 * fails on an existing name, then unlink), and makes the name durable. A filesystem without hard
 * links (vfat) gets a rename after a check that the name is free. `appeared` is the error for a name
 * taken meanwhile (EXISTS).
 */
export function publish (partial: string, output: string, appeared: () => VdiskError): void {
  try {
    fs.linkSync(partial, output)
    fs.unlinkSync(partial)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw appeared()
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw fromSystemError(err, `naming ${output}`)
    if (fs.existsSync(output)) throw appeared()
    fs.renameSync(partial, output)
  }
  const dir = fs.openSync(path.dirname(path.resolve(output)), 'r')
  try { fs.fsyncSync(dir) } finally { fs.closeSync(dir) }
}
