// Loads every native module vdiskfs uses, so a broken install fails here, at set-up, with one line each.
'use strict'
const modules = ['better-sqlite3', 'fuse-native', 'zstd-napi/binding', '@napi-rs/blake-hash']
let failed = 0
for (const name of modules) {
  try {
    const loaded = require(name)
    if (name === 'better-sqlite3') new loaded(':memory:').close()
  } catch (err) {
    failed++
    console.error(`native module ${name} does not load: ${err.message.split('\n')[0]}`)
  }
}
if (failed > 0) process.exit(1)
console.log(`native modules load: ${modules.join(', ')}`)
