"""Loader images/s from disk vs from a local S3 server with per-request latency, by workers and readahead
(issue 39.1): how much of an object store's latency the per-worker readahead (``data.readahead``) hides.

The same webdataset shards (generated 320x240 photo-like JPEGs, one CLIP view at 224 px plus BPE text per
sample, the training loader's own ``PairDataset`` + ``build_train_loader``) are read

  disk        from a local folder (the pread fast path)
  s3 0 ms     from ``s3://`` on moto's S3 server (tests/s3_server.py) running in a process of its own on
              127.0.0.1: one ranged GET per sample, readahead 0 / 8 / 32 samples per worker
  s3 X ms     the same server with every request delayed by X ms (a WSGI wrapper: a far store's round trip)

Images/s are measured after the first batch (worker start-up is not throughput), best of ``--repeats``
interleaved repeats. t = seconds per image. "hidden vs disk" is the share of the store's whole cost (t_s3 -
t_disk: the added delay plus moto's own time per request, both waiting from the loader's side) that readahead
removes: 1 - (t_X(ra) - t_disk) / (t_X(0) - t_disk); the goal is >= 80%. "hidden vs 0 ms" charges only the added
delay: 1 - (t_X(ra) - t_0(ra)) / (t_X(0) - t_0(0)); it is noisy where moto's own time (milliseconds of CPU per
request, on cores it shares with the workers) is as large as the delay.

    python benchmarks/s3_loader.py [--images 384] [--samples 256] [--latency-ms 20] [--repeats 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' local S3 server

from s3_server import LocalS3, client_env, set_delay  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_throughput import loader_rate  # noqa: E402  (the same timing as the disk loader benchmark)

from declip import storage  # noqa: E402
from declip.data.loader import DataSpec, PairDataset, build_train_loader  # noqa: E402
from declip.data.shards import ShardSource  # noqa: E402

SIZE = 224
WORDS = "a photo of the old red bridge over river at sunset with trees and people walking dog in park".split()


def make_shards(folder: Path, n: int, per_shard: int = 16) -> Path:
    """n generated 320x240 JPEGs (a colour field + shapes + grain; image i depends only on i) in shards."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with wds.TarWriter(str(folder / f"{s // per_shard:05d}.tar")) as tw:
            for i in range(s, min(n, s + per_shard)):
                rng, pyr = np.random.default_rng(i), random.Random(i)
                img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((320, 240))
                d = ImageDraw.Draw(img)
                for _ in range(5):
                    x, y, r = pyr.randrange(320), pyr.randrange(240), pyr.randint(8, 50)
                    d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(pyr.randrange(256) for _ in range(3)))
                arr = (np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (240, 320, 3))).clip(0, 255)
                path = folder / "tmp.jpg"
                Image.fromarray(arr.astype(np.uint8)).save(path, quality=90)
                tw.write({"__key__": f"{i:06d}", "jpg": path.read_bytes(),
                          "txt": " ".join(pyr.choice(WORDS) for _ in range(pyr.randint(6, 16)))})
    (folder / "tmp.jpg").unlink()
    return folder


def _serve(delay_s: float, conn) -> None:
    """The S3 server in a process of its own (its request handling must not share the loader's GIL)."""
    with LocalS3(delay_s=delay_s) as s3:
        conn.send(s3.endpoint)
        conn.recv()  # until told to stop


def images_per_s(pattern: str, workers: int, readahead: int, samples: int, index_dir: str, batch: int = 32):
    source = ShardSource(pattern, image_size=SIZE, index_dir=index_dir)
    ds = PairDataset(source, DataSpec(), SIZE, seed=0, readahead=readahead)
    return loader_rate(build_train_loader(ds, batch, workers, 0, 1, seed=0), samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--samples", type=int, default=256, help="images timed per configuration (after 1 batch)")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--readahead", default="0,8,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="", help="append the markdown report to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]
    readaheads = [int(r) for r in args.readahead.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="declip-s3-bench-"))
    make_shards(tmp / "shards", args.images)
    parent, child = mp.get_context("spawn").Pipe()
    server = mp.get_context("spawn").Process(target=_serve, args=(0.0, child), daemon=True)
    server.start()
    endpoint = parent.recv()
    os.environ.update(client_env(endpoint))
    storage.reset()
    fs = storage.filesystem("s3://")
    fs.mkdir("declip-bench")
    for p in sorted((tmp / "shards").glob("*.tar")):
        fs.pipe_file(f"s3://declip-bench/shards/{p.name}", p.read_bytes())
    local, remote = str(tmp / "shards"), "s3://declip-bench/shards"
    index = str(tmp / "index")
    ShardSource(local, index_dir=index), ShardSource(remote, index_dir=index)  # indexes built before timing

    rows: dict[tuple, float] = {}
    lat = args.latency_ms

    def note(key, rate):
        rows[key] = max(rows.get(key, 0), rate)

    try:
        for _ in range(args.repeats):  # interleaved repeats: a load change hits every configuration alike
            for w in workers:
                note(("disk", w, 0), images_per_s(local, w, 0, args.samples, index))
                for delay in (0, lat):
                    set_delay(endpoint, delay)
                    for ra in readaheads:
                        note((delay, w, ra), images_per_s(remote, w, ra, args.samples, index))
                        print(f"w={w} {delay:g} ms ra={ra}: {rows[(delay, w, ra)]:.1f} img/s "
                              f"(disk {rows[('disk', w, 0)]:.1f})", flush=True)
    finally:
        parent.send("stop")
        server.join(10)

    t = {k: 1 / v for k, v in rows.items()}
    ahead = [ra for ra in readaheads if ra]
    load = os.getloadavg()[0]
    lines = [f"# S3 loader: disk vs a local S3 server with {lat:g} ms per request, by workers and readahead", "",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU cores "
             f"({platform.processor() or platform.machine()}) shared with other work (load average {load:.1f} at "
             f"the end), torch {torch.__version__}; {args.images} 320x240 JPEGs in shards of 16, one 224 px CLIP "
             f"view + text per sample, batch 32, best of {args.repeats} interleaved repeats of {args.samples} "
             "images; the S3 server (moto) in its own process on the same cores.", "",
             f"Command: `python benchmarks/s3_loader.py --images {args.images} --samples {args.samples} "
             f"--latency-ms {lat:g} --workers {args.workers} --readahead {args.readahead} --repeats {args.repeats}`",
             "", "| workers | disk | " + " | ".join(f"s3 0 ms ra={ra}" for ra in readaheads) + " | " +
             " | ".join(f"s3 {lat:g} ms ra={ra}" for ra in readaheads) + " | " +
             " | ".join(f"hidden vs disk ra={ra}" for ra in ahead) + " | " +
             " | ".join(f"hidden vs 0 ms ra={ra}" for ra in ahead) + " |",
             "|---" * (2 + 2 * len(readaheads) + 2 * len(ahead)) + "|"]
    for w in workers:
        cost0 = t[(lat, w, 0)] - t[(0, w, 0)]
        hidden = [1 - (t[(lat, w, ra)] - t[(0, w, ra)]) / cost0 for ra in ahead]
        base = t[(lat, w, 0)] - t[("disk", w, 0)]
        vs_disk = [1 - (t[(lat, w, ra)] - t[("disk", w, 0)]) / base for ra in ahead]
        lines.append(f"| {w} | {rows[('disk', w, 0)]:.1f} | " +
                     " | ".join(f"{rows[(0, w, ra)]:.1f}" for ra in readaheads) + " | " +
                     " | ".join(f"{rows[(lat, w, ra)]:.1f}" for ra in readaheads) + " | " +
                     " | ".join(f"{h:.0%}" for h in vs_disk) + " | " + " | ".join(f"{h:.0%}" for h in hidden) + " |")
    lines += ["", "Images/s per configuration (the loader's output, all workers together)."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
