"""params.yaml ↔ dataclasses ↔ dvc.yaml."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.params import (
    DemoParams,
    ParamsError,
    build,
    flatten,
    load_all,
    load_section,
    section_types,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_section_parses():
    sections = load_all(ROOT / "params.yaml")
    assert set(sections) == set(section_types())
    for value in sections.values():
        assert dataclasses.is_dataclass(value)


def test_sections_are_frozen():
    demo = load_section("demo", ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.seed = 3  # type: ignore[misc]


def test_every_dvc_params_key_exists():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else None
            assert keys is not None, f"{name}: params entries are plain keys"
            node = params
            for part in keys.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: {keys} not in params.yaml"
                node = node[part]


def test_every_stage_section_is_tracked_by_dvc():
    """A section a stage reads but dvc.yaml does not list would not trigger reruns."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    listed = {p.split(".")[0] for s in dvc["stages"].values() for p in s.get("params", [])}
    for name in section_types():
        if name == "tracking":  # where runs are logged does not change outputs
            continue
        assert name in listed, f"params section {name} is read by no stage in dvc.yaml"


def _write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_named(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["prepare"]["clip_lenght"] = raw["prepare"].pop("clip_length")
    p = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"prepare\.clip_lenght: unknown key \(did you mean 'clip_length'\?\)"):
        load_section("prepare", p)
    with pytest.raises(ParamsError, match=r"prepare\.clip_lenght"):
        load_all(p)


def test_missing_key_is_named(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["demo"]["fps"]
    p = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"demo\.fps: missing key"):
        load_section("demo", p)


def test_unknown_section_is_named(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["prepar"] = {}
    p = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"prepar: unknown section \(did you mean 'prepare'\?\)"):
        load_all(p)


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("fps", "ten", r"demo\.fps: expected an integer"),
        ("fps", True, r"demo\.fps: expected an integer"),
        ("test_fraction", "x", r"demo\.test_fraction: expected a number"),
    ],
)
def test_wrong_types_are_named(key, value, pattern):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["demo"]
    raw[key] = value
    with pytest.raises(ParamsError, match=pattern):
        build(DemoParams, raw, "demo")


def test_literal_choices_are_checked(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["source"] = "youtube"
    p = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"data\.source: 'youtube' is not one of"):
        load_section("data", p)


def test_int_is_accepted_for_float():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["demo"]
    raw["test_fraction"] = 0
    assert build(DemoParams, raw, "demo").test_fraction == 0.0


def test_flatten_names_dotted_keys():
    demo = load_section("demo", ROOT / "params.yaml")
    flat = flatten({"demo": demo})
    assert flat["demo.fps"] == demo.fps
    assert all("." in k for k in flat)


def test_bad_yaml_names_the_file(tmp_path):
    p = _write(tmp_path, "demo: [unclosed\n")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load_all(p)


# --------------------------------------------------------------------------- written once


def test_training_defaults_fill_every_loop_and_a_stage_can_override(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["training"]["seed"] = 7
    raw["positions"]["loop"]["seed"] = 3  # a stage's own value wins
    p = _write(tmp_path, yaml.safe_dump(raw))
    assert load_section("autoencoder", p).loop.seed == 7
    assert load_section("transformer", p).loop.seed == 7
    assert load_section("positions", p).loop.seed == 3
    assert load_all(p)["sound_vq"].loop.seed == 7
    del raw["training"]
    with pytest.raises(ParamsError, match="training: missing section"):
        load_section("autoencoder", _write(tmp_path, yaml.safe_dump(raw)))


def test_a_value_set_from_the_data_is_not_a_param(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "resolution" not in raw["autoencoder"]["image_disc"]  # the frames' size, by the stage
    raw["autoencoder"]["image_disc"]["resolution"] = 64
    p = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"autoencoder\.image_disc\.resolution: not a param, set "
                                          r"from the data"):
        load_section("autoencoder", p)


def test_every_knob_says_where_its_value_comes_from():
    """Each `key: value` line of params.yaml is marked [paper], [demo] or [ours]."""
    untagged = [f"line {i}: {line.strip()}"
                for i, line in enumerate((ROOT / "params.yaml").read_text().splitlines(), 1)
                if line.startswith("  ") and ": " in line.split("#")[0]
                and line.split("#")[0].split(": ", 1)[1].strip()
                and not any(t in line for t in ("[paper]", "[demo]", "[ours]"))]
    assert not untagged, "\n".join(untagged)
