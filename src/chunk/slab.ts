/**
 * Hands out the slots of the shared slab (workers/protocol.ts). The number of slots bounds the memory
 * in flight: a caller that finds none free waits in line, so sealing and reads exert back-pressure
 * instead of growing without bound.
 */
export class SlotAllocator {
  private readonly free: number[]
  private readonly waiting: Array<(slot: number) => void> = []

  constructor (readonly slots: number) {
    this.free = Array.from({ length: slots }, (_, i) => slots - 1 - i)
  }

  async acquire (): Promise<number> {
    const slot = this.free.pop()
    if (slot !== undefined) return slot
    return await new Promise(resolve => this.waiting.push(resolve))
  }

  async acquireMany (count: number): Promise<number[]> {
    const out: number[] = []
    for (let i = 0; i < count; i++) out.push(await this.acquire())
    return out
  }

  release (slot: number): void {
    const next = this.waiting.shift()
    if (next !== undefined) next(slot)
    else this.free.push(slot)
  }
}
