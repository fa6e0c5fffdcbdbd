/**
 * Hands out the slots of the shared slab (workers/protocol.ts). The number of slots bounds the memory
 * in flight: a caller that finds too few free waits in line, so sealing and reads exert back-pressure
 * instead of growing without bound. A request for several slots is granted whole or not at all, in
 * arrival order, so two callers can never each hold part of what they need and wait for the other.
 */
import assert from 'node:assert/strict'

export class SlotAllocator {
  private readonly free: number[]
  private readonly waiting: Array<{ count: number, grant: (slots: number[]) => void }> = []

  constructor (readonly slots: number) {
    this.free = Array.from({ length: slots }, (_, i) => slots - 1 - i)
  }

  async acquire (): Promise<number> {
    return (await this.acquireMany(1))[0]
  }

  async acquireMany (count: number): Promise<number[]> {
    assert.ok(count >= 0 && count <= this.slots, `cannot take ${count} of ${this.slots} slab slots at once`)
    if (this.waiting.length === 0 && this.free.length >= count) return this.free.splice(this.free.length - count, count)
    return await new Promise(grant => this.waiting.push({ count, grant }))
  }

  release (slot: number): void {
    this.free.push(slot)
    while (this.waiting.length > 0 && this.free.length >= this.waiting[0].count) {
      const next = this.waiting.shift() as { count: number, grant: (slots: number[]) => void }
      next.grant(this.free.splice(this.free.length - next.count, next.count))
    }
  }
}
