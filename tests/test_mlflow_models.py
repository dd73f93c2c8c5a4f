"""The autoencoder and the transformer as MLflow models: logged by their stage's run (through the
same ``report_result`` as ``stage_main``), loaded back with ``mlflow.pyfunc`` (tokens → frames,
controls → tokens, the same numbers as the modules themselves), registered by ``ccvs register`` and
used by ``ccvs synthesize --model-uri`` in a folder that holds no model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.sampler import SamplerConfig, TokenControls, sample_tokens
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from pipeline.evaluation.tasks import decode_video
from pipeline.tokens.annotations import file_hash, load_autoencoder
from pipeline.tracking import report_result, stage_run
from pipeline.training.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
Q, GRID, N = 32, 4, 4
AE = dict(base_channels=8, channel_mult=(1, 2, 2), num_levels=2, latent_dim=8, codebook_size=Q,
          context_frames=0, flow_radius=1, flow_hidden=8, flow_corr_dim=4)
TCFG = dict(frame_vocab=Q, frame_height=GRID, frame_width=GRID, num_frames=N, state=True,
            state_bins=16, num_classes=2, end_frame=True, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, _mlflow_template):
    """Tiny random models logged by an autoencoder and a transformer stage run; the store."""
    import shutil

    import mlflow

    root = tmp_path_factory.mktemp("mlmodels")
    shutil.copy(_mlflow_template, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for key in ("CCVS_TRACKING", "CCVS_PIPELINE_ID", "CCVS_PIPELINE_OWNER", "DVC_STAGE"):
            mp.delenv(key, raising=False)
        mp.chdir(root)
        torch.manual_seed(0)
        ae_cfg = AutoencoderConfig(**AE)
        ae_path = save_model(root / "models/autoencoder.pt", ae_cfg,
                             CCVSAutoencoder(ae_cfg).state_dict())
        t_cfg = TransformerConfig(**TCFG)
        vocab = {"frame": {"vocab": Q, "height": GRID, "width": GRID},
                 "label": {"num_classes": 2, "classes": ["push", "pull"]},
                 "state": {"bins": 16, "null_id": 16, "x_range": [-0.5, 15.5],
                           "y_range": [-0.5, 15.5]},
                 "end_frame": True, "sources": {"autoencoder": file_hash(ae_path)}}
        t_path = save_model(root / "models/transformer.pt", t_cfg,
                            CCVSTransformer(t_cfg).state_dict(), vocab=vocab)
        for stage, path in (("autoencoder", ae_path), ("transformer", t_path)):
            with stage_run(stage, {"x": 1}, params_path=ROOT / "params.yaml") as logger:
                report_result(stage, {"val/psnr": 20.0}, logger, model=path)
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("ccvs").experiment_id
        runs = {r.data.tags["stage"]: r for r in client.search_runs([exp])}
        yield {"root": root, "uri": uri, "client": client, "runs": runs, "ae": ae_path,
               "t": t_path, "t_cfg": t_cfg}


def _load(logged, stage: str):
    import mlflow

    mlflow.set_tracking_uri(logged["uri"])
    return mlflow.pyfunc.load_model(logged["runs"][stage].data.tags["ccvs.model_uri"])


def test_each_model_run_carries_its_file_hash_and_model(logged):
    for stage, path in (("autoencoder", logged["ae"]), ("transformer", logged["t"])):
        tags = logged["runs"][stage].data.tags
        assert tags["ccvs.model_sha1"] == file_hash(path)
        assert tags["ccvs.model_uri"].startswith("models:/m-")
        assert "ccvs.model_error" not in tags


def test_the_autoencoder_model_decodes_tokens_into_the_modules_frames(logged):
    model = _load(logged, "autoencoder")
    codes = np.random.default_rng(0).integers(0, Q, (2, 3, GRID, GRID)).astype(np.int64)
    frames = model.predict(codes)
    assert frames.shape == (2, 3, GRID * 4, GRID * 4, 3) and frames.dtype == np.uint8
    ae = load_autoencoder(logged["ae"])
    want = decode_video(ae, torch.as_tensor(codes), None, 0)  # (B, n, 3, H, W) in [-1, 1]
    want = ((want.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).numpy()
    np.testing.assert_array_equal(frames, want)
    assert model.metadata.metadata["ccvs"]["config"]["codebook_size"] == Q


def test_the_transformer_model_samples_the_modules_tokens_from_its_controls(logged):
    model = _load(logged, "transformer")
    names = [spec.name for spec in model.metadata.get_input_schema().inputs]
    assert names == ["start", "label", "end_frame", "state"]  # the controls T was trained with
    start = np.random.default_rng(1).integers(0, Q, (2, 1, GRID, GRID)).astype(np.int64)
    label = np.array([0, 1], np.int64)
    empty = {"end_frame": np.zeros((0, GRID, GRID), np.int64),
             "state": np.zeros((0, N, 2), np.int64)}  # zero-size: not given
    out = model.predict({"start": start, "label": label, **empty},
                        params={"num_frames": N, "top_k": 5, "seed": 7})
    assert out.shape == (2, N, GRID, GRID) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, :1], start)
    t = CCVSTransformer(logged["t_cfg"])
    from pipeline.training.checkpoint import load_model

    t.load_state_dict(load_model(logged["t"]).state)
    want = sample_tokens(t, torch.as_tensor(start), N, TokenControls(label=torch.as_tensor(label)),
                         SamplerConfig(top_k=5), [7, 8])
    np.testing.assert_array_equal(out, want.numpy())
    other = model.predict({"start": start, "label": label, **empty},
                          params={"num_frames": N, "top_k": 5, "seed": 8})
    assert not np.array_equal(other, out)  # the seed is used


def test_each_models_input_example_survives_the_serving_round_trip(logged):
    """The example logged with the model, as JSON (what a model server gets), passes the signature
    and predicts: MLflow only warns when it does not, so this is where a bad example shows."""
    import json

    import mlflow

    mlflow.set_tracking_uri(logged["uri"])
    for stage in ("autoencoder", "transformer"):
        uri = logged["runs"][stage].data.tags["ccvs.model_uri"]
        local = Path(mlflow.artifacts.download_artifacts(uri))
        serving = json.loads((local / "serving_input_example.json").read_text())
        inputs = serving["inputs"]  # JSON lists → arrays, as a scoring server parses them
        inputs = ({k: np.asarray(v, np.int64) for k, v in inputs.items()}
                  if isinstance(inputs, dict) else np.asarray(inputs, np.int64))
        out = _load(logged, stage).predict(inputs, params=serving.get("params"))  # enforces it
        if stage == "transformer":
            assert set(inputs) == {"start", "label", "end_frame", "state"}
            assert all(v.size for v in inputs.values())  # a zero-size input loses its shape
            assert out.shape == (1, 2, GRID, GRID)
        else:
            assert out.shape == (1, 2, GRID * 4, GRID * 4, 3)


def test_the_transformer_model_names_the_autoencoder_it_was_trained_with(logged):
    model = _load(logged, "transformer")
    meta = model.metadata.metadata["ccvs"]
    assert meta["autoencoder_uri"] == logged["runs"]["autoencoder"].data.tags["ccvs.model_uri"]
    assert meta["kind"] == "transformer" and meta["file"] == "artifacts/transformer.pt"


def test_register_then_synthesize_from_the_registry_without_model_files(logged, tmp_path,
                                                                         monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    monkeypatch.chdir(tmp_path)  # no models/, no data/tokens here
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert main(["register", "--name", "toy"]) == 0
    printed = capsys.readouterr().out
    assert "registered toy-transformer version 1" in printed
    assert "registered toy-autoencoder version 1" in printed
    assert main(["synthesize", "--model-uri", "models:/toy-transformer/1", "--class", "pull",
                 "--frames", str(N), "--samples", "2", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/unconditional_sheet.png").exists()
    assert len(list((tmp_path / "out").glob("*.gif"))) == 2
    assert main(["synthesize", "--model-uri", "models:/toy-autoencoder/1", "--class", "pull",
                 "--out", str(tmp_path / "out2")]) == 2  # the autoencoder is not a transformer
    assert "not the transformer" in capsys.readouterr().err
