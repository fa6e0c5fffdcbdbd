/**
 * The table of control operations (src/control/operations.ts) as the one contract of client and server:
 * a typed call() reaches the handler with the table's arguments and returns its result; the server
 * refuses what the table does not allow (missing, malformed, unknown, a list element of the wrong
 * kind) before any handler runs, whoever sent it; the client refuses it before it connects; a stream
 * operation asked as a plain request is refused. The compile-time half (an operation, arguments or a
 * result the table does not allow do not compile) is the `@ts-expect-error` lines below: tsc fails
 * the build when one of them compiles.
 */
import test from 'ava'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { call } from '../../src/control/client'
import { ArgsOf, Operation, ResultOf, operations } from '../../src/control/operations'
import { socketPathFor } from '../../src/control/protocol'
import { HandlerTable } from '../../src/daemon/server/handler'
import { startControlServer } from '../../src/daemon/server/server'

const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-control-table-'))
process.env.VDISKFS_RUN_DIR = runDir
test.after.always(() => fs.rmSync(runDir, { recursive: true, force: true }))

/** What the handlers were called with, in order. */
const received: Array<{ op: Operation, args: unknown }> = []
const logged: string[] = []

function fakeHandlers (): HandlerTable {
  const table: Record<string, unknown> = {}
  for (const op of Object.keys(operations) as Operation[]) {
    table[op] = async (args: unknown) => {
      received.push({ op, args })
      if (op === 'uuid') return { uuid: `uuid of ${(args as ArgsOf<'uuid'>).name}` }
      return { op }
    }
  }
  return table as HandlerTable
}

const mountpoint = path.join(runDir, 'mnt')
let server: net.Server
test.before(async () => {
  server = startControlServer(socketPathFor(mountpoint), fakeHandlers(), message => logged.push(message))
  await new Promise(resolve => server.once('listening', resolve))
})
test.after.always(() => { server?.close() })

/** Sends one raw request line (what a client other than ours could send) and returns the reply. */
async function raw (line: string): Promise<{ ok: boolean, result?: unknown, error?: { code: string, message: string } }> {
  const socket = net.connect(socketPathFor(mountpoint))
  let text = ''
  socket.setEncoding('utf8')
  socket.write(line + '\n')
  return await new Promise((resolve, reject) => {
    socket.on('data', chunk => {
      text += chunk
      const newline = text.indexOf('\n')
      if (newline >= 0) { socket.end(); resolve(JSON.parse(text.slice(0, newline))) }
    })
    socket.on('error', reject)
  })
}

test.serial('a typed call reaches the handler with the table\'s arguments and returns its result', async t => {
  received.length = 0
  const reply: ResultOf<'uuid'> = await call(mountpoint, 'uuid', { kind: 'backup', name: 'b.img' })
  t.is(reply.uuid, 'uuid of b.img')
  await call(mountpoint, 'backupGroup', { sources: [{ sourceKind: 'disk', sourceName: 'a.img' }], names: ['g-a.img'], group: 'g' })
  await call(mountpoint, 'prune', { last: 2, dryRun: true })
  await call(mountpoint, 'status')
  t.deepEqual(received, [
    { op: 'uuid', args: { kind: 'backup', name: 'b.img' } },
    { op: 'backupGroup', args: { sources: [{ sourceKind: 'disk', sourceName: 'a.img' }], names: ['g-a.img'], group: 'g' } },
    { op: 'prune', args: { last: 2, dryRun: true } },
    { op: 'status', args: {} }
  ])
})

test.serial('the server refuses what the table does not allow before any handler runs', async t => {
  received.length = 0
  const refused = [
    [{ op: 'backup', args: { sourceKind: 'disk', sourceName: 'a.img' } }, 'missing name'],
    [{ op: 'backup', args: { sourceKind: 'disks', sourceName: 'a.img', name: 'b' } }, 'missing source'],
    [{ op: 'backup', args: { sourceKind: 'disk', sourceName: 'a.img', name: 7 } }, 'malformed name'],
    [{ op: 'note', args: { targetKind: 'disk', targetName: 'a.img' } }, 'missing note'],
    [{ op: 'rm', args: { targetKind: 'disk', targetName: 'a.img', force: 'yes' } }, 'malformed force'],
    [{ op: 'prune', args: { last: '2' } }, 'malformed last'],
    [{ op: 'backupGroup', args: { sources: [{ sourceKind: 'disk', sourceName: 'a.img' }, { sourceKind: 'tape', sourceName: 'b.img' }], names: ['x', 'y'], group: 'g' } }, 'malformed sources'],
    [{ op: 'backupGroup', args: { sources: [], names: ['x', 3], group: 'g' } }, 'malformed names'],
    [{ op: 'exportStream', args: {} }, 'missing backup'],
    [{ op: 'nonsense', args: {} }, 'unknown operation nonsense']
  ] as const
  for (const [request, message] of refused) {
    const reply = await raw(JSON.stringify({ id: 1, ...request }))
    t.false(reply.ok, JSON.stringify(request))
    t.is(reply.error?.code, 'INVALID')
    t.is(reply.error?.message, message)
  }
  t.deepEqual(received, [], 'no handler ran')
})

test.serial('a stream operation asked as a plain request is refused; the client checks before it connects', async t => {
  received.length = 0
  const reply = await raw(JSON.stringify({ id: 1, op: 'importStream' }))
  t.false(reply.ok)
  t.regex(reply.error?.message ?? '', /carries a stream/)
  // No daemon serves this path: a check made after connecting would fail with NOT_FOUND instead.
  const nowhere = path.join(runDir, 'no-daemon')
  const bad = { sourceKind: 'disk', sourceName: 'a.img' } as unknown as ArgsOf<'backup'>
  await t.throwsAsync(call(nowhere, 'backup', bad), { message: 'missing name' })
  await t.throwsAsync(call(nowhere, 'backup', { sourceKind: 'disk', sourceName: 'a.img', name: 'b' }), { message: /not a mounted vdiskfs pool/ })
  t.deepEqual(received, [])
})

// Never run: each line marked must fail to compile (tsc refuses an unused @ts-expect-error).
export async function doesNotCompile (op: Operation, args: Record<string, unknown>): Promise<void> {
  // @ts-expect-error an operation the table lacks
  await call(mountpoint, 'nonsense')
  // @ts-expect-error a required argument missing
  await call(mountpoint, 'backup', { sourceKind: 'disk', sourceName: 'a.img' })
  // @ts-expect-error a volume kind that is none
  await call(mountpoint, 'backup', { sourceKind: 'disks', sourceName: 'a.img', name: 'b' })
  // @ts-expect-error an argument the operation does not take
  await call(mountpoint, 'prune', { lst: 2 })
  // @ts-expect-error arguments to an operation that takes none
  await call(mountpoint, 'status', { verbose: true })
  // @ts-expect-error an operation known only at run time, with any arguments
  await call(mountpoint, op, args)
  // @ts-expect-error the result's type is the table's
  const wrong: string = await call(mountpoint, 'uuid', { kind: 'disk', name: 'a.img' })
  void wrong
}
