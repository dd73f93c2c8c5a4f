"""StepThreads (ccvs_models/step_threads.py): the measured choice of the sampler's step threads —
candidates, the interleaved schedule, the argmin of medians with ties to fewer threads, the warm-up
step of a block left out, one choice per key and budget, re-measuring after ``recheck`` steps, and
torch's thread count restored on every exit path."""

from __future__ import annotations

import pytest
import torch

from ccvs_models.step_threads import StepThreads, candidate_threads, restored_threads


@pytest.fixture
def budget():
    """torch's thread budget for the test, restored after."""
    before = torch.get_num_threads()

    def set_to(n: int) -> int:
        torch.set_num_threads(n)
        return n

    yield set_to
    torch.set_num_threads(before)


def run(tuner: StepThreads, key, cost: dict[int, float], steps: int, budget: int = 2) -> list[int]:
    """``steps`` steps of ``key`` whose duration on c threads is cost[c]; the counts used."""
    trial = tuner.trial(key, budget)
    used = []
    for _ in range(steps):
        c = trial.threads()
        used.append(c)
        trial.record(c, cost[c])
    return used


def test_candidates_are_powers_of_two_and_the_budget():
    assert candidate_threads(1) == (1,)
    assert candidate_threads(2) == (1, 2)
    assert candidate_threads(8) == (1, 2, 4, 8)
    assert candidate_threads(12) == (1, 2, 4, 8, 12)


@pytest.mark.parametrize("cost, expected", [({1: 3.0, 2: 1.0}, 2), ({1: 1.0, 2: 3.0}, 1),
                                            ({1: 1.0, 2: 0.99}, 1)])  # a near tie → fewer threads
def test_measures_every_candidate_in_interleaved_blocks_then_keeps_the_fastest(cost, expected):
    tuner = StepThreads(rounds=3, block=4, recheck=10_000)
    used = run(tuner, "k", cost, 3 * 2 * 4 + 50)
    schedule = used[:24]
    assert schedule == [1] * 4 + [2] * 4 + [2] * 4 + [1] * 4 + [1] * 4 + [2] * 4  # order flips
    assert tuner.trial("k", 2).chosen == expected
    assert set(used[24:]) == {expected}


def test_the_first_step_of_a_block_is_not_counted():
    trial = StepThreads(rounds=1, block=3).trial("k", 2)
    # 2 threads' first step (just after the switch) is slow; its counted steps are fast
    for i, seconds in enumerate([5.0, 5.0, 5.0, 100.0, 1.0, 1.0]):
        trial.record(trial.threads(), seconds)
        assert (trial.chosen is None) == (i < 5)
    assert trial.chosen == 2 and trial.medians == {1: 5.0, 2: 1.0}


def test_keys_and_budgets_are_measured_separately_and_remeasured_after_recheck(budget):
    tuner = StepThreads(rounds=1, block=2, recheck=5)
    run(tuner, "a", {1: 1.0, 2: 2.0}, 4)
    assert tuner.trial("a", 2).chosen == 1 and tuner.trial("b", 2).chosen is None
    run(tuner, "b", {1: 2.0, 2: 1.0}, 4)
    assert tuner.trial("b", 2).chosen == 2 and tuner.trial("a", 2).chosen == 1
    assert tuner.trial("a", 1).threads() == 1  # one thread allowed: nothing to measure
    assert tuner.trial("a", 1).chosen == 1 and tuner.trial("a", 2).chosen == 1
    budget(4)
    assert tuner.trial("a").candidates == (1, 2, 4)  # the default budget: torch's thread count
    # the load changes: after 5 more steps "a" is measured again and the choice follows
    used = run(tuner, "a", {1: 3.0, 2: 1.0}, 5 + 4 + 3)
    assert used[:5] == [1] * 5 and used[5:9] == [1, 1, 2, 2] and used[9:] == [2, 2, 2]
    assert tuner.trial("a", 2).chosen == 2
    assert "2 of 2 threads (1 thread 3000.0 ms, 2 threads 1000.0 ms per step)" in tuner.summary()


def test_bad_use_is_an_error():
    trial = StepThreads().trial("k", 2)
    with pytest.raises(ValueError, match="schedule said 1"):
        trial.record(2, 1.0)
    with pytest.raises(ValueError, match="block"):
        StepThreads(block=1)
    with pytest.raises(ValueError, match="budget"):
        StepThreads().trial("k", 0)


def test_restored_threads_undoes_a_change_even_on_error(budget):
    budget(2)
    with pytest.raises(RuntimeError):
        with restored_threads():
            torch.set_num_threads(1)
            raise RuntimeError
    assert torch.get_num_threads() == 2
