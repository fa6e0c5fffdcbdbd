// Loads every native module vdiskfs uses, so a broken install fails here, at set-up, with one line each.
// fuse-native must be our build of its patched source (patches/fuse-native+2.2.6.patch, built by
// scripts/build-fuse-native.js), not one of the prebuilt binaries the package ships: the patch fixes
// a libuv handle leak and wires fallocate, and a prebuild would load silently without either.
'use strict'
const path = require('path')
const modules = ['better-sqlite3', 'fuse-native', 'zstd-napi/binding', '@napi-rs/blake-hash']
const fusePatchLevel = 1
let failed = 0
for (const name of modules) {
  try {
    const loaded = require(name)
    if (name === 'better-sqlite3') new loaded(':memory:').close()
    if (name === 'fuse-native') checkFuseNative(loaded)
  } catch (err) {
    failed++
    console.error(`native module ${name} does not load: ${err.message.split('\n')[0]}`)
  }
}
if (failed > 0) process.exit(1)
console.log(`native modules load: ${modules.join(', ')} (fuse-native patched, level ${fusePatchLevel})`)

function checkFuseNative (Fuse) {
  const dir = path.dirname(require.resolve('fuse-native/package.json'))
  const loadedFrom = require('node-gyp-build').path(dir)
  const expected = path.join(dir, 'build', 'Release', 'fuse.node')
  if (loadedFrom !== expected) throw new Error(`it loads ${loadedFrom}, not the patched build ${expected} (run npm ci, or node scripts/build-fuse-native.js)`)
  const binding = require(loadedFrom)
  if (binding.vdiskfs_patch !== fusePatchLevel) throw new Error(`${loadedFrom} is not built from the patched source (vdiskfs_patch is ${binding.vdiskfs_patch}, want ${fusePatchLevel})`)
  if (typeof binding.fuse_native_signal_fallocate !== 'function' || typeof Fuse.prototype._op_fallocate !== 'function') throw new Error('the fallocate operation is not wired (is patches/fuse-native+2.2.6.patch applied?)')
  if (typeof Fuse.prototype.threadStats !== 'function') throw new Error('threadStats() is missing (is patches/fuse-native+2.2.6.patch applied?)')
}
