/**
 * The daemon side of the control socket: decodes requests, calls the pool, encodes replies. Like the
 * FUSE adapter it only translates; the work is in the volume layer.
 */
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { VolumeKind } from '../catalog/catalog'
import { VdiskError, invalid, notFound } from '../errors'
import { Pool } from '../volume/pool'
import { SpaceAccounting } from '../inspect/space'
import { Sealer } from '../seal/sealer'
import { Progress, verifyPool } from '../inspect/verify'
import { Operation, Reply, Request, checkControlDir } from './protocol'
import { controlRequestBytesMax, packLiveFractionExplicit } from '../limits'
import { adminHandlers } from './ops-admin'
import { statusHandlers } from './ops-status'
import { transferHandlers } from './ops-transfer'
import { remoteHandlers } from './ops-remote'
import { DaemonMetrics } from '../daemon/metrics'
import { LogEntry } from '../daemon/daemon-log'

const dirOfKind: Record<VolumeKind, string> = { disk: 'disks', backup: 'backups', clone: 'clones' }

export type Handler = ((args: Record<string, unknown>) => Promise<unknown>) & { stream?: StreamHandler }

/**
 * The stream mode (export and import, ops-transfer.ts): a handler with `stream` set is given the
 * connection after its request line, with the bytes that followed the line, and owns it from then on
 * (its replies, raw bytes in either direction, closing). The socket comes paused.
 */
export type StreamHandler = (args: Record<string, unknown>, socket: net.Socket, rest: Buffer) => Promise<void>

/** What a daemon's control handlers work with. */
export interface HandlerContext {
  pool: Pool
  space: SpaceAccounting
  sealer: Sealer
  status: () => unknown
  log: (message: string) => void
  /** Operation counters, event-loop delay and background jobs (vdiskfs status). */
  metrics: DaemonMetrics
  /** The last error lines of the log, oldest first. */
  recentErrors: () => LogEntry[]
}

/** Every operation the daemon answers: the core ones below and those of the ops-*.ts modules. */
export function controlHandlers (context: HandlerContext): Record<Operation, Handler> {
  return { ...coreHandlers(context), ...adminHandlers(context), ...statusHandlers(context), ...transferHandlers(context), ...remoteHandlers(context) }
}

function coreHandlers ({ pool, space, sealer, status, log, metrics }: HandlerContext): Record<Operation, Handler> {
  // Progress of the long job in flight (verify), for the CLI's progress bar; sealing keeps its own.
  let verifying: Progress | null = null
  const volumeArg = (args: Record<string, unknown>, key: string) => {
    const kind = args[key + 'Kind']
    const name = args[key + 'Name']
    if (typeof kind !== 'string' || typeof name !== 'string' || !['disk', 'backup', 'clone'].includes(kind)) throw invalid(`missing ${key}`)
    const volume = pool.get(kind as VolumeKind, name)
    // Volumes removed while open (hidden) are not in the namespace.
    if (volume.hidden) throw notFound(`${kind} ${name}`)
    return volume
  }
  const named = (volume: { kind: VolumeKind, name: string }) => `${dirOfKind[volume.kind]}/${volume.name}`
  const nameArg = (args: Record<string, unknown>) => {
    if (typeof args.name !== 'string') throw invalid('missing name')
    return args.name
  }
  return {
    status: async () => status(),
    commit: async () => { await pool.commit(); return {} },
    sync: async () => await metrics.job('sync', async () => {
      const started = Date.now()
      await pool.commit()
      const sealed = await sealer.sealPending(true)
      log(`sync: sealed ${sealed.extentsSealed} extents (${sealed.blocksSealed} blocks, ${sealed.rawBytes} -> ${sealed.storedBytes} bytes)` +
        `${sealed.failed.length > 0 ? `, ${sealed.failed.length} failed` : ''} in ${Date.now() - started} ms`)
      return { ...sealed, elapsedMs: Date.now() - started }
    }, () => sealer.progress),
    progress: async () => verifying ?? sealer.progress,
    verify: async () => {
      const progress: Progress = { done: 0, total: 0 }
      verifying = progress
      try {
        const report = await metrics.job('verify', async () => await pool.exclusive(async () => await verifyPool(pool, progress)), () => progress)
        log(`verify: ${report.ok ? 'no damage' : `DAMAGE: ${report.problems.length} pool problems, ${report.damaged.length} damaged ranges`} ` +
          `(${report.volumes} volumes, ${report.blocks} blocks, ${report.chunks} chunks)`)
        return report
      } finally { verifying = null }
    },
    ls: async () => pool.visible().map(v => ({ ...v.info(), storedBytes: v.storedBytes })),
    du: async () => space.report(),
    backup: async args => {
      const started = process.hrtime.bigint()
      const source = volumeArg(args, 'source')
      const backup = await pool.backup(source, nameArg(args))
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6
      log(`backup: ${named(source)} -> ${named(backup)} (${elapsedMs.toFixed(1)} ms)`)
      return { ...backup.info(), elapsedMs }
    },
    backupGroup: async args => {
      const started = process.hrtime.bigint()
      if (!Array.isArray(args.sources) || !Array.isArray(args.names) || typeof args.group !== 'string') throw invalid('missing sources, names or group')
      const sources = (args.sources as unknown[]).map(s => volumeArg((s ?? {}) as Record<string, unknown>, 'source'))
      const names = (args.names as unknown[]).map(n => { if (typeof n !== 'string') throw invalid('missing name'); return n })
      const backups = await pool.backupGroup(sources, names, args.group)
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6
      log(`backup group ${args.group}: ${sources.map((s, i) => `${named(s)} -> ${named(backups[i])}`).join(', ')} (${elapsedMs.toFixed(1)} ms)`)
      return { backups: backups.map((b, i) => ({ ...b.info(), from: sources[i].info() })), elapsedMs }
    },
    restoreGroup: async args => {
      if (typeof args.group !== 'string') throw invalid('missing group')
      const pairs = await pool.restoreGroup(args.group, { force: args.force === true })
      log(`restore group ${args.group}: ${pairs.map(p => `${named(p.target)} from ${named(p.backup)}`).join(', ')}${args.force === true ? ' (--force)' : ''}`)
      return { restored: pairs.map(p => ({ restored: p.target.info(), from: p.backup.info() })) }
    },
    cloneGroup: async args => {
      const group = args.group
      const prefix = args.prefix
      if (typeof group !== 'string' || typeof prefix !== 'string') throw invalid('missing group or prefix')
      // PREFIX-<the member's name without its group's prefix>: group vm1-mon's vm1-mon-root.img -> PREFIX-root.img.
      const clones = await pool.cloneGroup(group, backup => `${prefix}-${backup.name.startsWith(`${group}-`) ? backup.name.slice(group.length + 1) : backup.name}`)
      log(`clone group ${group}: ${clones.map(c => named(c)).join(', ')}`)
      return { clones: clones.map(c => c.info()) }
    },
    clone: async args => {
      const started = process.hrtime.bigint()
      const source = volumeArg(args, 'source')
      const clone = await pool.clone(source, nameArg(args))
      const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6
      log(`clone: ${named(source)} -> ${named(clone)} (${elapsedMs.toFixed(1)} ms)`)
      return { ...clone.info(), elapsedMs }
    },
    restore: async args => {
      const source = volumeArg(args, 'source')
      const target = volumeArg(args, 'target')
      await pool.restore(source, target, { force: args.force === true })
      log(`restore: ${named(target)} from ${named(source)}${args.force === true ? ' (--force)' : ''}`)
      return { restored: target.info(), from: source.info() }
    },
    rm: async args => {
      const volume = volumeArg(args, 'target')
      const removed = volume.info()
      await pool.remove(volume, { force: args.force === true })
      // Removed while open (--force): its holders keep it until they close it.
      const stillOpen = volume.openHandles > 0
      log(`rm: ${named(removed)}${stillOpen ? ' (still open: removed at its last close)' : ''}`)
      return { removed, stillOpen }
    },
    gc: async () => {
      const report = await metrics.job('gc', async () => await pool.gc(packLiveFractionExplicit))
      log(`gc: freed ${report.pagesFreed} map pages, ${report.extentsFreed} extents, ${report.chunksFreed} chunks, ${report.packsFreed} packs (${report.packBytesFreed} bytes)` +
        `${report.held !== undefined ? `; held: ${report.held}` : ''}`)
      return report
    }
  }
}

/** Control operations that change nothing: their refusals are not logged. */
const quietOperations = new Set(['status', 'stats', 'progress', 'ls', 'du', 'info', 'map', 'diff', 'uuid', 'imports', 'jobs'])

export function startControlServer (socketPath: string, handlers: Record<Operation, Handler>, log: (message: string) => void): net.Server {
  // Only the pool's owner may reach the socket (protocol.ts): a 0700 directory of ours, a 0600 socket.
  checkControlDir(path.dirname(socketPath), true)
  fs.rmSync(socketPath, { force: true })
  const server = net.createServer(socket => {
    let buffered: Buffer = Buffer.alloc(0)
    socket.on('error', () => socket.destroy())
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
      let newline: number
      while ((newline = buffered.indexOf(10)) >= 0) {
        const line = buffered.subarray(0, newline).toString('utf8')
        buffered = buffered.subarray(newline + 1)
        const stream = streamRequest(line)
        if (stream !== null) {
          // What follows the line is the operation's raw bytes, not requests.
          socket.off('data', onData)
          socket.pause()
          stream.handler(stream.args, socket, buffered).catch(err => {
            log(`bug in control ${stream.op}: ${(err as Error)?.stack ?? String(err)}`)
            socket.destroy()
          })
          return
        }
        void answer(line).then(reply => { if (!socket.destroyed) socket.write(JSON.stringify(reply) + '\n') })
      }
      if (buffered.length > controlRequestBytesMax) socket.destroy()
    }
    socket.on('data', onData)
  })
  /** The stream handler a request line asks for, or null (then answer() replies to it). */
  function streamRequest (line: string): { op: string, handler: StreamHandler, args: Record<string, unknown> } | null {
    let request: Request
    try { request = JSON.parse(line) as Request } catch { return null }
    if (request === null || typeof request !== 'object' || typeof request.op !== 'string' || !Object.prototype.hasOwnProperty.call(handlers, request.op)) return null
    const handler = handlers[request.op].stream
    if (handler === undefined || request.args === null || typeof request.args !== 'object' || Array.isArray(request.args)) return null
    return { op: request.op, handler, args: request.args }
  }
  async function answer (line: string): Promise<Reply> {
    let request: Request
    try {
      request = JSON.parse(line) as Request
    } catch {
      return { id: 0, ok: false, error: { code: 'INVALID', message: 'malformed control request' } }
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request) || typeof request.op !== 'string') {
      return { id: 0, ok: false, error: { code: 'INVALID', message: 'malformed control request' } }
    }
    if (request.args !== undefined && (request.args === null || typeof request.args !== 'object' || Array.isArray(request.args))) {
      return { id: request.id, ok: false, error: { code: 'INVALID', message: 'malformed control request arguments' } }
    }
    const handler = Object.prototype.hasOwnProperty.call(handlers, request.op) ? handlers[request.op] : undefined
    if (handler === undefined) return { id: request.id, ok: false, error: { code: 'INVALID', message: `unknown operation ${String(request.op)}` } }
    try {
      return { id: request.id, ok: true, result: await handler(request.args ?? {}) }
    } catch (err) {
      if (err instanceof VdiskError) {
        // Refusals of what changes the pool are logged (busy, read-only, protected, exists ...); the
        // read-only queries' failures are the caller's business alone.
        if (!quietOperations.has(request.op)) log(`${request.op} refused (${err.code}): ${err.message}`)
        return { id: request.id, ok: false, error: { code: err.code, message: err.message } }
      }
      log(`bug in control ${request.op}: ${(err as Error)?.stack ?? String(err)}`)
      return { id: request.id, ok: false, error: { code: 'IO', message: `internal error: ${(err as Error)?.message ?? String(err)}` } }
    }
  }
  // bind(2) runs inside listen() for a Unix socket and creates the file with 0777 & ~umask: create it
  // 0600 from the start, and chmod it too in case the bind happened later than that.
  const umask = process.umask(0o177)
  try { server.listen(socketPath) } finally { process.umask(umask) }
  server.once('listening', () => { try { fs.chmodSync(socketPath, 0o600) } catch (err) { log(`cannot chmod ${socketPath}: ${(err as Error).message}`) } })
  return server
}
