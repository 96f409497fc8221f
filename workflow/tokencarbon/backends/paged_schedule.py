"""The paged engine's schedule, on the host only (no tensors): which requests are admitted, which
blocks each holds, what each step computes, who is preempted. The engine
(paged_engine.PagedEngine) asks it for the next step, launches that step on the device without
waiting for it, and tells it the step was launched; since every request generates exactly its
output length (greedy, EOS ignored), the schedule never needs a token's value, so it runs ahead of
the device.

Terms. A request's known tokens are its prompt and the tokens generated so far (p + g); its
computed positions are those whose K and V are in its blocks (c). A step computes, for each request
it carries, positions [c, c + n) of its known tokens; when that reaches p + g, the step also samples
the request's next token from the last position. A decode row is a request with one position left
(n = 1, g >= 1); every other request in flight is prefilling (its prompt, or after a preemption its
prompt and generated tokens again), in chunks.

Per step (vLLM V1's order): every decode row gets its token (and a block when its position starts
one); prefilling requests continue, oldest first, within what is left of max_num_batched_tokens;
then waiting requests are admitted, first come first served, while a row (max_num_seqs), the token
budget and free blocks for their whole prompt (less a watermark while others run) allow. With
mixed steps off, a step carries decode rows or prompt chunks, never both, and at most one prompt
step runs between two decode steps.

Preemption (recompute, vLLM V1's default): when a decode row needs a block and none is free, the
most recently admitted request in flight gives all its blocks back and returns to the front of the
queue; readmitted, it recomputes its prompt and the tokens it had generated (as a prefill), and
generates on from there. Recompute rather than swap: the tokens a request generated are already on
the device (nothing to copy out), a recompute is a prefill (compute-bound, the device's most
efficient work), and swapping would need a host pool and copies in both directions inside the
timed window."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tokencarbon.backends.paged import BlockAllocator, blocks_for

# vLLM V0's default watermark: while requests run, an admission leaves this share of the pool free
# for their growth, so a new request is not admitted only to be preempted at the next step.
WATERMARK = 0.01


@dataclass
class Step:
    """What one step computes. decode: request indices of its decode rows (row order); chunks:
    (request, first position, positions) of its prompt chunks; kind "decode", "prefill" (chunks
    only) or "mixed"."""

    decode: np.ndarray
    chunks: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if not self.chunks:
            return "decode"
        return "mixed" if len(self.decode) else "prefill"


class Schedule:
    """The host state of one serve() (module docstring). prompt_len, output_len: per request
    (tokens); arrival_ns: arrival offsets from the start of serving; the rest: the engine's
    settings. table: [max_num_seqs, max_blocks_per_seq] int64, the block table row of each admitted
    request (row_of[r])."""

    def __init__(
        self,
        prompt_len: np.ndarray,
        output_len: np.ndarray,
        arrival_ns: np.ndarray,
        allocator: BlockAllocator,
        *,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_blocks_per_seq: int,
        prefill_min_seqs: int,
        mixed_steps: bool,
    ):
        n = len(prompt_len)
        self.n = n
        self.p = np.asarray(prompt_len, dtype=np.int64)
        self.o = np.asarray(output_len, dtype=np.int64)
        self.arrival_ns = np.asarray(arrival_ns, dtype=np.int64)
        self.allocator = allocator
        self.bs = block_size
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.prefill_min_seqs = prefill_min_seqs
        self.mixed_steps = mixed_steps
        self.watermark = int(WATERMARK * allocator.num_blocks)
        self.g = np.zeros(n, dtype=np.int64)  # tokens generated
        self.c = np.zeros(n, dtype=np.int64)  # positions computed (K/V in its blocks)
        self.nblk = np.zeros(n, dtype=np.int64)  # blocks held
        self.row_of = np.full(n, -1, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.first_step = np.full(n, -1, dtype=np.int64)
        self.finish_step = np.full(n, -1, dtype=np.int64)
        self.table = np.zeros((max_num_seqs, max_blocks_per_seq), dtype=np.int64)
        self._free_rows = list(range(max_num_seqs - 1, -1, -1))
        self.order = sorted(range(n), key=lambda i: (self.arrival_ns[i], i))
        self.arrived = 0
        self.waiting: deque[int] = deque()  # arrived, not in flight (FCFS; preempted first)
        self.running: list[int] = []  # in flight, in order of admission
        self.finished = 0
        self.last_kind = ""

    # ------------------------------------------------------------ queries

    @property
    def done(self) -> bool:
        return self.finished == self.n

    def next_arrival_ns(self) -> int | None:
        return int(self.arrival_ns[self.order[self.arrived]]) if self.arrived < self.n else None

    def arrive(self, now_ns: int) -> None:
        """Queue every request whose arrival offset is <= now_ns."""
        while self.arrived < self.n and self.arrival_ns[self.order[self.arrived]] <= now_ns:
            self.waiting.append(self.order[self.arrived])
            self.arrived += 1

    def blocks(self, r: int) -> np.ndarray:
        """The blocks request r holds, in the order of its positions."""
        return self.table[self.row_of[r], : self.nblk[r]]

    def slots(self, r: int, start: int, stop: int) -> np.ndarray:
        """Pool token slots of request r's positions [start, stop)."""
        pos = np.arange(start, stop)
        return self.table[self.row_of[r], pos // self.bs] * self.bs + pos % self.bs

    # ------------------------------------------------------------ one step

    def next_step(self) -> Step | None:
        """The next step to launch, its blocks allocated (preempting if need be); None when
        nothing can run now (nothing in flight and nothing admissible)."""
        decode = self._grow_decode_rows()
        if not self.mixed_steps and len(decode) and self.last_kind == "prefill":
            return Step(decode)  # at most one prompt step between two decode steps
        budget = self.budget - len(decode)
        chunks: list[tuple[int, int, int]] = []
        for r in self.running:
            left = self.p[r] + self.g[r] - self.c[r]
            if budget <= 0:
                break
            if self.g[r] >= 1 and left == 1:
                continue  # a decode row
            n = int(min(left, budget))
            chunks.append((r, int(self.c[r]), n))
            budget -= n
        budget = self._admit(chunks, budget, bool(len(decode)) or bool(chunks))
        if not self.mixed_steps and chunks and len(decode):
            decode = decode[:0]  # a prompt step; the decode rows wait one step
        if not chunks and not len(decode):
            return None
        return Step(decode, chunks)

    def _decode_rows(self) -> np.ndarray:
        running = np.asarray(self.running, dtype=np.int64)
        if not len(running):
            return running
        left = self.p[running] + self.g[running] - self.c[running]
        return running[(self.g[running] >= 1) & (left == 1)]

    def _grow_decode_rows(self) -> np.ndarray:
        """Decode rows of this step, each with the block its position needs (oldest first;
        preempting the newest request in flight while none is free)."""
        decode = self._decode_rows()
        needing = decode[self.c[decode] // self.bs >= self.nblk[decode]]
        preempted = False
        for r in needing.tolist():
            if self.row_of[r] < 0:
                continue  # preempted for an older row of this step
            while self.allocator.num_free == 0:
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim == r:
                    break
            if self.row_of[r] >= 0:
                (block,) = self.allocator.allocate(1)
                self.table[self.row_of[r], self.nblk[r]] = block
                self.nblk[r] += 1
        return self._decode_rows() if preempted else decode

    def _admit(self, chunks: list, budget: int, busy: bool) -> int:
        """Admit waiting requests into `chunks` (module docstring); returns the budget left. busy:
        the step already carries work. While more wait than rows are free, admission waits for
        prefill_min_seqs free rows, so one step's weight read carries several prompts."""
        free_rows = self.max_num_seqs - len(self.running)
        if not self.waiting or free_rows <= 0 or budget <= 0:
            return budget
        if (
            busy
            and self.running
            and len(self.waiting) > free_rows
            and free_rows < self.prefill_min_seqs
        ):
            return budget
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            r = self.waiting[0]
            need = blocks_for(int(self.p[r] + self.g[r]), self.bs)
            reserve = self.watermark if self.running else 0
            if self.allocator.num_free - need < reserve:
                break
            self.waiting.popleft()
            row = self._free_rows.pop()
            self.row_of[r] = row
            self.table[row, :need] = self.allocator.allocate(need)
            self.nblk[r] = need
            self.running.append(r)
            n = int(min(self.p[r] + self.g[r], budget))
            chunks.append((r, 0, n))
            budget -= n
        return budget

    def _preempt(self, r: int) -> None:
        self.allocator.free(self.blocks(r).tolist())
        self._free_rows.append(int(self.row_of[r]))
        self.row_of[r] = -1
        self.nblk[r] = 0
        self.c[r] = 0
        self.preemptions[r] += 1
        self.running.remove(r)
        self.waiting.appendleft(r)

    def launched(self, step: Step, index: int) -> list[int]:
        """Account for `step` (step number `index`) as done: positions computed, tokens sampled,
        requests finished (their blocks and rows given back). Returns the finished requests."""
        dec = step.decode
        ends = self.sampled(step)
        self.c[dec] += 1
        self.g[dec] += 1
        for (r, start, n), ends_here in zip(step.chunks, ends):
            self.c[r] = start + n
            self.g[r] += ends_here
        sampled = dec.tolist() + [r for (r, _, _), e in zip(step.chunks, ends) if e]
        done = []
        for r in sampled:
            if self.first_step[r] < 0:
                self.first_step[r] = index
            if self.g[r] == self.o[r]:
                done.append(r)
        for r in done:
            self.finish_step[r] = index
            self.allocator.free(self.blocks(r).tolist())
            self._free_rows.append(int(self.row_of[r]))
            self.row_of[r] = -1
            self.nblk[r] = 0
            self.running.remove(r)
        self.finished += len(done)
        self.last_kind = step.kind
        return done

    def sampled(self, step: Step) -> list[bool]:
        """Per chunk of `step` (before launched()): whether it ends at its request's last known
        token, so the step samples the request's next token there."""
        return [start + n == self.p[r] + self.g[r] for r, start, n in step.chunks]

    def leaks(self) -> str:
        """'' when every block and row is back (after the last request finished), else what is
        not."""
        problems = []
        if self.allocator.num_free != self.allocator.num_blocks:
            problems.append(
                f"{self.allocator.num_blocks - self.allocator.num_free} of "
                f"{self.allocator.num_blocks} blocks still allocated"
            )
        if len(self._free_rows) != self.max_num_seqs or self.running:
            problems.append(f"{len(self.running)} requests still in flight")
        return "; ".join(problems)
