/**
 * What the CLI prints about a remote must not leak credentials or let a hostile store write the user's
 * terminal: a URL's userinfo (s3://KEY:SECRET@bucket) is never echoed in an error, and the names a
 * hostile store's manifests carry (they come from any host that can write the bucket) are printed
 * escaped by `remote ls`, one backup per line. The store is a few lines of node:http on 127.0.0.1.
 */
import test from 'ava'
import http from 'node:http'
import { AddressInfo } from 'node:net'
import { CliResult, cli, execFileAsync, withMount } from '../helpers/mount'
import { encodeManifest, manifestFormat, manifestVersion } from '../../src/remote/remote-format'

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
