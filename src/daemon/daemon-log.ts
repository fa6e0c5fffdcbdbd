/**
 * The daemon's log (issue #11): one line per event, `ISO-TIME message`, on stderr in the foreground (-f,
 * for journald) or in the pool's daemon.log in the background. The file is rotated past daemonLogBytesMax
 * (VDISKFS_LOG_BYTES_MAX overrides it, for tests): daemon.log becomes daemon.log.1 (replacing the older
 * one), so the log takes at most twice that. Both files are the pool owner's alone (0600).
 *
 * Lines are appended asynchronously (the event loop serves FUSE); once the daemon stops, synchronously,
 * so that its last lines are written before process.exit. The last error lines (failures, corruption,
 * bugs) are kept for `vdiskfs status`.
 */
import fs from 'node:fs'
import { daemonLogBytesMax, daemonLogErrorsKept } from '../limits'
import type { LogEntry } from '../control/results'

/** Lines of the other layers that report a failure: they say so in these words (see the log calls). */
const errorLine = /^(error|bug|corruption)\b|fail|cannot|could not|frees nothing|damage/i


export class DaemonLog {
  /** The last error lines, oldest first. */
  readonly errors: LogEntry[] = []
  private fd = 2
  private file: string | null = null
  private bytes = 0
  private readonly bytesMax: number
  /** Writes in flight per descriptor: a rotated-away descriptor is closed when its last one is done. */
  private readonly pending = new Map<number, number>()
  /** Rotated-away descriptors with writes still in flight (closing them earlier could let a new file reuse the number). */
  private readonly retired = new Set<number>()
  private synchronous = false

  constructor () {
    const override = Number(process.env.VDISKFS_LOG_BYTES_MAX)
    this.bytesMax = Number.isInteger(override) && override > 0 ? override : daemonLogBytesMax
  }

  /** From now on, append to `file` (created 0600), rotating it past the size limit. */
  toFile (file: string): void {
    this.file = file
    this.fd = fs.openSync(file, 'a', 0o600)
    fs.fchmodSync(this.fd, 0o600)
    this.bytes = fs.fstatSync(this.fd).size
  }

  /**
   * Writes one line. Control characters (a stack trace's line breaks, a volume name's terminal escapes)
   * are escaped as \xNN, so each event stays one line and the log is safe to print.
   */
  readonly line = (message: string): void => {
    const time = new Date().toISOString()
    const text = message.replace(/[\u0000-\u001f\u007f-\u009f]/g, c => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
    if (errorLine.test(text)) {
      this.errors.push({ time, message: text })
      if (this.errors.length > daemonLogErrorsKept) this.errors.shift()
    }
    const data = `${time} ${text}\n`
    if (this.file !== null && this.bytes > 0 && this.bytes + data.length > this.bytesMax) this.rotate()
    this.bytes += Buffer.byteLength(data)
    if (this.synchronous) {
      try { fs.writeSync(this.fd, data) } catch {}
      return
    }
    const fd = this.fd
    this.pending.set(fd, (this.pending.get(fd) ?? 0) + 1)
    fs.write(fd, data, () => {
      const left = (this.pending.get(fd) ?? 1) - 1
      if (left > 0) { this.pending.set(fd, left); return }
      this.pending.delete(fd)
      if (this.retired.has(fd)) this.closeRetired(fd)
    })
  }

  /** The daemon is stopping: write the remaining lines synchronously (process.exit drops pending writes). */
  stopping (): void { this.synchronous = true }

  private rotate (): void {
    const file = this.file as string
    try {
      // Writes still in flight on the old descriptor land in daemon.log.1, where they belong.
      fs.renameSync(file, `${file}.1`)
      const fd = fs.openSync(file, 'a', 0o600)
      fs.fchmodSync(fd, 0o600)
      const old = this.fd
      this.fd = fd
      this.bytes = 0
      this.retired.add(old)
      if (!this.pending.has(old)) this.closeRetired(old)
    } catch (err) {
      // Keep writing where we were (the next line past the limit tries again); status shows why.
      this.errors.push({ time: new Date().toISOString(), message: `could not rotate ${file}: ${(err as Error).message}` })
      if (this.errors.length > daemonLogErrorsKept) this.errors.shift()
    }
  }

  private closeRetired (fd: number): void {
    this.retired.delete(fd)
    fs.close(fd, () => {})
  }
}
