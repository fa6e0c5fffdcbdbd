/** CLI commands of issue #12: remotes on S3 (push, pull, remote ls/verify/prune/gc). */
import { Command } from './command'

export const remoteCommands: Record<string, Command> = {}
