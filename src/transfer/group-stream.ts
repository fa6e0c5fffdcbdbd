/**
 * The group stream (docs/FORMAT.md, "Group stream"): a consistency group's backups as one stream, for
 * `vdiskfs export --group` and `vdiskfs import --group`. It carries each member's export stream
 * (stream.ts) whole, in pieces, after a header naming the group and its members; each member's stream
 * keeps its own checks (block ids, the trailer's count and checksum), and the group's end marker
 * counts the members, so a stream cut anywhere is refused.
 *
 *   magic "VDGROUP1" | u32 header bytes | header (UTF-8 JSON: {"version":1,"group","members":[{"name"}]})
 *   | u32 CRC-32 of everything before it
 *   then per member, in the header's order: pieces of u32 length (1 to groupPieceBytesMax) + bytes,
 *   ended by a u32 0
 *   then "VDGREND1" | u32 the number of members
 *
 * Errors: CORRUPT for a stream that is not one, or cut short.
 */
import zlib from 'node:zlib'
import { Readable } from 'node:stream'
import { corrupt } from '../errors'
import { ByteReader } from './wire'

export const groupStreamMagic = Buffer.from('VDGROUP1')
export const groupStreamEndMagic = Buffer.from('VDGREND1')
/** The largest piece of a member's stream a reader accepts, and the largest header. */
export const groupPieceBytesMax = 16 * 1024 * 1024
export const groupHeaderBytesMax = 1024 * 1024

export interface GroupHeader { version: 1, group: string, members: Array<{ name: string }> }

function u32 (value: number): Buffer {
  const out = Buffer.alloc(4)
  out.writeUInt32LE(value)
  return out
}

/** The group stream of `header`'s members, `member(i)` giving member i's export stream when its turn comes. */
export function groupStream (header: GroupHeader, member: (i: number) => Readable): Readable {
  async function * pieces (): AsyncGenerator<Buffer> {
    const json = Buffer.from(JSON.stringify(header))
    const head = Buffer.concat([groupStreamMagic, u32(json.length), json])
    yield Buffer.concat([head, u32(zlib.crc32(head))])
    for (let i = 0; i < header.members.length; i++) {
      for await (const chunk of member(i)) {
        const data = chunk as Buffer
        for (let at = 0; at < data.length; at += groupPieceBytesMax) {
          const piece = data.subarray(at, Math.min(data.length, at + groupPieceBytesMax))
          yield Buffer.concat([u32(piece.length), piece])
        }
      }
      yield u32(0)
    }
    yield Buffer.concat([groupStreamEndMagic, u32(header.members.length)])
  }
  return Readable.from(pieces(), { objectMode: false })
}

/**
 * Reads a group stream: its header, then each member's export stream in turn (`member`: the caller
 * consumes it whole before asking for the next), then the end marker (`end`).
 */
export class GroupStreamReader {
  private readonly reader: ByteReader
  private next = 0
  header: GroupHeader | null = null

  constructor (input: AsyncIterable<Buffer>) {
    this.reader = new ByteReader(input, Buffer.alloc(0))
  }

  private async exactly (n: number, what: string): Promise<Buffer> {
    const bytes = await this.reader.read(n).catch(() => null)
    if (bytes === null) throw corrupt(`the group stream ends inside ${what}`)
    return bytes
  }

  async readHeader (): Promise<GroupHeader> {
    const magic = await this.exactly(8, 'its header')
    if (!magic.equals(groupStreamMagic)) throw corrupt('not a group stream (vdiskfs export --group writes one; a single backup\'s stream is imported without --group)')
    const length = (await this.exactly(4, 'its header')).readUInt32LE(0)
    if (length > groupHeaderBytesMax) throw corrupt(`the group stream's header is ${length} bytes, more than ${groupHeaderBytesMax}`)
    const json = await this.exactly(length, 'its header')
    const crc = (await this.exactly(4, 'its header')).readUInt32LE(0)
    if (zlib.crc32(Buffer.concat([magic, u32(length), json])) !== crc) throw corrupt('the group stream\'s header fails its checksum')
    let header: GroupHeader
    try { header = JSON.parse(json.toString('utf8')) as GroupHeader } catch { throw corrupt('the group stream\'s header is not JSON') }
    if (header.version !== 1 || typeof header.group !== 'string' || !Array.isArray(header.members) || header.members.length === 0 ||
      !header.members.every(m => m !== null && typeof m === 'object' && typeof m.name === 'string')) throw corrupt('the group stream\'s header is malformed')
    this.header = header
    return header
  }

  /** Member `next`'s export stream, as a Readable; consume it whole before calling again. */
  member (): Readable {
    if (this.header === null || this.next >= this.header.members.length) throw new Error('no member left to read')
    this.next++
    const self = this
    async function * pieces (): AsyncGenerator<Buffer> {
      for (;;) {
        const length = (await self.exactly(4, 'a member')).readUInt32LE(0)
        if (length === 0) return
        if (length > groupPieceBytesMax) throw corrupt(`a piece of ${length} bytes in the group stream, more than ${groupPieceBytesMax}`)
        yield Buffer.from(await self.exactly(length, 'a member'))
      }
    }
    return Readable.from(pieces(), { objectMode: false })
  }

  /** Checks the end marker after the last member. */
  async end (): Promise<void> {
    const header = this.header
    if (header === null || this.next !== header.members.length) throw new Error('the group stream\'s members were not all read')
    const magic = await this.exactly(8, 'its end')
    const count = (await this.exactly(4, 'its end')).readUInt32LE(0)
    if (!magic.equals(groupStreamEndMagic) || count !== header.members.length) throw corrupt('the group stream\'s end marker is wrong')
    if (await this.reader.read(1).catch(() => null) !== null) throw corrupt('bytes after the group stream\'s end')
  }
}
