/**
 * A pool's remote definitions (src/remote/remotes.ts): checked as `remote add` is, kept 0600 whatever the
 * umask, replaced whole (no temporary file left), a damaged or hand-edited file refused or held to the same
 * rules; S3 URLs parsed strictly; and the store's formats refuse damaged objects.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { addRemote, findRemote, makeDefinition, readRemotes, remotesFile, removeRemote } from '../../src/remote/remotes'
import { parseS3Url } from '../../src/remote/s3-store'
import { blake3Hex, chunkIdOfKey, chunkKey, decodeChunkHeader, decodeManifest, decodePackIndex, encodeChunkHeader, encodeManifest, encodePackIndex, manifestFormat, manifestVersion, packIdOfKey } from '../../src/remote/remote-format'
import { VdiskError } from '../../src/errors'

function poolDir (t: { teardown: (f: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-remotes-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

const code = (err: unknown): string | undefined => err instanceof VdiskError ? err.code : undefined

test('remotes are added, found and removed; the file is 0600 under umask 0 and no temporary file stays', t => {
  const dir = poolDir(t)
  const umask = process.umask(0)
  try {
    addRemote(dir, makeDefinition('offsite', 's3://backups/vd/', 'http://127.0.0.1:7480'))
    addRemote(dir, makeDefinition('other', 's3://bucket2', undefined, 'eu-west-1'))
  } finally { process.umask(umask) }
  t.is(fs.statSync(path.join(dir, remotesFile)).mode & 0o777, 0o600)
  t.deepEqual(fs.readdirSync(dir), [remotesFile])
  const offsite = findRemote(dir, 'offsite')
  t.like(offsite, { bucket: 'backups', prefix: 'vd/', endpoint: 'http://127.0.0.1:7480' })
  t.is(code(t.throws(() => addRemote(dir, makeDefinition('offsite', 's3://backups')))), 'EXISTS')
  removeRemote(dir, 'offsite')
  t.deepEqual(readRemotes(dir).map(r => r.name), ['other'])
  t.is(code(t.throws(() => findRemote(dir, 'offsite'))), 'NOT_FOUND')
})

test('a damaged remotes file is refused, and a hand-edited one is held to the rules of remote add', t => {
  const dir = poolDir(t)
  fs.writeFileSync(path.join(dir, remotesFile), '{"version":1,"remotes":[')
  t.is(code(t.throws(() => readRemotes(dir))), 'CORRUPT')
  fs.writeFileSync(path.join(dir, remotesFile), JSON.stringify({ version: 1, remotes: [{ name: 'x', url: 's3://bucket', endpoint: 'http://user:secret@host', added: '' }] }))
  t.is(code(t.throws(() => readRemotes(dir))), 'INVALID')
})

test('S3 URLs, names and endpoints are checked', t => {
  t.deepEqual(parseS3Url('s3://my-bucket'), { bucket: 'my-bucket', prefix: '' })
  t.deepEqual(parseS3Url('s3://my-bucket/a/b/'), { bucket: 'my-bucket', prefix: 'a/b/' })
  for (const bad of ['http://x/y', 's3://', 's3://B', 's3://ab', 's3://bucket/a//b', 's3://bucket/../x']) {
    t.is(code(t.throws(() => parseS3Url(bad), undefined, bad)), 'INVALID', bad)
  }
  for (const name of ['', '-x', 'a/b', 'a b', 'x'.repeat(65)]) t.is(code(t.throws(() => makeDefinition(name, 's3://bucket'))), 'INVALID', name)
  t.is(code(t.throws(() => makeDefinition('x', 's3://bucket', 'ftp://host'))), 'INVALID')
  t.is(code(t.throws(() => makeDefinition('x', 's3://bucket', 'http://key:secret@host'))), 'INVALID')
})

test('chunk headers and manifests refuse what is damaged', t => {
  const id = blake3Hex(Buffer.alloc(65536, 1))
  t.is(chunkIdOfKey('p/', chunkKey('p/', id)), id)
  t.is(chunkIdOfKey('p/', `p/chunks/00/${id}`), id.startsWith('00') ? id : null)
  const header = encodeChunkHeader(0, 65536, id)
  t.throws(() => decodeChunkHeader(header, 'chunk'), { message: /raw chunk of 0 bytes/ })
  const bad = Buffer.from(header)
  bad[0] ^= 1
  t.throws(() => decodeChunkHeader(bad, 'chunk'), { message: /bad magic/ })
  const { id: manifestId, bytes } = encodeManifest({ format: manifestFormat, version: manifestVersion, identity: 'u', name: 'b', source: 's', host: 'h', created: 'c', size: 3 * 65536, blockBytes: 65536, blocks: [[0, id], [2, id]] })
  t.is(decodeManifest(manifestId, bytes).blocks.length, 2)
  const flipped = Buffer.from(bytes)
  flipped[10] ^= 1
  t.throws(() => decodeManifest(manifestId, flipped), { message: /damaged/ })
  const outOfRange = encodeManifest({ format: manifestFormat, version: manifestVersion, identity: 'u', name: 'b', source: 's', host: 'h', created: 'c', size: 65536, blockBytes: 65536, blocks: [[1, id]] })
  t.throws(() => decodeManifest(outOfRange.id, outOfRange.bytes), { message: /invalid block list entry/ })
})

test('pack indexes refuse what does not tile their pack, and manifests a malformed source identity', t => {
  const pack = 'ab'.repeat(16)
  const name = (c: string): string => c.repeat(64)
  const good = encodePackIndex(pack, 300, [[name('a'), 0, 100], [name('b'), 100, 200]])
  t.deepEqual(decodePackIndex(pack, good, 'index').chunks.map(c => c[1]), [0, 100])
  const bad = (chunks: Array<[string, number, number]>, bytes = 300, id = pack): void => {
    t.throws(() => decodePackIndex(pack, encodePackIndex(id, bytes, chunks), 'index'), { instanceOf: VdiskError, message: /^index: / })
  }
  bad([[name('a'), 0, 100], [name('b'), 150, 150]]) // a gap
  bad([[name('a'), 0, 100], [name('b'), 50, 250]]) // an overlap
  bad([[name('a'), 0, 100], [name('b'), 100, 100]]) // short of the pack
  bad([[name('a'), 0, 300]], 300, 'cd'.repeat(16)) // another pack's
  bad([['A'.repeat(64), 0, 300]]) // not a name
  bad([[name('a'), 0, 300]], 64 * 1024 * 1024) // past a pack's length
  t.throws(() => decodePackIndex(pack, Buffer.from('{"format":"x"}'), 'index'), { message: /not a vdiskfs pack index/ })
  t.is(packIdOfKey('p/', `p/packs/${pack}`, 'packs/'), pack)
  t.is(packIdOfKey('p/', `p/indexes/${pack}`, 'packs/'), null)
  t.is(packIdOfKey('p/', `p/packs/${pack}x`, 'packs/'), null)
  const manifest = { format: manifestFormat, version: manifestVersion, identity: 'i', name: 'n', source: 's', host: 'h', created: 'c', size: 0, blockBytes: 65536, blocks: [] }
  const withSource = encodeManifest({ ...manifest, sourceUuid: '0b6e8a52-7f3c-4d2e-9a1b-2c3d4e5f6a7b' })
  t.is(decodeManifest(withSource.id, withSource.bytes).sourceUuid, '0b6e8a52-7f3c-4d2e-9a1b-2c3d4e5f6a7b')
  const malformed = encodeManifest({ ...manifest, sourceUuid: 'not a uuid' })
  t.throws(() => decodeManifest(malformed.id, malformed.bytes), { message: /invalid source identity/ })
})
