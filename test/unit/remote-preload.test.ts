/**
 * RemoteStore.preloadPacks (a lazy pull loads the pack indexes while the manifest comes): a read that
 * needs the packs while the preload is under way waits for it instead of listing and reading the indexes
 * again, and a preload that failed leaves the first read to load them itself. The S3 server is a few
 * lines of node:http serving one store (its marker, one pack and its index), counting the listings.
 */
import test from 'ava'
import crypto from 'node:crypto'
import http from 'node:http'
import { AddressInfo } from 'node:net'
import { RemoteStore } from '../../src/remote/store'
import { blake3Hex, chunkEncodingRaw, encodeChunkHeader, encodePackIndex, storeFormat, storeVersion } from '../../src/remote/remote-format'

const bucket = 'bucket'
const prefix = 'p/'

/** One store with one pack of two raw chunks; `failLists` listings answer 500 first; listings wait for `gate`. */
async function storeServer (options: { failLists?: number } = {}): Promise<{ endpoint: string, lists: () => number, ids: string[], blocks: Buffer[], release: () => void, close: () => Promise<void> }> {
  const blocks = [crypto.randomBytes(4096), crypto.randomBytes(4096)]
  const ids = blocks.map(block => blake3Hex(block))
  const objects = blocks.map((block, i) => Buffer.concat([encodeChunkHeader(chunkEncodingRaw, block.length, ids[i]), block]))
  const pack = Buffer.concat(objects)
  const packId = 'a'.repeat(32)
  const index = encodePackIndex(packId, pack.length, [[ids[0], 0, objects[0].length], [ids[1], objects[0].length, objects[1].length]])
  const marker = Buffer.from(JSON.stringify({ format: storeFormat, version: storeVersion, graceSeconds: 3600, created: new Date().toISOString() }) + '\n')
  let lists = 0
  let failLists = options.failLists ?? 0
  let open: () => void = () => {}
  const gate = new Promise<void>(resolve => { open = resolve })
  const server = http.createServer((request, response) => {
    request.resume()
    const url = new URL(request.url ?? '/', 'http://x')
    void (async () => {
      if (url.searchParams.get('list-type') === '2') {
        lists++
        await gate
        if (failLists > 0) { failLists--; response.writeHead(500, { 'content-length': '0' }); response.end(); return }
        const body = '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
          `<Name>${bucket}</Name><Prefix>${url.searchParams.get('prefix') ?? ''}</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>` +
          `<Contents><Key>${prefix}indexes/${packId}</Key><LastModified>${new Date().toISOString()}</LastModified><ETag>"x"</ETag><Size>${index.length}</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>`
        response.writeHead(200, { 'content-type': 'application/xml', 'content-length': String(Buffer.byteLength(body)) })
        response.end(body)
        return
      }
      const key = decodeURIComponent(url.pathname).slice(`/${bucket}/`.length)
      const whole = key === `${prefix}vdiskfs-store.json` ? marker : key === `${prefix}indexes/${packId}` ? index : key === `${prefix}packs/${packId}` ? pack : null
      if (whole === null) { response.writeHead(404, { 'content-length': '0' }); response.end(); return }
      const range = /^bytes=(\d+)-(\d+)$/.exec(request.headers.range ?? '')
      if (range === null) { response.writeHead(200, { 'content-length': String(whole.length) }); response.end(whole); return }
      const [start, end] = [Number(range[1]), Number(range[2])]
      response.writeHead(206, { 'content-length': String(end - start + 1), 'content-range': `bytes ${start}-${end}/${whole.length}` })
      response.end(whole.subarray(start, end + 1))
    })()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    lists: () => lists,
    ids,
    blocks,
    release: () => open(),
    close: async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) }
  }
}

async function opened (t: { teardown: (f: () => void | Promise<void>) => void }, server: { endpoint: string }): Promise<RemoteStore> {
  process.env.AWS_ACCESS_KEY_ID ??= 'test'
  process.env.AWS_SECRET_ACCESS_KEY ??= 'test'
  const store = await RemoteStore.open({ bucket, prefix, endpoint: server.endpoint }, 'fake')
  t.teardown(() => store.close())
  return store
}

test('a read during a preload of the pack indexes waits for it: the indexes are listed once', async t => {
  const server = await storeServer()
  t.teardown(server.close)
  const store = await opened(t, server)
  store.preloadPacks()
  // The preload's listing is held by the server while the read starts: both are under way at once.
  const reading = store.fetchBlocks([server.ids[1]])
  for (let i = 0; i < 200 && server.lists() === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  server.release()
  const blocks = await reading
  t.deepEqual(blocks.get(server.ids[1]), server.blocks[1])
  t.is(server.lists(), 1)
})

test('a preload that failed leaves the first read to load the pack indexes itself', async t => {
  const server = await storeServer({ failLists: 10 })
  t.teardown(server.close)
  const store = await opened(t, server)
  server.release()
  store.preloadPacks()
  // The SDK retries a 500 (3 attempts): the preload fails; the read lists again, and fails the same way,
  // on its own (not with a rejection left over from the preload).
  await t.throwsAsync(store.fetchBlocks([server.ids[0]]), { message: /listing|HTTP 500|InternalError|UnknownError/ })
  t.true(server.lists() >= 4, `${server.lists()} listings`)
})
