"""``declip eval``: the evaluation suite on a checkpoint's towers, from the command line.

Without task or data flags it evaluates as the run was configured (the checkpoint's ``eval`` section). With
any of them, the command line alone says what runs: the tasks (``--task``, or those the given files imply),
on the given files, plus the built-in sets when no file is given or ``--builtin`` is passed. The flags become
``eval.*`` overrides checked by the config validator, so a mistake names the flag.

``--write-builtin DIR`` writes the built-in held-out sets as files (see :mod:`declip.eval.builtin_sets`) and
needs no checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .metric_names import TASKS

# flag -> eval.* key; a root flag follows its manifest
FILE_FLAGS = {
    "val_manifest": "val_manifest", "val_root": "val_root", "val_kind": "val_kind", "classnames": "classnames",
    "templates": "templates", "captions": "retrieval_manifest", "train_manifest": "probe_train_manifest",
    "test_manifest": "probe_test_manifest", "probe_l2": "probe_l2",
}
IMPLIED_TASK = {"val_manifest": "zeroshot", "captions": "retrieval", "train_manifest": "linear-probe"}


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a declip checkpoint (ckpt_*.pt or best.pt), an export folder, "
                   "local-dir:DIR, hf-hub:ORG/NAME or openclip:MODEL/TAG")
    p.add_argument("--task", action="append", default=None, metavar="|".join(TASKS),
                   help="repeat or comma-separate; default: the tasks the given files imply")
    g = p.add_argument_group("zero-shot (labelled manifest: JSON lines filename, label, label_name)")
    g.add_argument("--val-manifest", default="")
    g.add_argument("--val-root", default="", help="image folder of --val-manifest")
    g.add_argument("--val-kind", default=None, choices=("auto", "imagenet", "generic"),
                   help="imagenet: the published protocol; generic: names from label_name/--classnames")
    g.add_argument("--classnames", default=None, help="file, one class name per line (line i names label i)")
    g.add_argument("--templates", default=None, help="openai-imagenet-80 | simple | a file of '{}' templates")
    g = p.add_argument_group("retrieval (caption manifest, the training form) and linear probe")
    g.add_argument("--captions", default="", help="caption manifest for --task retrieval")
    g.add_argument("--root", default="", help="image folder of --captions (and default of --train/--test-root)")
    g.add_argument("--train-manifest", default="", help="labelled manifest the probe is fitted on")
    g.add_argument("--train-root", default="")
    g.add_argument("--test-manifest", default="", help="labelled manifest the probe is scored on")
    g.add_argument("--test-root", default="")
    g.add_argument("--probe-l2", type=float, default=None, help="fixed L2 strength (default: validated)")
    p.add_argument("--builtin", action="store_true", help="with files: also run the built-in held-out sets")
    p.add_argument("--max-images", type=int, default=None, help="cap per evaluation set")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-jpeg-draft", action="store_true",
                   help="decode JPEGs at full size (eval.jpeg_draft=false), as CLIP_benchmark does; default: "
                        "large JPEGs at reduced DCT scale, as training does (retrieval R@1 can move ~1 point)")
    p.add_argument("--similarity", default=None, choices=("global", "token"),
                   help="token: FILIP's token-wise similarity for zero-shot and retrieval (filip/defilip "
                        "checkpoints; eval.similarity); default: the checkpoint's eval.similarity (global)")
    p.add_argument("--brief", action="store_true", help="one line per set instead of the JSON metrics")
    p.add_argument("--interpolate", default=None, metavar="A,B,...",
                   help="WiSE-FT: evaluate (1 - A) * START + A * CHECKPOINT for each A in [0, 1] (needs --from) "
                        "and print the curve, e.g. --interpolate 0,0.25,0.5,0.75,1")
    p.add_argument("--from", dest="start", default="", metavar="START",
                   help="the model the checkpoint was fine-tuned from (anything model.init_from accepts)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="also write the JSON metrics to FILE (keys: docs/evaluation.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (off anyway when not a terminal)")
    p.add_argument("--write-builtin", default=None, metavar="DIR",
                   help="write the built-in held-out sets as manifests + PNGs to DIR and exit")
    p.add_argument("overrides", nargs="*", metavar="eval.KEY=VALUE",
                   help="eval.* overrides after the flags, e.g. eval.similarity=token eval.max_images=500")


def _tasks(args) -> list[str]:
    named = [t.strip() for item in (args.task or []) for t in item.split(",") if t.strip()]
    implied = [task for flag, task in IMPLIED_TASK.items() if getattr(args, flag)]
    return named or implied


def eval_overrides(args) -> tuple[dict, dict[str, str]]:
    """(eval.* overrides, their sources) from the flags; empty when no task or data flag was given."""
    given = {flag for flag in FILE_FLAGS if getattr(args, flag) not in (None, "")}
    if not given and not args.task:
        return {}, {}
    over: dict = {k: "" for k in ("val_manifest", "val_root", "classnames", "templates", "retrieval_manifest",
                                  "retrieval_root", "probe_train_manifest", "probe_train_root",
                                  "probe_test_manifest", "probe_test_root", "best_metric")}
    data_given = given & {"val_manifest", "captions", "train_manifest", "test_manifest"}
    over.update(val_kind="auto", probe_l2=0.0, tasks=_tasks(args) or ["zeroshot"],
                builtin=args.builtin or not data_given)
    sources = {"eval.tasks": "command line (--task)", "eval.builtin": "command line (--builtin)"}
    for flag in given:
        over[FILE_FLAGS[flag]] = getattr(args, flag)
        sources[f"eval.{FILE_FLAGS[flag]}"] = f"command line (--{flag.replace('_', '-')})"
    roots = {"retrieval_root": args.root, "probe_train_root": args.train_root or args.root,
             "probe_test_root": args.test_root or args.root}
    for key, manifest in (("retrieval_root", "retrieval_manifest"), ("probe_train_root", "probe_train_manifest"),
                          ("probe_test_root", "probe_test_manifest")):
        if over[manifest]:
            over[key] = roots[key]
            sources[f"eval.{key}"] = "command line (--root / --train-root / --test-root)"
    return over, sources


def _runtime(args) -> dict:
    names = {"max_images": args.max_images, "batch_size": args.batch_size, "num_workers": args.num_workers,
             "jpeg_draft": False if args.no_jpeg_draft else None, "similarity": args.similarity}
    return {k: v for k, v in names.items() if v is not None}


def key_value_overrides(items: list[str]) -> tuple[dict, dict[str, str]]:
    """(eval.* values, their sources) from ``eval.KEY=VALUE`` arguments, checked as ``declip.evaluate`` checks
    its overrides."""
    from .api import eval_values

    return eval_values(items, "command line", "command line", "declip eval", "the checkpoint's")


def run_eval_command(args) -> int:
    """The ``declip eval`` sub-command: the flat metrics as JSON on stdout (``--brief``: one line per set),
    exit 0; exit 2 for unusable inputs, the reason on stderr."""
    from .eval.common import EvalDataError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    try:
        if args.write_builtin:
            return _write_builtin(args)
        if not args.checkpoint:
            print("error: --checkpoint is required (or --write-builtin DIR)", file=sys.stderr)
            return 2
        results = _evaluate(args)
    except EvalDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweep = args.interpolate is not None
    shown = {a: _rounded(r) for a, r in results.items()} if sweep else _rounded(results)
    text = json.dumps(shown, indent=1)  # the flat metrics (a WiSE-FT sweep: {alpha: metrics})
    if args.output:  # the JSON, whatever is printed (keys: docs/evaluation.md)
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            print(f"error: --output {args.output}: cannot write ({e.strerror or e}); give a writable file path",
                  file=sys.stderr)
            return 1
    if not args.brief:
        print(text)
    elif sweep:  # --brief: one line per set (per alpha for a sweep)
        print("\n".join(f"alpha {a}:\n  " + format_results(r).replace("\n", "\n  ") for a, r in results.items()))
    else:
        print(format_results(results))
    return 0


def _rounded(results: dict) -> dict:
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in results.items()}


def _evaluate(args) -> dict:
    """The flags as ``eval.*`` values with their sources, then the API's evaluation (one code path with
    ``declip.evaluate``)."""
    from .api import evaluate_with

    keyed, keyed_sources = key_value_overrides(args.overrides)
    over, sources = eval_overrides(args)
    if args.similarity:
        sources["eval.similarity"] = "command line (--similarity)"
    if (args.interpolate is None) != (not args.start):
        from .eval.common import EvalDataError

        raise EvalDataError("--interpolate A,B,... and --from START go together (WiSE-FT)")
    return evaluate_with(args.checkpoint, {**over, **_runtime(args), **keyed}, {**sources, **keyed_sources},
                         device=args.device or "auto", progress=not args.no_progress, no_data=_no_data,
                         wise_ft=(args.start, args.interpolate) if args.start else None)


def _no_data(task: str) -> str:
    """What ``declip eval`` says of a task that has no set to run on: the flags that give it one."""
    from .metric_names import BUILTIN_SET

    return (f"--task {task} has no data: give its files (zeroshot: --val-manifest/--val-root; retrieval: "
            f"--captions/--root; linear-probe: --train-manifest/--test-manifest) or --builtin for the built-in set "
            f"({BUILTIN_SET[task]}/)")


def format_results(results: dict) -> str:
    """One line per evaluation set: ``set: metric=value ...`` (percentages to 2 decimals)."""
    sets: dict[str, list[str]] = {}
    for key, value in results.items():
        name, _, metric = key.partition("/")
        shown = f"{value:.2f}" if isinstance(value, float) and value == value and metric != "l2" else f"{value:g}"
        sets.setdefault(name, []).append(f"{metric}={shown}")
    return "\n".join(f"{name}: {' '.join(items)}" for name, items in sets.items())


def _write_builtin(args) -> int:
    from .eval.builtin_sets import write_builtin

    paths = write_builtin(args.write_builtin, args.max_images or 0)
    root = paths["root"]
    print(f"built-in held-out sets written to {root}:\n"
          f"  zero-shot / probe test  {paths['val']}  (+ {paths['classnames'].name}, {paths['templates'].name})\n"
          f"  linear-probe train      {paths['probe_train']}\n"
          f"  retrieval captions      {paths['captions']}\n"
          f"  CLIP_benchmark wds      {paths['clip_benchmark']}  (--dataset wds/shapes --dataset_root)\n"
          f"  image root for all manifests: {root}")
    return 0
