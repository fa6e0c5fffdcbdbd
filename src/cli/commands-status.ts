/** CLI commands of issue #11: what the daemon is doing (status, --prometheus) and what an image is (info). */
import { call } from '../control/client'
import { VolumeFacts } from '../volume/facts'
import { bytes } from './format'
import { Command, imagePath, print, time } from './command'
import { printable } from './holders'

export const statusCommands: Record<string, Command> = {
  info: {
    usage: 'info IMAGE [--json]',
    summary: "an image's facts, like qemu-img info: kind, size, lineage, times, space (referenced, unique, unsealed), owner, open handles",
    spec: { positionals: ['IMAGE'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image], flags }) {
      const target = imagePath(image)
      const facts = await call(target.mountpoint, 'info', { kind: target.kind, name: target.name }) as VolumeFacts
      const { createdMs, mtimeMs, mode, ...rest } = facts
      const json = { ...rest, created: time(createdMs), modified: time(mtimeMs), mode: mode.toString(8).padStart(4, '0') }
      print(flags.json === true, json, () => {
        const rows: Array<[string, string]> = [
          ['image', printable(image)],
          ['kind', facts.kind],
          ['size', `${bytes(facts.size)} (${facts.size} bytes)`],
          ['source', facts.source === null ? '-' : printable(facts.source)],
          ['created', json.created],
          ['modified', json.modified],
          ['referenced', bytes(facts.referencedBytes)],
          ['unique', bytes(facts.uniqueBytes)],
          ['stored', bytes(facts.storedBytes)],
          ['unsealed', bytes(facts.unsealedBytes)],
          ...(facts.keptFromSourceBytes === null ? [] : [['kept from source', bytes(facts.keptFromSourceBytes)] as [string, string]]),
          ['owner', `${facts.uid}:${facts.gid} mode ${json.mode}`],
          ['open handles', String(facts.openHandles)]
        ]
        return rows.map(([key, value]) => `${(key + ':').padEnd(18)}${value}`).join('\n')
      })
    }
  }
}
