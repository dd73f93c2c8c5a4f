"""The one entry point of every DVC stage: argparse → params → a tracked run → one-line errors.

Each ``stages/<name>.py`` keeps its logic in ``run(...)`` and its ``main`` is one call::

    PATHS = {"clips": ("data/clips", "prepare's output folder"), "model": "models/x.pt"}

    def main(argv=None):
        stage_main(STAGE, __doc__, PATHS, lambda p, a, log: run(p, a.clips, a.model, log),
                   summary=summary, argv=argv)

``stage_main`` adds ``--params``, ``--headline`` and one ``--<name>`` option per entry of the
stage's paths (a default, or a (default, help) pair; ``sound_vq`` becomes ``--sound-vq``), loads the
params sections the stage reads (strictly, ``pipeline.params``), opens the stage's MLflow run
(``pipeline.tracking.stage_run``: nested under the run of the pipeline execution), calls ``run(params,
args, logger)``, hands what it returned to ``pipeline.tracking.report_result`` (the headline
metrics to ``--headline``, the DVC metric ``dvc.yaml`` declares, and to MLflow; the file of the
``model`` path, when the stage has one, as an MLflow model) and prints the stage's one-line
summary. A ``UserError`` (a bad param, a bad input file, a missing
upstream output) ends the process with ``<stage>: <message>`` and exit status 1, no traceback;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Sequence

from pipeline.errors import UserError
from pipeline.params import load_section


def stage_main(
    stage: str,
    doc: str | None,
    paths: Mapping[str, str | None | tuple[str | None, str]],
    run: Callable[[Any, argparse.Namespace, Any], Any],
    *,
    sections: Sequence[str] | None = None,
    check: Callable[[Any], None] | None = None,
    summary: Callable[[Any, argparse.Namespace], str | None] | None = None,
    argv: list[str] | None = None,
) -> Any:
    """Run stage ``stage`` from the command line; returns what ``run`` returned.

    sections: the params sections the stage reads (default: the one named ``stage``); with one
        section ``run`` gets its dataclass, with several a dict section → dataclass.
    check: validates the params before any run is opened (raises ``UserError``).
    summary: the line printed after a successful run (None: nothing printed).
    """
    sections = tuple(sections or (stage,))
    parser = argparse.ArgumentParser(description=(doc or stage).strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml",
                        help=f"params file (section{'s' if len(sections) > 1 else ''} "
                             f"{', '.join(sections)})")
    parser.add_argument("--headline", default=None,
                        help="write the stage's headline metrics (JSON) here "
                             "(dvc.yaml: metrics/headline/<stage>.json)")
    for name, spec in paths.items():
        default, help_ = spec if isinstance(spec, tuple) else (spec, None)
        parser.add_argument(f"--{name.replace('_', '-')}", default=default, help=help_)
    args = parser.parse_args(argv)
    from pipeline.tracking import report_result, stage_run

    try:
        loaded = {name: load_section(name, args.params) for name in sections}
        params = loaded[sections[0]] if len(sections) == 1 else loaded
        if check is not None:
            check(params)
        with stage_run(stage, params, params_path=args.params) as logger:
            result = run(params, args, logger)
            report_result(stage, result, logger, model=getattr(args, "model", None),
                          headline_file=args.headline)
    except UserError as err:
        raise SystemExit(f"{stage}: {err}") from None
    line = summary(result, args) if (summary is not None and result) else None
    if line:
        print(f"{stage}: {line}", flush=True)
    return result
