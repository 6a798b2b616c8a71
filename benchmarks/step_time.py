"""Time a DeCLIP training step against a CLIP step on the same towers and batch, and count their FLOPs.

The claim under test: DeCLIP's extra supervision costs what its arithmetic costs, no more (target: the time
ratio DeCLIP/CLIP within 10% of the FLOP ratio). Data loading is excluded: batches are built once through the
real data pipeline and reused, so only forward + backward + AdamW are timed.

    python benchmarks/step_time.py [--preset PRESET] [--batch 32] [--steps 20] [--out benchmarks/results/step_time.md]

``--patch-dropout P`` times a CLIP step with ``model.vision.patch_dropout=P`` against the same step at 0 instead
(a ViT tower; issue 39): what dropping that share of the patch tokens saves, FLOPs and time.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from declip.config import demo_config_path, load_config
from declip.data.device_augment import build_device_stage
from declip.data.loader import PairDataset, collate
from declip.data.sources import build_source
from declip.methods import build_method
from declip.train.optim import build_optimizer


# further methods measured beside CLIP and DeCLIP: (row label, method.name, its overrides). FILIP was measured
# with its global term on (the demo's clip_weight 0.4, the field default filip_weight 0.2), written out since
# method.name=filip brings FILIP's reference 0 / 1 (issue 38)
OTHER_ROWS = [("SLIP", "slip", []), ("CLIP sigmoid", "clip", ["method.contrastive_loss=sigmoid"]),
              ("DeCLIP sigmoid", "declip", ["method.contrastive_loss=sigmoid"]),
              ("FILIP", "filip", ["method.clip_weight=0.4", "method.filip_weight=0.2"]),
              ("DeFILIP", "defilip", [])]  # issue 29: the family's cost beside CLIP's, same towers, batch, steps


# the ViT-B/32 reference recipes whose FLOPs --reference-flops counts: (row label, recipe, its overrides)
REFERENCE_ROWS = [("CLIP", "clip_vitb32_yfcc15m", []), ("DeCLIP", "declip_vitb32_yfcc15m", []),
                  ("SLIP", "slip_vitb32_yfcc15m", []),
                  ("CLIP sigmoid", "clip_vitb32_yfcc15m", ["method.contrastive_loss=sigmoid"]),
                  ("DeCLIP sigmoid", "declip_vitb32_yfcc15m", ["method.contrastive_loss=sigmoid"]),
                  ("FILIP", "filip_vitb32_yfcc15m", []), ("DeFILIP", "defilip_vitb32_yfcc15m", [])]
ON_BUILTIN_DATA = ["data.source=builtin", "data.num_workers=0", "eval.val_manifest=", "eval.val_root="]


def make(method: str, preset: str, batch: int, extra: list[str], recipe: str = ""):
    preset_override = [f"model.preset={preset}"] if preset else []
    method_override = [] if recipe else [f"method.name={method}"]
    cfg = load_config(recipe or demo_config_path(), [*method_override, *preset_override,
                                                     f"train.batch_size={batch}", *extra])
    torch.manual_seed(0)
    model = build_method(cfg)
    spec = model.data_spec(cfg)
    ds = PairDataset(build_source(cfg.data), spec, cfg.model.vision.image_size, seed=0)
    stage = build_device_stage(spec, cfg.model.vision.image_size)  # uint8 crops -> the float views a step sees
    batches = [stage(collate([ds[(0, i * batch + j)] for j in range(batch)])) for i in range(2)]
    return model, build_optimizer(model, cfg.optim), batches


def step(model, opt, batch):
    losses, _ = model(batch)
    sum(losses.values()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.after_step()


def measure(method, preset, batch, steps, extra):
    model, opt, batches = make(method, preset, batch, extra)
    with FlopCounterMode(display=False) as counter:
        losses, _ = model(batches[0])
        sum(losses.values()).backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)
    for i in range(3):  # warm-up
        step(model, opt, batches[i % 2])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(model, opt, batches[i % 2])
        times.append(time.perf_counter() - t0)
    return statistics.median(times), flops


def reference_flops(batch: int) -> list[str]:
    """Model FLOPs of one forward + backward per image for each method's ViT-B/32 reference recipe (224 px,
    77-token captions, the recipe's own heads, views and weights), counted on ``batch`` generated pairs."""
    rows = ["| method (ViT-B/32 recipe) | GFLOP / image (fwd+bwd) | x CLIP |", "|---|---|---|"]
    clip = None
    for label, recipe, extra in REFERENCE_ROWS:
        model, _, batches = make("", "", batch, [*ON_BUILTIN_DATA, *extra], recipe)
        with FlopCounterMode(display=False) as counter:
            losses, _ = model(batches[0])
            sum(losses.values()).backward()
        per_image = counter.get_total_flops() / batch
        clip = clip or per_image
        rows.append(f"| {label} (`{recipe}`{' ' + ' '.join(extra) if extra else ''}) | {per_image / 1e9:.1f} | "
                    f"{per_image / clip:.2f} |")
    return rows


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def measure_with_memory(method, preset, batch, steps, extra) -> tuple[float, float, float]:
    """:func:`measure` in a forked child, which also reports its peak memory over the RSS it started with (the
    model, optimizer state, batches and the step's activations: what this method adds). A child per method, so
    one method's peak never hides another's. Linux starts a forked child's peak at its RSS at the fork."""
    import multiprocessing as mp
    import resource

    ctx = mp.get_context("fork")
    results = ctx.Queue()

    def child():
        base = rss_mib()
        t, f = measure(method, preset, batch, steps, extra)
        results.put((t, f, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base))

    proc = ctx.Process(target=child)
    proc.start()
    out = results.get()
    proc.join()
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="", help="model preset (default: the demo's towers)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="")
    p.add_argument("--reference-flops", action="store_true",
                   help="only count the FLOPs of each method's ViT-B/32 reference recipe (no timing)")
    p.add_argument("--patch-dropout", type=float, default=0.0,
                   help="only time CLIP with model.vision.patch_dropout=P against 0 (a ViT tower)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for both methods")
    a = p.parse_args()
    if a.reference_flops:
        cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
        emit("\n".join(["## Model FLOPs of the ViT-B/32 reference recipes", "", f"Command: `{cmd}`", "",
                        *reference_flops(a.batch), ""]), a.out)
        return
    if a.patch_dropout:
        emit(patch_dropout_block(a), a.out)
        return
    t_clip, f_clip, m_clip = measure_with_memory("clip", a.preset, a.batch, a.steps, a.overrides)
    t_declip, f_declip, m_declip = measure_with_memory("declip", a.preset, a.batch, a.steps, a.overrides)
    others = [(label, *measure_with_memory(method, a.preset, a.batch, a.steps, [*a.overrides, *extra]))
              for label, method, extra in OTHER_ROWS]
    time_ratio, flop_ratio = t_declip / t_clip, f_declip / f_clip
    gap = time_ratio / flop_ratio - 1
    rows = [
        "| method | median step (s) | GFLOP / step (fwd+bwd) | images/s | achieved GFLOP/s | peak memory (MiB) |",
        "|---|---|---|---|---|---|",
        f"| CLIP | {t_clip:.4f} | {f_clip / 1e9:.2f} | {a.batch / t_clip:.1f} | {f_clip / t_clip / 1e9:.1f} | "
        f"{m_clip:.0f} |",
        f"| DeCLIP (x{t_declip / t_clip:.2f} CLIP's time, x{f_declip / f_clip:.2f} its FLOPs) | {t_declip:.4f} | "
        f"{f_declip / 1e9:.2f} | {a.batch / t_declip:.1f} | {f_declip / t_declip / 1e9:.1f} | {m_declip:.0f} |",
        *(f"| {label} (x{t / t_clip:.2f} CLIP's time, x{f / f_clip:.2f} its FLOPs) | {t:.4f} | {f / 1e9:.2f} | "
          f"{a.batch / t:.1f} | {f / t / 1e9:.1f} | {m:.0f} |" for label, t, f, m in others),
    ]
    summary = (f"DeCLIP/CLIP time ratio {time_ratio:.3f}, FLOP ratio {flop_ratio:.3f}: time is "
               f"{100 * gap:+.1f}% vs FLOPs (target within +-10%: {'MET' if abs(gap) <= 0.10 else 'NOT MET'})")
    cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, preset {a.preset or 'demo'}, batch {a.batch}, {a.steps} timed steps")
    text = "\n".join(["## Step time: DeCLIP vs CLIP", "", f"Command: `{cmd}`", "", f"Machine: {machine}", "",
                      *rows, "", summary, ""])
    emit(text, a.out)


def patch_dropout_block(a) -> str:
    """CLIP's step at ``model.vision.patch_dropout`` 0 and ``a.patch_dropout``, same towers, batch and steps."""
    rows = ["| model.vision.patch_dropout | median step (s) | GFLOP / step (fwd+bwd) | images/s | peak memory (MiB) |",
            "|---|---|---|---|---|"]
    base = None
    for p in (0.0, a.patch_dropout):
        t, f, m = measure_with_memory("clip", a.preset, a.batch, a.steps, [*a.overrides,
                                                                           f"model.vision.patch_dropout={p}"])
        base = base or (t, f)
        ratio = "" if p == 0 else f" (x{t / base[0]:.2f} the time, x{f / base[1]:.2f} the FLOPs)"
        rows.append(f"| {p:g}{ratio} | {t:.4f} | {f / 1e9:.2f} | {a.batch / t:.1f} | {m:.0f} |")
    cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
               f"threads, preset {a.preset or 'demo'}, batch {a.batch}, {a.steps} timed steps")
    return "\n".join([f"## Step time: CLIP with patch dropout {a.patch_dropout:g} vs none", "", f"Command: `{cmd}`",
                      "", f"Machine: {machine}", "", *rows, ""])


def emit(text: str, out: str = "") -> None:
    """Print a result block and, with ``out``, append it to a results file (the benchmarks' one report path)."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
