/** CLI commands of issue #11: what the daemon is doing (status, --prometheus). */
import { Command } from './command'

export const statusCommands: Record<string, Command> = {}
