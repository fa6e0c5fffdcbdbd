// Loads every native module vdiskfs uses, so a broken install fails here, at set-up, with one line each.
// With --fuse3: our own FUSE 3 addon too (native/fuse3, built by make native against libfuse 3).
'use strict'
const path = require('path')
const modules = ['better-sqlite3', 'zstd-napi/binding', '@napi-rs/blake-hash']
const addon = path.join(__dirname, '..', 'native', 'fuse3', 'build', 'vdiskfs_fuse3.node')
if (process.argv.includes('--fuse3')) modules.push(addon)
let failed = 0
for (const name of modules) {
  try {
    const loaded = require(name)
    if (name === 'better-sqlite3') new loaded(':memory:').close()
    if (name === addon && typeof loaded.mount !== 'function') throw new Error('it has no mount()')
  } catch (err) {
    failed++
    console.error(`native module ${name} does not load: ${err.message.split('\n')[0]}`)
  }
}
if (failed > 0) process.exit(1)
console.log(`native modules load: ${modules.map(m => path.isAbsolute(m) ? path.relative(process.cwd(), m) : m).join(', ')}`)
