"""Params presets (params/*.yaml): each applies to params.yaml, passes the strict loader, sets the
paper's sizes, and leaves every line it does not set byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as ccvs
from pipeline.params import ParamsError, load_all
from pipeline.presets import PRESET_DIR, apply_preset, merge

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
SOURCES = {"bair64": "bair", "kinetics64": "kinetics600", "ucf101_128": "ucf101",
           "audioset_drums64": "audioset_drums", "cityscapes256": "cityscapes",
           "weizmann128": "weizmann"}
RESOLUTION = {"bair64": 64, "kinetics64": 64, "ucf101_128": 128, "audioset_drums64": 64,
              "cityscapes256": 256, "weizmann128": 128}  # Tables 3, 4, D1, 6, D2; Fig. D5


def test_one_preset_per_dataset():
    assert PRESETS == sorted(SOURCES)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_applies_and_holds_the_papers_sizes(name, tmp_path):
    params = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = Path(params).read_text().splitlines()
    changes = apply_preset(name, params)
    assert changes and apply_preset(name, params) == []  # a second time changes nothing
    sections = load_all(params)  # strict: every key known, every value valid
    data, prep, ae, t = (sections[k] for k in ("data", "prepare", "autoencoder", "transformer"))
    assert data.source == SOURCES[name]
    assert prep.resolution == RESOLUTION[name]  # the paper's (Cityscapes: 256 of its 256×512)
    assert prep.resolution // 2 ** ae.model.num_levels == 8  # 64 tokens per frame (§4.1, Fig. 3)
    assert (t.model.n_layer, t.model.n_head, t.model.num_frames) == (24, 16, 16)  # Table 2, §3.3
    assert not t.model.prev_frame_input and t.lr == 1e-5  # the paper's T, §4 "Training details"

    after = Path(params).read_text().splitlines()
    changed = {c.split(":")[0] for c in changes}
    assert len(after) <= len(before)
    for line in after:  # every knob still says where its value comes from
        if line.startswith("  ") and ": " in line.split("#")[0] and line.split("#")[0].split(": ", 1)[1].strip():
            assert any(t in line for t in ("[paper]", "[demo]", "[ours]")), line
    untouched = [line for line in before if line in after]
    assert len(untouched) >= len(before) - 2 * len(changed) - 12  # only the set keys' lines moved


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_line_is_tagged(name):
    for i, line in enumerate((PRESET_DIR / f"{name}.yaml").read_text().splitlines(), 1):
        value = line.split("#")[0]
        if ": " in value and value.split(": ", 1)[1].strip():
            assert any(t in line for t in ("[paper]", "[demo]", "[ours]")), f"{name}:{i}: {line}"


def test_merge_keeps_comments_and_replaces_multiline_values():
    base = ("a:\n  x: 1            # [demo] one\n                  # and its second comment line\n"
            "  tasks: [p, q,    # [paper]\n          r]\n  y: \"\"           # [ours] kept\n# end\n")
    text, changes = merge(base, "a:\n  x: 2  # [paper] two\n  tasks: [p]  # [paper] only p\n  y: ''\n")
    assert text == ("a:\n  x: 2            # [paper] two\n  tasks: [p]       # [paper] only p\n"
                    "  y: \"\"           # [ours] kept\n# end\n")  # comments stay in their column
    assert changes == ["a.tasks: [p, q, r] → [p]", "a.x: 1 → 2"]
    assert yaml.safe_load(text) == {"a": {"x": 2, "tasks": ["p"], "y": ""}}


def test_unknown_or_invalid_preset_keys_are_named(tmp_path):
    params = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  clip_lenght: 16  # [paper]\n")
    with pytest.raises(ParamsError, match=r"prepare\.clip_lenght: unknown key"):
        apply_preset(str(bad), params)
    bad.write_text("transformer:\n  lr: 0.1  # [ours] above min_lr? no: min_lr is 1e-4\n  min_lr: 0.5  # [ours]\n")
    with pytest.raises(ParamsError, match="min_lr"):
        apply_preset(str(bad), params)
    assert Path(params).read_text() == (ROOT / "params.yaml").read_text()  # nothing written
    with pytest.raises(ParamsError, match="no such preset"):
        apply_preset("bair65", params)


def test_ccvs_preset_command(tmp_path, capsys):
    params = shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert ccvs(["preset", "bair64", "--params", str(params), "--data-path", "/data/bair",
                 "--dry-run"]) == 0
    assert Path(params).read_text() == (ROOT / "params.yaml").read_text()
    assert ccvs(["preset", "bair64", "--params", str(params), "--data-path", "/data/bair"]) == 0
    out = capsys.readouterr().out
    assert "data.source: demo → bair" in out and "data.path: data/raw/demo → /data/bair" in out
    assert load_all(params)["data"].path == "/data/bair"
    assert ccvs(["check", "--params", str(params)]) == 0
    assert ccvs(["preset", "nope", "--params", str(params)]) == 2
    assert ccvs(["preset"]) == 0 and "bair64" in capsys.readouterr().out
