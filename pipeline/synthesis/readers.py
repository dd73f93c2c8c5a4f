"""Readers of a user's synthesis inputs (``ccvs synthesize``, ``pipeline.synthesis.models``): start
frames, an end-frame image, a trajectory CSV, a sound track, layouts — each checked, resized to the
model's resolution and returned as :class:`Loaded` with notes for the user. The conventions (sizes,
the CSV's pixel frame, the sound's timing, the layouts npz) are in ``pipeline.synthesis.models``'s
docstring and docs/CONTRACTS.md. Every problem is a :class:`SynthesisInputError` whose message is
one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from pipeline.tokens.shards import StateBins
from pipeline.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")


class SynthesisInputError(UserError, ValueError):
    """A model file or user input that synthesis cannot use; one line naming it and the problem."""


class Loaded(NamedTuple):
    """What a reader returns."""

    data: np.ndarray  # the input at the model's resolution / in its units (see each reader)
    notes: list[str]  # what was done to it ("resized …", "used the first …"), for the user


# --------------------------------------------------------------------------- images


def _wh(shape: Sequence[int]) -> str:
    return f"{shape[1]}×{shape[0]}"


def fit_image(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """(H0, W0[, 3]) uint8 → (H, W[, 3]): the short side scaled to fit, then a center crop
    (bilinear, antialiased when shrinking; ``nearest`` for class maps: no new values)."""
    h, w = size
    h0, w0 = image.shape[:2]
    if (h0, w0) == (h, w):
        return image
    scale = max(h / h0, w / w0)
    cw, ch = w / scale, h / scale  # the source box that maps onto the output
    x0, y0 = (w0 - cw) / 2, (h0 - ch) / 2
    out = Image.fromarray(image).resize((w, h), Image.NEAREST if nearest else Image.BILINEAR,
                                        box=(x0, y0, x0 + cw, y0 + ch))
    return np.asarray(out)


def fit_images(images: np.ndarray, size: tuple[int, int], resize: bool, path: Any, what: str,
             nearest: bool = False) -> Loaded:
    """A stack (T, H0, W0[, 3]) → (T, H, W[, 3]) with a note; wrong size and no resize → error."""
    src = images.shape[1:3]
    if tuple(src) == tuple(size):
        return Loaded(images, [])
    if not resize:
        raise SynthesisInputError(f"{path}: {what} {'are' if what.endswith('s') else 'is'} "
                                  f"{_wh(src)}, the model works at {_wh(size)} (resizing is off)")
    same_aspect = src[0] * size[1] == src[1] * size[0]
    how = "scaled" if same_aspect else "short side scaled, center crop"
    out = np.stack([fit_image(f, size, nearest) for f in images])
    return Loaded(out, [f"{path}: resized {what} {_wh(src)} → {_wh(size)} ({how})"])


def _open_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SynthesisInputError(f"{path}: not a readable image ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[-1] if lines else type(err).__name__)[:200]


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        raise SynthesisInputError(f"{path}: {what} file not found")


def read_image(path: str | Path, size: tuple[int, int], *, resize: bool = True,
               what: str = "end frame") -> Loaded:
    """An image file (png/jpg; RGBA/grey converted) → uint8 (H, W, 3) at ``size`` = (H, W)."""
    path = Path(path)
    _exists(path, what)
    fitted = fit_images(_open_rgb(path)[None], size, resize, path, what)
    return Loaded(fitted.data[0], fitted.notes)


def read_start_frames(path: str | Path, num_frames: int, size: tuple[int, int], *,
                      resize: bool = True, fps: float | None = None) -> Loaded:
    """The first ``num_frames`` (m ≥ 1) frames of a video (mp4 or anything PyAV decodes), a GIF,
    or a folder of png/jpg images (sorted by name) → uint8 (m, H, W, 3) at ``size`` = (H, W).
    ``fps``: the data's frame rate, to note a video recorded at another rate (frames are taken
    as they come, not resampled in time)."""
    from pipeline.data.media import MediaError, iter_frames, probe

    path = Path(path)
    if num_frames < 1:
        raise SynthesisInputError(f"{path}: at least one start frame is needed, asked for "
                                  f"{num_frames}")
    _exists(path, "start frames")
    notes: list[str] = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < num_frames:
            raise SynthesisInputError(f"{path}: {len(files)} png/jpg images, {num_frames} start "
                                      f"frames requested")
        images = [_open_rgb(p) for p in files[:num_frames]]
        shapes = {im.shape for im in images}
        if len(shapes) > 1 and not resize:
            raise SynthesisInputError(f"{path}: images of different sizes "
                                      f"({', '.join(sorted(_wh(s) for s in shapes))})")
        notes.append(f"{path}: start frames {files[0].name} … {files[num_frames - 1].name}")
        fitted = [fit_images(im[None], size, resize, files[i], "start frame")
                  for i, im in enumerate(images)]
        seen: set[str] = set()
        for f in fitted:  # one note per distinct source size
            what = f.notes[0].split(": ", 1)[-1] if f.notes else None
            if what is not None and what not in seen:
                seen.add(what)
                notes.append(f.notes[0])
        return Loaded(np.concatenate([f.data for f in fitted]), notes)
    if path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as im:
                frames_list = []
                for frame in ImageSequence.Iterator(im):
                    frames_list.append(np.asarray(frame.convert("RGB")))
                    if len(frames_list) == num_frames:
                        break
        except (UnidentifiedImageError, OSError, ValueError, EOFError) as err:
            raise SynthesisInputError(f"{path}: not a readable GIF ({_one_line(err)})") from None
        raw = frames_list
    else:
        try:
            info = probe(path)
            raw = []
            for chunk in iter_frames(path, chunk_size=num_frames, info=info, backend="av"):
                raw.extend(chunk)
                if len(raw) >= num_frames:
                    break
        except MediaError as err:
            raise SynthesisInputError(str(err)) from None
        if fps and abs(info.fps - fps) > 0.01 * fps:
            notes.append(f"{path}: the video is {info.fps:g} fps, the model's data {fps:g} fps "
                         f"(frames taken as they come)")
    if len(raw) < num_frames:
        raise SynthesisInputError(f"{path}: has {len(raw)} frames, {num_frames} start frames "
                                  f"requested")
    fitted = fit_images(np.stack(raw[:num_frames]), size, resize, path, "start frames")
    return Loaded(fitted.data, notes + fitted.notes)


def to_model_frames(frames: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (m, H, W, 3) → float (1, m, 3, H, W) in [−1, 1] (``sampler.synthesize``'s start)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)[None]


# --------------------------------------------------------------------------- trajectory, class


def read_trajectory_xy(path: str | Path, num_frames: int) -> Loaded:
    """A CSV with columns ``x``, ``y`` (header; other columns ignored), one row per output frame
    → float32 (n, 2) pixel positions (module doc: origin at the top-left pixel centre, x right,
    y down); an empty cell or ``nan`` → NaN (unknown)."""
    path = Path(path)
    _exists(path, "trajectory")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if "x" not in fields or "y" not in fields:
                raise SynthesisInputError(f"{path}: needs a header with columns x,y (got "
                                          f"{','.join(reader.fieldnames or []) or 'none'})")
            rows = []
            for i, row in enumerate(reader, start=2):  # line numbers as an editor shows them
                xy = []
                for c in ("x", "y"):
                    cell = (row.get(fields[c]) or "").strip()
                    try:
                        xy.append(float(cell) if cell else math.nan)
                    except ValueError:
                        raise SynthesisInputError(f"{path}: line {i}: {c}={cell!r} is not a "
                                                  f"number") from None
                rows.append(xy)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SynthesisInputError(f"{path}: not a readable CSV ({_one_line(err)})") from None
    if len(rows) != num_frames:
        raise SynthesisInputError(f"{path}: {len(rows)} trajectory rows, expected {num_frames} "
                                  f"(one x,y per output frame)")
    xy = np.asarray(rows, np.float32).reshape(num_frames, 2)
    if np.isinf(xy).any():
        raise SynthesisInputError(f"{path}: holds infinite positions")
    return Loaded(xy, [])


def read_trajectory(path: str | Path, num_frames: int, bins: StateBins) -> Loaded:
    """:func:`read_trajectory_xy` → int16 (n, 2) state bins (x, y); NaN → the null id B. Notes
    count unknown rows and positions outside the frame (clamped into the border bins)."""
    xy, notes = read_trajectory_xy(path, num_frames)
    unknown = int(np.isnan(xy).any(axis=1).sum())
    if unknown:
        notes.append(f"{path}: {unknown} rows without a position (unknown state)")
    lo = np.array([bins.x_range[0], bins.y_range[0]])
    hi = np.array([bins.x_range[1], bins.y_range[1]])
    finite = np.isfinite(xy)
    outside = int((finite & ((xy < lo) | (xy > hi))).any(axis=1).sum())
    if outside:
        notes.append(f"{path}: {outside} positions outside the frame [{lo[0]:g}, {hi[0]:g}] × "
                     f"[{lo[1]:g}, {hi[1]:g}], clamped to the border bins")
    return Loaded(bins.quantize(xy), notes)


def class_id(label: str | int, classes: Sequence[str], num_classes: int) -> int:
    """A class name (or an id, as int or digits) → its id in ⟦0, num_classes⟦."""
    if isinstance(label, str) and label in classes:
        return list(classes).index(label)
    text = str(label).strip()
    if text.lstrip("-").isdigit() and 0 <= int(text) < num_classes:
        return int(text)
    known = ", ".join(classes) if classes else f"ids 0..{num_classes - 1}"
    raise SynthesisInputError(f"class {label!r}: unknown; the model knows: {known}")


# --------------------------------------------------------------------------- sound, layouts


def read_sound(path: str | Path, num_frames: int, fps: float, sample_rate: int) -> Loaded:
    """An audio file (wav/flac/ogg/aiff via soundfile) or a video's audio track (PyAV) → float32
    mono (samples,) at ``sample_rate``, exactly n / fps seconds: the output video's sound from
    its first frame. Shorter by more than one frame → error (both durations); a little shorter →
    padded with silence; longer → cut (noted)."""
    from pipeline.data.media import MediaError, read_audio

    path = Path(path)
    _exists(path, "sound")
    notes: list[str] = []
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        import soundfile as sf
        import soxr

        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, OSError, ValueError) as err:  # LibsndfileError is a RuntimeError
            raise SynthesisInputError(f"{path}: not a readable audio file ({_one_line(err)})") \
                from None
        audio = data.mean(axis=1)
        if data.shape[1] > 1:
            notes.append(f"{path}: mixed {data.shape[1]} channels down to mono")
        if rate != sample_rate and audio.size:
            audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
            notes.append(f"{path}: resampled the audio {rate} Hz → {sample_rate} Hz")
    else:
        try:
            audio = read_audio(path, audio_rate=sample_rate, backend="av")
        except MediaError as err:
            raise SynthesisInputError(str(err)) from None
        if audio is None:
            raise SynthesisInputError(f"{path}: has no audio track")
    if not np.all(np.isfinite(audio)):
        raise SynthesisInputError(f"{path}: the audio holds NaN or infinite samples")
    need = int(round(num_frames / fps * sample_rate))
    have = int(audio.size)
    if have < need - sample_rate / fps:
        raise SynthesisInputError(
            f"{path}: the audio track lasts {have / sample_rate:.2f} s, shorter than the requested "
            f"video ({num_frames} frames at {fps:g} fps = {num_frames / fps:.2f} s)")
    if have < need:
        audio = np.pad(audio, (0, need - have))
        notes.append(f"{path}: padded the last {(need - have) / sample_rate * 1000:.0f} ms of "
                     f"audio with silence")
    elif have > need + sample_rate / fps / 2:
        notes.append(f"{path}: used the first {need / sample_rate:.2f} s of the "
                     f"{have / sample_rate:.2f} s audio track")
    return Loaded(np.ascontiguousarray(audio[:need], dtype=np.float32), notes)


def read_layouts(path: str | Path, num_frames: int, size: tuple[int, int], num_classes: int, *,
                 resize: bool = True) -> Loaded:
    """An npz with ``layout`` (or one array): integer (T, H0, W0) class maps (or one (H0, W0)
    map for every frame), labels < ``num_classes`` = K → uint8 (n, H, W) (the first n frames;
    resized nearest-neighbour like the images)."""
    path = Path(path)
    _exists(path, "layouts")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            key = "layout" if "layout" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise SynthesisInputError(f"{path}: needs an array named 'layout' (has: "
                                          f"{', '.join(names) or 'none'})")
            maps = npz[key]
    except SynthesisInputError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile/numpy raise many kinds: "unreadable"
        raise SynthesisInputError(f"{path}: not a readable npz ({_one_line(err)})") from None
    notes: list[str] = []
    if not np.issubdtype(maps.dtype, np.integer) and maps.dtype != np.bool_:
        raise SynthesisInputError(f"{path}: layouts must be integer class maps, got {maps.dtype}")
    if maps.ndim == 2:
        maps = np.repeat(maps[None], num_frames, axis=0)
        notes.append(f"{path}: one layout map used for all {num_frames} frames")
    if maps.ndim != 3:
        raise SynthesisInputError(f"{path}: layouts must be T×H×W, got shape {maps.shape}")
    if maps.size and (int(maps.min()) < 0 or int(maps.max()) >= num_classes):
        raise SynthesisInputError(f"{path}: layout labels span {int(maps.min())}.."
                                  f"{int(maps.max())}, the layout model knows 0..{num_classes - 1}")
    if len(maps) < num_frames:
        raise SynthesisInputError(f"{path}: {len(maps)} layout frames, the video has {num_frames}")
    if len(maps) > num_frames:
        notes.append(f"{path}: used the first {num_frames} of {len(maps)} layout frames")
    fitted = fit_images(maps[:num_frames].astype(np.uint8), size, resize, path, "layouts",
                      nearest=True)
    return Loaded(fitted.data, notes + fitted.notes)
