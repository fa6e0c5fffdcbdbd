/**
 * What the CLI prints about a remote must not leak credentials or let a hostile store write the user's
 * terminal: a URL's userinfo (s3://KEY:SECRET@bucket) is never echoed in an error, and the names a
 * hostile store's manifests carry (they come from any host that can write the bucket) are printed
 * escaped by `remote ls`, one backup per line; a manifest's identity (a UUID, which a lazy pull names
 * files after: the pool's lazy/UUID.refs, the hydrator's log) that is a path instead makes neither the
 * CLI nor the daemon write outside their directories. The store is a few lines of node:http on 127.0.0.1.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import { AddressInfo } from 'node:net'
import path from 'node:path'
import { CliResult, cli, execFileAsync, withMount } from '../helpers/mount'
import { openStream, readReply } from '../../src/control/client'
import { encodeManifest, manifestFormat, manifestVersion } from '../../src/remote/remote-format'
import { frameEnd, frameHead, frameRef, send } from '../../src/transfer/wire'

const env = { ...process.env, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' }

async function vd (...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await execFileAsync(cli, args, { encoding: 'utf8', env })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number, stdout?: string, stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

test('a URL\'s credentials are never echoed in an error', async t => {
  const mount = await withMount(t)
  for (const url of ['s3://AKIDEXAMPLE:hunter2xyz@bucket', 's3://AKIDEXAMPLE:hunter2xyz@bucket/prefix', 's3://AKIDEXAMPLE:hunter2xyz@', 's3://AKIDEXAMPLE:hunter2xyz@bucket/a//b']) {
    const result = await vd('remote', 'add', mount.mnt, 'r', url)
    t.not(result.code, 0, `${url} was accepted`)
    t.false(result.stderr.includes('hunter2xyz') || result.stderr.includes('AKIDEXAMPLE'), `the error repeats the credentials: ${result.stderr}`)
    t.is(result.stderr.trim().split('\n').length, 1, result.stderr)
  }
})

test('remote ls prints the names a hostile store\'s manifests carry escaped, one backup per line', async t => {
  const mount = await withMount(t)
  const forged = 'ok\n0123456789abcdef0123456789abcdef  forged  1.0 GiB  2026-01-01T00:00:00.000Z  host'
  const { id, bytes } = encodeManifest({
    format: manifestFormat, version: manifestVersion, identity: 'x', name: forged, source: 'src\u001b]0;title\u0007', host: 'h\r\u001b[2J',
    created: '2026-11-26T00:00:00.000Z\nforged-line', size: 65536, blockBytes: 65536, blocks: []
  })
  const marker = JSON.stringify({ format: 'vdiskfs-remote-store', version: 1, graceSeconds: 3600, created: new Date().toISOString() }) + '\n'
  const server = http.createServer((request, response) => {
    request.resume()
    const url = new URL(request.url ?? '/', 'http://x')
    if (url.searchParams.get('list-type') === '2') {
      response.writeHead(200, { 'content-type': 'application/xml' })
      response.end('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name>' +
        `<Prefix>p/manifests/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>p/manifests/${id}.json</Key>` +
        `<LastModified>2026-11-26T00:00:00.000Z</LastModified><Size>${bytes.length}</Size></Contents></ListBucketResult>`)
      return
    }
    if (request.method === 'GET' && url.pathname.endsWith('vdiskfs-store.json')) { response.writeHead(200, { 'content-length': String(Buffer.byteLength(marker)) }); response.end(marker); return }
    if (request.method === 'GET' && url.pathname.endsWith(`${id}.json`)) { response.writeHead(200, { 'content-length': String(bytes.length) }); response.end(bytes); return }
    if (request.method === 'PUT' && url.pathname.endsWith('vdiskfs-store.json')) { response.writeHead(412); response.end(); return }
    // HEAD of the bucket, anything else: fine and empty.
    response.writeHead(200, { 'content-length': '0' })
    response.end()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) })
  const added = await vd('remote', 'add', mount.mnt, 'r', 's3://bucket/p', '--endpoint', `http://127.0.0.1:${(server.address() as AddressInfo).port}`)
  t.is(added.code, 0, added.stderr)
  const listed = await vd('remote', 'ls', mount.mnt, 'r')
  t.is(listed.code, 0, listed.stderr)
  const lines = listed.stdout.trimEnd().split('\n')
  t.is(lines.length, 2, `remote ls printed ${lines.length} lines for one backup:\n${listed.stdout}`)
  t.false(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(listed.stdout), `remote ls printed control characters: ${JSON.stringify(listed.stdout)}`)
  t.true(lines[1].startsWith(id), lines[1])
  const json = await vd('remote', 'ls', mount.mnt, 'r', '--json')
  t.is((JSON.parse(json.stdout) as Array<{ name: string }>)[0].name, forged, '--json carries the name exactly')
})

/**
 * A store answering one manifest (GET of manifests/ID.json, its listing) and its marker; every other
 * listing empty, every other request 200 and empty. Closed at the test's end. Returns its endpoint.
 */
async function hostileStore (t: { teardown: (f: () => Promise<void>) => void }, id: string, bytes: Buffer): Promise<string> {
  const marker = JSON.stringify({ format: 'vdiskfs-remote-store', version: 1, graceSeconds: 3600, created: new Date().toISOString() }) + '\n'
  const server = http.createServer((request, response) => {
    request.resume()
    const url = new URL(request.url ?? '/', 'http://x')
    if (url.searchParams.get('list-type') === '2') {
      const manifests = (url.searchParams.get('prefix') ?? '').endsWith('manifests/')
      response.writeHead(200, { 'content-type': 'application/xml' })
      response.end('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name>' +
        `<KeyCount>${manifests ? 1 : 0}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>` +
        (manifests ? `<Contents><Key>p/manifests/${id}.json</Key><LastModified>2026-11-26T00:00:00.000Z</LastModified><Size>${bytes.length}</Size></Contents>` : '') + '</ListBucketResult>')
      return
    }
    if (request.method === 'GET' && url.pathname.endsWith('vdiskfs-store.json')) { response.writeHead(200, { 'content-length': String(Buffer.byteLength(marker)) }); response.end(marker); return }
    if (request.method === 'GET' && url.pathname.endsWith(`${id}.json`)) { response.writeHead(200, { 'content-length': String(bytes.length) }); response.end(bytes); return }
    if (request.method === 'PUT' && url.pathname.endsWith('vdiskfs-store.json')) { response.writeHead(412); response.end(); return }
    response.writeHead(200, { 'content-length': '0' })
    response.end()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise(resolve => server.close(resolve)) })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** A directory beside the pool's, holding a victim file and a symbolic link to it named as a lazy pull's references would be. */
function plantVictims (dir: string): { outside: string, identity: string, victim: string, entries: string[] } {
  const outside = path.join(dir, 'outside')
  fs.mkdirSync(outside)
  const victim = path.join(outside, 'victim.conf')
  fs.writeFileSync(victim, 'precious\n', { mode: 0o600 })
  // The references file through a link (created, truncated and written through it); the hydrator's log
  // left absent, so that one made shows in the listing however soon the hydrator writes to it.
  fs.symlinkSync(victim, path.join(outside, 'escape.refs'))
  // Up to / from any directory (path.join folds each .. lexically, `hydrate-..` included), then down.
  return { outside, identity: `${'../'.repeat(40)}${outside.slice(1)}/escape`, victim, entries: fs.readdirSync(outside).sort() }
}

test('a lazy pull of a manifest whose identity is a path writes nothing outside the pool and the control directory', async t => {
  const mount = await withMount(t)
  const { outside, identity, victim, entries } = plantVictims(mount.dir)
  const chunk = crypto.randomBytes(32).toString('hex')
  // Block 64: past the head (fetched with the backup), so the pull sends the daemon a reference for it.
  const { id, bytes } = encodeManifest({
    format: manifestFormat, version: manifestVersion, identity, name: 'b', source: 's', host: 'h',
    created: '2026-11-26T00:00:00.000Z', size: 128 * 65536, blockBytes: 65536, blocks: [[64, chunk]]
  })
  const endpoint = await hostileStore(t, id, bytes)
  const added = await vd('remote', 'add', mount.mnt, 'r', 's3://bucket/p', '--endpoint', endpoint)
  t.is(added.code, 0, added.stderr)
  const pulled = await vd('pull', mount.mnt, 'r', id, 'evil', '--lazy')
  t.not(pulled.code, 0, `the pull of a manifest with identity ${identity} must be refused`)
  t.regex(pulled.stderr, /identity/, pulled.stderr)
  await new Promise(resolve => setTimeout(resolve, 500)) // a hydrator started meanwhile would have opened its log
  t.is(fs.readFileSync(victim, 'utf8'), 'precious\n', 'the file the links name is untouched')
  t.deepEqual(fs.readdirSync(outside).sort(), entries, 'nothing made or removed outside the pool')
  t.false(fs.readdirSync(mount.mnt + '/backups').includes('evil.img'), 'no backup made')
})

test('the daemon refuses a stream header whose identity or base is not a UUID (a lazy pull names a file after it)', async t => {
  const mount = await withMount(t)
  const { outside, identity, victim, entries } = plantVictims(mount.dir)
  const good = crypto.randomUUID()
  for (const [uuid, baseUuid, op] of [[identity, null, 'lazyPullStream'], [good, identity, 'importStream'], [`${good}/x`, null, 'importStream']] as const) {
    const header = { name: 'b', blockBytes: 65536, uuid, baseUuid, size: 128 * 65536, createdMs: Date.now(), records: 1, source: null }
    const outcome = await (async () => {
      const opened = op === 'lazyPullStream'
        ? await openStream(mount.mnt, op, { header, name: 'evil', remote: 'r', manifest: 'ab'.repeat(16) })
        : await openStream(mount.mnt, op, { header, name: 'evil' })
      try {
        const reply = readReply(op, opened.socket, opened.rest, mount.mnt)
        reply.catch(() => {})
        await send(opened.socket, frameHead(frameRef, 64, crypto.randomBytes(32)))
        await send(opened.socket, frameHead(frameEnd, 0, null))
        return await reply
      } finally { opened.socket.destroy() }
    })().then(() => 'accepted', (err: { code?: string }) => err.code ?? 'failed')
    t.is(outcome, 'INVALID', `${op} with identity ${uuid}, base ${String(baseUuid)}`)
  }
  await new Promise(resolve => setTimeout(resolve, 500)) // the apply of an accepted lazy pull runs after its reply
  t.is(fs.readFileSync(victim, 'utf8'), 'precious\n', 'the file the links name is untouched')
  t.deepEqual(fs.readdirSync(outside).sort(), entries, 'nothing made or removed outside the pool')
})
