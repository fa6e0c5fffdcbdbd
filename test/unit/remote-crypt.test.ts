/**
 * Issue #22's client-side encryption (src/remote/crypt.ts): key files are 0600 whatever the umask, never
 * overwritten, refused when others can read them or when they are not keys; a sealed object opens only
 * with the key, under the name it was sealed for, and with every byte as written; chunk names are keyed.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { RemoteKey, createKeyFile, readKeyFile, sealKindChunk, sealKindManifest, sealOverheadBytes } from '../../src/remote/crypt'
import { blake3Hex, decodeStoreMarker } from '../../src/remote/remote-format'
import { VdiskError } from '../../src/errors'
import { chunksPerSalt } from '../../workers/chunk-sealer'

function dir (t: { teardown: (f: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-crypt-'))
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

const code = (err: unknown): string | undefined => err instanceof VdiskError ? err.code : undefined

test('key create writes a 0600 key under umask 0, never over an existing file; reading it gives the same fingerprint', t => {
  const file = path.join(dir(t), 'offsite.key')
  const umask = process.umask(0)
  let created: RemoteKey
  try { created = createKeyFile(file) } finally { process.umask(umask) }
  t.is(fs.statSync(file).mode & 0o777, 0o600)
  t.regex(created.fingerprint, /^[0-9a-f]{4}(:[0-9a-f]{4}){7}$/)
  t.is(readKeyFile(file).fingerprint, created.fingerprint)
  const before = fs.readFileSync(file)
  t.is(code(t.throws(() => createKeyFile(file))), 'EXISTS')
  t.deepEqual(fs.readFileSync(file), before, 'the existing key is untouched')
  t.not(createKeyFile(file + '2').fingerprint, created.fingerprint, 'two keys differ')
})

test('a key file others can read, a missing one, a symbolic link or a file that is not a key is refused with one line that never shows its contents', t => {
  const d = dir(t)
  const file = path.join(d, 'k')
  createKeyFile(file)
  fs.chmodSync(file, 0o644)
  t.regex(t.throws(() => readKeyFile(file))!.message, /readable by others \(mode 0644\): chmod 600 it$/)
  fs.chmodSync(file, 0o600)
  fs.symlinkSync(file, path.join(d, 'link'))
  t.regex(t.throws(() => readKeyFile(path.join(d, 'link')))!.message, /symbolic link/)
  t.is(code(t.throws(() => readKeyFile(path.join(d, 'missing')))), 'NOT_FOUND')
  const secret = 'hunter2-not-a-key'
  fs.writeFileSync(path.join(d, 'bad'), secret, { mode: 0o600 })
  const err = t.throws(() => readKeyFile(path.join(d, 'bad')))!
  t.regex(err.message, /is not a vdiskfs key file/)
  t.false(err.message.includes(secret))
  const text = JSON.parse(fs.readFileSync(file, 'utf8')) as { key: string }
  fs.writeFileSync(path.join(d, 'short'), JSON.stringify({ ...text, format: 'vdiskfs-key', version: 1, key: text.key.slice(0, 20) }), { mode: 0o600 })
  t.regex(t.throws(() => readKeyFile(path.join(d, 'short')))!.message, /is not a vdiskfs key file/)
})

// Attack: whoever can write the key's directory puts a FIFO where the key was. Opened without
// O_NONBLOCK, every push and pull (root's cron jobs) hung in open(2), before any check, until someone
// wrote to it; refused at once, they fail as for a missing key.
test('a FIFO in place of the key file is refused at once, not waited on', t => {
  const d = dir(t)
  const fifo = path.join(d, 'k')
  t.is(spawnSync('mkfifo', ['-m', '600', fifo]).status, 0)
  // In a child: a blocking open would hang this process.
  const crypt = path.join(__dirname, '..', '..', 'src', 'remote', 'crypt')
  const script = `try { require(${JSON.stringify(crypt)}).readKeyFile(${JSON.stringify(fifo)}) } catch (e) { console.error(e.message); process.exit(2) }`
  const result = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10000 })
  t.is(result.signal, null, 'readKeyFile returned (it hung in open and was killed)')
  t.is(result.status, 2)
  t.regex(result.stderr, /is not a regular file/)
})

test('a sealed object opens with its key under its name; a flipped byte anywhere, another name, another kind or another key is CORRUPT naming it', t => {
  const key = RemoteKey.fromBytes(crypto.randomBytes(32))
  const other = RemoteKey.fromBytes(crypto.randomBytes(32))
  const plaintext = Buffer.from('VDRC plain chunk with a marker: PLAINTEXT-MARKER-1234')
  const sealed = key.seal(sealKindChunk, 'chunks/ab/abcd', plaintext)
  t.is(sealed.length, plaintext.length + sealOverheadBytes)
  t.is(sealed.indexOf('PLAINTEXT-MARKER'), -1)
  t.deepEqual(key.open(sealKindChunk, 'chunks/ab/abcd', sealed, 'chunk X'), plaintext)
  t.notDeepEqual(key.seal(sealKindChunk, 'chunks/ab/abcd', plaintext), sealed, 'a fresh salt and nonce each time')
  for (let i = 0; i < sealed.length; i++) {
    const flipped = Buffer.from(sealed)
    flipped[i] ^= 0x10
    const err = t.throws(() => key.open(sealKindChunk, 'chunks/ab/abcd', flipped, 'chunk X'), undefined, `byte ${i}`)
    t.is(code(err), 'CORRUPT')
    t.regex(err!.message, /^chunk X: /)
  }
  t.is(code(t.throws(() => key.open(sealKindChunk, 'chunks/ab/abce', sealed, 'chunk Y'))), 'CORRUPT', 'another name')
  t.regex(t.throws(() => key.open(sealKindManifest, 'chunks/ab/abcd', sealed, 'm'))!.message, /kind 1, expected 2/)
  t.regex(t.throws(() => other.open(sealKindChunk, 'chunks/ab/abcd', sealed, 'chunk X'))!.message, /fails authentication/)
  t.is(code(t.throws(() => key.open(sealKindChunk, 'chunks/ab/abcd', sealed.subarray(0, 40), 'chunk X'))), 'CORRUPT', 'truncated')
})

test('chunk names are keyed: not the plain id, the same for the same key, different for another key', t => {
  const bytes = crypto.randomBytes(32)
  const id = blake3Hex(Buffer.from('a block'))
  const name = RemoteKey.fromBytes(bytes).chunkName(id)
  t.regex(name, /^[0-9a-f]{64}$/)
  t.not(name, id)
  t.is(RemoteKey.fromBytes(Buffer.from(bytes)).chunkName(id), name)
  t.not(RemoteKey.fromBytes(crypto.randomBytes(32)).chunkName(id), name)
  t.not(RemoteKey.fromBytes(bytes).manifestId(Buffer.from('m')), blake3Hex(Buffer.from('m')).slice(0, 32))
})

test('store markers: version 1 plain, version 2 with a cipher and a fingerprint; anything in between is refused', t => {
  const base = { format: 'vdiskfs-remote-store', graceSeconds: 60, created: '2026-01-01T00:00:00.000Z' }
  t.is(decodeStoreMarker(JSON.stringify({ ...base, version: 1 }), 'r').encryption, undefined)
  const fingerprint = RemoteKey.fromBytes(crypto.randomBytes(32)).fingerprint
  t.is(decodeStoreMarker(JSON.stringify({ ...base, version: 2, encryption: { cipher: 'aes-256-gcm', keyFingerprint: fingerprint } }), 'r').encryption?.keyFingerprint, fingerprint)
  t.is(code(t.throws(() => decodeStoreMarker(JSON.stringify({ ...base, version: 2 }), 'r'))), 'CORRUPT')
  t.is(code(t.throws(() => decodeStoreMarker(JSON.stringify({ ...base, version: 1, encryption: { cipher: 'aes-256-gcm', keyFingerprint: fingerprint } }), 'r'))), 'CORRUPT')
  t.is(code(t.throws(() => decodeStoreMarker(JSON.stringify({ ...base, version: 3 }), 'r'))), 'INVALID')
})

test('a push\'s chunk sealer: chunks sealed in a row share a salt for chunksPerSalt of them, each with its own nonce; each opens under its name alone, and a flipped byte, another name or a chunk moved onto another\'s name is CORRUPT', t => {
  const key = RemoteKey.fromBytes(crypto.randomBytes(32))
  const sealer = key.chunkSealer()
  const count = chunksPerSalt * 2 + 3
  const plain = Array.from({ length: count }, (_, i) => crypto.randomBytes(100 + i))
  const sealed = plain.map((p, i) => {
    const target = Buffer.alloc(p.length + sealOverheadBytes + 50)
    const length = sealer.seal(target, `chunks/ab/${i}`, p)
    t.is(length, p.length + sealOverheadBytes)
    return target.subarray(0, length)
  })
  const salt = (s: Buffer): string => s.subarray(8, 24).toString('hex')
  const nonce = (s: Buffer): string => s.subarray(24, 36).toString('hex')
  t.is(new Set(sealed.slice(0, chunksPerSalt).map(salt)).size, 1, 'one salt for the first chunksPerSalt')
  t.is(new Set(sealed.map(salt)).size, 3, 'a new salt after each chunksPerSalt')
  t.is(new Set(sealed.map(nonce)).size, count, 'every nonce its own')
  for (let i = 0; i < count; i++) t.deepEqual(key.open(sealKindChunk, `chunks/ab/${i}`, sealed[i], `chunk ${i}`), plain[i])
  for (const at of [0, 8, 30, 40, sealed[5].length - 1]) {
    const flipped = Buffer.from(sealed[5])
    flipped[at] ^= 1
    t.is(code(t.throws(() => key.open(sealKindChunk, 'chunks/ab/5', flipped, 'chunk 5'))), 'CORRUPT', `byte ${at}`)
  }
  t.regex(t.throws(() => key.open(sealKindChunk, 'chunks/ab/6', sealed[5], 'chunk 6'))!.message, /fails authentication/, 'under another name, same salt')
  const other = RemoteKey.fromBytes(crypto.randomBytes(32))
  t.regex(t.throws(() => other.open(sealKindChunk, 'chunks/ab/5', sealed[5], 'chunk 5'))!.message, /fails authentication/)
})
