"""pipeline.data.stream: shuffle blocks, the rank × worker split, exact resume, bounded reading."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.data import shards as shards_mod
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.data.shards import list_shards
from pipeline.data.stream import ShardStream, StreamError, reader_items
from pipeline.training.config import LoopConfig
from pipeline.training.loop import fit
from pipeline.training.task import TrainTask

N = 23  # samples


@pytest.fixture(scope="module")
def urls(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("stream") / "train"
    with ShardWriter(folder, 6000) as writer:  # ~4 samples per shard
        for i in range(N):
            frames = np.full((2, 4, 4, 3), i, np.uint8)
            writer.write(encode_sample(f"v{i}_0000", frames, {"i": i}))
    found = list_shards(folder)
    assert len(found) >= 5
    return found


def one_item(sample, rng) -> list:
    return [int(sample["meta"]["i"])]


def two_items(sample, rng) -> list:  # per-sample randomness: a stage's random window start
    i = int(sample["meta"]["i"])
    return [(i, int(rng.integers(1000))), (i, -1)]


def as_list(items, step) -> list:
    return list(items)


def three(step: int) -> int:
    return 3


def _epoch(urls, consumer=0, consumers=1, shuffle=0, to_items=one_item):
    items = reader_items(urls, consumer, consumers, seed=5, shuffle=shuffle, to_items=to_items)
    out = []
    for item, where in items:
        if where["epoch"] > 0:
            break
        out.append(item)
    return out


def test_one_epoch_is_every_sample_once(urls):
    assert _epoch(urls) == sorted(_epoch(urls))  # shuffle 0: shard order
    shuffled = _epoch(urls, shuffle=4)
    assert sorted(shuffled) == list(range(N)) and shuffled != list(range(N))


def test_blocks_mix_shards_and_epochs_differ(urls):
    items = reader_items(urls, 0, 1, seed=5, shuffle=8, to_items=two_items)
    epochs = [[], []]
    for item, where in itertools.islice(items, 4 * N):
        epochs[where["epoch"]].append(item)
    assert sorted(x[0] for x in epochs[0]) == sorted(x[0] for x in epochs[1]) == sorted(2 * list(range(N)))
    assert epochs[0] != epochs[1]  # a new shard order and new blocks each epoch
    starts = {e: {i: r for i, r in ep if r >= 0} for e, ep in enumerate(epochs)}
    assert starts[0] != starts[1]  # the per-sample draw is seeded by the epoch too


@pytest.mark.parametrize("consumers", [2, 3, 8, 23])
def test_readers_are_disjoint_and_complete(urls, consumers):
    # 2, 3: whole shards per reader; 8, 23: more readers than shards, every reader reads every
    # shard and keeps every consumers-th sample
    parts = [_epoch(urls, c, consumers, shuffle=3) for c in range(consumers)]
    assert sorted(itertools.chain(*parts)) == list(range(N))
    assert all(parts)


def test_more_readers_than_samples_is_an_error(urls):
    with pytest.raises(StreamError, match=r"reader 30 of 31 .* has no sample"):
        next(reader_items(urls, 30, 31, seed=0, shuffle=0, to_items=one_item))
    with pytest.raises(StreamError, match="gave no training item"):
        next(reader_items(urls, 0, 1, seed=0, shuffle=0, to_items=lambda s, r: []))


def test_reading_stays_one_block_ahead(urls, monkeypatch):
    decoded = []
    real = shards_mod.decode_sample
    monkeypatch.setattr(shards_mod, "decode_sample",
                        lambda key, members, where="": decoded.append(key) or real(key, members, where))
    items = reader_items(urls, 0, 1, seed=1, shuffle=5, to_items=one_item)
    next(items)
    assert len(decoded) == 5  # one block of 5 samples, not the split
    for _ in range(4):
        next(items)
    assert len(decoded) == 5
    next(items)
    assert len(decoded) == 10


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_from_a_position_continues_exactly(urls, workers):
    stream = ShardStream(tuple(urls), two_items, as_list, three, seed=9, shuffle=4,
                         workers=workers)
    whole = list(itertools.islice(stream(0), 40))  # 240 items: over 5 epochs
    for cut in (1, 7, 13):
        it = stream(0)
        first = list(itertools.islice(it, cut))
        state = it.state_dict()
        rest = list(itertools.islice(stream(cut, state), 40 - cut))
        assert first + rest == whole, cut
    if workers:  # batch k comes from worker k mod W
        it = stream(0)
        next(it)
        assert it.state_dict()["next"] == 1 and it.state_dict()["positions"][1] is None


# --------------------------------------------------------------------------- with fit


class Recorder(TrainTask):
    def __init__(self):
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.lin.parameters(), lr=0.01)
        self.seen: list = []

    def modules(self):
        return {"lin": self.lin}

    def optimizers(self):
        return {"sgd": self.opt}

    def config(self):
        return {"x": 1}

    def train_step(self, batch, step, ctx):
        self.seen.append(batch)
        x = torch.tensor([[float(b[0])] for b in batch])
        with ctx.autocast():
            loss = ctx.modules["lin"](x).pow(2).mean()
        ctx.optimize(loss, "sgd")
        return {"loss": loss.item()}


def test_fit_checkpoints_the_stream_position_and_resumes_it(urls, tmp_path):
    stream = ShardStream(tuple(urls), two_items, as_list, three, seed=2, shuffle=6)
    loop = LoopConfig(steps=20, ckpt_every=7, device="cpu")
    whole = Recorder()
    fit(whole, stream, loop, tmp_path / "a")
    cut = Recorder()
    fit(cut, stream, LoopConfig(steps=7, ckpt_every=7, device="cpu"), tmp_path / "b")
    resumed = Recorder()
    result = fit(resumed, stream, loop, tmp_path / "b")
    assert result.resumed_from == 7
    assert cut.seen + resumed.seen == whole.seen
