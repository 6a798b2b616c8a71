"""``declip`` command line: train | eval (more sub-commands register here)."""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, load_config


def cmd_train(args) -> int:
    from .train.trainer import train

    from .config import demo_config_path

    cfg = load_config(args.config or demo_config_path(), args.overrides)
    summary = train(cfg, resume=args.resume)
    ev = summary.get("eval", {})
    if "builtin/top1" in ev:
        print(f"zero-shot top-1 (built-in shapes, {ev['builtin/images']} held-out images): "
              f"{ev['builtin/top1']:.1f}% (chance {ev['builtin/chance']:.1f}%), top-5 {ev['builtin/top5']:.1f}%")
    if "imagenet/top1" in ev:
        print(f"zero-shot ImageNet top-1: {ev['imagenet/top1']:.2f}%  top-5: {ev['imagenet/top5']:.2f}%")
    if summary.get("checkpoint"):
        print(f"checkpoint: {summary['checkpoint']}")
    return 0


def cmd_eval(args) -> int:
    from .eval.command import run_eval_command

    return run_eval_command(args)


def cmd_export(args) -> int:
    from .export import export_open_clip

    out = export_open_clip(args.checkpoint, args.out_dir)
    print(f"open_clip model written to {out}; load it with "
          f"open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_run

    print(f"curves: {plot_run(args.run_dir, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declip", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (no --config: DeCLIP on the built-in data)")
    t.add_argument("--config", default=None, help="YAML config file")
    t.add_argument("--resume", default=None, help="'latest' (newest in train.output_dir) or a checkpoint path")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=5e-4 train.steps=200")
    t.set_defaults(func=cmd_train)

    from .eval.command import add_eval_arguments  # import-light (no torch)

    e = sub.add_parser("eval", help="evaluate a checkpoint: zero-shot, retrieval, linear probe")
    add_eval_arguments(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a checkpoint's towers as an open_clip 'local-dir:' model")
    x.add_argument("checkpoint", help="a declip checkpoint (ckpt_*.pt or best.pt)")
    x.add_argument("out_dir", help="folder for open_clip_config.json + open_clip_model.safetensors")
    x.set_defaults(func=cmd_export)

    pl = sub.add_parser("plot", help="training curves of a run as a PNG")
    pl.add_argument("run_dir", help="a run directory (train.output_dir) or its metrics.jsonl")
    pl.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    from .data.tools import add_data_parser  # declip data check | shard

    add_data_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "val_manifest", None) and not args.val_root:
        print("error: --val-manifest needs --val-root", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
