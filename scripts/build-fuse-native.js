// Builds fuse-native's binding from its (patched) source, after patch-package applied
// patches/fuse-native+2.2.6.patch: package.json's postinstall runs both, so `npm ci` does. The package
// ships prebuilt binaries (prebuilds/linux-x64) that would otherwise load; node-gyp-build, which its
// index.js uses, prefers build/Release over prebuilds, and scripts/check-native.js checks which loaded.
// Needs the libfuse 2 headers (Debian: libfuse-dev, pkg-config name `fuse`) and g++/make/python3.
'use strict'
const { spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const dir = path.dirname(require.resolve('fuse-native/package.json'))

function fail (message) {
  console.error(`build-fuse-native: ${message}`)
  process.exit(1)
}

if (spawnSync('pkg-config', ['--exists', 'fuse']).status !== 0) {
  fail('the libfuse 2 headers are missing (pkg-config fuse): install the Debian package libfuse-dev (make debs does)')
}

// npm sets npm_config_node_gyp to its own node-gyp for lifecycle scripts; outside npm, find that one.
let nodeGyp = process.env.npm_config_node_gyp
if (nodeGyp === undefined || !fs.existsSync(nodeGyp)) {
  const npmDir = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm')
  nodeGyp = path.join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')
}
if (!fs.existsSync(nodeGyp)) fail('node-gyp not found (it comes with npm)')

const args = [nodeGyp, 'rebuild']
// Debian's nodejs keeps its headers in /usr/include/node: build against those, offline.
if (process.env.npm_config_nodedir === undefined && fs.existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr')
const built = spawnSync(process.execPath, args, { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] })
if (built.status !== 0) fail(`node-gyp rebuild in ${dir} failed (exit ${built.status})`)

const binary = path.join(dir, 'build', 'Release', 'fuse.node')
if (!fs.existsSync(binary)) fail(`${binary} was not built`)
console.log(`build-fuse-native: built ${path.relative(process.cwd(), binary)} from patched source`)
