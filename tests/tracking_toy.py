"""Toy stages for the tracking tests: real ``stage_main`` entry points and a real ``fit``, tiny work.

``python tracking_toy.py <stage>`` in a DVC project whose dvc.yaml runs prepare → positions →
evaluate. Each stage reads the ``tracking`` section of params.yaml (a real section, so
``stage_main`` loads it strictly) and its knobs from the ``toy`` section (``toy.clips``,
``toy.steps``: DVC params of prepare and positions):

- ``prepare`` writes ``clips.txt`` and reports ``num_clips`` (a headline metric);
- ``positions`` trains a 2-weight linear model with ``pipeline.training.loop.fit`` (checkpoints in
  ``checkpoints/positions``, resume="auto"), writes ``models/position.pt`` and reports
  ``heldout_error_px_mean``; ``TOY_STEP_SLEEP`` seconds per step make it slow enough to kill;
- ``evaluate`` reports ``tasks/prediction/ssim``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.stage import stage_main  # noqa: E402
from pipeline.training.checkpoint import save_model  # noqa: E402
from pipeline.training.config import LoopConfig  # noqa: E402
from pipeline.training.loop import fit  # noqa: E402
from pipeline.training.task import TrainTask  # noqa: E402


def knobs() -> dict:
    return yaml.safe_load(Path("params.yaml").read_text())["toy"]


class LineTask(TrainTask):
    """y = 2x + 1 by SGD; a step sleeps ``sleep`` seconds."""

    def __init__(self, sleep: float) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.sleep = sleep

    def modules(self):
        return {"line": self.model}

    def optimizers(self):
        return {"sgd": self.opt}

    def config(self):
        return {"toy": "line"}

    def train_step(self, batch, step, ctx):
        x = batch
        loss = ((ctx.modules["line"](x) - (2 * x + 1)) ** 2).mean()
        ctx.optimize(loss, "sgd")
        time.sleep(self.sleep)
        return {"loss": float(loss)}


def batches(start: int):
    step = start
    while True:
        yield torch.linspace(-1, 1, 8).view(-1, 1) + 0.01 * step
        step += 1


def prepare(params, args, logger):
    n = int(knobs()["clips"])
    Path("clips.txt").write_text("\n".join(f"clip{i}" for i in range(n)) + "\n")
    logger.log_metric("num_clips", n)
    return {"num_clips": float(n), "num_rejected": 0.0, "seconds": 0.01}


def positions(params, args, logger):
    k = knobs()
    loop = LoopConfig(steps=int(k["steps"]), log_every=1, eval_every=0, ckpt_every=2)
    import os

    result = fit(LineTask(float(os.environ.get("TOY_STEP_SLEEP", "0"))), batches, loop,
                 Path("checkpoints/positions"), logger, resume="auto")
    save_model(args.model, {"in_features": 1}, result.state["line"], step=result.step)
    w = result.state["line"]["weight"].item()
    return {"heldout_error_px_mean": abs(w - 2.0), "steps": float(result.step)}


def evaluate(params, args, logger):
    ssim = 0.5 + 0.01 * len(Path("clips.txt").read_text().split())
    Path("evaluate.txt").write_text(f"{ssim}\n")
    return {"tasks": {"prediction": {"ssim": ssim, "psnr": 20.0}}, "seconds": 1.0}


STAGES = {"prepare": prepare, "positions": positions, "evaluate": evaluate}

if __name__ == "__main__":
    name = sys.argv[1]
    paths = {"model": "models/position.pt"} if name == "positions" else {}
    stage_main(name, __doc__, paths, STAGES[name], sections=("tracking",), argv=sys.argv[2:])
