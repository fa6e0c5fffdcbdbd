/**
 * The CLI side of the control socket. Errors: NOT_FOUND when no daemon serves the mountpoint,
 * NOT_PERMITTED when the socket or its directory belongs to another user, the daemon's own error
 * otherwise.
 */
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { VdiskError } from '../errors'
import { ArgsOf, FinalOf, Operation, ResultOf, StreamOperation, checkArgs } from './operations'
import { Reply, checkControlDir, socketPathsFor } from './protocol'
import { mountsSync } from '../io/mountinfo'
import { ByteReader, RingSource } from '../transfer/wire'

/** Whether T is a union of several types. */
type IsUnion<T, All = T> = T extends unknown ? ([All] extends [T] ? false : true) : never
/**
 * One operation of the table, not a union of several: the arguments of a union would be checked only
 * loosely (an object of any keys passes as the all-optional arguments of prune), so call() refuses it.
 */
type One<Op extends Operation> = true extends IsUnion<Op> ? never : Op

/** The arguments of `op`: none to give when it takes none (or only optional ones). */
type ArgsParam<Op extends Operation> = Op extends Operation ? Record<string, never> extends ArgsOf<Op> ? [args?: ArgsOf<Op>] : [args: ArgsOf<Op>] : never

/**
 * Whether `mountpoint` is a vdiskfs mount the kernel still lists (findmnt shows it) although no
 * daemon answers for it: its daemon died (SIGKILL, a crash) and left it dead (ENOTCONN).
 */
export function isDeadMount (mountpoint: string): boolean {
  try {
    return mountsSync().some(m => m.mountpoint === mountpoint && (m.fstype === 'fuse.vdiskfs' || m.source.startsWith('vdiskfs:')))
  } catch {
    return false
  }
}

/** No daemon answers for `mountpoint`: says why (a dead mount, or none at all) and what to do. */
export function noDaemon (mountpoint: string): VdiskError {
  if (isDeadMount(mountpoint)) {
    return new VdiskError('NOT_FOUND', `the daemon of ${mountpoint} is gone (killed?) and its mount is left dead (ENOTCONN): ` +
      `run vdiskfs umount ${mountpoint} (or fusermount3 -uz ${mountpoint}) and mount the pool again (what was committed is kept)`)
  }
  return new VdiskError('NOT_FOUND', `${mountpoint} is not a mounted vdiskfs pool`)
}

function socketOf (mountpoint: string): string {
  // A control directory somebody else owns could hold a stranger's socket posing as our daemon.
  const socketPath = socketPathsFor(mountpoint).find(file => checkControlDir(path.dirname(file), false) && fs.existsSync(file))
  if (socketPath === undefined) throw noDaemon(mountpoint)
  return socketPath
}

/**
 * The pid of the holder keeping `mountpoint` (a FUSE 3 mount outliving its daemon: docs/TRANSPORT.md),
 * found by its command line (vdiskfs-holder DAEMON_PID -- ... mount POOL MNT ...), or null. Only a
 * process of this user's: any user can name a process so, and a daemon this user cannot reach (another
 * user's) is not waited for either.
 */
export function holderOf (mountpoint: string): number | null {
  let entries: string[]
  try { entries = fs.readdirSync('/proc') } catch { return null }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    let args: string[]
    try { args = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0') } catch { continue }
    if (path.basename(args[0] ?? '') !== 'vdiskfs-holder' || !args.includes(mountpoint)) continue
    try { if (fs.statSync(`/proc/${entry}`).uid !== (process.getuid?.() ?? 0)) continue } catch { continue }
    return Number(entry)
  }
  return null
}

const takeoverWaitMs = 30_000
const takeoverPollMs = 100

/**
 * Connects to the daemon of `mountpoint`. While its holder is starting a daemon to take the mount over
 * (the one before died), waits for it, up to takeoverWaitMs: a command run during a takeover is served
 * by the new daemon instead of failing.
 */
async function connect (mountpoint: string, ring?: RingSource): Promise<net.Socket> {
  const started = Date.now()
  for (;;) {
    let failure: VdiskError
    try {
      const socketPath = socketOf(mountpoint)
      // A ring source: the socket reads into its buffer (onread), and hands it no buffer of its own per read.
      const socket = ring === undefined ? net.connect(socketPath) : net.connect({ path: socketPath, onread: { buffer: ring.readBuffer, callback: n => ring.onRead(n) } })
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve)
        socket.once('error', err => { socket.destroy(); reject(connectError(mountpoint, err)) })
      })
      return socket
    } catch (err) {
      if (!(err instanceof VdiskError) || err.code !== 'NOT_FOUND') throw err
      failure = err
    }
    const holder = holderOf(mountpoint)
    if (holder === null) throw failure
    if (Date.now() - started >= takeoverWaitMs) {
      throw new VdiskError('IO', `the daemon of ${mountpoint} stopped and its holder (pid ${holder}) has not brought up another within ${takeoverWaitMs / 1000} s: see daemon.log in the pool`)
    }
    await new Promise(resolve => setTimeout(resolve, takeoverPollMs))
  }
}

function connectError (mountpoint: string, err: Error): VdiskError {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOENT' || code === 'ECONNREFUSED') return noDaemon(mountpoint)
  if (code === 'EACCES' || code === 'EPERM') return new VdiskError('NOT_PERMITTED', `the vdiskfs daemon of ${mountpoint} answers only the user who mounted it`)
  return new VdiskError('IO', `cannot reach the vdiskfs daemon of ${mountpoint}: ${err.message}`)
}

/**
 * The stream mode (export, import; server.ts): sends the request line and waits for the daemon's
 * reply line. Returns the connection, paused, the reply's result and the bytes that followed the
 * reply; the caller owns the connection. Throws the daemon's error when the reply is one.
 */
export async function openStream<Op extends StreamOperation> (mountpoint: string, op: One<Op>, args: ArgsOf<Op>): Promise<{ socket: net.Socket, result: ResultOf<Op>, rest: Buffer }> {
  checkArgs(op, args)
  const socket = await connect(mountpoint)
  try {
    // From here on a failure shows as 'close' to writers and as a rejection to readers: an 'error'
    // without a listener would end the process.
    socket.on('error', () => {})
    socket.write(JSON.stringify({ id: 1, op, args }) + '\n')
    const { result, rest } = await readLine(socket, Buffer.alloc(0), mountpoint)
    return { socket, result: result as ResultOf<Op>, rest }
  } catch (err) {
    socket.destroy()
    throw err
  }
}

/**
 * openStream whose connection reads into `ring` (RingSource, transfer/wire.ts: no buffer of its own per
 * read of the socket): the reply line, then the stream's bytes, through `reader`, a ByteReader over it,
 * whose views are valid until its next frame begins (ByteReader.settle).
 */
export async function openStreamRing<Op extends StreamOperation> (mountpoint: string, op: One<Op>, args: ArgsOf<Op>, ring: RingSource): Promise<{ socket: net.Socket, result: ResultOf<Op>, reader: ByteReader }> {
  checkArgs(op, args)
  const socket = await connect(mountpoint, ring)
  try {
    // An error, then the close: the ring holds the error, which its reader sees after the bytes before it.
    socket.on('error', err => ring.fail(new VdiskError('IO', `the connection to the vdiskfs daemon of ${mountpoint} failed: ${err.message}`)))
    socket.on('end', () => ring.end())
    socket.on('close', () => ring.end())
    ring.attach(() => socket.resume())
    socket.write(JSON.stringify({ id: 1, op, args }) + '\n')
    const reader = new ByteReader(ring, Buffer.alloc(0), ring)
    let line: string | null = null
    for (let at = 0; line === null; at++) {
      while (at >= reader.buffered) if (!await reader.more()) throw new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} closed the connection`)
      if (reader.peek(at) === 10) line = reader.readNow(at + 1).subarray(0, at).toString('utf8')
    }
    const reply = JSON.parse(line) as Reply
    if (!reply.ok) throw new VdiskError(reply.error.code, reply.error.message)
    return { socket, result: reply.result as ResultOf<Op>, reader }
  } catch (err) {
    socket.destroy()
    throw err
  }
}

/**
 * Reads the reply line that ends stream operation `op` (importStream's, after its blocks) from its
 * connection (after `initial`, bytes already read); leaves the connection paused. Returns the result
 * and the bytes after the line; throws the daemon's error.
 */
export async function readReply<Op extends StreamOperation> (op: Op, socket: net.Socket, initial: Buffer, mountpoint: string): Promise<{ result: FinalOf<Op>, rest: Buffer }> {
  const { result, rest } = await readLine(socket, initial, mountpoint)
  return { result: result as FinalOf<Op>, rest }
}

/** Reads one JSON reply line from a stream-mode connection; leaves the connection paused. */
async function readLine (socket: net.Socket, initial: Buffer, mountpoint: string): Promise<{ result: unknown, rest: Buffer }> {
  const line = await new Promise<{ line: string, rest: Buffer }>((resolve, reject) => {
    let buffered = initial
    const finish = (err: Error | null, value?: { line: string, rest: Buffer }): void => {
      socket.removeListener('data', onData)
      socket.removeListener('error', onError)
      socket.removeListener('close', onClose)
      socket.pause()
      if (err !== null) reject(err); else resolve(value as { line: string, rest: Buffer })
    }
    const look = (): boolean => {
      const newline = buffered.indexOf(10)
      if (newline < 0) return false
      finish(null, { line: buffered.subarray(0, newline).toString('utf8'), rest: buffered.subarray(newline + 1) })
      return true
    }
    const onData = (chunk: Buffer): void => { buffered = Buffer.concat([buffered, chunk]); look() }
    const onError = (err: Error): void => finish(connectError(mountpoint, err))
    const onClose = (): void => finish(new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} closed the connection`))
    if (look()) return
    socket.on('data', onData)
    socket.on('error', onError)
    socket.on('close', onClose)
    socket.resume()
  })
  const reply = JSON.parse(line.line) as Reply
  if (!reply.ok) throw new VdiskError(reply.error.code, reply.error.message)
  return { result: reply.result, rest: line.rest }
}

/**
 * Sends one request and returns its result; throws the daemon's error. The arguments' and the result's
 * types are the table's (operations.ts); the arguments are also checked against it before anything is
 * sent, as the daemon checks them.
 */
export async function call<Op extends Operation> (mountpoint: string, op: One<Op>, ...[args]: ArgsParam<Op>): Promise<ResultOf<Op>> {
  checkArgs(op, args ?? {})
  const socket = await connect(mountpoint)
  return await new Promise((resolve, reject) => {
    let buffered = ''
    socket.setEncoding('utf8')
    socket.write(JSON.stringify({ id: 1, op, args: args ?? {} }) + '\n')
    socket.on('data', chunk => {
      buffered += chunk
      const newline = buffered.indexOf('\n')
      if (newline < 0) return
      socket.end()
      const reply = JSON.parse(buffered.slice(0, newline)) as Reply
      if (reply.ok) resolve(reply.result as ResultOf<Op>)
      else reject(new VdiskError(reply.error.code, reply.error.message))
    })
    socket.on('error', err => reject(connectError(mountpoint, err)))
    socket.on('close', () => reject(new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} closed the connection`)))
  })
}
