/**
 * The daemon side of the control socket, and only its bytes: reads request lines, checks each against
 * the table of operations (src/control/operations.ts), calls the handler, writes the reply line; hands
 * the socket to a stream handler (export, import) after its request line. What the operations do is in
 * the ops-*.ts modules (collected by ops.ts), and the work in the volume layer.
 */
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { VdiskError, invalid } from '../../errors'
import { controlRequestBytesMax } from '../../limits'
import { Handler, HandlerTable, StreamHandler } from './handler'
import { Operation, OperationSpec, ResultOf, StreamOperation, checkArgs, isOperation, operations } from '../../control/operations'
import { Reply, Request, checkControlDir } from '../../control/protocol'

// The daemon (src/daemon/daemon.ts) takes both from here.
export { controlHandlers } from './ops'

function isStreamOperation (op: Operation): op is StreamOperation { return (operations[op] as OperationSpec).stream === true }

/**
 * The handler of `op`, typed for `op`: HandlerTable gives each operation's handler its own types, but
 * TypeScript cannot follow that for an operation known only at run time, so this is the one cast.
 */
function handlerOf<Op extends Operation> (handlers: HandlerTable, op: Op): Op extends StreamOperation ? StreamHandler<Op> : Handler<Op> {
  return handlers[op] as Op extends StreamOperation ? StreamHandler<Op> : Handler<Op>
}

/** Runs the handler of plain operation `op` on a request's arguments, once they check against the table. */
async function run<Op extends Exclude<Operation, StreamOperation>> (handlers: HandlerTable, op: Op, args: Record<string, unknown>): Promise<ResultOf<Op>> {
  const handler = handlerOf(handlers, op) as Handler<Op>
  return await handler(checkArgs(op, args))
}

/** Hands the connection to the handler of stream operation `op`, once the request's arguments check against the table. */
async function runStream<Op extends StreamOperation> (handlers: HandlerTable, op: Op, args: Record<string, unknown>, socket: net.Socket, rest: Buffer): Promise<void> {
  const handler = handlerOf(handlers, op) as StreamHandler<Op>
  await handler(checkArgs(op, args), socket, rest)
}

/** The stream operation a request line asks for, with its arguments, or null (then answer() replies to it). */
function streamRequest (line: string): { id: number, op: StreamOperation, args: Record<string, unknown> } | null {
  let request: Request
  try { request = JSON.parse(line) as Request } catch { return null }
  if (request === null || typeof request !== 'object' || !isOperation(request.op) || !isStreamOperation(request.op)) return null
  if (request.args === null || typeof request.args !== 'object' || Array.isArray(request.args)) return null
  return { id: request.id, op: request.op, args: request.args }
}
/** The reply to one plain request line: the handler's result, or the error that refused it (logged unless the operation is quiet). */
async function answer (handlers: HandlerTable, log: (message: string) => void, line: string): Promise<Reply> {
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
  const op = request.op
  if (!isOperation(op)) return { id: request.id, ok: false, error: { code: 'INVALID', message: `unknown operation ${String(op)}` } }
  try {
    // A stream operation's request line that is not one (its arguments malformed) gets here too.
    if (isStreamOperation(op)) throw invalid('this operation carries a stream: use vdiskfs export or import')
    return { id: request.id, ok: true, result: await run(handlers, op, request.args ?? {}) }
  } catch (err) {
    if (err instanceof VdiskError) {
      // Refusals of what changes the pool are logged (busy, read-only, protected, exists ...); the
      // read-only queries' failures are the caller's business alone.
      if ((operations[op] as OperationSpec).quiet !== true) log(`${op} refused (${err.code}): ${err.message}`)
      return { id: request.id, ok: false, error: { code: err.code, message: err.message } }
    }
    log(`bug in control ${op}: ${(err as Error)?.stack ?? String(err)}`)
    return { id: request.id, ok: false, error: { code: 'IO', message: `internal error: ${(err as Error)?.message ?? String(err)}` } }
  }
}

export function startControlServer (socketPath: string, handlers: HandlerTable, log: (message: string) => void): net.Server {
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
          try {
            checkArgs(stream.op, stream.args)
          } catch (err) {
            const error = err instanceof VdiskError ? { code: err.code, message: err.message } : { code: 'IO', message: String(err) }
            socket.end(JSON.stringify({ id: stream.id, ok: false, error }) + '\n')
            return
          }
          runStream(handlers, stream.op, stream.args, socket, buffered).catch(err => {
            log(`bug in control ${stream.op}: ${(err as Error)?.stack ?? String(err)}`)
            socket.destroy()
          })
          return
        }
        void answer(handlers, log, line).then(reply => { if (!socket.destroyed) socket.write(JSON.stringify(reply) + '\n') })
      }
      if (buffered.length > controlRequestBytesMax) socket.destroy()
    }
    socket.on('data', onData)
  })
  // bind(2) runs inside listen() for a Unix socket and creates the file with 0777 & ~umask: create it
  // 0600 from the start, and chmod it too in case the bind happened later than that.
  const umask = process.umask(0o177)
  try { server.listen(socketPath) } finally { process.umask(umask) }
  server.once('listening', () => { try { fs.chmodSync(socketPath, 0o600) } catch (err) { log(`cannot chmod ${socketPath}: ${(err as Error).message}`) } })
  return server
}
