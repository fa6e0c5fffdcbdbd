/**
 * Sealing a push's chunk objects (docs/REMOTE.md, "Format"), shared by the push on the CLI's main thread
 * (src/remote/store.ts) and its worker threads (remote-open.ts). Chunks sealed one after another share a
 * random salt, so one object key (HMAC-SHA256 of the salt under the seal subkey, as openSealed derives it
 * from each object's own salt), and one draw of randomness for the salt and their nonces, each chunk its
 * own random nonce under that key, for chunksPerSalt chunks: the key's HMAC, the random draw and a key
 * per chunk were about 25 us of CPU each at load 10 here, a third of sealing a chunk. chunksPerSalt
 * random nonces under one key are far from AES-GCM's limit on them (about 2^32); the store can tell
 * chunks sealed together by their salt, as it can by their place, one after another, in a pack.
 */
import crypto from 'node:crypto'
import { encryptAfterHeader, objectKey, sealHeaderBytes, sealKindChunk, sealNonceBytes, sealOverheadBytes, sealSaltBytes } from './sealed-object'

/** How many chunks one salt (one object key) seals. */
export const chunksPerSalt = 64

export class ChunkSealer {
  private random: Buffer = Buffer.alloc(0)
  private key: Buffer = Buffer.alloc(0)
  /** Nonces of `random` used (chunksPerSalt: a new draw is due). */
  private used = chunksPerSalt

  constructor (private readonly sealKey: Buffer) {}

  /**
   * Seals the plain chunk object `plaintext` stored under `name` (its key below the store's prefix),
   * written at the start of `target` (room for it and sealOverheadBytes): its length.
   */
  seal (target: Buffer, name: string, plaintext: Buffer): number {
    if (target.length < plaintext.length + sealOverheadBytes) throw new RangeError('ChunkSealer.seal: the target is too small')
    if (this.used === chunksPerSalt) {
      this.random = crypto.randomFillSync(Buffer.allocUnsafe(sealSaltBytes + chunksPerSalt * sealNonceBytes))
      // objectKey reads the salt where a header holds it (bytes 8 to 24).
      this.key = objectKey(this.sealKey, Buffer.concat([Buffer.alloc(8), this.random.subarray(0, sealSaltBytes)]))
      this.used = 0
    }
    const nonce = this.random.subarray(sealSaltBytes + this.used * sealNonceBytes, sealSaltBytes + (this.used + 1) * sealNonceBytes)
    this.used++
    const header = target.subarray(0, sealHeaderBytes)
    this.random.copy(header, 8, 0, sealSaltBytes)
    nonce.copy(header, 8 + sealSaltBytes)
    return encryptAfterHeader(this.key, target, sealKindChunk, name, plaintext)
  }
}
