"""A folder of ordinary videos through the whole DAG under real DVC (issue #19, "done when").

The videos (tests/own_videos.py: 25 / 29.97 / 30 fps and a variable rate, landscape, portrait and
odd sizes, grayscale, mono / 5.1 / stereo / no audio, unicode and spaces, no annotations, no
layouts, a truncated and a too-short file) sit outside a temporary copy of the project, whose
params point ``data.source: folder`` at them (tiny sizes and steps). ``dvc repro`` must render no
demo world, reject the two bad files with their reasons, skip what the data cannot support
(positions, layout tokens, the state task) saying why, and evaluate. Adding a non-video leaves
``prepare`` cached; adding a video makes it, and everything after it, out of date — never
``demo_data``.
"""

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import dvc_project
from dvc_project import copy_project, dvc, ran, set_params, stale
from own_videos import write_folder

pytestmark = pytest.mark.slow

TINY = {
    **dvc_project.TINY,
    "evaluate": {**dvc_project.TINY["evaluate"],
                 "tasks": ["reconstruction", "prediction", "state", "sound", "class",
                           "unconditional"]},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    videos = tmp_path_factory.mktemp("phone") / "my videos"
    expected = write_folder(videos, seconds=2.0)
    proj = copy_project(tmp_path_factory.mktemp("ownproj") / "ccvs")
    set_params(proj, {**TINY, "data": {"source": "folder", "path": str(videos)}})
    out = dvc(proj, "repro").stdout
    return proj, videos, expected, out


def test_repro_runs_every_stage_on_the_folder_and_evaluates(project):
    proj, videos, expected, out = project
    assert ran(out) == sorted(["demo_data", "listing", "prepare", "positions", "sound_vq",
                               "layout_vq", "autoencoder", "tokenize", "transformer", "evaluate"])
    assert [p.name for p in (proj / "data/raw/demo").iterdir()] == ["README.txt"]  # no demo world
    listing = json.loads((proj / "data/listing.json").read_text())
    assert len(listing["videos"]) == len(expected)  # the text file is not listed
    with open(proj / "data/clips/rejected.csv", newline="", encoding="utf-8") as handle:
        rejected = {Path(r["source"]).relative_to(videos).as_posix(): r["reason"]
                    for r in csv.DictReader(handle)}
    assert set(rejected) == {k for k, v in expected.items() if v}
    assert all(expected[k] in reason for k, reason in rejected.items())
    positions = json.loads((proj / "metrics/positions.json").read_text())
    assert positions["available"] == 0.0 and "no annotated frame" in positions["reason"]
    vocab = json.loads((proj / "data/tokens/vocab.json").read_text())
    assert vocab["state"] is None and vocab["layout"] is None and vocab["audio"] is not None
    assert set(vocab["splits"]) == {"train", "val", "test"} and min(vocab["splits"].values()) > 0
    evaluation = json.loads((proj / "metrics/evaluate.json").read_text())
    assert "no annotated frame" in evaluation["skipped"]["state"]  # skipped, saying why
    assert {"reconstruction", "prediction", "class", "unconditional"} <= set(evaluation["tasks"])
    clips = pd.read_parquet(proj / "data/clips/manifest.parquet")
    if clips[clips["split"] == "test"]["has_audio"].any():
        assert "sound" in evaluation["tasks"]
    else:  # no test video has a sound track: "sound" would be "prediction" under another name
        assert "no audio track" in evaluation["skipped"]["sound"]
    assert "fvd_untrained_i3d" in evaluation["tasks"]["prediction"]
    assert "rank" in evaluation["fvd"]["warning"]  # a handful of test clips
    assert (proj / "samples/evaluate/prediction.gif").stat().st_size > 0


def test_the_folder_is_tracked_by_its_videos_only(project):
    proj, videos, _, _ = project
    (videos / "street" / "more notes.txt").write_text("still not a video\n")
    assert ran(dvc(proj, "repro", "--single-item", "listing").stdout) == ["listing"]
    assert stale(proj) == {"listing"}  # the listing file did not change: prepare stays cached
    shutil.copy2(videos / "park" / "surround 30fps.mp4", videos / "park" / "a new one.mp4")
    dvc(proj, "repro", "--single-item", "listing")
    assert stale(proj) == {"listing", "prepare"}  # what prepare reads changed, never demo_data
    out = dvc(proj, "repro", "--single-item", "prepare").stdout
    assert ran(out) == ["prepare"]
    assert stale(proj) == {"listing", "positions", "sound_vq", "layout_vq", "autoencoder",
                           "tokenize", "evaluate"}
