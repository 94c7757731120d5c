// At most one send per interval, the latest value winning: cursors, rulers and drags at 20 Hz.

/** The contract's rate for cursors and rulers (PROTOCOL.md, "Ephemeral"), used for drags too. */
export const TWENTY_HZ_MS = 50;

/**
 * Emits a value at once when the last emission is at least `intervalMs` old; otherwise keeps the
 * latest value and emits it when the interval has passed (so the final position always goes out).
 */
export class Throttle<T> {
  private last = Number.NEGATIVE_INFINITY;
  private pending: { value: T } | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly intervalMs: number,
    private readonly emit: (value: T) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  push(value: T): void {
    const wait = this.last + this.intervalMs - this.now();
    if (wait <= 0 && this.timer === null) {
      this.fire(value);
      return;
    }
    this.pending = { value };
    this.timer ??= setTimeout(() => {
      this.timer = null;
      const pending = this.pending;
      this.pending = null;
      if (pending !== null) {
        this.fire(pending.value);
      }
    }, wait);
  }

  /** Drop the value waiting for its slot, if any. */
  cancel(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.pending = null;
  }

  private fire(value: T): void {
    this.last = this.now();
    this.emit(value);
  }
}
