/**
 * The backend of a remote: a thin layer over one S3 bucket and prefix (@aws-sdk/client-s3, pinned), with
 * the few operations the store needs: put once, get, head, touch, list, delete. Credentials come from the
 * SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared config files),
 * never from the pool, and are never printed. Every S3 or network failure becomes one VdiskError naming
 * the remote: IO for the network and the server, NOT_PERMITTED for refused credentials.
 */
import type * as S3Sdk from '@aws-sdk/client-s3'
import type { S3Client } from '@aws-sdk/client-s3'
import { Readable } from 'node:stream'
import { VdiskError, corrupt } from '../errors'
import { remoteConnectTimeoutMs, remoteListPagesMax, remoteListTokenBytesMax, remoteRequestTimeoutMs } from './remote-format'

let loadedSdk: typeof S3Sdk | null = null

/**
 * The AWS SDK, loaded on first use: only the commands that talk to S3 pay for it (about 0.4 s of a CLI
 * start on an idle machine, over a second under load; every other command, and the daemon, which
 * imports this module for remotes.json's URLs, never loads it). Tested: test/unit/sdk-lazy.test.ts.
 */
export function sdk (): typeof S3Sdk {
  if (loadedSdk === null) {
    // The SDK warns on every run that its releases after early January 2027 need Node 22; ours is pinned
    // (package.json) to a release that supports Node 20, so the warning says nothing to a user.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'
    loadedSdk = require('@aws-sdk/client-s3') as typeof S3Sdk
  }
  return loadedSdk
}

/** Where a remote's store is: what `vdiskfs remote add` records in the pool. */
export interface RemoteLocation { bucket: string, prefix: string, endpoint?: string, region?: string }

export interface ObjectInfo { key: string, size: number, lastModifiedMs: number }

export class S3Store {
  private readonly client: S3Client
  /** Bytes of object bodies this client has sent (PUTs) and received (GETs): what a push or a pull cost on the wire. */
  bytesWritten = 0
  bytesRead = 0

  /** `label` names the remote in errors (its name in the pool, or its URL). */
  constructor (readonly location: RemoteLocation, readonly label: string) {
    const { S3Client } = sdk()
    this.client = new S3Client({
      endpoint: location.endpoint,
      region: location.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
      // Ceph RGW and most self-hosted stores serve buckets by path, not by virtual host.
      forcePathStyle: location.endpoint !== undefined,
      maxAttempts: 3,
      // Every object is checked against its BLAKE3 id when read (chunks) or its key (manifests): the
      // SDK's own CRC32 of every body, both ways, would only cost CPU.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: remoteConnectTimeoutMs, requestTimeout: remoteRequestTimeoutMs }
    })
  }

  get prefix (): string { return this.location.prefix }

  destroy (): void { this.client.destroy() }

  /** Creates the bucket unless it exists (and is ours). */
  async ensureBucket (): Promise<void> {
    try {
      await this.client.send(new (sdk().HeadBucketCommand)({ Bucket: this.location.bucket }))
      return
    } catch (err) {
      if (statusOf(err) !== 404) throw this.failure(err, `bucket ${this.location.bucket}`)
    }
    try {
      await this.client.send(new (sdk().CreateBucketCommand)({ Bucket: this.location.bucket }))
    } catch (err) {
      if (nameOf(err) === 'BucketAlreadyOwnedByYou') return
      throw this.failure(err, `creating bucket ${this.location.bucket}`)
    }
  }

  /** Writes `key` unless it exists (If-None-Match: *). Returns false when it existed (412). */
  async putOnce (key: string, body: Buffer): Promise<boolean> {
    try {
      await this.client.send(new (sdk().PutObjectCommand)({ Bucket: this.location.bucket, Key: key, Body: body, IfNoneMatch: '*' }))
      this.bytesWritten += body.length
      return true
    } catch (err) {
      if (statusOf(err) === 412) return false
      throw this.failure(err, `writing ${key}`)
    }
  }

  /** Bytes `start` .. `start + length - 1` of the object (a range GET): exactly `length` bytes, or CORRUPT; null when it does not exist. */
  async getRange (key: string, start: number, length: number): Promise<Buffer | null> {
    const bytes = await this.get(key, length, { start, length })
    if (bytes !== null && bytes.length !== length) throw corrupt(`remote ${this.label}: ${key}: bytes ${start}-${start + length - 1}: the endpoint sent ${bytes.length} bytes`)
    return bytes
  }

  /**
   * The object's bytes, or null when it does not exist. An object longer than `maxBytes` (by its
   * Content-Length, or by what its body turns out to hold) is refused as CORRUPT without reading the
   * rest: a hostile endpoint cannot make this process hold more than `maxBytes`.
   */
  async get (key: string, maxBytes: number, range?: { start: number, length: number }): Promise<Buffer | null> {
    let body: Readable | undefined
    try {
      const reply = await this.client.send(new (sdk().GetObjectCommand)({ Bucket: this.location.bucket, Key: key, Range: range === undefined ? undefined : `bytes=${range.start}-${range.start + range.length - 1}` }))
      body = reply.Body as Readable | undefined
      if (body === undefined) return Buffer.alloc(0)
      if (reply.ContentLength !== undefined && reply.ContentLength > maxBytes) throw this.tooLong(key, `${reply.ContentLength} bytes`, maxBytes)
      // A server that ignores the range sends the whole object (200): refused past maxBytes, else short of what was asked.
      if (range !== undefined && reply.ContentRange !== undefined && !reply.ContentRange.startsWith(`bytes ${range.start}-`)) {
        throw corrupt(`remote ${this.label}: ${key}: asked for bytes from ${range.start}, the endpoint sent ${reply.ContentRange}`)
      }
      const parts: Buffer[] = []
      let length = 0
      for await (const part of body) {
        length += (part as Buffer).length
        if (length > maxBytes) throw this.tooLong(key, `at least ${length} bytes`, maxBytes)
        parts.push(part as Buffer)
      }
      this.bytesRead += length
      return Buffer.concat(parts, length)
    } catch (err) {
      if (err instanceof VdiskError) throw err
      if (statusOf(err) === 404) return null
      if (statusOf(err) === 416) throw corrupt(`remote ${this.label}: ${key}: shorter than bytes ${range?.start ?? 0}-${(range?.start ?? 0) + (range?.length ?? 0) - 1}`)
      throw this.failure(err, `reading ${key}`)
    } finally {
      // An unread or half-read body holds its connection (and the server may keep sending): drop it.
      if (body !== undefined && !body.readableEnded) body.destroy()
    }
  }

  private tooLong (key: string, length: string, maxBytes: number): VdiskError {
    return corrupt(`remote ${this.label}: ${key}: ${length}, past the ${maxBytes} bytes such an object can hold`)
  }

  /** The object's size and modification time (the server's clock), or null when it does not exist. */
  async head (key: string): Promise<ObjectInfo | null> {
    try {
      const reply = await this.client.send(new (sdk().HeadObjectCommand)({ Bucket: this.location.bucket, Key: key }))
      return { key, size: reply.ContentLength ?? 0, lastModifiedMs: reply.LastModified?.getTime() ?? 0 }
    } catch (err) {
      if (statusOf(err) === 404) return null
      throw this.failure(err, `checking ${key}`)
    }
  }

  /**
   * Renews the object's modification time without changing its bytes (a copy onto itself), so that gc
   * sees it as recently used. Returns false when the object is gone (gc removed it meanwhile).
   */
  async touch (key: string): Promise<boolean> {
    try {
      await this.client.send(new (sdk().CopyObjectCommand)({
        Bucket: this.location.bucket, Key: key, CopySource: `${this.location.bucket}/${encodeURIComponent(key).replace(/%2F/g, '/')}`,
        MetadataDirective: 'REPLACE', Metadata: { touched: new Date().toISOString() }
      }))
      return true
    } catch (err) {
      if (statusOf(err) === 404) return false
      throw this.failure(err, `touching ${key}`)
    }
  }

  /**
   * Every object under `prefix`, in key order. A continuation token that comes back (the endpoint would
   * keep the listing going for ever), a token past remoteListTokenBytesMax or more than
   * remoteListPagesMax pages fail it (IO).
   */
  async * list (prefix: string): AsyncGenerator<ObjectInfo> {
    const seen = new Set<string>()
    let token: string | undefined
    for (let page = 1; ; page++) {
      let reply
      try {
        reply = await this.client.send(new (sdk().ListObjectsV2Command)({ Bucket: this.location.bucket, Prefix: prefix, ContinuationToken: token }))
      } catch (err) { throw this.failure(err, `listing ${prefix}`) }
      for (const object of reply.Contents ?? []) {
        if (object.Key !== undefined) yield { key: object.Key, size: object.Size ?? 0, lastModifiedMs: object.LastModified?.getTime() ?? 0 }
      }
      if (reply.IsTruncated !== true) return
      token = reply.NextContinuationToken
      const broken = token === undefined || token === ''
        ? 'a truncated page without a continuation token'
        : seen.has(token)
          ? `page ${page} repeats the continuation token of an earlier page`
          : token.length > remoteListTokenBytesMax
            ? `a continuation token of ${token.length} characters`
            : page >= remoteListPagesMax ? `more than ${remoteListPagesMax} pages` : null
      if (broken !== null) throw new VdiskError('IO', `remote ${this.label}: listing ${prefix}: the endpoint sent ${broken}: the listing would not end`)
      seen.add(token as string)
    }
  }

  async remove (key: string): Promise<void> {
    try {
      await this.client.send(new (sdk().DeleteObjectCommand)({ Bucket: this.location.bucket, Key: key }))
    } catch (err) { throw this.failure(err, `deleting ${key}`) }
  }

  /** One line for an S3 or network error; never the credentials (the SDK's messages do not carry them). */
  private failure (err: unknown, doing: string): VdiskError {
    const status = statusOf(err)
    const name = nameOf(err)
    const where = `remote ${this.label}`
    if (status === 403 || name === 'CredentialsProviderError' || name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch') {
      return new VdiskError('NOT_PERMITTED', `${where}: ${doing}: access denied (${name}); credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws`, { cause: err })
    }
    const code = (err as NodeJS.ErrnoException)?.code
    if (code !== undefined && status === undefined) {
      return new VdiskError('IO', `${where}: ${doing}: cannot reach ${this.location.endpoint ?? 'S3'} (${code})`, { cause: err })
    }
    const message = status !== undefined ? `${name} (HTTP ${status})` : (err as Error)?.message ?? String(err)
    return new VdiskError('IO', `${where}: ${doing}: ${message}`, { cause: err })
  }
}

function statusOf (err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode
}

function nameOf (err: unknown): string {
  return (err as Error)?.name ?? 'Error'
}

/**
 * `url` as it may be printed: without the userinfo (user:password@) a URL may carry, which would be
 * credentials. Anything that is not a URL comes back as it is.
 */
export function urlWithoutCredentials (url: string): string {
  return url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#]*@/, '$1')
}

/** Parses s3://BUCKET[/PREFIX]; the prefix comes back empty or ending in '/'. Errors: INVALID, never naming credentials. */
export function parseS3Url (url: string): { bucket: string, prefix: string } {
  const shown = urlWithoutCredentials(url)
  const match = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url)
  if (match === null) throw new VdiskError('INVALID', `'${shown}' is not an S3 URL: give s3://BUCKET or s3://BUCKET/PREFIX`)
  if (match[1].includes('@')) throw new VdiskError('INVALID', `'${shown}': an S3 URL carries no credentials (they come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws): give s3://BUCKET or s3://BUCKET/PREFIX`)
  const bucket = match[1]
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new VdiskError('INVALID', `'${bucket}' is not a valid bucket name (3 to 63 lower-case letters, digits, dots and hyphens)`)
  const prefix = (match[2] ?? '').replace(/\/+$/, '')
  if (prefix.split('/').some(part => part === '' || part === '.' || part === '..') && prefix !== '') throw new VdiskError('INVALID', `'${shown}': invalid prefix`)
  return { bucket, prefix: prefix === '' ? '' : prefix + '/' }
}
