"""The trained models in MLflow: the autoencoder and the transformer as pyfunc models with
signatures, the other model files as artifacts of their runs.

- ``autoencoder`` (§3.2, App. A): **tokens → frames**. Input ``tokens`` int64 (B, n, h, w) frame
  codes; output uint8 (B, n, H, W, 3). D·S·E·F over the codes (Fig. 1 without T: frame t ≥ 1 is
  decoded with F over E of the last c decoded frames; param ``context_frames``, −1 = the model's
  c). ``pipeline.evaluation.tasks.decode_video`` does the decoding.
- ``transformer`` (§3.3, App. E): **controls → tokens**. Inputs ``start`` int64 (B, m, h, w), the
  codes of m given frames (m may be 0 when T has a class or end-frame token), and one input per
  control T was trained with, a zero-size array meaning "not given" (that kind's null id; from
  Python only: JSON, as a model server gets it, drops an empty array's shape and fails the
  signature, so there every input must be given):
  ``label`` (B,), ``end_frame`` (B, h, w) codes, ``state`` (B, n, 2) bins, ``audio`` (B, n, l_a)
  and ``layout`` (B, n, l_l) VQ codes. Params ``num_frames``, ``top_k``, ``temperature``,
  ``seed`` (row i samples with seed + i), ``end_time`` (−1 = the last frame). Output int64
  (B, n, h, w) codes (``ccvs_models.sampler.sample_tokens``).

Each logged model holds its ``.pt`` (the config that built it and the weights: the same file as
``models/<name>.pt``) and, in its MLmodel metadata (``pipeline.synthesis.model_uri``), that config,
the git commit, and for T the URIs of the autoencoder model and the VQ files it was trained with:
the runs whose model files have the hashes tokenize recorded in ``vocab.json``. Every
model-producing run is tagged ``ccvs.model_sha1`` (the file's hash). The models are logged "from
code" (``model_code/<stage>.py``, no pickled object); loading one needs this project installed
(``pip install -e .``), as the classes live here.

``register(...)`` (``ccvs register``) puts both under names in the model registry; ``ccvs
synthesize --model-uri models:/<name>/<version>`` loads them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.synthesis.model_uri import (
    AUTOENCODER_URI,
    FILE,
    KIND,
    LAYOUT_VQ_URI,
    METADATA_KEY,
    SOUND_VQ_URI,
)

try:  # the classes below subclass MLflow's; MLflow is a dependency of the project
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

MODEL_NAME = "model"  # the logged model's name in its run
FILE_ARTIFACTS = "model_file"  # artifact folder of the model files of the other stages
SHA_TAG = "ccvs.model_sha1"  # the model file's hash (pipeline.tokens.annotations.file_hash)
MODEL_URI_TAG = "ccvs.model_uri"  # the logged model's URI (models:/m-…)
PYFUNC_STAGES = ("autoencoder", "transformer")
CONTROLS = ("label", "end_frame", "state", "audio", "layout")


def _to_numpy_frames(frames: Any) -> np.ndarray:
    """(B, n, 3, H, W) in [−1, 1] → uint8 (B, n, H, W, 3)."""
    x = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 1, 3, 4, 2).cpu().numpy()


class AutoencoderModel(PythonModel):
    """tokens (B, n, h, w) → frames (B, n, H, W, 3) uint8 (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from pipeline.tokens.annotations import load_autoencoder

        self.autoencoder = load_autoencoder(context.artifacts["autoencoder"])

    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        from pipeline.evaluation.tasks import decode_video

        tokens = model_input["tokens"] if isinstance(model_input, dict) else model_input
        codes = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        c = int((params or {}).get("context_frames", -1))
        c = self.autoencoder.config.context_frames if c < 0 else c
        with torch.no_grad():
            frames = decode_video(self.autoencoder, codes, None, c)
        return _to_numpy_frames(frames)


class TransformerModel(PythonModel):
    """controls → tokens (B, n, h, w) (see the module docstring)."""

    # MLflow validates inputs by the signature logged with the model; its type-hint validation
    # knows no dict of named tensors (it warns on any hint but list[...] / ndarray / DataFrame),
    # so predict has no hints and this turns the hint check off.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from ccvs_models.transformer import CCVSTransformer
        from ccvs_models.transformer_config import TransformerConfig
        from pipeline.tokens.annotations import config_kwargs
        from pipeline.training.checkpoint import load_model

        config, state, _ = load_model(context.artifacts["transformer"])
        self.transformer = CCVSTransformer(TransformerConfig(**config_kwargs(config)))
        self.transformer.load_state_dict(state)
        self.transformer.eval().requires_grad_(False)

    def predict(self, context, model_input, params=None):  # model_input: dict name → ndarray
        import torch

        from ccvs_models.sampler import SamplerConfig, TokenControls, sample_tokens

        params = dict(params or {})
        start = torch.as_tensor(np.asarray(model_input["start"]), dtype=torch.long)
        given = {}
        for kind in CONTROLS:
            value = model_input.get(kind)
            if value is not None and np.asarray(value).size:
                given[kind] = torch.as_tensor(np.asarray(value), dtype=torch.long)
        end_time = int(params.get("end_time", -1))
        controls = TokenControls(**given, end_time=None if end_time < 0 else end_time)
        config = SamplerConfig(top_k=int(params.get("top_k", 100)),
                               temperature=float(params.get("temperature", 1.0)))
        seed = int(params.get("seed", 0))
        codes = sample_tokens(self.transformer, start, int(params.get("num_frames", 16)),
                              controls, config, [seed + i for i in range(start.shape[0])])
        return codes.cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------- signatures


def _tensor(name: str | None, shape: tuple[int, ...], dtype: Any = np.int64) -> Any:
    from mlflow.types.schema import TensorSpec

    return TensorSpec(np.dtype(dtype), shape, name)


def autoencoder_signature(config: Any) -> Any:
    """tokens (B, n, h, w) → frames (B, n, h·2^K, w·2^K, 3): E/Q/D are convolutional, so any
    token grid decodes (the transformer fixes the one it samples)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([_tensor("tokens", (-1, -1, -1, -1))]),
        outputs=Schema([_tensor(None, (-1, -1, -1, -1, config.in_channels), np.uint8)]),
        params=ParamSchema([ParamSpec("context_frames", "long", -1)]))


def autoencoder_example() -> np.ndarray:
    """Two frames of 4×4 codes (any grid decodes)."""
    return np.zeros((1, 2, 4, 4), np.int64)


def transformer_example(config: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One start frame, two frames out, and every control the model reads given (id 0): MLflow
    checks the example after a JSON round trip, where a zero-size "not given" array loses its
    shape and fails the signature."""
    h, w = config.frame_height, config.frame_width
    n = 2
    shapes = {"start": (1, 1, h, w), "label": (1,), "end_frame": (1, h, w), "state": (1, n, 2),
              "audio": (1, n, config.audio_tokens_per_frame),
              "layout": (1, n, config.layout_tokens_per_frame)}
    names = [spec.name for spec in transformer_signature(config).inputs.inputs]
    return {k: np.zeros(shapes[k], np.int64) for k in names}, {"num_frames": n}


def transformer_signature(config: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema

    h, w = config.frame_height, config.frame_width
    inputs = [_tensor("start", (-1, -1, h, w))]
    if config.num_classes > 0:
        inputs.append(_tensor("label", (-1,)))
    if config.end_frame:
        inputs.append(_tensor("end_frame", (-1, h, w)))
    if config.state:
        inputs.append(_tensor("state", (-1, -1, 2)))
    if config.audio_tokens_per_frame > 0:
        inputs.append(_tensor("audio", (-1, -1, config.audio_tokens_per_frame)))
    if config.layout_tokens_per_frame > 0:
        inputs.append(_tensor("layout", (-1, -1, config.layout_tokens_per_frame)))
    return ModelSignature(
        inputs=Schema(inputs), outputs=Schema([_tensor(None, (-1, -1, h, w))]),
        params=ParamSchema([ParamSpec("num_frames", "long", 16), ParamSpec("top_k", "long", 100),
                            ParamSpec("temperature", "double", 1.0), ParamSpec("seed", "long", 0),
                            ParamSpec("end_time", "long", -1)]))


# --------------------------------------------------------------------------- logging


def _requirements() -> list[str]:
    import mlflow
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"mlflow=={mlflow.__version__}"]


def _linked_uri(client: Any, experiment_id: str, stage: str, sha: str | None,
                artifact: bool) -> str | None:
    """The URI of the model logged by the newest finished ``stage`` run whose model file has hash
    ``sha`` (``artifact``: its file under ``model_file/``)."""
    from pipeline.tracking.run_tree import stage_run_of

    if not sha:
        return None
    run = stage_run_of(client, experiment_id, stage, SHA_TAG, sha)
    if run is None:
        return None
    if not artifact:
        return run.data.tags.get(MODEL_URI_TAG)
    names = [f.path for f in client.list_artifacts(run.info.run_id, FILE_ARTIFACTS)]
    return f"runs:/{run.info.run_id}/{names[0]}" if names else None


def log_stage_model(stage: str, path: str | Path, experiment_id: str, git_commit: str) -> None:
    """Log ``stage``'s model file to the active run: an MLflow model for the autoencoder and the
    transformer, an artifact otherwise; tag the run with the file's hash."""
    import mlflow

    from pipeline.tokens.annotations import config_kwargs, file_hash
    from pipeline.training.checkpoint import load_model

    path = Path(path)
    sha = file_hash(path)
    mlflow.set_tag(SHA_TAG, sha)
    if stage not in PYFUNC_STAGES:
        mlflow.log_artifact(str(path), artifact_path=FILE_ARTIFACTS)
        return
    config, _, meta = load_model(path)
    block: dict[str, Any] = {KIND: stage, FILE: f"artifacts/{path.name}", "config": config,
                             "git_commit": git_commit}
    if stage == "autoencoder":
        from ccvs_models.autoencoder import AutoencoderConfig

        signature = autoencoder_signature(AutoencoderConfig(**config_kwargs(config)))
        example: Any = autoencoder_example()
    else:
        from ccvs_models.transformer_config import TransformerConfig

        t_config = TransformerConfig(**config_kwargs(config))
        signature, example = transformer_signature(t_config), transformer_example(t_config)
        sources = (meta.get("vocab") or {}).get("sources") or {}
        client = mlflow.MlflowClient()
        block[AUTOENCODER_URI] = _linked_uri(client, experiment_id, "autoencoder",
                                             sources.get("autoencoder"), artifact=False)
        block[SOUND_VQ_URI] = _linked_uri(client, experiment_id, "sound_vq",
                                          sources.get("audio"), artifact=True)
        block[LAYOUT_VQ_URI] = _linked_uri(client, experiment_id, "layout_vq",
                                           sources.get("layout"), artifact=True)
    code = Path(__file__).with_name("model_code") / f"{stage}.py"  # models from code
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=str(code), artifacts={stage: str(path)},
        signature=signature, input_example=example, pip_requirements=_requirements(),
        metadata={METADATA_KEY: {k: v for k, v in block.items() if v is not None}})
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    version: str
    source: str


def _transformer_run(client: Any, experiment_id: str, run_id: str | None) -> Any | None:
    """The transformer run of ``run_id`` (itself, or a pipeline run's transformer, ran or linked),
    else the newest finished transformer run that logged a model."""
    from pipeline.tracking.run_tree import CHILD_PREFIX, SKIPPED_PREFIX, STAGE_TAG

    if run_id is not None:
        run = client.get_run(run_id)
        if run.data.tags.get(STAGE_TAG) == "transformer":
            return run
        linked = (run.data.tags.get(CHILD_PREFIX + "transformer")
                  or run.data.tags.get(SKIPPED_PREFIX + "transformer"))
        return client.get_run(linked) if linked and len(linked) == 32 else None
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.{STAGE_TAG} = 'transformer' and "
                                       f"attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=100)
    return next((r for r in runs if MODEL_URI_TAG in r.data.tags), None)


def register(client: Any, experiment_id: str, name: str, run_id: str | None = None
             ) -> list[Registered]:
    """Register the transformer model of ``run_id`` (a transformer run or a pipeline run; default:
    the newest finished transformer run) as ``<name>-transformer`` and the autoencoder model it
    names as ``<name>-autoencoder``."""
    import mlflow

    from pipeline.synthesis.model_uri import read_logged

    run = _transformer_run(client, experiment_id, run_id)
    uri = run.data.tags.get(MODEL_URI_TAG) if run is not None else None
    if not uri:
        raise LookupError(f"no transformer model logged {f'by run {run_id}' if run_id else 'yet'}"
                          f" (run the pipeline with tracking on first)")
    _, meta = read_logged(uri)
    out = []
    for role, source in (("transformer", uri), ("autoencoder", meta.get(AUTOENCODER_URI))):
        if not source:
            continue
        version = mlflow.register_model(source, f"{name}-{role}")
        out.append(Registered(version.name, str(version.version), source))
    return out
