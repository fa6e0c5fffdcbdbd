/** CLI commands of issue #11: map, cp, promote, info and the other everyday tools. */
import { Command } from './command'

export const adminCommands: Record<string, Command> = {}
