"""A transformer logged to MLflow → the model files ``ccvs synthesize`` loads.

The transformer stage logs T as an MLflow model (``pipeline.tracking.models``) whose metadata names
everything synthesis needs besides T: the MLflow model of the autoencoder whose tokens T was
trained on (found by the hash tokenize recorded in ``vocab.json``), and the sound / layout VQ
files that turn a user's wav and layout maps into tokens. :func:`resolve` downloads them (the
registry's ``models:/<name>/<version>``, a logged model's ``models:/m-…`` or ``runs:/<run>/model``)
into MLflow's local cache and returns the paths, so ``load_models`` checks them like local files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from pipeline.synthesis.readers import SynthesisInputError

METADATA_KEY = "ccvs"  # the block of the MLmodel file's metadata our models write
# keys of that block
KIND, FILE, AUTOENCODER_URI, SOUND_VQ_URI, LAYOUT_VQ_URI = (
    "kind", "file", "autoencoder_uri", "sound_vq_uri", "layout_vq_uri")


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """Local files of a logged transformer and what it was trained with."""

    transformer: Path
    autoencoder: Path | None  # None: the model names no autoencoder
    sound_vq: Path | None = None
    layout_vq: Path | None = None


def _download(uri: str) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthesisInputError(f"{uri}: cannot download it from MLflow ({reason})") from None


def read_logged(uri: str) -> tuple[Path, dict[str, Any]]:
    """(local folder, our metadata block) of the MLflow model at ``uri``."""
    folder = _download(uri)
    mlmodel = folder / "MLmodel"
    if not mlmodel.exists():
        raise SynthesisInputError(f"{uri}: not an MLflow model (no MLmodel file)")
    doc = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    meta = (doc.get("metadata") or {}).get(METADATA_KEY)
    if not isinstance(meta, dict) or FILE not in meta:
        raise SynthesisInputError(f"{uri}: not a CCVS model (its MLmodel has no "
                                  f"metadata.{METADATA_KEY}.{FILE})")
    return folder, meta


def resolve(uri: str, autoencoder_uri: str | None = None) -> ModelFiles:
    """The local files of the transformer at ``uri`` and of the autoencoder (``autoencoder_uri``,
    else the one the transformer's metadata names) and VQs it was trained with."""
    folder, meta = read_logged(uri)
    if meta.get(KIND) != "transformer":
        raise SynthesisInputError(f"{uri}: a CCVS {meta.get(KIND, '?')} model, not the "
                                  f"transformer (give the transformer's URI to --model-uri)")
    transformer = folder / meta[FILE]
    ae_uri = autoencoder_uri or meta.get(AUTOENCODER_URI)
    autoencoder = None
    if ae_uri:
        ae_folder, ae_meta = read_logged(ae_uri)
        autoencoder = ae_folder / ae_meta[FILE]

    def optional(key: str) -> Path | None:
        return _download(meta[key]) if meta.get(key) else None

    return ModelFiles(transformer, autoencoder, optional(SOUND_VQ_URI), optional(LAYOUT_VQ_URI))
