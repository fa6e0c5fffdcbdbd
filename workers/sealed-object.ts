/**
 * The sealed object format of an encrypted remote store (docs/REMOTE.md, "Format"): its constants and
 * opening one (AES-256-GCM under the object's own key, the header and the object's name authenticated).
 * Here, not in src/remote/crypt.ts (which derives the keys and re-exports all this), so that the CLI's
 * worker threads that open a pull's chunks and seal a push's (remote-open.ts) share it with the main thread.
 */
import crypto from 'node:crypto'
import { corrupt } from '../src/errors'

export const sealMagic = Buffer.from('VDRE', 'latin1')
export const sealVersion = 1
export const sealKindChunk = 1
export const sealKindManifest = 2
export const sealKindPackIndex = 3
export const sealCipherAes256Gcm = 1
export const sealCipherName = 'aes-256-gcm'
export const sealSaltBytes = 16
export const sealNonceBytes = 12
export const sealTagBytes = 16
export const sealHeaderBytes = 4 + 1 + 1 + 1 + 1 + sealSaltBytes + sealNonceBytes
/** What sealing adds to an object: its header and the tag. */
export const sealOverheadBytes = sealHeaderBytes + sealTagBytes

/** RemoteKey.open with the seal subkey `sealKey` (RemoteKey.open, and the workers that open chunks for it). */
export function openSealed (sealKey: Buffer, kind: number, name: string, object: Buffer, what: string): Buffer {
  const header = checkSealHeader(kind, object, what)
  const decipher = crypto.createDecipheriv(sealCipherName, objectKey(sealKey, header), header.subarray(8 + sealSaltBytes, sealHeaderBytes), { authTagLength: sealTagBytes })
  decipher.setAAD(associatedData(header, name))
  decipher.setAuthTag(object.subarray(object.length - sealTagBytes))
  const body = decipher.update(object.subarray(sealHeaderBytes, object.length - sealTagBytes))
  try {
    // GCM holds nothing back: final() checks the tag and gives no bytes (the body needs no copy then).
    const rest = decipher.final()
    return rest.length === 0 ? body : Buffer.concat([body, rest])
  } catch {
    throw corrupt(`${what}: damaged or not this store's (it fails authentication with the store's key)`)
  }
}

/**
 * Seals `plaintext` as an object of `kind` stored under `name` with the seal subkey `sealKey`, written at
 * the start of `target` (room for the plaintext and sealOverheadBytes): its length. RemoteKey.seal, and
 * the workers that seal a push's chunks (remote-open.ts), both come here.
 */
export function sealInto (sealKey: Buffer, target: Buffer, kind: number, name: string, plaintext: Buffer): number {
  if (target.length < plaintext.length + sealOverheadBytes) throw new RangeError('sealInto: the target is too small')
  const header = target.subarray(0, sealHeaderBytes)
  crypto.randomFillSync(header, 8, sealSaltBytes + sealNonceBytes)
  return encryptAfterHeader(objectKey(sealKey, header), target, kind, name, plaintext)
}

/**
 * Writes the fixed fields of the header at the start of `target` (its salt and nonce, bytes 8 on, are
 * the caller's, already there), then the ciphertext and tag under `key` (the object key of that salt):
 * the object's length. sealInto and ChunkSealer (salt shared by 64 chunks) both come here.
 */
export function encryptAfterHeader (key: Buffer, target: Buffer, kind: number, name: string, plaintext: Buffer): number {
  const header = target.subarray(0, sealHeaderBytes)
  sealMagic.copy(header, 0)
  header.writeUInt8(sealVersion, 4)
  header.writeUInt8(kind, 5)
  header.writeUInt8(sealCipherAes256Gcm, 6)
  header.writeUInt8(0, 7)
  const cipher = crypto.createCipheriv(sealCipherName, key, header.subarray(8 + sealSaltBytes, sealHeaderBytes), { authTagLength: sealTagBytes })
  cipher.setAAD(associatedData(header, name))
  let at = sealHeaderBytes
  at += cipher.update(plaintext).copy(target, at)
  at += cipher.final().copy(target, at)
  at += cipher.getAuthTag().copy(target, at)
  return at
}

/** An object's own key: HMAC-SHA256 of its salt under the seal subkey. */
export function objectKey (sealKey: Buffer, header: Buffer): Buffer {
  return crypto.createHmac('sha256', sealKey).update(header.subarray(8, 8 + sealSaltBytes)).digest()
}

export function associatedData (header: Buffer, name: string): Buffer {
  return Buffer.concat([header, Buffer.from(name, 'utf8')])
}

/** Checks a sealed object's header (what can be checked without the key). Errors: CORRUPT naming `what`. */
export function checkSealHeader (kind: number, object: Buffer, what: string): Buffer {
  if (object.length < sealOverheadBytes) throw corrupt(`${what}: ${object.length} bytes, shorter than a sealed object`)
  if (!object.subarray(0, 4).equals(sealMagic)) throw corrupt(`${what}: not a sealed vdiskfs object (bad magic)`)
  if (object.readUInt8(4) !== sealVersion) throw corrupt(`${what}: sealed object version ${object.readUInt8(4)} is not ${sealVersion}`)
  if (object.readUInt8(5) !== kind) throw corrupt(`${what}: a sealed object of kind ${object.readUInt8(5)}, expected ${kind}`)
  if (object.readUInt8(6) !== sealCipherAes256Gcm) throw corrupt(`${what}: unknown cipher ${object.readUInt8(6)}`)
  if (object.readUInt8(7) !== 0) throw corrupt(`${what}: reserved header byte is not zero`)
  return object.subarray(0, sealHeaderBytes)
}
