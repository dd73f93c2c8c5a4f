"""The real training stages under ``torchrun --nproc_per_node 2`` (gloo, CPU), at tiny size: they
train with the shards split over the ranks, only rank 0 writes checkpoints, metrics and an MLflow
run, a run killed mid-way resumes to the very weights of an uninterrupted one, and the loss curve
follows one process with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from pipeline.training.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def _env(tracking: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
        env.pop("CCVS_TRACKING", None)
    else:
        env["CCVS_TRACKING"] = "off"
    return env


def _command(stage: str, ranks: int, args: list[str]) -> list[str]:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable])
    return [*launch, "-m", f"stages.{stage}", *args]


def _run(stage: str, ranks: int, args: list[str], tracking: str | None = None) -> str:
    proc = subprocess.run(_command(stage, ranks, args), env=_env(tracking), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _killed_after_checkpoint(stage: str, ranks: int, args: list[str], ckpt: Path) -> int:
    """Start the run, SIGKILL every process of it once the first checkpoint exists; its step."""
    proc = subprocess.Popen(_command(stage, ranks, args), env=_env(None), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not list_checkpoints(ckpt):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return list_checkpoints(ckpt)[-1][0]


def _curve(plots: Path) -> dict[int, float]:
    rows = list(csv.DictReader(open(plots / "train.csv")))
    return {int(r["step"]): float(r["loss"]) for r in rows}


# --------------------------------------------------------------------------- transformer

STEPS = 60


def _transformer_params(path: Path, batch_size: int) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["training"].update(device="cpu", shuffle_block=4, data_workers=0, seed=0)
    t = raw["transformer"]
    t["model"].update(num_frames=4, n_layer=2, n_head=2, n_embd=48)
    t.update(batch_size=batch_size, lr=0.003, warmup_steps=5, val_clips=0)
    t["loop"].update(steps=STEPS, log_every=5, eval_every=30, ckpt_every=4)
    path.write_text(yaml.safe_dump(raw))
    return path


def _transformer_args(params: Path, tokens: Path, out: Path) -> list[str]:
    return ["--params", str(params), "--tokens", str(tokens), "--model", str(out / "model.pt"),
            "--metrics", str(out / "metrics.json"), "--plots", str(out / "plots"),
            "--ckpt", str(out / "ckpt")]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    from test_transformer_stage import make_tokens

    root = make_tokens(tmp_path_factory.mktemp("ddp-tokens"), max_bytes=1800)
    assert len(list((root / "train").glob("*.tar"))) >= 4  # each rank streams its own shards
    return root


@pytest.mark.timeout(900)
def test_transformer_stage_under_torchrun(tokens, tmp_path):
    one = tmp_path / "one"
    _run("transformer", 1, _transformer_args(_transformer_params(tmp_path / "p4.yaml", 4), tokens, one))
    p2 = _transformer_params(tmp_path / "p2.yaml", 2)  # 2 ranks × 2 = the same global batch
    ddp, uri = tmp_path / "ddp", f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _run("transformer", 2, _transformer_args(p2, tokens, ddp), tracking=uri)
    assert out.count("transformer: val perplexity") == 1  # one summary: rank 0's

    # only rank 0 wrote: one MLflow run; checkpoints once, carrying both ranks' stream positions
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ccvs"], output_format="list")
    assert [r.data.tags["stage"] for r in runs] == ["transformer"]
    assert runs[0].data.metrics["steps"] == STEPS
    ckpt = load_checkpoint(list_checkpoints(ddp / "ckpt")[-1][1])
    streams = ckpt["extra"]["stream"]["per_rank"]
    assert len(streams) == 2 and all(s["positions"][0]["epoch"] > 0 for s in streams)
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["train_clips"] == 10

    # the loss curve follows one process with the same global batch (other windows, same law)
    a, b = _curve(one / "plots"), _curve(ddp / "plots")
    assert sorted(a) == sorted(b) == list(range(5, STEPS + 1, 5))
    assert b[STEPS] < 0.6 * b[5] and a[STEPS] < 0.6 * a[5]  # both learn
    for step in a:
        assert abs(a[step] - b[step]) <= 0.2 * a[step] + 0.05, (step, a[step], b[step])

    # killed (SIGKILL, every process) after its first checkpoint, then restarted: it resumes and
    # ends on the weights of the uninterrupted 2-rank run, bit for bit
    cut = tmp_path / "cut"
    step = _killed_after_checkpoint("transformer", 2, _transformer_args(p2, tokens, cut),
                                    cut / "ckpt")
    assert 4 <= step < STEPS and not (cut / "model.pt").exists()
    _run("transformer", 2, _transformer_args(p2, tokens, cut))
    resumed = json.loads((cut / "metrics.json").read_text())
    assert 4 <= resumed["resumed_from"] < STEPS and resumed["steps"] == STEPS
    wa = torch.load(ddp / "model.pt", weights_only=True)["state"]
    wb = torch.load(cut / "model.pt", weights_only=True)["state"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
