"""The `ccvs` command."""

from pathlib import Path

import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_check_accepts_the_shipped_params(capsys):
    assert main(["check", "--params", str(ROOT / "params.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_names_a_typo(tmp_path, capsys):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["demo"]["num_vidoes"] = raw["demo"].pop("num_videos")
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["check", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "demo.num_vidoes: unknown key (did you mean 'num_videos'?)" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
