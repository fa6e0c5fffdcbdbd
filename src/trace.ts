/**
 * VDISKFS_TRACE=1: the CLI writes a line to stderr at each named step of a command (`trace +MS ms (cpu C ms) step`: MS
 * since the process started, C of CPU used by then), for measuring where a command's time goes (bench/lazy-pull.ts). Off, a
 * call costs one comparison.
 */
const on = process.env.VDISKFS_TRACE === '1'

export function trace (step: string): void {
  if (!on) return
  const cpu = process.cpuUsage()
  process.stderr.write(`trace +${performance.now().toFixed(0)} ms (cpu ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms) ${step}\n`)
}
