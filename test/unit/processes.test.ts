/**
 * `vdiskfs umount` waits for the daemon to exit. A daemon started by `vdiskfs mount` is reparented once
 * the CLI exits; when it exits, it stays a zombie until its new parent (init, or a container's init that
 * reaps every second or so) reaps it, and a zombie still answers kill(pid, 0). processExited counts a
 * zombie as exited: it runs nothing and holds no file, mount or lock.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { processExited, processState } from '../../src/cli/processes'

/** A process whose child exits at once and is never reaped (sh execs into sleep, which reaps nothing). */
async function zombie (): Promise<{ pid: number, parent: ReturnType<typeof spawn> }> {
  const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] })
  const pid = await new Promise<number>(resolve => parent.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))))
  return { pid, parent }
}

test('a zombie that still answers kill(pid, 0) has exited; a running process has not; a pid nobody holds has', async t => {
  const { pid, parent } = await zombie()
  t.teardown(() => { parent.kill('SIGKILL') })
  for (let waited = 0; processState(pid) !== 'Z' && waited < 10000; waited += 20) await new Promise(resolve => setTimeout(resolve, 20))
  t.is(processState(pid), 'Z', 'the child became a zombie')
  t.notThrows(() => process.kill(pid, 0), 'a zombie answers kill(pid, 0)')
  t.true(processExited(pid))

  t.false(processExited(parent.pid ?? 0), 'sleep 30 runs')
  t.false(processExited(process.pid))

  parent.kill('SIGKILL')
  await new Promise(resolve => parent.once('exit', resolve))
  for (let waited = 0; fs.existsSync(`/proc/${pid}`) && waited < 10000; waited += 20) await new Promise(resolve => setTimeout(resolve, 20))
  t.true(processExited(pid), 'reaped: gone')
})

test('the state is read after the last parenthesis: a command name holding ") Z " does not fool it', async t => {
  t.is(processState(process.pid), 'R')
  t.is(processState(0x7ffffff0), null)
  // A sleeping process whose command name (the executable's file name) is "a) Z b".
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-processes-'))
  const program = path.join(dir, 'a) Z b')
  fs.copyFileSync('/bin/sleep', program)
  fs.chmodSync(program, 0o755)
  const sleeper = spawn(program, ['30'], { stdio: 'ignore' })
  t.teardown(() => { sleeper.kill('SIGKILL'); fs.rmSync(dir, { recursive: true, force: true }) })
  const pid = sleeper.pid ?? 0
  for (let waited = 0; processState(pid) !== 'S' && waited < 10000; waited += 20) await new Promise(resolve => setTimeout(resolve, 20))
  t.true(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes('(a) Z b)'), 'the command name holds ") Z "')
  t.is(processState(pid), 'S')
  t.false(processExited(pid))
})
