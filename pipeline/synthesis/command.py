"""``ccvs synthesize``: videos from a trained CCVS and a user's controls (Fig. 1, §3.3, App. E).

After ``dvc repro`` (models/transformer.pt, models/autoencoder.pt, data/tokens/vocab.json):

    ccvs synthesize --start data/raw/demo/videos/<id>.mp4 --frames 16 --samples 4
    ccvs synthesize --start first.png --end-frame last.png --frames 24      # point-to-point (App. E)
    ccvs synthesize --start clip.gif --trajectory xy.csv --frames 16        # state-conditioned
    ccvs synthesize --start clip.mp4 --sound drums.wav                      # sound-conditioned
    ccvs synthesize --class push_left                                       # unconditional start
    ccvs synthesize --model-uri models:/ccvs-transformer/1 --class push_left   # from MLflow

Controls (each one the transformer was trained with): ``--start`` an mp4/gif/folder of images
(the first ``--start-frames`` frames are given); ``--end-frame`` a png (and ``--end-time``, default
the last frame); ``--trajectory`` a CSV with columns x,y, one row per output frame, in pixels of
the model's frames (origin at the top-left pixel's centre, x right, y down); ``--sound`` a wav or
an mp4's audio track, at least as long as the video; ``--class`` a class name (or id);
``--layouts`` an npz holding ``layout`` (n×H×W class maps). Images are resized (short side, then
center crop) to the model's resolution and the command says so; ``--no-resize`` makes a size
mismatch an error instead. Every input is checked before any model runs.

Without ``--start``, T samples frame 0 too when it has a video-level token (a class label or an
end frame) and the command says so; otherwise it asks for a start frame.

Models: ``--transformer``/``--autoencoder`` files (the pipeline's ``models/``), or ``--model-uri``, a
transformer logged to MLflow by the transformer stage (``models:/<name>/<version>`` once
registered with ``ccvs register``, ``models:/m-…`` or ``runs:/<run id>/model``): it brings its
vocabulary and names the autoencoder model (``--autoencoder-uri`` overrides) and the VQs it was
trained with (``pipeline.synthesis.model_uri``).

Writes, per sample, an mp4 and a GIF, and per input a PNG contact sheet (rows = samples, columns =
time) into ``--out``, and prints where they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccvs synthesize", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", help="start frames: an mp4/gif or a folder of images")
    p.add_argument("--start-frames", type=int, default=1, help="how many start frames are given")
    p.add_argument("--frames", type=int, default=16, help="frames of the output video (given ones "
                   "included)")
    p.add_argument("--end-frame", help="point-to-point: the end frame (png)")
    p.add_argument("--end-time", type=int, default=None, help="timestep of the end frame "
                   "(default: the last frame)")
    p.add_argument("--trajectory", help="state: CSV with columns x,y, one row per output frame")
    p.add_argument("--sound", help="sound: a wav (or an mp4's audio track)")
    p.add_argument("--class", dest="label", help="class name (or id)")
    p.add_argument("--layouts", help="layouts: an npz holding 'layout' (n×H×W class maps)")
    p.add_argument("--samples", type=int, default=4, help="samples S (one batch)")
    p.add_argument("--top-k", type=int, default=100, help="top-k sampling (1 = greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sample s uses seed + s")
    p.add_argument("--context-frames", type=int, default=None,
                   help="c frames of context for D (default: the autoencoder's)")
    p.add_argument("--no-resize", action="store_true", help="a size mismatch is an error")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the prefix per token")
    p.add_argument("--weights", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="T's Linear weights while sampling (int8: ~1.3x faster tokens on CPU, "
                        "slightly different samples; BENCHMARKS.md 'synthesis')")
    p.add_argument("--step-threads", default="auto", type=_step_threads,
                   help="CPU threads of T's one-token steps: auto (the faster of 1, 2, … threads "
                        "on this machine under its current load, measured on the first steps) or "
                        "a count (0 = torch's)")
    p.add_argument("--ae-precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="D·S·E·F per frame: bf16 autocast (slightly different frames, same "
                        "tokens) or fp32; auto = bf16 on CPUs with bf16 matrix units and "
                        "bf16-capable GPUs (BENCHMARKS.md 'synthesis')")
    p.add_argument("--overlap-decoding", choices=("auto", "on", "off"), default="off",
                   help="decode frame t on a second thread while T samples frame t + 1; auto = "
                        "when T's one-token steps leave a thread free (no gain measured on a "
                        "busy CPU: BENCHMARKS.md 'synthesis')")
    p.add_argument("--out", default="samples/synthesize", help="output folder")
    p.add_argument("--name", default=None, help="file name stem (default: from --start)")
    p.add_argument("--model-uri", default=None,
                   help="the transformer as an MLflow model (models:/<name>/<version>, "
                        "runs:/<run>/model); replaces --transformer/--autoencoder/--tokens")
    p.add_argument("--autoencoder-uri", default=None,
                   help="with --model-uri: this autoencoder model instead of the one it names")
    p.add_argument("--transformer", default="models/transformer.pt")
    p.add_argument("--autoencoder", default="models/autoencoder.pt")
    p.add_argument("--tokens", default="data/tokens", help="tokenize's output (vocab.json)")
    p.add_argument("--sound-vq", default="models/sound_vq.pt")
    p.add_argument("--layout-vq", default="models/layout_vq.pt")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def _step_threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a count ≥ 0, got {text!r}")
    return value


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast speeds D·S·E·F up on ``device``: CUDA devices that support bf16, and
    CPUs with bf16 matrix units (AMX-BF16 or AVX-512-BF16, as torch reports them)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device.type == "cpu" and any(bool(getattr(cpu, name, lambda: False)())
                                        for name in checks)


def run(args: argparse.Namespace) -> list[Path]:
    """Load, check every input, synthesize with a progress bar, write; return the written paths."""
    from tqdm import tqdm

    from ccvs_models.sampler import SamplerConfig, synthesize
    from ccvs_models.step_threads import StepThreads
    from pipeline.training.distributed import device_for
    from pipeline.synthesis.readers import SynthesisInputError, read_start_frames, to_model_frames
    from pipeline.synthesis.controls import build_controls
    from pipeline.synthesis.models import load_models
    from pipeline.synthesis.writers import write_samples

    if args.frames < 1 or args.samples < 1 or args.top_k < 1:
        raise SynthesisInputError("--frames, --samples and --top-k must be ≥ 1")
    device = device_for(0, args.device)
    tokens: Path | None = Path(args.tokens)
    transformer, autoencoder = args.transformer, args.autoencoder
    sound_vq, layout_vq = args.sound_vq, args.layout_vq
    if args.model_uri:
        from pipeline.synthesis.model_uri import resolve

        files = resolve(args.model_uri, args.autoencoder_uri)
        if files.autoencoder is None:
            raise SynthesisInputError(f"{args.model_uri}: names no autoencoder model (it was "
                                      f"logged without one); give --autoencoder-uri")
        transformer, autoencoder, tokens = files.transformer, files.autoencoder, None
        sound_vq = files.sound_vq or sound_vq
        layout_vq = files.layout_vq or layout_vq
        print(f"note: models from MLflow: {args.model_uri} (autoencoder "
              f"{args.autoencoder_uri or 'as the transformer names it'})")
    models = load_models(transformer, autoencoder,
                         tokens if tokens is not None and tokens.exists() else None,
                         sound_vq_path=sound_vq if args.sound and Path(sound_vq).exists()
                         else None,
                         layout_vq_path=layout_vq if args.layouts
                         and Path(layout_vq).exists() else None,
                         device=device)
    size = models.resolution
    notes: list[str] = []
    start = None
    if args.start:
        if not 1 <= args.start_frames <= args.frames:
            raise SynthesisInputError(f"--start-frames must be in 1..--frames ({args.frames}), "
                                      f"got {args.start_frames}")
        loaded = read_start_frames(args.start, args.start_frames, size,
                                   resize=not args.no_resize, fps=models.fps)
        start = to_model_frames(loaded.data, device)  # (1, m, 3, H, W)
        notes += loaded.notes
    elif not ({"label", "end_frame"} & models.conditioning):
        raise SynthesisInputError("this transformer has no class or end-frame token, so it needs "
                                  "a first frame: give --start")
    controls, control_notes = build_controls(
        models, args.frames, end_frame=args.end_frame, end_time=args.end_time,
        trajectory=args.trajectory, sound=args.sound, label=args.label, layouts=args.layouts,
        resize=not args.no_resize)
    notes += control_notes
    if start is None:
        notes.append("no --start: T samples frame 0 too (unconditional start)")
    for note in notes:
        print(f"note: {note}")

    c = args.context_frames
    if c is not None and (problem := models.autoencoder.config.context_problem(c)) is not None:
        raise SynthesisInputError(f"{args.autoencoder}: {problem} (--context-frames)")
    precision = args.ae_precision
    if precision == "auto":
        precision = "bf16" if bf16_pays(device) else "fp32"
    config = SamplerConfig(top_k=args.top_k, temperature=args.temperature,
                           kv_cache=not args.no_kv_cache, weights=args.weights,
                           step_threads=args.step_threads, autoencoder_precision=precision,
                           overlap_decoding={"on": True, "off": False}.get(args.overlap_decoding,
                                                                           "auto"))
    threads = StepThreads()
    seeds = [args.seed + s for s in range(args.samples)]
    m = 0 if start is None else start.shape[1]
    t0 = time.perf_counter()
    if start is None:  # unconditional: T samples frame 0 too
        hh, ww = size
        start = torch.zeros(1, 0, 3, hh, ww, device=device)
    with tqdm(total=args.frames - m, desc="synthesize", unit="frame") as bar:
        out = synthesize(models.autoencoder, models.transformer, start, args.frames, controls,
                         config, samples=args.samples, seeds=seeds,
                         context_frames=args.context_frames, on_frame=lambda t: bar.update(1),
                         threads=threads)
    frames = out.frames
    seconds = time.perf_counter() - t0
    name = args.name or (Path(args.start).stem if args.start else "unconditional")
    written = write_samples(args.out, frames, models.fps or 10, [name], gif_scale=2)
    print(f"synthesized {args.samples} × {args.frames} frames in {seconds:.1f} s "
          f"({args.samples * (args.frames - m) / max(seconds, 1e-9):.1f} frames/s; autoencoder "
          f"in {precision}" + "".join(f"; T's one-token steps on {line}"
                                      for line in threads.summary()) + ")")
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    from pipeline.synthesis.readers import SynthesisInputError

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (SynthesisInputError, ValueError) as err:
        print(f"ccvs synthesize: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
