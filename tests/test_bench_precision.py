"""bench/precision.py: variants take turns in blocks with their own RNG, and the bench runs end to
end on a tiny demo world (2 steps per variant)."""

import json
import threading

import torch

from bench.precision import Turnstile, main


def test_turnstile_alternates_blocks_and_keeps_each_variant_rng():
    names, block, steps = ["a", "b", "c"], 2, 5
    gate = Turnstile(names, block)
    order: list[str] = []
    draws: dict[str, list[float]] = {n: [] for n in names}

    def work(name: str, seed: int) -> None:
        gate.enter(name)
        try:
            torch.manual_seed(seed)
            for _ in range(steps):
                gate.step(name)
                order.append(name)
                draws[name].append(torch.rand(()).item())
        finally:
            gate.leave(name)

    threads = [threading.Thread(target=work, args=(n, i)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # blocks of 2 in round robin; a finished variant is skipped
    assert order == list("aabbccaabbccabc")
    for seed, name in enumerate(names):  # as if each had run alone
        torch.manual_seed(seed)
        assert draws[name] == [torch.rand(()).item() for _ in range(steps)]


def test_bench_runs_end_to_end_on_a_tiny_world(tmp_path):
    rows = main(["--out", str(tmp_path), "--videos", "8", "--frames", "16", "--block", "1",
                 "--stages", "positions", "layout_vq", "--steps", "positions=2", "layout_vq=2"])
    saved = json.loads((tmp_path / "precision.json").read_text())["stages"]
    assert set(rows) == set(saved) == {"positions", "layout_vq"}
    for stage, row in rows.items():
        assert row["steps"] == 2
        for name in ("fp32", "bf16", "fp32s1"):
            assert row[name]["step_s"] > 0
            assert row[name]["metric"] == row[name]["metric"]  # the stage's JSON had it (not NaN)
        assert (tmp_path / stage / "bf16" / "metrics.json").is_file()
    # each variant trained as it says: bf16 rounds differently, seed + 1 starts elsewhere
    pos = rows["positions"]
    assert pos["fp32"]["metric"] != pos["bf16"]["metric"]
    assert pos["fp32"]["metric"] != pos["fp32s1"]["metric"]
