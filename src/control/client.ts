/**
 * The CLI side of the control socket. Errors: NOT_FOUND when no daemon serves the mountpoint,
 * NOT_PERMITTED when the socket or its directory belongs to another user, the daemon's own error
 * otherwise.
 */
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { VdiskError } from '../errors'
import { Operation, Reply, checkControlDir, socketPathsFor } from './protocol'

export async function call (mountpoint: string, op: Operation, args: Record<string, unknown> = {}): Promise<unknown> {
  // A control directory somebody else owns could hold a stranger's socket posing as our daemon.
  const socketPath = socketPathsFor(mountpoint).find(file => checkControlDir(path.dirname(file), false) && fs.existsSync(file))
  if (socketPath === undefined) throw new VdiskError('NOT_FOUND', `${mountpoint} is not a mounted vdiskfs pool`)
  return await new Promise((resolve, reject) => {
    const socket = net.connect(socketPath)
    let buffered = ''
    socket.setEncoding('utf8')
    socket.on('connect', () => socket.write(JSON.stringify({ id: 1, op, args }) + '\n'))
    socket.on('data', chunk => {
      buffered += chunk
      const newline = buffered.indexOf('\n')
      if (newline < 0) return
      socket.end()
      const reply = JSON.parse(buffered.slice(0, newline)) as Reply
      if (reply.ok) resolve(reply.result)
      else reject(new VdiskError(reply.error.code, reply.error.message))
    })
    socket.on('error', err => {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' || code === 'ECONNREFUSED') reject(new VdiskError('NOT_FOUND', `${mountpoint} is not a mounted vdiskfs pool`))
      else if (code === 'EACCES' || code === 'EPERM') reject(new VdiskError('NOT_PERMITTED', `the vdiskfs daemon of ${mountpoint} answers only the user who mounted it`))
      else reject(new VdiskError('IO', `cannot reach the vdiskfs daemon of ${mountpoint}: ${err.message}`))
    })
    socket.on('close', () => reject(new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} closed the connection`)))
  })
}
