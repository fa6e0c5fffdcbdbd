/** CLI commands of issue #12: diff, export, import, prune. */
import { Command } from './command'

export const transferCommands: Record<string, Command> = {}
