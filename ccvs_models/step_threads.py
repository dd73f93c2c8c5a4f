"""How many CPU threads the KV-cache sampler's one-token steps use (not in the paper; a speed
choice of ``ccvs_models.sampler``, ``SamplerConfig(step_threads="auto")``).

A cached token step of T is a chain of tiny ops (one row through every Linear, LayerNorm and the
attention over the cache). Whether several intra-op threads help depends on the model and on the
machine's load, not on a rule one can write down once: on an idle 2-core CPU, 2 threads ran the
8-layer × 512 T's steps 1.8× faster than 1 thread (124 vs 69 tokens/s), while on a CPU busy with
other jobs one step of the demo T took 70 ms on 2 threads instead of 3 ms on 1 (each op waits at
a barrier for a thread the OS has descheduled). So ``StepThreads`` measures: the first steps of a
sampling run go to the candidate thread counts in interleaved blocks, each step timed, a count
that is far slower than another is dropped after one step (measuring must not cost what it could
win), and the count with the lowest median step time is used from then on. The measured steps are
real steps (their tokens are the sample's), and the thread count does not change what a step
computes (tests/test_sampler.py checks that the tokens equal those of a fixed setting), so the
measurement costs only the difference between the candidates over a few steps. The choice is kept
per (model shape, weights precision, batch, thread budget) key in the ``StepThreads`` object — one
per sampling call by default, or one the caller keeps across calls — and measured again after
``recheck`` steps (less often while it holds), because a shared machine's load moves.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Hashable, Iterator

import torch


@contextlib.contextmanager
def restored_threads() -> Iterator[None]:
    """torch's intra-op thread count as it was before the block, on every exit path (the count
    is process-wide: a sampler that changes it for its steps must not leak the change)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def candidate_threads(budget: int) -> tuple[int, ...]:
    """Thread counts worth timing under a budget of ``budget`` threads: 1, 2, 4, … and the budget
    itself (1, 2 on a 2-core machine; 1, 2, 4, 8, 12 on 12)."""
    out = [1]
    while out[-1] * 2 < budget:
        out.append(out[-1] * 2)
    if budget > 1:
        out.append(budget)
    return tuple(out)


class ThreadTrial:
    """The measured choice of one key under one thread budget (``StepThreads.trial``).

    Measuring (``chosen`` None): rounds of blocks, one block of ``block`` steps per candidate
    still in the running, fewest threads first in the first round and the order reversed every
    round (so a drift in step cost, such as a growing KV cache, favours none). The first step of a
    block, just after the switch, is not counted. Measuring must not cost more than it can win:
    on a busy CPU one step on more threads can take 16 times a 1-thread step (86 ms vs 1.4 s for
    the 8 × 512 T at load 12), so a candidate is dropped as soon as one of its steps takes more
    than ``abort`` times the best median so far, and after each round every candidate whose
    median is above ``1 + drop`` times the best. Decided: the candidate with the lowest median
    (the fewest threads among those within ``tie`` of it, leaving cores to other work). After
    ``recheck`` steps the key is measured again; each time that confirms the choice the interval
    doubles (up to 8×), a changed choice resets it.
    """

    def __init__(self, owner: StepThreads, budget: int) -> None:
        self.owner, self.budget = owner, budget
        self.clock = owner.clock  # the timer of the steps
        self.candidates = candidate_threads(budget)
        self.medians: dict[int, float] = {}  # candidate → median step seconds, last measurement
        self.interval = owner.recheck  # steps until the next measurement
        self.chosen: int | None = None
        self._restart()

    def _restart(self) -> None:
        self.previous = self.chosen
        self.alive = list(self.candidates)  # still in the running, in this round's order
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.dropped: dict[int, float] = {}  # candidate → the one step that dropped it
        self.round, self.slot, self.step = 0, 0, 0  # round, candidate index in it, step in block
        self.since = 0  # steps run with ``chosen``
        self.chosen = None if len(self.alive) > 1 else self.alive[0]

    def threads(self) -> int:
        """The thread count the next step runs with."""
        return self.chosen if self.chosen is not None else self.alive[self.slot]

    def _best(self, besides: int | None = None) -> float | None:
        """The lowest median step time of the candidates in the running (but ``besides``)."""
        done = [statistics.median(self.times[c]) for c in self.alive
                if c != besides and self.times[c]]
        return min(done) if done else None

    def record(self, threads: int, seconds: float) -> None:
        """Report a step run with ``threads`` (the count ``threads()`` gave) that took
        ``seconds``."""
        o = self.owner
        if self.chosen is not None:
            self.since += 1
            if self.since >= self.interval and len(self.candidates) > 1:
                self._restart()
            return
        if threads != self.alive[self.slot]:
            raise ValueError(f"StepThreads: a step ran with {threads} threads, the schedule "
                             f"said {self.alive[self.slot]}")
        other = self._best(besides=threads)
        own = self.times[threads]
        if other is not None and seconds > o.abort * other and (
                not own or statistics.median(own) > other):
            self.alive.remove(threads)  # far slower than another count: no more steps on it
            self.dropped[threads] = seconds
            self._next_block(advance=False)
            return
        if self.step:  # the first step of a block is a warm-up
            self.times[threads].append(seconds)
        self.step += 1
        if self.step == o.block:
            self._next_block(advance=True)

    def _next_block(self, advance: bool) -> None:
        """Move to the next candidate's block (the current one was removed when not
        ``advance``); after the round's last block, drop the slow ones and start the next round
        or decide."""
        o = self.owner
        self.step = 0
        if advance:
            self.slot += 1
        if self.slot < len(self.alive):
            return
        self.round += 1
        best = self._best()
        if best is not None:
            self.alive = [c for c in self.alive if self.times[c]
                          and statistics.median(self.times[c]) <= (1 + o.drop) * best]
        self.alive.reverse()
        self.slot = 0
        if self.round < o.rounds and len(self.alive) > 1:
            return
        self.medians = {c: statistics.median(v) for c, v in self.times.items() if v}
        best = min(self.medians[c] for c in self.alive)
        self.chosen = min(c for c in self.alive if self.medians[c] <= best * (1 + o.tie))
        self.interval = (min(2 * self.interval, 8 * o.recheck) if self.chosen == self.previous
                         else o.recheck)

    def describe(self) -> str:
        """E.g. "2 of 2 threads (1 thread 14.1 ms, 2 threads 8.0 ms per step)"; "measuring …"
        before the choice."""
        if self.chosen is None:
            return f"measuring {', '.join(map(str, self.candidates))} threads"
        def name(c: int) -> str:
            return f"{c} thread{'s' if c > 1 else ''}"
        parts = []
        if self.medians:
            parts.append(", ".join(f"{name(c)} {1e3 * m:.1f} ms" for c, m in
                                   sorted(self.medians.items())) + " per step")
        parts += [f"{name(c)} dropped after one {1e3 * m:.0f} ms step"
                  for c, m in sorted(self.dropped.items())]
        return f"{self.chosen} of {self.budget} threads" + (f" ({'; '.join(parts)})"
                                                            if parts else "")


class StepThreads:
    """Chooses, per key, the intra-op thread count of timed repeated steps by measuring them.

    ``trial(key, budget)`` is the key's ``ThreadTrial``: its ``threads()`` says which count the
    next step runs with, and after the step the caller reports its duration with
    ``record(threads, seconds)``. The candidates are ``candidate_threads(budget)``; ``rounds``
    blocks of ``block`` steps at most per candidate, ``abort``, ``drop``, ``tie`` and ``recheck``
    as in ``ThreadTrial``. ``clock`` is the steps' timer (``time.perf_counter``; tests pass a
    fake one).
    """

    def __init__(self, rounds: int = 3, block: int = 4, recheck: int = 1024, tie: float = 0.03,
                 abort: float = 2.0, drop: float = 0.25,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if rounds < 1 or block < 2 or recheck < 1 or tie < 0 or abort <= 1 or drop < tie:
            raise ValueError(f"StepThreads: need rounds ≥ 1, block ≥ 2, recheck ≥ 1, tie ≥ 0, "
                             f"abort > 1, drop ≥ tie; got {rounds}, {block}, {recheck}, {tie}, "
                             f"{abort}, {drop}")
        self.rounds, self.block, self.recheck, self.tie = rounds, block, recheck, tie
        self.abort, self.drop = abort, drop
        self.clock = clock
        self._trials: dict[tuple[Hashable, int], ThreadTrial] = {}

    def trial(self, key: Hashable, budget: int | None = None) -> ThreadTrial:
        """The trial of ``key`` under ``budget`` threads (default torch's current count; a new
        budget is a new question), made on first use."""
        budget = torch.get_num_threads() if budget is None else budget
        if budget < 1:
            raise ValueError(f"StepThreads: budget must be ≥ 1, got {budget}")
        found = self._trials.get((key, budget))
        if found is None:
            found = self._trials[(key, budget)] = ThreadTrial(self, budget)
        return found

    def summary(self) -> list[str]:
        """One line per decided trial: the choice and the median step times it was made from."""
        return [t.describe() for t in self._trials.values() if t.chosen is not None]
