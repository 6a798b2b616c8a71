"""Real-data learning benchmark: open_clip's own CLIP vs our CLIP vs our DeCLIP (and its ablations).

    python benchmarks/learning.py --seeds 3                       # everything, 2 runs at a time
    python benchmarks/learning.py --seeds 3 --sets digits --variants openclip,clip
    python benchmarks/learning.py --split val ...                 # recipe selection: score the VAL split

Data: benchmarks/learning_data.py builds the real sets (scikit-learn's handwritten digits, Noto Color Emoji
glyphs named by their Unicode names, the Latin letters of matplotlib's 22 typefaces, the freedesktop icons of
8 Debian icon themes) into a cache folder outside git.

Recipe (issue 12; its values and the variants: benchmarks/learning_variants.py), identical for every model
except each variant's augmentation and ViT init (the crop range is the one factor that ``clip`` / ``clip-crop09``
changes, the init the one that ``clip-crop09-ocinit`` adds, the crop's resize the one that
``clip-crop09-ocinit-bicubic`` adds):
tiny towers (ViT 4 x 128, patch 8, 32 px;
text 4 x 128, heads 2, context 32; embed 128), AdamW lr 5e-4, weight decay 0.1, cosine with 10% warm-up,
300 steps x batch 64 (``--steps`` runs every model, the open_clip peer included, on a longer schedule with
the same 10% warm-up), one CPU thread. Each "ours" run goes through the real CLI path: config -> trainer ->
checkpoint -> ``declip export`` (open_clip local-dir) -> ``open_clip.create_model_and_transforms``; the
open_clip peer is ``open_clip.model.CLIP`` trained by this file with ``open_clip.loss.ClipLoss`` and open_clip's
training defaults (its train transform, AdamW betas/eps, warm-up from 0, parameter clamp of the logit scale).
Every model is then scored by the same code (``score``): open_clip's eval transform with the model's own
mean/std, declip.eval.zeroshot for zero-shot, a local recall@k for retrieval.

Writes benchmarks/results/learning.md (mean +- std per cell) and learning.json (every run's numbers). The run
folders (--workdir) are scratch; learning.json is the record: a run it holds at the same split and schedule is
reused, not trained again, and ``--report`` rebuilds the table from both, on any machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from learning_data import build_all, load_images, load_split  # noqa: E402

from learning_variants import BATCH, CTX, LR, RECIPE, SMALL_DATA, STEPS, TOWERS, VARIANTS, WD  # noqa: E402

# ------------------------------------------------------------------------------------------------ scoring
def recall_at_k(a, b, ks=(1, 5)) -> dict[str, float]:
    """Row i of ``a`` matches row i of ``b`` (both L2-normalised). Ties go against the model."""
    sims = a @ b.t()
    true = sims.diag()[:, None]
    rank = (sims > true).sum(1) + ((sims == true).sum(1) - 1)
    return {f"R@{k}": 100.0 * (rank < k).float().mean().item() for k in ks}


def score(model, preprocess, root: Path, meta: dict, split: str) -> dict[str, float]:
    """The one scoring path for every model (an open_clip model and its eval transform)."""
    import torch
    import torch.nn.functional as F

    from declip.data.tokenizer import tokenize
    from declip.eval.common import EvalImages
    from declip.eval.zeroshot import classify

    model.eval()
    recs = load_split(root, split)
    images = load_images(root, recs)
    if meta["task"] == "zeroshot":
        ds = EvalImages(images.__getitem__, len(images), preprocess)
        res = classify(model, ds, [r["label"] for r in recs], meta["classnames"],
                       [t.format for t in meta["templates"]], torch.device("cpu"), batch_size=256,
                       context_length=CTX)
        return {"top1": res["top1"], "top5": res["top5"]}
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        txt = F.normalize(model.encode_text(tokenize([r["caption"] for r in recs], CTX)), dim=-1)
    i2t, t2i = recall_at_k(img, txt), recall_at_k(txt, img)
    return {"i2t_R@1": i2t["R@1"], "i2t_R@5": i2t["R@5"], "t2i_R@1": t2i["R@1"], "t2i_R@5": t2i["R@5"]}


# ----------------------------------------------------------------------------------------------- training
def warmup_steps(steps: int) -> int:
    """The recipe's warm-up: 10% of the schedule, for every model."""
    return steps // 10


def schedule(steps: int) -> list[str]:
    """Our overrides for a schedule of ``steps`` (the small-data config's own 300 / 30 at the default)."""
    return [f"train.steps={steps}", f"optim.warmup_steps={warmup_steps(steps)}"]


def train_openclip(root: Path, seed: int, workdir: Path, steps: int = STEPS):
    """open_clip's own CLIP with open_clip's training defaults (open_clip_train: AdamW betas (0.9, 0.98),
    eps 1e-6, no weight decay on gains/biases/logit scale, lr warm-up from 0 then cosine, logit scale clamped
    to [0, ln 100] after each step, train transform RandomResizedCrop(0.9-1) bicubic + OpenAI mean/std)."""
    import torch
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP
    from open_clip.transform import image_transform

    from declip.data.tokenizer import tokenize

    torch.manual_seed(seed)
    model = CLIP(embed_dim=128, vision_cfg={"image_size": 32, "layers": 4, "width": 128, "patch_size": 8,
                                            "head_width": 64},
                 text_cfg={"context_length": CTX, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4})
    train_tf = image_transform(32, is_train=True)
    eval_tf = image_transform(32, is_train=False)
    recs = load_split(root, "train")
    images = load_images(root, recs)
    tokens = tokenize([r["caption"] for r in recs], CTX)
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa
    params = list(model.named_parameters())
    opt = torch.optim.AdamW([
        {"params": [p for n, p in params if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
        {"params": [p for n, p in params if not exclude(n, p) and p.requires_grad], "weight_decay": WD}],
        lr=LR, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    model.train()
    warmup = warmup_steps(steps)
    for step in range(steps):
        lr = LR * (step + 1) / warmup if step < warmup else \
            0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * LR
        for group in opt.param_groups:
            group["lr"] = lr
        if len(order) < BATCH:  # epochs of a fresh permutation, drop_last
            order = torch.randperm(len(recs), generator=g).tolist()
        idx, order = order[:BATCH], order[BATCH:]
        x = torch.stack([train_tf(images[i]) for i in idx])
        img, txt, scale = model(x, tokens[idx])
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return model, eval_tf


def variant_config(variant: str, steps: int = STEPS) -> tuple[Path | None, list[str]]:
    """One of our variants as (config file, overrides): the small-data config with the variant's overrides, or
    the defaults with the benchmark's towers and recipe, then the variant's overrides; the schedule last."""
    method, overrides, small = VARIANTS[variant]
    if small:
        return SMALL_DATA, [*overrides, *schedule(steps)]
    return None, [f"method.name={method}", *TOWERS, *RECIPE, *overrides, *schedule(steps)]


def train_ours(root: Path, variant: str, seed: int, workdir: Path, extra: list[str], steps: int = STEPS):
    """Our trainer through its public path, then ``declip export`` and open_clip's loader."""
    import open_clip

    from declip.config import load_config
    from declip.export import export_open_clip
    from declip.train.trainer import train

    config_file, overrides = variant_config(variant, steps)
    args = [*overrides, *extra, f"train.seed={seed}", "data.source=manifest",
            f"data.path={root / 'train.jsonl'}", f"data.root={root}", "data.num_workers=0", "data.pin_memory=false",
            "train.device=cpu", "train.ckpt_every=0", "train.tensorboard=false", "train.progress=false",
            "train.log_every=100", "eval.builtin=false", f"train.output_dir={workdir / 'ckpt'}"]
    cfg = load_config(config_file, args)
    # the driver starts a worker only for a folder without result.json: checkpoints there are an interrupted run's
    summary = train(cfg, overwrite=True)
    out = export_open_clip(summary["checkpoint"], workdir / "export")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    return model, preprocess


def run_one(set_name: str, variant: str, seed: int, split: str, cache: Path, wheels: Path, workdir: Path,
            extra: list[str], steps: int = STEPS) -> dict:
    import torch

    torch.set_num_threads(1)
    roots = build_all(cache, wheels)
    root = roots[set_name]
    meta = json.loads((root / "meta.json").read_text())
    t0 = time.time()
    if variant == "openclip":
        model, preprocess = train_openclip(root, seed, workdir, steps)
    else:
        model, preprocess = train_ours(root, variant, seed, workdir, extra, steps)
    train_s = time.time() - t0
    res = score(model, preprocess, root, meta, split)
    return {"set": set_name, "variant": variant, "seed": seed, "split": split, "steps": steps, "extra": extra,
            "train_s": round(train_s, 1), **res}


# ------------------------------------------------------------------------------------------------- driver
PRIMARY = {"digits": "top1", "digits200": "top1", "emoji": "i2t_R@1", "letters": "top1", "icons": "top1"}


def table(runs: list[dict], sets: list[str], variants: list[str]) -> str:
    lines = ["| variant | " + " | ".join(f"{s} {PRIMARY[s]}" for s in sets) + " | wall s/run (shared CPU) |",
             "|---|" + "---|" * (len(sets) + 1)]
    for v in variants:
        cells, secs = [], []
        for s in sets:
            vals = [r[PRIMARY[s]] for r in runs if r["set"] == s and r["variant"] == v]
            secs += [r["train_s"] for r in runs if r["set"] == s and r["variant"] == v]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.1f} (n=1)")
            else:
                cells.append(f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f} (n={len(vals)})")
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {statistics.mean(secs):.0f} |" if secs else
                     f"| {v} | " + " | ".join(cells) + " | - |")
    return "\n".join(lines)


def kept_summary(path: Path) -> list[str]:
    """The lines between an existing report's title and its ``- date:`` line (none if there is no report)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()[1:]
    head = next((i for i, line in enumerate(lines) if line.startswith("- date:")), 0)
    summary = lines[:head]
    while summary and not summary[0].strip():
        summary.pop(0)
    return summary


def write_report(payload: dict, sets: list[str], variants: list[str], path: Path, notes: str = "") -> None:
    """benchmarks/results/learning.md: the table (mean +- sample std over seeds), how it was made, the notes.

    The hand-written summary that opens an existing report (everything between the title and the ``- date:``
    line: the current answer) is kept, so a rewrite of the table never drops what a reader sees first."""
    steps = payload.get("steps", STEPS)
    md = [f"# Learning benchmark (issue 12): {payload['split']} split", "", *kept_summary(path),
          f"- date: {payload['date']}", f"- command: `{payload['command']}`", f"- machine: {payload['machine']}",
          f"- recipe: ViT 4x128 patch 8 at 32 px, text 4x128 (2 heads) context 32, embed 128; AdamW lr {LR}, "
          f"wd {WD}, cosine with {warmup_steps(steps)}-step warm-up; {steps} steps x batch {BATCH}; seeds 0..n-1",
          "- metrics: digits = zero-shot top-1 (%) on the held-out split (10 classes, 3 templates); digits200 = the "
          "same on the same split, trained on 200 of digits' training pairs (20 per class); emoji = "
          "image->text recall@1 (%) over the held-out images and their own Unicode names; letters = zero-shot "
          "top-1 (%) over 26 letter names on typefaces never seen in training; icons = zero-shot top-1 (%) "
          "over 96 icon names on icon themes never seen in training", "",
          table(payload["runs"], sets, variants), ""]
    if notes:
        md += [notes, ""]
    path.write_text("\n".join(md))


def recorded_runs(out_json: Path, split: str, steps: int) -> dict[tuple[str, str, int], dict]:
    """(set, variant, seed) -> run, for the runs the report's JSON already holds at this split and schedule.

    The run folders live in a scratch --workdir that a fresh machine does not have; the JSON is what the
    project keeps. A grid reuses these runs instead of training them again, and --report keeps them, so a
    report regenerated elsewhere still has every row it had."""
    if not out_json.is_file():
        return {}
    payload = json.loads(out_json.read_text())
    if payload.get("split") != split or payload.get("steps", STEPS) != steps:
        return {}
    return {(r["set"], r["variant"], int(r["seed"])): r for r in payload["runs"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", default="digits,emoji,letters")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--steps", type=int, default=STEPS,
                    help=f"training steps for every model (default: the issue's {STEPS}); warm-up stays 10%%")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/declip-learning"))
    ap.add_argument("--wheels", default=os.path.expanduser("~/.cache/declip-learning/wheels"))
    ap.add_argument("--workdir", default="/tmp/declip-learning-runs")
    ap.add_argument("--out", default=str(HERE / "results" / "learning"))
    ap.add_argument("--tag", default="", help="suffix for workdir names (several recipe probes side by side)")
    ap.add_argument("--report", action="store_true", help="only rewrite the .md from the .json (with --notes)")
    ap.add_argument("--notes", default="", help="a markdown file appended to the report")
    ap.add_argument("--rerun", action="store_true", help="ignore results already in --workdir")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # set:variant:seed (a worker process)
    ap.add_argument("extra", nargs="*", help="key=value overrides for every 'ours' run (recipe probes)")
    a = ap.parse_args()
    cache, wheels, work = Path(a.cache), Path(a.wheels), Path(a.workdir)
    if a.steps < 10:
        ap.error(f"--steps {a.steps}: the schedule needs at least 10 steps (10% of them warm up)")
    tag = a.tag + (f"_s{a.steps}" if a.steps != STEPS else "")  # other schedules never reuse these runs

    def run_dir(set_name: str, variant: str, seed: int) -> Path:  # one run's folder (and, with .log, its log)
        return work / f"{set_name}-{variant}{tag}-{seed}-{a.split}"

    if a.one:
        s, v, seed = a.one.split(":")
        wd = run_dir(s, v, seed)
        wd.mkdir(parents=True, exist_ok=True)
        res = run_one(s, v, int(seed), a.split, cache, wheels, wd, a.extra, a.steps)
        (wd / "result.json").write_text(json.dumps(res))
        print(json.dumps(res), flush=True)
        return 0

    sets, variants = a.sets.split(","), a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS] + [s for s in sets if s not in PRIMARY]
    if unknown:  # before any run starts, not as a failed worker per seed
        ap.error(f"unknown variant or set: {', '.join(unknown)} (variants: {', '.join(VARIANTS)}; "
                 f"sets: {', '.join(PRIMARY)})")
    notes = Path(a.notes).read_text() if a.notes else ""
    # a tagged probe or one with overrides is not the grid its --out JSON records
    recorded = recorded_runs(Path(a.out + ".json"), a.split, a.steps) if not (a.tag or a.extra) else {}
    grid = [(s, v, seed) for s in sets for v in variants for seed in range(a.seeds)]

    def finished(key: tuple[str, str, int]) -> dict | None:  # this run's result: its folder's, else the JSON's
        done = run_dir(*key) / "result.json"
        return json.loads(done.read_text()) if done.is_file() else recorded.get(key)

    if a.report:  # collect every finished run in --workdir (also those of an interrupted grid)
        # exactly this grid's folders: a glob would also take the tagged probes and other schedules
        runs = [run for run in map(finished, grid) if run is not None]
        steps_arg = f" --steps {a.steps}" if a.steps != STEPS else ""
        payload = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "command": f"python benchmarks/learning.py --seeds {a.seeds} --sets {a.sets} --variants "
                              f"{a.variants} --split {a.split}{steps_arg}",
                   "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
                              "1 thread per run, 2 runs at a time",
                   "split": a.split, "steps": a.steps, "extra": a.extra, "runs": runs}
        kept = [r for key, r in recorded.items() if key not in grid]  # other sets, variants and seeds stay
        Path(a.out + ".json").write_text(json.dumps({**payload, "runs": runs + kept}, indent=1))
        write_report(payload, sets, variants, Path(a.out + ".md"), notes)
        print(Path(a.out + ".md").read_text())
        return 0
    jobs = [(s, v, seed) for seed in range(a.seeds) for s in sets for v in variants]
    if a.rerun or any(finished(j) is None for j in jobs):
        build_all(cache, wheels)  # once here, not in two workers at a time
    runs, running = [], []
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    while jobs or running:
        while jobs and len(running) < a.jobs:
            s, v, seed = jobs.pop(0)
            earlier = None if a.rerun else finished((s, v, seed))  # an interrupted or extended grid, or the JSON
            if earlier is not None:
                runs.append(earlier)
                continue
            cmd = [sys.executable, __file__, "--one", f"{s}:{v}:{seed}", "--split", a.split, "--cache", str(cache),
                   "--wheels", str(wheels), "--workdir", str(work), f"--tag={a.tag}", f"--steps={a.steps}", *a.extra]
            log = open(f"{run_dir(s, v, seed)}.log", "w") if work.mkdir(parents=True, exist_ok=True) \
                is None else None
            running.append(((s, v, seed), subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                                           env=env), log))
        time.sleep(1)
        for item in list(running):
            key, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            out = proc.stdout.read().strip().splitlines()
            if proc.returncode == 0 and out:
                runs.append(json.loads(out[-1]))
                print(f"[{time.time() - start:6.0f}s] {out[-1]}", flush=True)
            else:
                print(f"FAILED {key}: see {log.name}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join([Path(sys.executable).name, "benchmarks/learning.py", *sys.argv[1:]]),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 thread per run",
               "split": a.split, "steps": a.steps, "extra": a.extra, "runs": runs}
    kept = [r for key, r in recorded.items() if key not in grid]  # a sub-grid never drops the JSON's other runs
    Path(str(out) + ".json").write_text(json.dumps({**payload, "runs": runs + kept}, indent=1))
    write_report(payload, sets, variants, Path(str(out) + ".md"), notes)
    print(table(runs, sets, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
