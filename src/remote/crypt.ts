/**
 * Client-side encryption of a remote store (issue #22; docs/REMOTE.md, "Encrypted stores"): the key file,
 * the subkeys derived from it, and the sealed object format. The store never sees the key: chunks and
 * manifests are sealed with AES-256-GCM before they leave the host, and a chunk's object name is a keyed
 * hash (HMAC-SHA256) of the block's BLAKE3, so hosts sharing the key still find each other's chunks while
 * the store cannot tell which plaintext a chunk holds.
 *
 * The key file (made by `vdiskfs key create`, 0600) is one line of JSON:
 *   {"format":"vdiskfs-key","version":1,"key":"<32 random bytes, base64>","created":"<ISO 8601>"}
 * Subkeys (HKDF-SHA256 of the key, empty salt, info "vdiskfs-remote-v1 <purpose>"): "seal" (the AEAD key
 * material), "name" (the chunk and manifest names), "fingerprint" (16 bytes, shown to people and written
 * into the store's marker so a wrong key is told apart from damage).
 *
 * A sealed object (little-endian):
 *   OFFSET  SIZE  DESCRIPTION
 *   0       4     magic "VDRE"
 *   4       1     version (1)
 *   5       1     kind: 1 chunk, 2 manifest
 *   6       1     cipher: 1 AES-256-GCM
 *   7       1     reserved, zero
 *   8       16    salt: random; the object's own key is HMAC-SHA256(seal key, salt)
 *   24      12    nonce: random
 *   36      ...   ciphertext (a chunk: the plain chunk object of remote-format.ts, header and payload;
 *                 a manifest: its JSON line)
 *   end-16  16    GCM tag
 * The associated data is the 36-byte header followed by the object's name below the store's prefix
 * ("chunks/AB/ID" or "manifests/ID.enc"), so a flipped byte anywhere, or an object copied under another
 * name, fails authentication. A fresh key per object (from its random salt) keeps GCM's random-nonce
 * limit per key out of reach however many objects a fleet writes.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { VdiskError, corrupt, exists, invalid } from '../errors'
import { ChunkSealer } from '../../workers/chunk-sealer'
import { checkSealHeader, openSealed, sealInto, sealCipherAes256Gcm, sealCipherName, sealHeaderBytes, sealMagic, sealNonceBytes, sealOverheadBytes, sealSaltBytes, sealTagBytes, sealVersion } from '../../workers/sealed-object'

// The sealed object format lives in workers/sealed-object.ts (the CLI's worker threads open chunks with it).
export { checkSealHeader, openSealed, sealCipherAes256Gcm, sealCipherName, sealHeaderBytes, sealKindChunk, sealKindManifest, sealKindPackIndex, sealMagic, sealNonceBytes, sealOverheadBytes, sealSaltBytes, sealTagBytes, sealVersion } from '../../workers/sealed-object'

export const keyFormat = 'vdiskfs-key'
export const keyVersion = 1
export const keyBytes = 32
/** A key file is one short line; anything longer is not one (and is not read whole). */
export const keyFileBytesMax = 4096


/** A loaded key: the subkeys only (the key itself is not kept), and where it came from. */
export class RemoteKey {
  private constructor (private readonly sealKey: Buffer, private readonly nameKey: Buffer, readonly fingerprint: string, readonly file: string | null) {}

  static fromBytes (key: Buffer, file: string | null = null): RemoteKey {
    if (key.length !== keyBytes) throw invalid(`a vdiskfs key is ${keyBytes} bytes`)
    const derive = (purpose: string, length: number): Buffer => Buffer.from(crypto.hkdfSync('sha256', key, Buffer.alloc(0), `vdiskfs-remote-v1 ${purpose}`, length))
    return new RemoteKey(derive('seal', 32), derive('name', 32), formatFingerprint(derive('fingerprint', 16)), file)
  }

  /** The object name of a chunk: HMAC-SHA256 of its BLAKE3 id (64 hex digits each). */
  chunkName (plainId: string): string {
    return crypto.createHmac('sha256', this.nameKey).update('chunk ').update(Buffer.from(plainId, 'hex')).digest('hex')
  }

  /** The id of a manifest from its plaintext bytes (32 hex digits): keyed, so it says nothing of the bytes. */
  manifestId (plaintext: Buffer): string {
    return crypto.createHmac('sha256', this.nameKey).update('manifest ').update(plaintext).digest('hex').slice(0, 32)
  }

  /** Seals `plaintext` as an object of `kind` stored under `name` (below the store's prefix). */
  seal (kind: number, name: string, plaintext: Buffer): Buffer {
    const sealed = Buffer.allocUnsafe(plaintext.length + sealOverheadBytes)
    return sealed.subarray(0, this.sealInto(sealed, kind, name, plaintext))
  }

  /**
   * seal() written at the start of `target` (room for the plaintext and sealOverheadBytes), not into a
   * buffer of its own (a push seals each chunk straight into its pack): the same bytes. Returns their length.
   */
  sealInto (target: Buffer, kind: number, name: string, plaintext: Buffer): number {
    return sealInto(this.sealKey, target, kind, name, plaintext)
  }

  /**
   * The plaintext of a sealed object of `kind` stored under `name`. Errors: CORRUPT naming `what` for
   * anything that does not authenticate (a flipped byte, a truncated object, one copied from another name).
   */
  open (kind: number, name: string, object: Buffer, what: string): Buffer {
    return openSealed(this.sealKey, kind, name, object, what)
  }

  /** A sealer of a push's chunks (workers/chunk-sealer.ts: chunks sealed one after another share a salt). */
  chunkSealer (): ChunkSealer { return new ChunkSealer(this.sealKey) }

  /**
   * The subkey that opens (and seals) objects, for the worker threads of this process that open a pull's
   * chunks (remote-open.ts, with openSealed): it never leaves the process.
   */
  sealKeyForWorkers (): Buffer { return Buffer.from(this.sealKey) }
}


export function formatFingerprint (bytes: Buffer): string {
  return (bytes.toString('hex').match(/.{4}/g) ?? []).join(':')
}

interface KeyFile { format: string, version: number, key: string, created: string }

/**
 * Writes a new key to `file`: mode 0600 whatever the umask, never over an existing file. Returns it.
 * Errors: EXISTS, IO.
 */
export function createKeyFile (file: string): RemoteKey {
  const key = crypto.randomBytes(keyBytes)
  const text = JSON.stringify({ format: keyFormat, version: keyVersion, key: key.toString('base64'), created: new Date().toISOString() } satisfies KeyFile) + '\n'
  const absolute = path.resolve(file)
  let fd: number
  try { fd = fs.openSync(absolute, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600) } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw exists(`${absolute} (a key is never overwritten: choose another file)`)
    throw new VdiskError('IO', `creating ${absolute}: ${code ?? (err as Error).message}`)
  }
  try {
    fs.fchmodSync(fd, 0o600)
    fs.writeSync(fd, text)
    fs.fsyncSync(fd)
  } catch (err) {
    fs.closeSync(fd)
    fs.rmSync(absolute, { force: true })
    throw new VdiskError('IO', `writing ${absolute}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  fs.closeSync(fd)
  try {
    const dir = fs.openSync(path.dirname(absolute), 'r')
    try { fs.fsyncSync(dir) } finally { fs.closeSync(dir) }
  } catch {}
  return RemoteKey.fromBytes(key, absolute)
}

/**
 * Reads the key in `file`. Refuses one that others can read (as ssh does) or that is not a vdiskfs key;
 * no error repeats the file's contents. Errors: NOT_FOUND, NOT_PERMITTED, INVALID, IO.
 */
export function readKeyFile (file: string): RemoteKey {
  const absolute = path.resolve(file)
  let fd: number
  // O_NONBLOCK: a FIFO put in the key's place would hold open(2) until someone writes to it; the
  // regular-file check below refuses it (a regular file's reads ignore the flag).
  try { fd = fs.openSync(absolute, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK) } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new VdiskError('NOT_FOUND', `key file ${absolute} does not exist (restore it from your copy: without it the store's backups cannot be read)`)
    if (code === 'ELOOP') throw invalid(`key file ${absolute} is a symbolic link: give the file itself`)
    throw new VdiskError(code === 'EACCES' ? 'NOT_PERMITTED' : 'IO', `cannot read key file ${absolute} (${code ?? 'error'})`)
  }
  let data: Buffer
  try {
    const stat = fs.fstatSync(fd)
    if (!stat.isFile()) throw invalid(`key file ${absolute} is not a regular file`)
    if ((stat.mode & 0o077) !== 0) throw new VdiskError('NOT_PERMITTED', `key file ${absolute} is readable by others (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}): chmod 600 it`)
    if (typeof process.getuid === 'function' && stat.uid !== process.getuid()) throw new VdiskError('NOT_PERMITTED', `key file ${absolute} belongs to another user (uid ${stat.uid})`)
    data = Buffer.alloc(keyFileBytesMax + 1)
    data = data.subarray(0, fs.readSync(fd, data, 0, data.length, 0))
  } finally { fs.closeSync(fd) }
  const bad = (): VdiskError => invalid(`${absolute} is not a vdiskfs key file (make one with vdiskfs key create FILE)`)
  if (data.length > keyFileBytesMax) throw bad()
  let parsed: KeyFile
  try { parsed = JSON.parse(data.toString('utf8')) as KeyFile } catch { throw bad() }
  if (parsed === null || typeof parsed !== 'object' || parsed.format !== keyFormat || typeof parsed.key !== 'string') throw bad()
  if (parsed.version !== keyVersion) throw invalid(`${absolute}: key file version ${String(parsed.version)} is not supported (this vdiskfs reads version ${keyVersion})`)
  const key = Buffer.from(parsed.key, 'base64')
  if (key.length !== keyBytes || key.toString('base64') !== parsed.key) throw bad()
  return RemoteKey.fromBytes(key, absolute)
}
