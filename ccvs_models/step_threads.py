"""How many CPU threads the KV-cache sampler's one-token steps use (not in the paper; a speed
choice of ``ccvs_models.sampler``, ``SamplerConfig(step_threads="auto")``).

A cached token step of T is a chain of tiny ops (one row through every Linear, LayerNorm and the
attention over the cache). Whether several intra-op threads help depends on the model and on the
machine's load, not on a rule one can write down once: on an idle 2-core CPU, 2 threads ran the
8-layer × 512 T's steps 1.8× faster than 1 thread (124 vs 69 tokens/s), while on a CPU busy with
other jobs one step of the demo T took 70 ms on 2 threads instead of 3 ms on 1 (each op waits at
a barrier for a thread the OS has descheduled). So ``StepThreads`` measures: the first steps of a
sampling run are spread over the candidate thread counts in interleaved blocks, each step timed,
and the count with the lowest median step time is used from then on. The measured steps are real
steps (their tokens are the sample's), and the thread count does not change what a step computes
(tests/test_sampler.py checks that the tokens equal those of a fixed setting), so the measurement
costs only the difference between the candidates over a few steps. The choice is kept per
(model shape, weights precision, batch, thread budget) key in the ``StepThreads`` object — one per
sampling call by default, or one the caller keeps across calls — and measured again every
``recheck`` steps, because a shared machine's load moves.
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
    """The measured choice of one key under one thread budget (``StepThreads.trial``): measuring
    (``chosen`` None) until every scheduled step is recorded, then decided until ``recheck``
    more steps are recorded, then measuring again."""

    def __init__(self, owner: StepThreads, budget: int) -> None:
        self.owner, self.budget = owner, budget
        self.clock = owner.clock  # the timer of the steps
        self.candidates = candidate_threads(budget)
        self.medians: dict[int, float] = {}  # candidate → median step seconds, last measurement
        self._restart()

    def _restart(self) -> None:
        o = self.owner
        self.schedule: list[int] = []  # the thread count of each measured step, in order
        for r in range(o.rounds if len(self.candidates) > 1 else 0):
            for c in (self.candidates if r % 2 == 0 else self.candidates[::-1]):
                self.schedule += [c] * o.block
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.position = 0  # steps of ``schedule`` done
        self.since = 0  # steps run with ``chosen``
        self.chosen: int | None = None if self.schedule else self.candidates[0]

    def threads(self) -> int:
        """The thread count the next step runs with."""
        return self.chosen if self.chosen is not None else self.schedule[self.position]

    def record(self, threads: int, seconds: float) -> None:
        """Report a step run with ``threads`` (the count ``threads()`` gave) that took
        ``seconds``."""
        o = self.owner
        if self.chosen is not None:
            self.since += 1
            if self.since >= o.recheck and len(self.candidates) > 1:
                self._restart()
            return
        if threads != self.schedule[self.position]:
            raise ValueError(f"StepThreads: a step ran with {threads} threads, the schedule "
                             f"said {self.schedule[self.position]}")
        if self.position % o.block:  # the first step of a block, just after the switch: warm-up
            self.times[threads].append(seconds)
        self.position += 1
        if self.position == len(self.schedule):
            self.medians = {c: statistics.median(v) for c, v in self.times.items()}
            best = min(self.medians.values())
            self.chosen = min(c for c, m in self.medians.items() if m <= best * (1 + o.tie))

    def describe(self) -> str:
        """"2 of 2 threads (1 thread 14.1 ms, 2 threads 8.0 ms per step)"; "measuring" before."""
        if self.chosen is None:
            return f"measuring {', '.join(map(str, self.candidates))} threads"
        times = ", ".join(f"{c} thread{'s' if c > 1 else ''} {1e3 * m:.1f} ms"
                          for c, m in sorted(self.medians.items()))
        return f"{self.chosen} of {self.budget} threads" + (f" ({times} per step)" if times else "")


class StepThreads:
    """Chooses, per key, the intra-op thread count of timed repeated steps by measuring them.

    ``trial(key, budget)`` is the key's ``ThreadTrial``: its ``threads()`` says which count the
    next step runs with, and after the step the caller reports its duration with
    ``record(threads, seconds)``. While measuring, the steps cycle through
    ``candidate_threads(budget)`` in blocks of ``block`` steps (the first step of a block, just
    after the switch, is not counted), ``rounds`` blocks per candidate, the candidates' order
    reversed every round so a drift in step cost (a growing KV cache) favours none; then the
    candidate with the lowest median step time is chosen — the fewest threads among those within
    ``tie`` of it, since fewer threads leave cores to other work. After ``recheck`` steps with the
    choice the key is measured again. ``clock`` is the timer (``time.perf_counter``; tests pass a
    fake one).
    """

    def __init__(self, rounds: int = 3, block: int = 4, recheck: int = 1024, tie: float = 0.03,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if rounds < 1 or block < 2 or recheck < 1 or tie < 0:
            raise ValueError(f"StepThreads: need rounds ≥ 1, block ≥ 2, recheck ≥ 1, tie ≥ 0; got "
                             f"{rounds}, {block}, {recheck}, {tie}")
        self.rounds, self.block, self.recheck, self.tie = rounds, block, recheck, tie
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
