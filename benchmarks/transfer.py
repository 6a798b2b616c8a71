"""Transfer benchmark (issue 40): fine-tune a pretrained model on a held-out set; what it learns, what it keeps.

    python benchmarks/transfer.py --seeds 3          # the grid, 2 runs at a time; recorded runs are skipped
    python benchmarks/transfer.py --report           # rebuild transfer.md from transfer.json, on any machine

Per seed, our CLIP (learning.py's ``clip-crop09-ocinit`` recipe) is pre-trained on one caption manifest made of the
SOURCE sets' training splits (default: digits + emoji; digits200 is a subset of digits, counted once) and exported
to open_clip (cached in --workdir, keyed by its settings). Then, on each TARGET set (default: letters and icons,
split by typeface / icon theme, so zero-shot on their test split is a transfer to looks never trained on), the
export is fine-tuned through the real CLI (``declip train --config ... model.init_from=local-dir:EXPORT`` with the
learning benchmark's towers, recipe and 300 steps; then ``declip export``) by:

* (a) ``clip``: CLIP (``clip-crop09-ocinit``);  (b) ``declip``: the small-data DeCLIP (``declip-small``, the
  shipped configs/declip_small_data.yaml);  (c) ``lit``: (a) with the image tower locked (``model.lock_image=true``);
* (d) ``wise-clip`` / ``wise-declip``: (a) / (b) mixed 50/50 with the start (``declip export --interpolate 0.5
  --from START``); the report's (d) row is the one of the two whose mean VAL score on the target is higher;
* (e) CLIP from scratch on the target and open_clip's own CLIP (the peer): read from learning.json (same recipe and
  300 steps), never trained here.

Every model, the start included, is scored by learning.py's ``score`` on the target's test and val splits and on
each source set's test split (retention). transfer.json keeps every run; transfer.md is the table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from learning import PRIMARY, TOWERS, kept_summary, score, variant_config  # noqa: E402

from learning_data import build_all, load_split  # noqa: E402

PRETRAIN_VARIANT = "clip-crop09-ocinit"
# arm -> (learning.py variant, overrides added to it)
ARMS = {"clip": ("clip-crop09-ocinit", []), "declip": ("declip-small", []),
        "lit": ("clip-crop09-ocinit", ["model.lock_image=true"])}
WISE = {"wise-clip": "clip", "wise-declip": "declip"}
WISE_ALPHA = 0.5
LABELS = {"start": "before fine-tuning (the pre-trained start)", "clip": "(a) CLIP fine-tune",
          "declip": "(b) small-data DeCLIP fine-tune", "lit": "(c) LiT (image tower locked)",
          "scratch": "(e) CLIP from scratch on the target", "openclip": "(e) peer: open_clip's CLIP from scratch"}
CLI = [sys.executable, "-m", "declip.cli"]


def cli(args: list[str], log) -> str:
    """One ``declip`` command (the user's path), its stdout; a failure raises with the log's name."""
    proc = subprocess.run([*CLI, *args], stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode:
        raise RuntimeError(f"declip {args[0]} failed (exit {proc.returncode}): see {log.name}")
    return proc.stdout


def train_and_export(config: Path | None, args: list[str], workdir: Path, log) -> Path:
    """``declip train`` (with ``config``, or the dataclass defaults learning.py trains with) then ``declip export``;
    the export folder."""
    if config is None:  # `declip train` without --config picks own_data.yaml; learning.py's runs start from defaults
        config = workdir / "defaults.yaml"
        config.write_text("# the Config dataclass defaults (learning.py's recipe starts from them)\n")
    out = cli(["train", "--config", str(config), "--overwrite", *args, f"train.output_dir={workdir / 'ckpt'}"], log)
    ckpt = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: ")][-1]
    cli(["export", ckpt, str(workdir / "export")], log)
    return workdir / "export"


def common(seed: int) -> list[str]:
    """learning.py's run keys (train_ours) for a manifest run on the CPU."""
    return [f"train.seed={seed}", "data.source=manifest", "data.num_workers=0", "data.pin_memory=false",
            "train.device=cpu", "train.ckpt_every=0", "train.tensorboard=false", "train.progress=false",
            "train.log_every=100", "eval.builtin=false"]


def scores(export: Path, roots: dict, target: str | None, sources: list[str]) -> dict:
    """The exported model scored on the target's test and val splits and each source's test split."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    meta = {s: json.loads((roots[s] / "meta.json").read_text()) for s in roots}
    res = {"sources": {s: score(model, preprocess, roots[s], meta[s], "test") for s in sources}}
    if target:
        res["target_test"] = score(model, preprocess, roots[target], meta[target], "test")
        res["target_val"] = score(model, preprocess, roots[target], meta[target], "val")
    return res


def pretrain_dir(work: Path, sources: list[str], steps: int, seed: int) -> Path:
    """The start's folder, keyed by everything that makes it (sources, recipe, schedule, seed)."""
    config, overrides = variant_config(PRETRAIN_VARIANT, steps)
    key = json.dumps([sources, PRETRAIN_VARIANT, str(config), overrides, *TOWERS, seed])
    return work / f"pretrain-{'+'.join(sources)}-{PRETRAIN_VARIANT}-s{steps}-{seed}-" \
                  f"{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def run_pretrain(a, roots: dict, sources: list[str], targets: list[str], seed: int, log) -> list[dict]:
    """Pre-train (or reuse) the start of ``seed``; one "start" record per target."""
    wd = pretrain_dir(Path(a.workdir), sources, a.pretrain_steps, seed)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (wd / "export" / "open_clip_config.json").is_file():
        with open(wd / "train.jsonl", "w") as f:  # one manifest of the sources' training pairs, root = the cache
            for s in sources:
                for r in load_split(roots[s], "train"):
                    f.write(json.dumps({"filename": f"{roots[s].name}/{r['filename']}", "caption": r["caption"]})
                            + "\n")
        config, overrides = variant_config(PRETRAIN_VARIANT, a.pretrain_steps)
        train_and_export(config, [*overrides, *common(seed), f"data.path={wd / 'train.jsonl'}",
                                  f"data.root={a.cache}"], wd, log)
        (wd / "train_s.txt").write_text(f"{time.time() - t0:.1f}\n")
    # a reused start's time is the one measured when it was trained (None: trained before this file was kept)
    train_s = float((wd / "train_s.txt").read_text()) if (wd / "train_s.txt").is_file() else None
    return [{"arm": "start", "target": t, "seed": seed, "steps": 0, "pretrain_steps": a.pretrain_steps,
             "pretrained_on": sources, "train_s": train_s, **scores(wd / "export", roots, t, sources)} for t in targets]


def run_finetune(a, roots: dict, sources: list[str], target: str, arm: str, seed: int, wd: Path, log) -> dict:
    start = pretrain_dir(Path(a.workdir), sources, a.pretrain_steps, seed) / "export"
    t0 = time.time()
    if arm in WISE:  # no training: the fine-tuned (a)/(b) weights mixed with the start's
        base = Path(a.workdir) / run_name(target, WISE[arm], seed, a)
        ckpt = (base / "checkpoint.txt").read_text().strip()
        cli(["export", ckpt, str(wd / "export"), "--interpolate", str(WISE_ALPHA), "--from", str(start)], log)
        export = wd / "export"
    elif (wd / "checkpoint.txt").is_file():  # trained and exported by an interrupted grid: score it
        export = wd / "export"
    else:
        variant, extra = ARMS[arm]
        config, overrides = variant_config(variant, a.steps)
        export = train_and_export(config, [*overrides, *extra, *common(seed), f"model.init_from=local-dir:{start}",
                                           f"data.path={roots[target] / 'train.jsonl'}",
                                           f"data.root={roots[target]}"], wd, log)
        (wd / "checkpoint.txt").write_text(json.loads((export / "open_clip_config.json").read_text())
                                           ["declip"]["checkpoint"] + "\n")
    train_s = round(time.time() - t0, 1)
    return {"arm": arm, "target": target, "seed": seed, "steps": a.steps, "pretrain_steps": a.pretrain_steps,
            "pretrained_on": sources, "train_s": train_s, **({"alpha": WISE_ALPHA} if arm in WISE else {}),
            **scores(export, roots, target, sources)}


def run_name(target: str, arm: str, seed: int, a) -> str:
    return f"{target}-{arm}-p{a.pretrain_steps}-s{a.steps}-{seed}"


# ------------------------------------------------------------------------------------------------- report
def cell(vals: list[float]) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.1f} (n=1)"
    return f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f} (n={len(vals)})"


def wall(secs: list) -> str:
    known = [x for x in secs if x]  # a start reused from an earlier grid has no time recorded
    return f"{statistics.mean(known):.0f}" if known else "-"


def wise_choice(runs: list[dict], target: str) -> str | None:
    """(d): the WiSE-FT mix of whichever of (a) / (b) has the higher mean VAL score on the target."""
    metric = PRIMARY[target]
    val = {arm: [r["target_val"][metric] for r in runs if r["target"] == target and r["arm"] == arm]
           for arm in ("clip", "declip")}
    if not all(val.values()):
        return None
    return max(val, key=lambda arm: statistics.mean(val[arm]))


def scratch_runs(learning_json: Path, target: str, seeds: int) -> dict[str, list[dict]]:
    """(e) from learning.json: our CLIP and open_clip's, trained on the target alone, same recipe, 300 steps."""
    if not learning_json.is_file():
        return {}
    runs = json.loads(learning_json.read_text())["runs"]
    pick = {"scratch": PRETRAIN_VARIANT, "openclip": "openclip"}
    return {arm: [r for r in runs if r["set"] == target and r["variant"] == v and int(r["seed"]) < seeds
                  and r.get("steps", 300) == 300 and r.get("split", "test") == "test"] for arm, v in pick.items()}


def table(runs: list[dict], target: str, sources: list[str], seeds: int, learning_json: Path) -> list[str]:
    metric = PRIMARY[target]
    head = [f"| {target}: model | target test {metric} | target val {metric} | "
            + " | ".join(f"retention: {s} test {PRIMARY[s]}" for s in sources) + " | wall s/run |",
            "|---|---|---|" + "---|" * len(sources) + "---|"]
    chosen = wise_choice(runs, target)
    rows = []
    for arm in ["start", "clip", "declip", "lit", *WISE]:
        sel = [r for r in runs if r["target"] == target and r["arm"] == arm and r["seed"] < seeds]
        if arm in WISE:
            label = f"(d) WiSE-FT {WISE_ALPHA} of {'(a)' if WISE[arm] == 'clip' else '(b)'}" + (
                " (chosen on val)" if WISE[arm] == chosen else " (not chosen on val)")
        else:
            label = LABELS[arm]
        rows.append(f"| {label} | {cell([r['target_test'][metric] for r in sel])} | "
                    f"{cell([r['target_val'][metric] for r in sel])} | "
                    + " | ".join(cell([r["sources"][s][PRIMARY[s]] for r in sel]) for s in sources)
                    + f" | {wall([r['train_s'] for r in sel])} |" if sel else f"| {label} | - | - | "
                    + " | ".join("-" for _ in sources) + " | - |")
    for arm, sel in scratch_runs(learning_json, target, seeds).items():
        rows.append(f"| {LABELS[arm]} | {cell([r[metric] for r in sel])} | - | "
                    + " | ".join("-" for _ in sources) + f" | {statistics.mean(r['train_s'] for r in sel):.0f} |"
                    if sel else f"| {LABELS[arm]} | - | - | " + " | ".join("-" for _ in sources) + " | - |")
    return head + rows


def write_report(payload: dict, path: Path, learning_json: Path) -> None:
    sources, targets, seeds = payload["sources"], payload["targets"], payload["seeds"]
    md = ["# Transfer benchmark (issue 40): fine-tuning a pre-trained start", "", *kept_summary(path),
          f"- date: {payload['date']}", f"- command: `{payload['command']}`", f"- machine: {payload['machine']}",
          f"- start: our CLIP (`{PRETRAIN_VARIANT}`) pre-trained {payload['pretrain_steps']} steps x batch 64 on the "
          f"training splits of {' + '.join(sources)} (one manifest), seed = the row's seed; exported to open_clip",
          f"- fine-tunes: {payload['steps']} steps on the target's training split through `declip train --config C "
          "... model.init_from=local-dir:START` (C: an empty YAML for (a)/(c), i.e. learning.py's defaults + "
          "towers + recipe; configs/declip_small_data.yaml for (b)); (c) adds `model.lock_image=true`; "
          f"(d) = `declip export CKPT OUT --interpolate {WISE_ALPHA} --from START` of (a) or (b), the one with "
          "the higher mean target VAL score (on a tie (a), the plain method); "
          "(e) and the peer: benchmarks/results/learning.json (300 steps, same "
          "seeds), trained on the target alone, so they have no retention",
          "- metrics: learning.py's `score`: letters / icons / digits = zero-shot top-1 (%) on the test split "
          "(letters and icons: typefaces / themes never trained on); emoji = image->text recall@1 (%); "
          "mean +- sample std over seeds", ""]
    for t in targets:
        md += table(payload["runs"], t, sources, seeds, learning_json) + [""]
    path.write_text("\n".join(md))


# ------------------------------------------------------------------------------------------------- driver
def key_of(r: dict) -> tuple:
    return (r["target"], r["arm"], int(r["seed"]), r["steps"] if r["arm"] != "start" else 0, r["pretrain_steps"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sources", default="digits,emoji")
    ap.add_argument("--targets", default="letters,icons")
    ap.add_argument("--arms", default="clip,declip,lit,wise-clip,wise-declip")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps (the learning benchmark's 300)")
    ap.add_argument("--pretrain-steps", type=int, default=300,
                    help="pre-training steps (default: the learning benchmark's 300, about 10 epochs of the "
                         "sources' ~2,000 pairs)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/declip-learning"))
    ap.add_argument("--wheels", default=os.path.expanduser("~/.cache/declip-learning/wheels"))
    ap.add_argument("--workdir", default="/tmp/declip-transfer-runs")
    ap.add_argument("--out", default=str(HERE / "results" / "transfer"))
    ap.add_argument("--learning-json", default=str(HERE / "results" / "learning.json"))
    ap.add_argument("--report", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # pretrain:seed or target:arm:seed (a worker)
    a = ap.parse_args()
    sources, targets, arms = a.sources.split(","), a.targets.split(","), a.arms.split(",")
    bad = [x for x in sources + targets if x not in PRIMARY] + [x for x in arms if x not in {*ARMS, *WISE}]
    if bad or set(sources) & set(targets):
        ap.error(f"unknown or overlapping: {', '.join(bad) or set(sources) & set(targets)}")
    work, out_json = Path(a.workdir), Path(a.out + ".json")
    if a.one:
        roots = build_all(a.cache, a.wheels)
        parts = a.one.split(":")
        wd = (pretrain_dir(work, sources, a.pretrain_steps, int(parts[1])) if parts[0] == "pretrain"
              else work / run_name(parts[0], parts[1], int(parts[2]), a))
        wd.mkdir(parents=True, exist_ok=True)
        with open(str(wd) + ".log", "a") as log:
            res = (run_pretrain(a, roots, sources, targets, int(parts[1]), log) if parts[0] == "pretrain"
                   else [run_finetune(a, roots, sources, parts[0], parts[1], int(parts[2]), wd, log)])
        (wd / "result.json").write_text(json.dumps(res))  # kept if the driver is gone (an interrupted grid)
        print(json.dumps(res), flush=True)
        return 0
    recorded = {key_of(r): r for r in json.loads(out_json.read_text())["runs"]} if out_json.is_file() else {}
    for done in sorted(work.glob("*/result.json")):  # runs an interrupted driver did not collect
        for r in json.loads(done.read_text()):
            if r["pretrained_on"] == sources and key_of(r) not in recorded:
                recorded[key_of(r)] = r
    command = " ".join(["python", "benchmarks/transfer.py", *[x for x in sys.argv[1:] if x != "--report"]])
    payload = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
                          f"1 thread per run, {a.jobs} runs at a time",
               "sources": sources, "targets": targets, "seeds": a.seeds, "steps": a.steps,
               "pretrain_steps": a.pretrain_steps, "runs": list(recorded.values())}

    def save() -> None:
        payload["runs"] = sorted(recorded.values(), key=lambda r: (r["seed"], r["target"], r["arm"]))
        out_json.write_text(json.dumps(payload, indent=1))

    if a.report:
        save()
        write_report(payload, Path(a.out + ".md"), Path(a.learning_json))
        print(Path(a.out + ".md").read_text())
        return 0
    build_all(a.cache, a.wheels)  # once here, not in two workers at a time
    have = lambda t, arm, s: (t, arm, s, a.steps if arm != "start" else 0, a.pretrain_steps) in recorded  # noqa
    jobs = []  # whole seeds first: every variant of seed 0 on both targets, then seed 1, ...
    for s in range(a.seeds):
        jobs.append((("pretrain", s), [], [(t, "start", s) for t in targets]))
        for t in targets:
            jobs += [((t, arm, s), [(t, "start", s)], [(t, arm, s)]) for arm in arms if arm in ARMS]
            jobs += [((t, arm, s), [(t, WISE[arm], s)], [(t, arm, s)]) for arm in arms if arm in WISE]
    jobs = [j for j in jobs if not all(have(*k) for k in j[2])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    running, failed, t0 = [], set(), time.time()
    while jobs or running:
        ready = [j for j in jobs if all(have(*d) for d in j[1])]
        for j in ready[:max(0, a.jobs - len(running))]:
            jobs.remove(j)
            one = ":".join(map(str, j[0]))
            cmd = [sys.executable, __file__, "--one", one, "--sources", a.sources, "--targets", a.targets,
                   "--steps", str(a.steps), "--pretrain-steps", str(a.pretrain_steps), "--cache", a.cache,
                   "--wheels", a.wheels, "--workdir", a.workdir]
            running.append((j, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)))
        if not running:
            break  # the rest waits on a failed run
        time.sleep(2)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            (name, _, _), proc = item
            lines = proc.stdout.read().strip().splitlines()
            if proc.returncode == 0 and lines:
                for r in json.loads(lines[-1]):
                    recorded[key_of(r)] = r
                save()
                print(f"[{time.time() - t0:6.0f}s] done {name}", flush=True)
            else:
                failed.add(name)
                print(f"FAILED {name}: see the .log beside its folder in {a.workdir}", flush=True)
    save()
    write_report(payload, Path(a.out + ".md"), Path(a.learning_json))
    print(Path(a.out + ".md").read_text())
    if jobs:
        print(f"not run (they wait on a failed run): {[j[0] for j in jobs]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
