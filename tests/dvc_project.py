"""A temporary copy of the project under real DVC with tiny params (the end-to-end tests' world).

``copy_project(dest)`` copies the files Git knows (tracked and untracked, not ignored), runs
``git init`` and applies ``TINY``; ``dvc(proj, *args)`` runs the venv's DVC there with tracking
off and the copy's own files first on the path.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

_LOOP = {"steps": 4, "log_every": 2, "eval_every": 4, "ckpt_every": 4}
TINY = {
    "demo": {"num_videos": 6, "num_frames": 12, "annotated_frames": 20, "test_fraction": 0.2,
             "val_fraction": 0.2},
    "prepare": {"clip_length": 8, "clip_stride": 4, "workers": 1},
    "positions": {"loop": _LOOP},
    "sound_vq": {"loop": _LOOP, "griffin_lim_iters": 2},
    "layout_vq": {"loop": _LOOP},
    "autoencoder": {"loop": _LOOP, "val_clips": 2, "gif_clips": 1},
    "transformer": {"loop": _LOOP, "val_clips": 2},
    "evaluate": {"samples": 2, "timesteps": [4, 7], "num_frames": 0, "batch_size": 2,
                 "gif_videos": 1, "tasks": ["reconstruction", "prediction", "point_to_point",
                                            "unconditional"],
                 "fvd": {"frames": 8, "videos": 0, "batch_size": 4}},
}


def env() -> dict:
    out = dict(os.environ)
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    out["CCVS_TRACKING"] = "off"
    out["PYTHONPATH"] = ""  # the copy must run from its own files
    return out


def dvc(proj: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    proc = subprocess.run([str(exe), *args], cwd=proj, env=env(), capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


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


def copy_project(proj: Path) -> Path:
    """The project's files in ``proj``, a fresh Git repository, ``TINY`` params."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            dst = proj / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    set_params(proj, TINY)
    return proj
