/**
 * An attacker's pass over what the remote store and the export stream decoder read (issue #12): a
 * hostile S3 endpoint (a compromised or impersonated server, or a bucket other hosts can write), and
 * crafted export stream headers. Each test states the attack and what must hold. The S3 server here
 * is a few lines of node:http that answer as the attacker wants; no real store is needed.
 */
import test from 'ava'
import crypto from 'node:crypto'
import { spawnSync } from 'node:child_process'
import http from 'node:http'
import path from 'node:path'
import { AddressInfo } from 'node:net'
import { makeDefinition } from '../../src/remote/remotes'
import { RemoteStore } from '../../src/remote/store'
import { StreamDecoder, StreamEncoder, StreamItem } from '../../src/transfer/stream'

/** A server that answers every GET with a body of `bodyBytes` bytes of 'A', counting what it sent. */
async function endlessServer (bodyBytes: number): Promise<{ endpoint: string, sent: () => number, close: () => Promise<void> }> {
  let sent = 0
  const server = http.createServer((request, response) => {
    request.resume()
    if (request.method !== 'GET') { response.writeHead(200, { 'content-length': '0' }); response.end(); return }
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(bodyBytes) })
    const piece = Buffer.alloc(1024 * 1024, 'A')
    let left = bodyBytes
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, piece.length)
        left -= n
        sent += n
        if (!response.write(n === piece.length ? piece : piece.subarray(0, n))) { response.once('drain', pump); return }
      }
      response.end()
    }
    response.on('close', () => { left = 0 })
    pump()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    endpoint: `http://127.0.0.1:${port}`,
    sent: () => sent,
    close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) }
  }
}

// Attack: the endpoint answers the store marker (the first object any remote command reads: push,
// pull, remote ls, verify, prune, gc) with a body of 512 MiB (or 1 TiB). S3Store.get read every
// body whole into memory (transformToByteArray) before anything looked at its size, so the CLI's
// memory follows the server's will; the marker is a few hundred bytes, a manifest's length is bounded
// by manifestBytesMax, a chunk's by its header.
test('a hostile S3 endpoint cannot make a remote command read an unbounded object into memory', async t => {
  process.env.AWS_ACCESS_KEY_ID ??= 'test'
  process.env.AWS_SECRET_ACCESS_KEY ??= 'test'
  const server = await endlessServer(512 * 1024 * 1024)
  t.teardown(server.close)
  const rssBefore = process.memoryUsage().rss
  const error = await t.throwsAsync(RemoteStore.open({ bucket: 'bucket', prefix: 'p/', endpoint: server.endpoint }, 'hostile'))
  const grewBy = process.memoryUsage().rss - rssBefore
  t.true(server.sent() < 64 * 1024 * 1024, `the client read ${Math.round(server.sent() / 1048576)} MiB of a store marker before refusing it (${error?.message.slice(0, 120)}); RSS grew ${Math.round(grewBy / 1048576)} MiB`)
})

/** Encodes a stream with header `name` (any length: the encoder's check is bypassed by patching). */
async function streamWithName (nameBytes: number): Promise<Buffer> {
  const header = { name: 'n', blockBytes: 65536, uuid: crypto.randomUUID(), baseUuid: null, size: 65536, createdMs: Date.now(), records: 0 }
  const encoder = new StreamEncoder(header)
  const chunks: Buffer[] = []
  encoder.on('data', (chunk: Buffer) => chunks.push(chunk))
  const ended = new Promise(resolve => encoder.on('end', resolve))
  encoder.end()
  await ended
  // Rebuild the header with a long name and a good CRC, and the trailer's checksum over the new bytes.
  const zlib = await import('node:zlib')
  const { Blake3Hasher } = await import('@napi-rs/blake-hash')
  const original = Buffer.concat(chunks)
  const fixed = Buffer.from(original.subarray(0, 80))
  const name = Buffer.alloc(nameBytes, 'x')
  fixed.writeUInt16LE(nameBytes, 10)
  fixed.writeUInt32LE(zlib.crc32(name, zlib.crc32(fixed.subarray(0, 76))), 76)
  const body = Buffer.concat([fixed, name])
  const trailer = Buffer.from(original.subarray(original.length - 48))
  const hasher = new Blake3Hasher()
  hasher.update(body)
  hasher.digestBuffer().copy(trailer, 16)
  return Buffer.concat([body, trailer])
}

// The format says a header's name is at most 255 bytes (stream-format.ts headerNameBytesMax, which
// encodeHeader enforces); the decoder took any length the u16 field gives (up to 65535) as valid.
test('the stream decoder refuses a header name longer than the format allows', async t => {
  const bytes = await streamWithName(60000)
  const decoder = new StreamDecoder()
  const items: StreamItem[] = []
  const outcome = await new Promise<Error | null>(resolve => {
    decoder.on('data', (item: StreamItem) => items.push(item))
    decoder.on('error', err => resolve(err))
    decoder.on('end', () => resolve(null))
    decoder.end(bytes)
  })
  t.truthy(outcome, `a header with a 60000-byte name was accepted (name of ${items[0]?.kind === 'header' ? items[0].header.name.length : '?'} characters)`)
})

// `remote add` keeps credentials out of POOL/remotes.json and `remote list` by refusing an endpoint
// with user:password; a token in the endpoint's query (a presigned-style X-Amz-Security-Token, or any
// ?token=) or fragment went in and was stored and printed as given. An S3 endpoint is a scheme, a
// host, a port and at most a path: no query, no fragment.
test('remote add refuses an endpoint that carries a query or fragment (credentials would be stored)', t => {
  for (const endpoint of ['https://s3.example.com/?X-Amz-Security-Token=SECRET', 'http://127.0.0.1:7480/?token=SECRET', 'http://127.0.0.1:7480/#SECRET']) {
    const error = t.throws(() => makeDefinition('r', 's3://bucket/p', endpoint), undefined, `endpoint ${endpoint} was accepted`)
    t.false(error?.message.includes('SECRET') ?? false, `the refusal repeats the secret: ${error?.message ?? ''}`)
  }
})

// Attack: the endpoint answers every listing with IsTruncated and the same continuation token. The
// listing loop (S3Store.list) followed it for ever: `remote ls`, verify, prune and gc never ended.
// Here the server gives up after 2000 pages (then says the listing is complete): a client that notices
// a token coming back, as it must, fails long before.
test('a hostile S3 endpoint cannot keep a listing going for ever with a repeated continuation token', async t => {
  process.env.AWS_ACCESS_KEY_ID ??= 'test'
  process.env.AWS_SECRET_ACCESS_KEY ??= 'test'
  let pages = 0
  const marker = JSON.stringify({ format: 'vdiskfs-remote-store', version: 1, graceSeconds: 3600, created: new Date().toISOString() }) + '\n'
  const server = http.createServer((request, response) => {
    request.resume()
    const url = new URL(request.url ?? '/', 'http://x')
    if (url.searchParams.get('list-type') === '2') {
      pages++
      const truncated = pages < 2000
      response.writeHead(200, { 'content-type': 'application/xml' })
      response.end(`<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><Prefix>p/manifests/</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>${String(truncated)}</IsTruncated>${truncated ? '<NextContinuationToken>same</NextContinuationToken>' : ''}</ListBucketResult>`)
      return
    }
    if (url.pathname.endsWith('vdiskfs-store.json')) { response.writeHead(200, { 'content-length': String(Buffer.byteLength(marker)) }); response.end(marker); return }
    response.writeHead(404, { 'content-type': 'application/xml' })
    response.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code></Error>')
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) })
  const store = await RemoteStore.open({ bucket: 'bucket', prefix: 'p/', endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }, 'hostile')
  t.teardown(() => store.close())
  let outcome = 'completed'
  try { await store.backups() } catch (err) { outcome = `failed: ${(err as Error).message}` }
  t.true(pages < 2000 && outcome.startsWith('failed'), `the listing followed the same continuation token ${pages} times and ${outcome}`)
})

// `vdiskfs prune --match GLOB` compiles the glob to a backtracking RegExp (transfer/prune.ts
// globPattern: each '*' becomes '.*') and tests every backup's name with it on the daemon's event loop:
// '*a*a*a*a*a*a*a*a*b' against a 40-byte name took 4.6 s here, and each further '*a' multiplies that,
// while FUSE requests wait (the mounted VMs' I/O stalls). A glob match is linear work. Shown in a child
// process given 10 s of CPU (a linear matcher needs microseconds), so a hang cannot hold the test up.
test('prune --match globs are matched without catastrophic backtracking', t => {
  const script = `const { globPattern } = require(${JSON.stringify(path.resolve(__dirname, '../../src/transfer/prune.js'))});` +
    `console.log(globPattern('${'*a'.repeat(12)}*b').test('${'a'.repeat(60)}'))`
  const result = spawnSync('bash', ['-c', `ulimit -t 10; exec "${process.execPath}" -e "$0"`, script], { encoding: 'utf8' })
  t.is(result.stdout.trim(), 'false', `matching one 60-byte name did not finish within 10 s of CPU (signal ${String(result.signal)}, status ${String(result.status)})`)
})
