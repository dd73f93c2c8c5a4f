"""Stage ``transformer``: train the controllable transformer T on token shards (§3.3, Eq. (8)).

Paper §3.3 / App. A "Transformer" / Table 2: an Image-GPT-like decoder over the sequence
L = l_v + N·(l_f + h·w) of annotation and frame tokens, trained by next-token cross-entropy on the
frame tokens only (Eq. (8)); App. E: the end frame as a video-level annotation whose positional
embedding encodes its gap to the window (point-to-point synthesis). The model is
``ccvs_models.transformer.CCVSTransformer``; the training pieces are
``pipeline.training.transformer``.

1. Reads ``data/tokens`` (``pipeline.tokens.shards``): ``vocab.json`` fixes the sequence (codebook
   sizes, tokens per frame, which annotations exist); ``transformer.conditioning`` picks which of
   them T reads. Train windows are streamed from the train shards (``pipeline.data.stream``:
   shuffle blocks of ``training.shuffle_block`` clips, split over ranks and
   ``training.data_workers``, exact resume): each clip once per epoch, N frames at a random
   start, end_gap = clip end − window start. Validation (held in memory, ``val_clips``): every
   val clip's first window (no val split: the clips of ~10% of the train videos are held out).
2. Trains with the shared loop (``pipeline.training.loop.fit``: checkpoints in ``ckpt_dir``,
   ``resume="auto"``, bf16 option, DDP under torchrun): AdamW, linear warm-up + cosine decay,
   gradient clipping, conditioning dropout per annotation kind.
3. Logs loss, frame-token accuracy and learning rate every ``log_every`` steps, validation
   perplexity / loss / accuracy every ``eval_every`` steps, to the logger and to
   ``plots_dir/{train,val}.csv`` (``dvc plots``).
4. Writes ``models/transformer.pt`` (``save_model``: the ``TransformerConfig`` + weights) and
   ``metrics/transformer.json``: ``val/perplexity`` next to the codebook-usage baseline
   ``baseline/unigram_perplexity`` = exp(entropy of the train-set unigram of frame codes) and
   ``baseline/unigram_val_perplexity`` (val codes scored by that unigram); ``perplexity_ratio`` =
   val perplexity / unigram perplexity (the issue's done criterion: well below 1); and the
   temporal baseline ``baseline/copy_val_perplexity`` / ``copy_val_accuracy`` (each code repeats
   the previous frame's: a T above it cannot yet hold a static scene still, and its samples
   flicker); ``val/gain/<kind>`` per annotation kind: how much the val loss rises when that kind
   is nulled (about 0: T ignores that control, and its samples will not follow it).

    python -m stages.transformer --params params.yaml --tokens data/tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any


from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from pipeline.training.checkpoint import save_model, to_plain
from pipeline.params import TransformerParams
from pipeline.data.stream import FixedBatch, ShardStream
from pipeline.tokens.shards import (
    ANNOTATIONS,
    MANIFEST_FILE,
    VOCAB_FILE,
    iter_token_samples,
    load_token_split,
    read_vocab,
    split_keys,
    token_shards,
    write_json_atomic,
)
from pipeline.training.curves import CurveLogger
from pipeline.training.loop import fit
from pipeline.training.task import seeded_init
from pipeline.training.transformer import (
    CodeStats,
    OptimSettings,
    TokenWindows,
    TransformerTask,
    WindowBatches,
    copy_baseline,
    fixed_windows,
    model_config,
    unigram_baseline,
)
from pipeline.data.splits import holdout_keys
from pipeline.errors import StageError
from pipeline.stage import stage_main



def _data_fingerprint(tokens: Path) -> str:
    h = hashlib.sha1()
    for name in (VOCAB_FILE, MANIFEST_FILE):
        path = tokens / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run(
    params: TransformerParams,
    tokens: str | Path,
    model_out: str | Path,
    metrics_out: str | Path,
    plots_dir: str | Path,
    ckpt_dir: str | Path,
    logger: Any,
) -> dict[str, float]:
    """Train T on ``tokens`` (tokenize's output); write model, metrics, curves; return metrics."""
    start = time.perf_counter()
    tokens = Path(tokens)
    vocab = read_vocab(tokens)
    loop = params.loop
    train_keys = split_keys(tokens, "train")
    if not train_keys:
        raise StageError(f"{tokens}: no train token samples")
    val_source, held = "val", frozenset()
    val = load_token_split(tokens, "val", vocab, limit=params.val_clips or None)
    if len(val) == 0:  # the clips of whole train videos held out (pipeline.data.splits)
        held = frozenset(holdout_keys(train_keys, seed=loop.seed))
        if not held:
            raise StageError("no val clips and fewer than 2 train videos to hold one out")
        val = load_token_split(tokens, "train", vocab, keys=set(held),
                               limit=params.val_clips or None)
        val_source = "train_holdout"
    urls = token_shards(tokens, "train")
    first = next(iter_token_samples(tokens, "train", limit=1))
    clip_len = int(first["frames"].shape[0])
    if val.frames.shape[1] != clip_len:
        raise StageError(f"{tokens}: val clips have {val.frames.shape[1]} frames, "
                         f"train clips {clip_len}")
    try:
        cfg = model_config(params.model, params.conditioning, vocab, clip_len)
    except ValueError as err:
        raise StageError(str(err)) from None
    layout = cfg.sequence_layout
    optim = OptimSettings(params.lr, params.min_lr, params.warmup_steps, params.weight_decay,
                          tuple(params.betas), loop.steps)  # type: ignore[arg-type]
    config = {"model": dataclasses.asdict(cfg), "params": to_plain(params),
              "data": _data_fingerprint(tokens)}
    config["params"]["loop"] = {k: v for k, v in config["params"]["loop"].items()
                                if k not in ("steps", "log_every", "eval_every", "ckpt_every",
                                             "keep_checkpoints", "device")}
    with seeded_init(loop.seed):  # T's initial weights depend on the seed only
        task = TransformerTask(cfg, optim, params.conditioning.drop_probs(),
                               fixed_windows(val, layout, params.batch_size), config)
    logger.set_tags({"transformer.val_source": val_source,
                     "transformer.sequence_length": str(layout.length),
                     "transformer.parameters": str(task.model.num_parameters()),
                     "transformer.train_shards": str(len(urls))})
    curves = CurveLogger(logger, plots_dir, {"train": ("loss", "accuracy", "lr"),
                                             "val": ("val/perplexity", "val/loss", "val/accuracy")})
    kinds = tuple(k for k in ANNOTATIONS if vocab.get(k))
    stream = ShardStream(tuple(urls), TokenWindows(layout.num_frames, clip_len,
                                                   tuple(first["frames"].shape[1:]), kinds,
                                                   str(tokens), held,
                                                   params.conditioning.random_end_frame),
                         WindowBatches(layout, clip_len), FixedBatch(params.batch_size),
                         seed=loop.seed, shuffle=loop.shuffle_block, workers=loop.data_workers)
    t_fit = time.perf_counter()
    result = fit(task, stream, loop, Path(ckpt_dir), curves, resume="auto")
    fit_s = time.perf_counter() - t_fit
    if not result.is_main:
        return {}
    curves.finish()

    stats = CodeStats(cfg.frame_vocab)  # the baselines' train side, one clip at a time
    train_clips = 0
    for sample in iter_token_samples(tokens, "train"):
        if sample["key"] not in held:
            stats.add(sample["frames"])
            train_clips += 1
    base = unigram_baseline(stats, val.frames, cfg.frame_vocab)
    copy = copy_baseline(stats, val.frames, cfg.frame_vocab, layout.num_frames)
    ev = result.eval_metrics
    steps_run = result.step - (result.resumed_from or 0)
    metrics = {
        "val/perplexity": ev.get("val/perplexity", float("nan")),
        "val/loss": ev.get("val/loss", float("nan")),
        "val/accuracy": ev.get("val/accuracy", float("nan")),
        **{k: v for k, v in ev.items() if k.startswith("val/gain/")},  # does T read each control?
        "baseline/unigram_perplexity": base["unigram_perplexity"],
        "baseline/unigram_val_perplexity": base["unigram_val_perplexity"],
        "perplexity_ratio": ev.get("val/perplexity", float("nan")) / base["unigram_perplexity"],
        "baseline/copy_rate": copy["copy_rate"],
        "baseline/copy_val_accuracy": copy["copy_val_accuracy"],
        "baseline/copy_val_perplexity": copy["copy_val_perplexity"],
        "codebook/used_codes": base["used_codes"],
        "train/loss": result.metrics.get("loss", float("nan")),
        "train/accuracy": result.metrics.get("accuracy", float("nan")),
        "train_clips": float(train_clips),
        "val_clips": float(len(val)),
        "sequence_length": float(layout.length),
        "parameters": float(task.model.num_parameters()),
        "steps": float(result.step),
        "resumed_from": float(result.resumed_from if result.resumed_from is not None else -1),
        "fit_seconds": fit_s,
        "train_tokens_per_s": steps_run * params.batch_size * layout.length / max(fit_s, 1e-9),
        "train_samples_per_s": steps_run * params.batch_size / max(fit_s, 1e-9),
    }
    save_model(model_out, cfg, result.state["transformer"], step=result.step,
               weights="ema" if loop.ema_decay > 0 else "raw", val_source=val_source,
               conditioning=dataclasses.asdict(params.conditioning), vocab=vocab)
    metrics["seconds"] = time.perf_counter() - start
    logger.log_metrics({k: v for k, v in metrics.items() if not k.startswith("val/")},
                       step=result.step)
    write_json_atomic(metrics_out, {**metrics, "val_source": val_source})
    return metrics


def load_transformer(path: str | Path) -> CCVSTransformer:
    """``models/transformer.pt`` → T (eval mode, CPU)."""
    from pipeline.training.checkpoint import load_model

    config, state, _ = load_model(path)
    model = CCVSTransformer(TransformerConfig(**config))
    model.load_state_dict(state)
    return model.eval()


PATHS = {
    "tokens": ("data/tokens", "tokenize's output folder"),
    "model": "models/transformer.pt",
    "metrics": "metrics/transformer.json",
    "plots": "plots/transformer",
    "ckpt": "checkpoints/transformer",
}


def summary(m: dict[str, float], args: argparse.Namespace) -> str:
    gains = ", ".join(f"{k.rsplit('/', 1)[-1]} {v:+.3f}" for k, v in m.items()
                      if k.startswith("val/gain/"))
    return (f"val perplexity {m['val/perplexity']:.1f} (accuracy {m['val/accuracy']:.3f}); "
            f"baselines: unigram {m['baseline/unigram_val_perplexity']:.1f}, "
            f"copy-the-previous-frame {m['baseline/copy_val_perplexity']:.1f} (accuracy "
            f"{m['baseline/copy_val_accuracy']:.3f})"
            + (f"; val loss gain per control (nats/token): {gains}" if gains else ""))


def main(argv: list[str] | None = None) -> None:
    stage_main("transformer", __doc__, PATHS,
               lambda p, a, log: run(p, a.tokens, a.model, a.metrics, a.plots, a.ckpt, log),
               summary=summary, argv=argv)


if __name__ == "__main__":
    main()
