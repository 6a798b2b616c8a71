"""Distribution and resume of the data stream: 2 ranks x 2 workers read disjoint samples that together cover
the data set, and a loader rebuilt from a checkpoint's ``data.consumed`` continues with exactly the next
unseen samples."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from declip.data.loader import DataSpec, PairDataset, build_train_loader
from declip.data.manifest import ManifestSource
from declip.train.checkpoint import load_checkpoint
from declip.train.trainer import Trainer

N = 64


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    (tmp / "img").mkdir()
    with open(tmp / "m.jsonl", "w") as f:
        for i in range(N):
            img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            (tmp / "img" / f"{i}.jpg").write_bytes(buf.getvalue())
            f.write(json.dumps({"filename": f"{i}.jpg", "caption": f"photo number {i} of a thing"}) + "\n")
    return tmp / "m.jsonl", tmp / "img"


class WorkerTagged(PairDataset):
    """Records which DataLoader worker produced each sample (-1: the main process)."""

    def __getitem__(self, item):
        sample = super().__getitem__(item)
        info = get_worker_info()
        sample["worker"] = torch.tensor(info.id if info else -1)
        return sample


def _dataset(manifest, cls=PairDataset, spec=DataSpec()):
    return cls(ManifestSource(*manifest, image_size=32), spec, image_size=32, seed=5)


def test_two_ranks_two_workers_read_disjoint_samples_covering_the_data(manifest):
    bs, world = 4, 2
    seen: dict[tuple[int, int], list[int]] = {}
    for rank in range(world):
        loader = build_train_loader(_dataset(manifest, WorkerTagged), bs, num_workers=2, rank=rank,
                                    world_size=world, seed=5)
        it = iter(loader)
        for _ in range(N // world // bs):  # one epoch of this rank's share
            batch = next(it)
            for idx, w in zip(batch["index"].tolist(), batch["worker"].tolist()):
                seen.setdefault((rank, w), []).append(idx)
        del it, loader  # shut the persistent workers down
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every worker of every rank did work
    flat = [i for ids in seen.values() for i in ids]
    assert len(flat) == len(set(flat)) == N  # disjoint, and together exactly the data set
    assert sorted(flat) == list(range(N))


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("rank", [0, 1])
def test_rebuilt_loader_continues_with_the_next_unseen_samples(manifest, rank):
    bs, world = 4, 2  # 8 batches per epoch per rank; stop mid-epoch and resume across the epoch boundary
    spec = DataSpec(n_views=2, augment="mocov2")
    ds = _dataset(manifest, spec=spec)
    straight = _take(build_train_loader(ds, bs, 0, rank, world, seed=5), 13)
    consumed = 5 * bs
    resumed = _take(build_train_loader(ds, bs, 2, rank, world, seed=5, start=consumed), 8)
    for a, b in zip(straight[5:], resumed):
        _same(a, b)  # same samples, same augmentations, with workers or without
    first_epoch = [i for b in straight[:8] for i in b["index"].tolist()]
    assert len(set(first_epoch)) == N // world  # no repeats within an epoch


def test_checkpoint_round_trip_keeps_the_data_position(manifest, tiny_cfg, tmp_path):
    path, root = manifest
    cfg = tiny_cfg("train.steps=2", "train.ckpt_every=2", "method.name=clip", "eval.builtin=false",
                   "data.source=manifest", f"data.path={path}", f"data.root={root}", "train.batch_size=8")
    trainer = Trainer(cfg)
    seen = []
    original = trainer.loader

    class Recording:  # the trainer's loader, recording which samples it hands out
        timeout = original.timeout  # the trainer's fetch deadline reads it (data/fetch.py)

        def __iter__(self):
            for batch in original:
                seen.append(batch["index"].tolist())
                yield batch

    trainer.loader = Recording()
    trainer.train()
    trainer.close()
    state = load_checkpoint(sorted((tmp_path / "run").glob("ckpt_*.pt"))[-1])
    consumed = int(state["data"]["consumed"])
    assert consumed == 2 * 8
    ds = PairDataset(ManifestSource(path, root, image_size=32), trainer.method.data_spec(cfg), 32, cfg.train.seed)
    straight = _take(build_train_loader(ds, 8, 0, 0, 1, cfg.train.seed), 4)
    assert [b["index"].tolist() for b in straight[:2]] == seen  # the trainer read exactly the first 2 batches
    resumed = _take(build_train_loader(ds, 8, 0, 0, 1, cfg.train.seed, start=consumed), 2)
    for a, b in zip(straight[2:], resumed):
        _same(a, b)
