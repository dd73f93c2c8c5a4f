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


def test_near_ties_are_measured_in_interleaved_blocks_and_go_to_fewer_threads():
    tuner = StepThreads(rounds=3, block=4, recheck=10_000)
    used = run(tuner, "k", {1: 1.0, 2: 0.99}, 3 * 2 * 4 + 20)
    assert used[:24] == [1] * 4 + [2] * 4 + [2] * 4 + [1] * 4 + [1] * 4 + [2] * 4  # order flips
    assert tuner.trial("k", 2).chosen == 1 and set(used[24:]) == {1}


def test_a_clearly_faster_count_wins_after_one_round():
    tuner = StepThreads(rounds=3, block=4)
    used = run(tuner, "k", {1: 3.0, 2: 1.0}, 20)
    assert used == [1] * 4 + [2] * 16  # 1 thread's median > 1.25 × the best: out after round 1
    assert tuner.trial("k", 2).medians == {1: 3.0, 2: 1.0}


def test_a_far_slower_count_costs_one_step():
    """A busy CPU: one step on 2 threads takes 16× a 1-thread step; measuring stops there."""
    tuner = StepThreads(rounds=3, block=4)
    used = run(tuner, "k", {1: 1.0, 2: 16.0}, 20)
    assert used == [1] * 4 + [2] + [1] * 15
    assert tuner.trial("k", 2).chosen == 1
    assert tuner.summary() == ["1 of 2 threads (1 thread 1000.0 ms per step; 2 threads dropped "
                               "after one 16000 ms step)"]


def test_the_first_step_of_a_block_is_not_counted():
    trial = StepThreads(rounds=1, block=2).trial("k", 2)
    for seconds in (5.0, 5.0, 9.0, 4.0):  # 2 threads: a slow first step (not > 2 × 5), then 4
        trial.record(trial.threads(), seconds)
    assert trial.chosen == 2 and trial.medians == {1: 5.0, 2: 4.0}


def test_keys_and_budgets_are_measured_separately_and_remeasured_as_load_moves(budget):
    tuner = StepThreads(rounds=1, block=2, recheck=5)
    assert run(tuner, "a", {1: 1.0, 2: 2.0}, 4) == [1, 1, 2, 2]
    assert tuner.trial("a", 2).chosen == 1 and tuner.trial("b", 2).chosen is None
    run(tuner, "b", {1: 2.0, 2: 1.0}, 4)
    assert tuner.trial("b", 2).chosen == 2 and tuner.trial("a", 2).chosen == 1
    assert tuner.trial("a", 1).threads() == 1  # one thread allowed: nothing to measure
    assert tuner.trial("a", 1).chosen == 1 and tuner.trial("a", 2).chosen == 1
    budget(4)
    assert tuner.trial("a").candidates == (1, 2, 4)  # the default budget: torch's thread count
    # after 5 steps "a" is measured again; the same choice doubles the interval to 10 steps
    used = run(tuner, "a", {1: 1.0, 2: 2.0}, 5 + 4 + 10)
    assert used == [1] * 5 + [1, 1, 2, 2] + [1] * 10
    # the load changes: measured after those 10 steps, the choice follows (interval back to 5)
    used = run(tuner, "a", {1: 3.0, 2: 1.0}, 4 + 5 + 4)
    assert used == [1, 1, 2, 2] + [2] * 5 + [1, 1, 2, 2]  # each measurement starts on 1 thread
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
