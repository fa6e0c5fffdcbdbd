/**
 * `make install` and `make uninstall` (issue #21: install copied the devDependencies, 134 MiB, and
 * there was no uninstall), into temporary directories: once with PREFIX and SBINDIR there (the
 * installed command is run through its link on PATH), once staged with DESTDIR (a package build: the
 * links name the final PREFIX, not the staging directory). Checked: no package the lockfile marks
 * dev-only is installed, the installed `vdiskfs --help` and `mount.fuse.vdiskfs --help` run from the
 * installed tree, and uninstall leaves no file or link of what install made (only the empty
 * directories bin/, sbin/ and lib/, which may be shared in a real prefix).
 *
 * `make -o deps -o build`: the tree is built already (make test builds before it runs the tests), so
 * the install's prerequisites are taken as made; only the install steps run. Nothing is mounted; every
 * command has a timeout and the temporary directories are removed in teardown.
 */
import test, { ExecutionContext } from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { repoRoot } from '../helpers/mount'

function make (t: ExecutionContext, target: string, vars: Record<string, string>): void {
  const result = spawnSync('make', ['--no-print-directory', '-o', 'deps', '-o', 'build', target, ...Object.entries(vars).map(([k, v]) => `${k}=${v}`)],
    { cwd: repoRoot, encoding: 'utf8', timeout: 300_000, env: { ...process.env, MAKEFLAGS: '' } })
  t.is(result.error, undefined, `make ${target} ran`)
  t.is(result.status, 0, `make ${target}: ${result.stdout}\n${result.stderr}`)
}

/** Every file and link under `dir` (relative paths; directories are not listed). */
function filesUnder (dir: string): string[] {
  const out: string[] = []
  const walk = (at: string): void => {
    for (const entry of fs.readdirSync(at, { withFileTypes: true })) {
      const full = path.join(at, entry.name)
      if (entry.isDirectory()) walk(full)
      else out.push(path.relative(dir, full))
    }
  }
  if (fs.existsSync(dir)) walk(dir)
  return out.sort()
}

/** The package paths (node_modules/...) the lockfile marks as needed only by the devDependencies. */
function devOnlyPackages (): string[] {
  const lock = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> }
  return Object.entries(lock.packages).filter(([name, entry]) => name !== '' && entry.dev === true).map(([name]) => name)
}

function bytesUnder (dir: string): number {
  let bytes = 0
  for (const file of filesUnder(dir)) bytes += fs.lstatSync(path.join(dir, file)).size
  return bytes
}

/** What both layouts check in the installed tree `lib` (PREFIX/lib/vdiskfs as installed). */
function checkTree (t: ExecutionContext, lib: string): void {
  const dev = devOnlyPackages()
  t.true(dev.length > 0, 'the lockfile marks dev-only packages')
  const copied = dev.filter(name => fs.existsSync(path.join(lib, name)))
  t.deepEqual(copied, [], 'no dev-only package is installed')
  for (const name of Object.keys((JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies)) {
    t.true(fs.existsSync(path.join(lib, 'node_modules', name, 'package.json')), `dependency ${name} installed`)
  }
  t.log(`installed tree: ${(bytesUnder(lib) / 2 ** 20).toFixed(1)} MiB (node_modules ${(bytesUnder(path.join(lib, 'node_modules')) / 2 ** 20).toFixed(1)} MiB)`)
  for (const command of ['vdiskfs', 'mount.fuse.vdiskfs']) {
    const help = spawnSync(path.join(lib, 'bin', command), ['--help'], { encoding: 'utf8', timeout: 60_000, cwd: os.tmpdir() })
    t.is(help.status, 0, `${command} --help from the installed tree: ${help.stderr}`)
    t.regex(help.stdout, /usage|SYNOPSIS/i, `${command} --help prints its usage`)
  }
}

test('make install into a PREFIX copies what runs and no devDependency, the installed vdiskfs --help runs from PATH, and make uninstall removes every file it made', t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-install-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const prefix = path.join(dir, 'prefix')
  const sbin = path.join(dir, 'sbin')
  make(t, 'install', { PREFIX: prefix, SBINDIR: sbin })
  const lib = path.join(prefix, 'lib', 'vdiskfs')
  checkTree(t, lib)
  t.is(fs.realpathSync(path.join(prefix, 'bin', 'vdiskfs')), path.join(lib, 'bin', 'vdiskfs'))
  t.is(fs.realpathSync(path.join(sbin, 'mount.fuse.vdiskfs')), path.join(lib, 'bin', 'mount.fuse.vdiskfs'))
  // Through PATH, as an admin runs it: the link, from outside the source tree.
  const help = spawnSync('vdiskfs', ['--help'], { encoding: 'utf8', timeout: 60_000, cwd: os.tmpdir(), env: { ...process.env, PATH: `${path.join(prefix, 'bin')}:/usr/bin:/bin` } })
  t.is(help.status, 0, help.stderr)
  t.regex(help.stdout, /backup/)
  make(t, 'uninstall', { PREFIX: prefix, SBINDIR: sbin })
  t.deepEqual(filesUnder(dir), [], 'nothing install made is left')
})

test('make install with DESTDIR stages the tree with links to the final PREFIX, and make uninstall with the same DESTDIR removes it', t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-destdir-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  make(t, 'install', { DESTDIR: dir, PREFIX: '/usr/local', SBINDIR: '/sbin' })
  const lib = path.join(dir, 'usr', 'local', 'lib', 'vdiskfs')
  checkTree(t, lib)
  t.is(fs.readlinkSync(path.join(dir, 'usr', 'local', 'bin', 'vdiskfs')), '/usr/local/lib/vdiskfs/bin/vdiskfs')
  t.is(fs.readlinkSync(path.join(dir, 'sbin', 'mount.fuse.vdiskfs')), '/usr/local/lib/vdiskfs/bin/mount.fuse.vdiskfs')
  make(t, 'uninstall', { DESTDIR: dir, PREFIX: '/usr/local', SBINDIR: '/sbin' })
  t.deepEqual(filesUnder(dir), [], 'nothing install made is left')
})
