/**
 * Export and import throughput (issue #12), standalone: `node dist/bench/transfer.js`. Two pools, two
 * daemons, a 20 GiB sparse disk with VDISKFS_BENCH_TRANSFER_GIB (default 1) GiB written (half random,
 * half text, so compression has work of both kinds), sealed (`vdiskfs sync`); then
 *   - a full export of its backup to a file (MB/s of the backup's allocated bytes),
 *   - the import of that file into the second pool (same bytes, MB/s),
 *   - 1% of the 20 GiB disk (205 MiB, 3277 random 64 KiB blocks) rewritten, a second backup, and
 *     `vdiskfs export --since | vdiskfs import` into the second pool: seconds end to end.
 * Prints a small markdown table; the work directory is removed (mounts torn down) at the end.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const workRoot = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
const dataBytes = Number(process.env.VDISKFS_BENCH_TRANSFER_GIB ?? 1) * 1024 ** 3
const diskBytes = 20 * 1024 ** 3
const blockBytes = 64 * 1024

function vdiskfs (...args: string[]): string {
  return execFileSync(cli, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
}

function seconds (work: () => void): number {
  const started = process.hrtime.bigint()
  work()
  return Number(process.hrtime.bigint() - started) / 1e9
}

function main (): void {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'transfer-'))
  const mounts: string[] = []
  try {
    const pools = ['source', 'target'].map(name => ({ pool: path.join(dir, `${name}-pool`), mnt: path.join(dir, `${name}-mnt`) }))
    for (const { pool, mnt } of pools) {
      fs.mkdirSync(mnt, { recursive: true })
      vdiskfs('mount', pool, mnt)
      mounts.push(mnt)
    }
    const [source, target] = pools.map(p => p.mnt)
    const disk = path.join(source, 'disks', 'bench.img')
    fs.writeFileSync(disk, '')
    fs.truncateSync(disk, diskBytes)
    // Half random, half text, in 4 MiB writes spread over the disk.
    const fd = fs.openSync(disk, 'r+')
    const text = Buffer.alloc(4 * 1024 * 1024, 'vdiskfs export bench: some text that compresses well enough. ')
    const pieces = dataBytes / text.length
    const stride = Math.floor(diskBytes / pieces / blockBytes) * blockBytes
    for (let i = 0; i < pieces; i++) fs.writeSync(fd, i % 2 === 0 ? crypto.randomBytes(text.length) : text, 0, text.length, i * stride)
    fs.fsyncSync(fd)
    vdiskfs('backup', disk, 'b1')
    vdiskfs('sync', source)
    const b1 = path.join(source, 'backups', 'b1.img')
    const streamFile = path.join(dir, 'b1.vds')
    const exportSeconds = seconds(() => vdiskfs('export', b1, '-o', streamFile))
    const streamBytes = fs.statSync(streamFile).size
    const importSeconds = seconds(() => vdiskfs('import', target, streamFile, 'b1'))
    fs.rmSync(streamFile)

    // 1% of the disk's blocks rewritten at random places.
    const changedBlocks = Math.round(diskBytes / blockBytes / 100)
    const block = Buffer.alloc(blockBytes)
    for (let i = 0; i < changedBlocks; i++) {
      crypto.randomFillSync(block)
      fs.writeSync(fd, block, 0, blockBytes, crypto.randomInt(diskBytes / blockBytes) * blockBytes)
    }
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    vdiskfs('backup', disk, 'b2')
    vdiskfs('sync', source)
    const b2 = path.join(source, 'backups', 'b2.img')
    // Apart first (to a file, then from it), then through a pipe as over ssh.
    const incrementalFile = path.join(dir, 'b2.vds')
    const incrementalExportSeconds = seconds(() => vdiskfs('export', b2, '--since', 'b1', '-o', incrementalFile))
    const incrementalImportSeconds = seconds(() => vdiskfs('import', target, incrementalFile, 'b2-from-file'))
    vdiskfs('rm', path.join(target, 'backups', 'b2-from-file.img'))
    const incrementalSeconds = seconds(() => {
      const run = spawnSync('bash', ['-o', 'pipefail', '-c', `"${cli}" export "${b2}" --since b1 | "${cli}" import "${target}" - b2`], { encoding: 'utf8' })
      if (run.status !== 0) throw new Error(`incremental export | import failed: ${run.stderr}`)
    })
    const same = spawnSync('cmp', [b2, path.join(target, 'backups', 'b2.img')]).status === 0

    const mb = dataBytes / 1e6
    process.stdout.write([
      '| transfer (issue #12) | figure |',
      '|---|---|',
      `| full export, ${(dataBytes / 1024 ** 3).toFixed(1)} GiB of data (sealed; stream ${(streamBytes / 1024 ** 2).toFixed(0)} MiB) | ${(mb / exportSeconds).toFixed(0)} MB/s (${exportSeconds.toFixed(1)} s) |`,
      `| full import of that stream into a second pool | ${(mb / importSeconds).toFixed(0)} MB/s (${importSeconds.toFixed(1)} s) |`,
      `| incremental, 1% of a 20 GiB disk (${changedBlocks} blocks): export --since to a file | ${incrementalExportSeconds.toFixed(1)} s |`,
      `| the same: import from the file | ${incrementalImportSeconds.toFixed(1)} s |`,
      `| the same: export --since \\| import | ${incrementalSeconds.toFixed(1)} s${same ? '' : ' (COPY DIFFERS)'} |`,
      ''
    ].join('\n'))
    if (!same) process.exitCode = 1
  } finally {
    for (const mnt of mounts.reverse()) {
      const result = spawnSync(cli, ['umount', mnt], { encoding: 'utf8', timeout: 120000 })
      if (result.status !== 0) spawnSync('fusermount3', ['-uz', mnt])
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main()
