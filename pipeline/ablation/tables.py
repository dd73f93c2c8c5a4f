"""The paper's ablation tables as rows of ``params.yaml`` overrides (§4.1 Tables 1–2, Fig. 6, App. D).

Each :class:`AblationTable` names its rows (the params each one changes), the reduced ``budget``
every row runs at on a 2-core CPU (overrides applied to every row first, stated in the report),
the metrics it reports (files the DAG writes) and the paper's directions between rows
(:class:`Direction`: "this cell should be above that one"), which the report checks. Rows change
only what the paper's row changes; everything else is the project's ``params.yaml``.

The paper's numbers quoted in the directions are BAIR's (256×256 for Table 1, Table 2); the demo
world is far smaller, so a report says whether each *direction* held, not whether the numbers
match. Without Kinetics-400 I3D weights FVD is ``fvd_untrained_i3d`` (a random I3D): its
directions are reported but carry little meaning (the report says which FVD was used).
"""

from __future__ import annotations

import dataclasses
from typing import Any

FVD = "{fvd}"  # the FVD key evaluate used: "fvd" with Kinetics-400 I3D weights, else "fvd_untrained_i3d"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One number a row reports: ``file`` (a metrics file of the DAG) at key path ``path``."""

    label: str  # column header
    file: str  # e.g. "metrics/evaluate.json"
    path: tuple[str, ...]  # keys into the JSON, e.g. ("tasks", "reconstruction", "psnr")
    digits: int = 3  # decimals shown

    @property
    def key(self) -> str:
        return ":".join((self.file, *self.path))


def evaluated(label: str, task: str, key: str, digits: int = 3) -> Metric:
    """A per-task metric of ``metrics/evaluate.json``."""
    return Metric(label, "metrics/evaluate.json", ("tasks", task, key), digits)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row: a name (part of the DVC experiment name), the paper's row label, and the
    ``params.yaml`` keys it sets (dotted, YAML values)."""

    name: str
    label: str
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Direction:
    """The paper's direction: cell (``high_row``, ``high``) above cell (``low_row``, ``low``)."""

    text: str  # what the paper shows, with its numbers
    high_row: str
    high: Metric
    low_row: str
    low: Metric

    def __post_init__(self) -> None:
        if not self.text:
            raise ValueError("a direction needs its text")


@dataclasses.dataclass(frozen=True)
class AblationTable:
    """A table of the paper run as a DVC experiment queue."""

    name: str  # the ``ccvs ablation`` argument and the experiments' name prefix
    title: str
    paper: str  # where in the paper
    budget: dict[str, Any]  # overrides applied to every row (the reduced budget)
    budget_note: str  # the budget in words, for the report
    rows: tuple[Row, ...]
    metrics: tuple[Metric, ...]
    directions: tuple[Direction, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate row names {names}")
        for d in self.directions:
            for row in (d.high_row, d.low_row):
                if row not in names:
                    raise ValueError(f"{self.name}: direction {d.text!r} names unknown row {row!r}")

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def overrides(self, row: Row) -> dict[str, Any]:
        """Every override of ``row``: the budget, then the row's own keys."""
        return {**self.budget, **row.overrides}


# --------------------------------------------------------------------------- the metrics

REC_PSNR = evaluated("Rec. PSNR ↑", "reconstruction", "psnr", 2)
REC_SSIM = evaluated("Rec. SSIM ↑", "reconstruction", "ssim")
REC_FVD = evaluated("Rec. FVD ↓", "reconstruction", FVD, 1)
STATE_PSNR = evaluated("State PSNR ↑", "state", "psnr", 2)
STATE_FVD = evaluated("State FVD ↓", "state", FVD, 1)
STATE_ERR = evaluated("State traj. err. px ↓", "state", "trajectory_error_px", 2)
PRED_PSNR = evaluated("Pred. PSNR ↑", "prediction", "psnr", 2)
PRED_FVD = evaluated("Pred. FVD ↓", "prediction", FVD, 1)
PRED_ERR = evaluated("Pred. traj. err. px", "prediction", "trajectory_error_px", 2)
PRED_MOTION = evaluated("Pred. motion", "prediction", "motion", 4)
PRED_DIV = evaluated("Pred. DIV", "prediction", "div", 4)
PRED_DIV_MOVING = evaluated("Pred. DIV moving", "prediction", "div_moving", 4)
UNC_FVD = evaluated("Unc. FVD ↓", "unconditional", FVD, 1)
AE_VAL_PSNR = Metric("AE val PSNR ↑", "metrics/autoencoder.json", ("val/psnr",), 2)


def _div(task: str, moving: bool = False) -> Metric:
    key = "div_moving" if moving else "div"
    return evaluated(f"{task} DIV{' moving' if moving else ''} ↑", task, key, 4)


# --------------------------------------------------------------------------- the tables

_TASKS_T1 = ["reconstruction", "state", "prediction", "unconditional"]

TABLE1 = AblationTable(
    name="table1",
    title="Table 1 — ablation of the autoencoder (self- and context-recovery)",
    paper="§4.1, Table 1 (BAIR 256×256); App. D (multi-frame context)",
    budget={"evaluate.tasks": _TASKS_T1},
    budget_note=("the demo's params.yaml budget for every stage (autoencoder, T and the other "
                 "models as in params.yaml), evaluate restricted to the columns' tasks "
                 f"({', '.join(_TASKS_T1)}); each row retrains the autoencoder, then tokenize, T "
                 "and evaluate"),
    rows=(
        Row("rgb", "RGB", {"autoencoder.use_vgg": False, "autoencoder.use_image_disc": False,
                           "autoencoder.use_temporal_disc": False,
                           "autoencoder.model.context_frames": 0}),
        Row("di", "RGB, VGG, Δi", {"autoencoder.use_vgg": True, "autoencoder.use_image_disc": True,
                                   "autoencoder.use_temporal_disc": False,
                                   "autoencoder.model.context_frames": 0}),
        Row("dt", "RGB, VGG, Δi, Δt", {"autoencoder.use_vgg": True,
                                       "autoencoder.use_image_disc": True,
                                       "autoencoder.use_temporal_disc": True,
                                       "autoencoder.model.context_frames": 0}),
        Row("f1", "… + F, c = 1", {"autoencoder.use_vgg": True, "autoencoder.use_image_disc": True,
                                   "autoencoder.use_temporal_disc": True,
                                   "autoencoder.model.context_frames": 1,
                                   "autoencoder.self_supervision": False}),
        Row("sup1", "… + F, Sup., c = 1", {"autoencoder.use_vgg": True,
                                           "autoencoder.use_image_disc": True,
                                           "autoencoder.use_temporal_disc": True,
                                           "autoencoder.model.context_frames": 1,
                                           "autoencoder.self_supervision": True}),
        Row("sup4", "… + F, Sup., c = 4", {"autoencoder.use_vgg": True,
                                           "autoencoder.use_image_disc": True,
                                           "autoencoder.use_temporal_disc": True,
                                           "autoencoder.model.context_frames": 4,
                                           "autoencoder.self_supervision": True}),
    ),
    metrics=(REC_FVD, REC_PSNR, REC_SSIM, STATE_FVD, STATE_PSNR, PRED_FVD, UNC_FVD, AE_VAL_PSNR),
    directions=(
        Direction("Δi lowers Rec. FVD (with VGG: 700 → 323)", "rgb", REC_FVD, "di", REC_FVD),
        Direction("F raises Rec. PSNR (18.2 → 22.7 dB)", "f1", REC_PSNR, "dt", REC_PSNR),
        Direction("F raises State PSNR (16.9 → 22.2 dB)", "f1", STATE_PSNR, "dt", STATE_PSNR),
        Direction("F lowers Pred. FVD (407 → 142)", "dt", PRED_FVD, "f1", PRED_FVD),
        Direction("Sup. raises Rec. PSNR (22.7 → 24.4 dB)", "sup1", REC_PSNR, "f1", REC_PSNR),
        Direction("more context raises Rec. PSNR (c = 1 → 8: 24.4 → 25.4 dB)", "sup4", REC_PSNR,
                  "sup1", REC_PSNR),
    ),
    notes=(("VGG (Eq. (4)) needs ImageNet VGG16 weights; offline the term is off whatever "
            "use_vgg says (the autoencoder's log and tag say so), so without them the RGB and "
            "RGB + VGG rows of the paper are one row here."),
           "The paper's c = 8 and c = 15 rows are in the context table (`ccvs ablation context`)."),
)

_TASKS_T2 = ["state", "prediction", "unconditional"]

TABLE2 = AblationTable(
    name="table2",
    title="Table 2 — ablation of the transformer (positions, top-k, state control)",
    paper="§4.1, Table 2 (BAIR)",
    budget={"evaluate.tasks": _TASKS_T2},
    budget_note=("the demo's params.yaml (T as there), evaluate restricted to "
                 f"{', '.join(_TASKS_T2)}; the top-k rows rerun evaluate only, the positions row "
                 "retrains T"),
    rows=(
        Row("learned_k1", "no Dec., top-k 1", {"transformer.model.pos_embedding": "learned",
                                               "evaluate.top_k": 1}),
        Row("dec_k1", "Dec., top-k 1", {"transformer.model.pos_embedding": "decomposed",
                                        "evaluate.top_k": 1}),
        Row("dec_k10", "Dec., top-k 10", {"transformer.model.pos_embedding": "decomposed",
                                          "evaluate.top_k": 10}),
        Row("dec_k100", "Dec., top-k 100", {"transformer.model.pos_embedding": "decomposed",
                                            "evaluate.top_k": 100}),
    ),
    metrics=(STATE_FVD, STATE_PSNR, STATE_ERR, PRED_FVD, PRED_ERR, PRED_MOTION, PRED_DIV, UNC_FVD),
    directions=(
        Direction("Dec. lowers Pred. FVD at top-k 1 (331 → 321)", "learned_k1", PRED_FVD,
                  "dec_k1", PRED_FVD),
        Direction("top-k sampling lowers Pred. FVD (top-k 1 → 100: 321 → 121)", "dec_k1",
                  PRED_FVD, "dec_k100", PRED_FVD),
        Direction("greedy samples show little to no motion", "dec_k100", PRED_MOTION,
                  "dec_k1", PRED_MOTION),
        Direction("state control narrows outcomes: greedy's State PSNR above top-k's "
                  "(23.2 vs 22.3 dB)", "dec_k1", STATE_PSNR, "dec_k100", STATE_PSNR),
        Direction("with state control the video follows the trajectory (ours: error below "
                  "prediction's)", "dec_k100", PRED_ERR, "dec_k100", STATE_ERR),
    ),
    notes=(("The paper's rows 1–3 (6, 12, 24 layers) need its GPU budget; the demo's T is "
            "`transformer.model` of params.yaml in every row."),),
)

_TASKS_F6 = ["prediction", "point_to_point", "state", "sound"]

FIG6 = AblationTable(
    name="fig6",
    title="Fig. 6 — diversity (DIV) of conditioned synthesis",
    paper="§4, Fig. 6 (DIV: mean pixel distance among samples of one input, whole frames and "
          "moving parts)",
    budget={"evaluate.tasks": _TASKS_F6, "evaluate.samples": 4},
    budget_note=(f"evaluate only ({', '.join(_TASKS_F6)}), 4 samples per input (paper: 10) on "
                 "evaluate.num_videos inputs; the models as trained by params.yaml"),
    rows=(
        Row("k1", "top-k 1 (greedy)", {"evaluate.top_k": 1}),
        Row("k10", "top-k 10", {"evaluate.top_k": 10}),
        Row("k100", "top-k 100", {"evaluate.top_k": 100}),
    ),
    metrics=(_div("prediction"), _div("prediction", True), _div("point_to_point"),
             _div("point_to_point", True), _div("state"), _div("state", True), _div("sound"),
             _div("sound", True)),
    directions=(
        Direction("top-k samples differ (DIV > greedy's)", "k100", _div("prediction"), "k1",
                  _div("prediction")),
        Direction("moving parts vary more than whole frames (AudioSet: 65.5 vs 2.25 ×1e-3)",
                  "k100", _div("prediction", True), "k100", _div("prediction")),
        Direction("state control narrows the outcomes (§4.1): state DIV below prediction's",
                  "k100", _div("prediction"), "k100", _div("state")),
    ),
)

CONTEXT = AblationTable(
    name="context",
    title="Context size — frames F reads when D decodes a frame (App. D)",
    paper="App. D (Eq. (9)), Table 1 rows \"Ctxt.\" 1 / 8 / 15",
    budget={"evaluate.tasks": ["reconstruction", "state", "prediction"]},
    budget_note=("the demo's params.yaml; c = 1 and c = 4 each train an autoencoder (F on, "
                 "Sup.), the test-time rows reuse the c = 4 model from DVC's run cache and rerun "
                 "evaluate with more context"),
    rows=(
        Row("c0", "F off", {"autoencoder.model.context_frames": 0,
                            "evaluate.context_frames": None}),
        Row("c1", "c = 1", {"autoencoder.model.context_frames": 1,
                            "evaluate.context_frames": None}),
        Row("c4", "c = 4", {"autoencoder.model.context_frames": 4,
                            "evaluate.context_frames": None}),
        Row("c4_test8", "c = 4, 8 at test", {"autoencoder.model.context_frames": 4,
                                             "evaluate.context_frames": 8}),
        Row("c4_test15", "c = 4, 15 at test", {"autoencoder.model.context_frames": 4,
                                               "evaluate.context_frames": 15}),
    ),
    metrics=(REC_PSNR, REC_SSIM, REC_FVD, STATE_PSNR, PRED_FVD, AE_VAL_PSNR),
    directions=(
        Direction("F raises Rec. PSNR", "c1", REC_PSNR, "c0", REC_PSNR),
        Direction("more context raises Rec. PSNR (c = 1 → 8: 24.4 → 25.4 dB)", "c4", REC_PSNR,
                  "c1", REC_PSNR),
        Direction("8 frames at test raise Rec. PSNR", "c4_test8", REC_PSNR, "c4", REC_PSNR),
        Direction("15 frames: a little more (25.4 → 25.6 dB)", "c4_test15", REC_PSNR,
                  "c4_test8", REC_PSNR),
    ),
)

TABLES: dict[str, AblationTable] = {t.name: t for t in (TABLE1, TABLE2, FIG6, CONTEXT)}
