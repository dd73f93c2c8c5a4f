"""Stage ``listing``: which videos the DAG reads, as one file DVC can compare (§4 "Datasets").

``data.source`` names the inputs (``pipeline.data.datasets.catalog``: one of the paper's datasets;
``pipeline.data.sources``: the demo world's folder, a folder or glob of videos, a manifest CSV). A glob over a folder outside the project is no dependency DVC can
hash, so this stage runs on every ``dvc repro`` (``always_changed: true`` in dvc.yaml) and writes
``data/listing.json`` (``pipeline.data.listing``): every video with its label, split, annotated
positions, layout file, size and modification time, every input it had to reject and why, the
class names. DVC compares that file with the one ``prepare`` last read: adding, removing,
replacing or touching a video reruns ``prepare`` and what follows; anything else (a README in the
folder, a second ``dvc repro``) leaves them cached. Listing opens no video: it costs one
``stat`` per file. ``prepare`` lists again and checks it sees the same inputs.

    python -m stages.listing --params params.yaml --out data/listing.json
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data.listing import write_listing
from pipeline.data.datasets.catalog import list_inputs
from pipeline.params import DataParams
from pipeline.stage import stage_main


def run(data: DataParams, out: Path, logger: Any) -> dict[str, float]:
    """List ``data``'s inputs into ``out``; return counts."""
    listing = list_inputs(data)
    doc = write_listing(out, listing, data)
    splits = Counter(v["split"] or "drawn" for v in doc["videos"])
    metrics = {
        "videos": float(len(doc["videos"])),
        "rejected": float(len(doc["rejected"])),
        "classes": float(len(doc["classes"])),
        "annotated_videos": float(sum(1 for v in doc["videos"] if v["positions"])),
        "videos_with_layouts": float(sum(1 for v in doc["videos"] if v["layout_path"])),
        **{f"split_{name}": float(n) for name, n in sorted(splits.items())},
    }
    logger.log_metrics(metrics)
    logger.set_tag("listing.source", data.source)
    return metrics


PATHS = {
    "out": ("data/listing.json", "the listing file"),
}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str:
    return (f"{int(metrics['videos'])} videos, {int(metrics['rejected'])} rejected, "
            f"{int(metrics['classes'])} classes, {int(metrics['annotated_videos'])} annotated "
            f"→ {args.out}")


def main(argv: list[str] | None = None) -> None:
    stage_main("listing", __doc__, PATHS, lambda p, a, log: run(p, Path(a.out), log),
               sections=("data",), summary=summary, argv=argv)


if __name__ == "__main__":
    main()
