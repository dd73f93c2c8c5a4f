"""A temporary copy of the project that DVC runs for real (the slow end-to-end tests).

``copy_project(dest)`` copies the files git knows (tracked and untracked, not ignored) and makes
the copy its own git repository; ``dvc(proj, ...)`` runs the venv's ``dvc`` there without
tracking and without this checkout on ``PYTHONPATH`` (the copy runs its own files);
``set_params(proj, {section: {key: value}})`` edits its params.yaml (nested dicts update);
``TINY`` holds the tiny sizes and steps both DAG tests run at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

_LOOP = {"steps": 4, "log_every": 2, "eval_every": 4, "ckpt_every": 4}
TINY = {  # every stage at tiny sizes and steps: the DAG in minutes, for its plumbing only
    "prepare": {"clip_length": 8, "clip_stride": 4, "workers": 1},
    "positions": {"loop": _LOOP},
    "sound_vq": {"loop": _LOOP, "griffin_lim_iters": 2},
    "layout_vq": {"loop": _LOOP},
    "autoencoder": {"loop": _LOOP, "val_clips": 2, "gif_clips": 1},
    "transformer": {"loop": _LOOP, "val_clips": 2},
    "evaluate": {"samples": 2, "timesteps": [4, 7], "num_frames": 0, "batch_size": 2,
                 "gif_videos": 1, "fvd": {"frames": 8, "videos": 0, "batch_size": 4}},
}


def env() -> dict:
    out = dict(os.environ)
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    out["CCVS_TRACKING"] = "off"
    out["PYTHONPATH"] = ""  # the copy must run from its own files
    return out


def dvc(proj: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    proc = subprocess.run([str(exe), *args], cwd=proj, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def stale(proj: Path) -> set[str]:
    """The stages ``dvc status`` reports (the always-changed listing stage included)."""
    return set(json.loads(dvc(proj, "status", "--json").stdout or "{}"))


def ran(output: str) -> list[str]:
    """The stages a ``dvc repro`` output says it ran, sorted."""
    return sorted(line.split("'")[1] for line in output.splitlines()
                  if line.startswith("Running stage"))


def set_params(proj: Path, changes: dict) -> None:
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        if section not in params:  # a stage this checkout does not have yet
            continue
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key].update(value)
            else:
                params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest
