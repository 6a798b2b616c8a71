"""declip: data-efficient CLIP pre-training (DeCLIP: CLIP + image/text self-supervision, multi-view and
nearest-neighbour supervision).

  declip train                      DeCLIP on the built-in data (a few minutes on a CPU): zero-shot + checkpoint
  declip train --config NAME k=v    a shipped recipe by name (declip configs) or a YAML file, any key overridden
  declip configs                    the shipped recipes, one line each
  declip config show [--config X]   the resolved config: every key, and where its value came from
  declip eval --checkpoint CKPT     evaluate a checkpoint: zero-shot, retrieval, linear probe (built-in or own sets)
  declip export CKPT DIR            the towers as an open_clip 'local-dir:' model (open_clip, CLIP_benchmark)
  declip data check|shard|to-wds    validate a caption or labelled manifest / write training shards / write it
                                    as a CLIP_benchmark data set
  declip plot RUN_DIR               training curves (loss, lr, zero-shot) of a run as a PNG

Every expected failure prints one line and exits non-zero (1; 2 for a config error); --debug shows the
traceback.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .errors import DeclipError


def cmd_train(args) -> int:
    from .config import default_config_path

    cfg = load_config(args.config or default_config_path(args.overrides), args.overrides)  # before torch loads
    from .train.trainer import train

    summary = train(cfg, resume=args.resume, overwrite=args.overwrite,
                    allow_config_change=args.allow_config_change)
    text = closing_summary(summary, cfg)
    if text:  # rank 0 only: the other ranks have no results and no checkpoint
        print(text)
    return 0


ZEROSHOT_SETS = {"builtin": "built-in shapes", "val": "eval.val_manifest", "imagenet": "ImageNet"}


def closing_summary(summary: dict, cfg) -> str:
    """The block ``declip train`` ends with: last and best zero-shot, where the checkpoints are, and the
    commands to run next. One block after the log, so the number and the file it belongs to are read together."""
    ev, best, ckpt = summary.get("eval", {}), summary.get("best"), summary.get("checkpoint")
    if not (ev or best or ckpt):
        return ""
    lines = [f"== run finished at step {summary.get('step')}/{cfg.train.steps}: {cfg.train.output_dir} =="]
    for prefix, what in ZEROSHOT_SETS.items():
        if f"{prefix}/top1" in ev:
            lines.append(f"last zero-shot top-1 ({what}, {ev[f'{prefix}/images']} held-out images): "
                         f"{ev[f'{prefix}/top1']:.1f}% (chance {ev[f'{prefix}/chance']:.1f}%), "
                         f"top-5 {ev[f'{prefix}/top5']:.1f}%")
    if best:
        lines.append(f"best {best['metric']}: {best['value']:.2f} at step {best['step']} -> {best['path']}")
    if ckpt:
        lines.append(f"checkpoint: {ckpt}")
    use = best["path"] if best else ckpt
    if use:
        export = Path(cfg.train.output_dir) / "export"
        lines += ["next:", f"  declip eval --checkpoint {use} --brief", f"  declip export {use} {export}"]
    return "\n".join(lines)


def cmd_configs(args) -> int:
    from .recipes import describe_recipes

    print(describe_recipes())
    return 0


def cmd_config_show(args) -> int:
    from .config import default_config_path
    from .config_parse import show_config
    from .recipes import is_shipped

    cfg = load_config(args.config or default_config_path(args.overrides), args.overrides)
    origins = {k: f"recipe {Path(v).stem}" if is_shipped(v) else v for k, v in cfg.origins.items()}
    print(show_config(cfg.to_dict(), origins))
    return 0


def cmd_eval(args) -> int:
    from .cli_eval import run_eval_command

    return run_eval_command(args)


def cmd_export(args) -> int:
    from .export import export_open_clip

    alpha = None
    if args.interpolate is not None or args.start:
        from .models.wise_ft import parse_alphas

        alphas = parse_alphas(args.interpolate if args.interpolate is not None else "")
        if len(alphas) != 1 or not args.start:
            print("error: declip export takes one --interpolate ALPHA with --from START (declip eval sweeps "
                  "several)", file=sys.stderr)
            return 2
        alpha = alphas[0]
    out = export_open_clip(args.checkpoint, args.out_dir, interpolate=alpha, start=args.start)
    print(f"open_clip model written to {out}; load it with "
          f"open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_run

    print(f"curves: {plot_run(args.run_dir, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"declip {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pre-train a model, then evaluate it and save a checkpoint (no --config: "
                       "DeCLIP on the built-in data)")
    config_help = ("a shipped recipe's name (declip configs) or a YAML file (default: the built-in demo; with "
                   "data.source=... on the command line, the general defaults for your own data)")
    t.add_argument("--config", default=None, help=config_help)
    t.add_argument("--resume", default=None, metavar="latest|latest-or-new|best|PATH",
                   help="continue a run: the newest checkpoint in train.output_dir (latest; latest-or-new starts "
                        "fresh when there is none), its best.pt, or a checkpoint file")
    t.add_argument("--overwrite", action="store_true",
                   help="start fresh in a train.output_dir that holds another run (its checkpoints are deleted)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="resume although the optimisation/data settings differ from the checkpoint's")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=5e-4 train.steps=200")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("configs", help="list the shipped recipes (usable as --config NAME)")
    c.set_defaults(func=cmd_configs)
    cs = sub.add_parser("config", help="config tools: 'declip config show' prints the resolved config")
    cs_sub = cs.add_subparsers(dest="config_command", required=True)
    show = cs_sub.add_parser("show", help="every key of the resolved config, marked default / preset / file / "
                             "command line")
    show.add_argument("--config", default=None, help=config_help)
    show.add_argument("overrides", nargs="*", help="key=value overrides, as for declip train")
    show.set_defaults(func=cmd_config_show)

    from .cli_eval import add_eval_arguments  # import-light (no torch)

    e = sub.add_parser("eval", help="evaluate a checkpoint: zero-shot, retrieval, linear probe")
    add_eval_arguments(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a checkpoint's towers as an open_clip 'local-dir:' model")
    x.add_argument("checkpoint", help="a declip checkpoint (ckpt_*.pt or best.pt)")
    x.add_argument("out_dir", help="folder for open_clip_config.json + open_clip_model.safetensors")
    x.add_argument("--interpolate", default=None, metavar="ALPHA",
                   help="WiSE-FT: write (1 - ALPHA) * START + ALPHA * CHECKPOINT (needs --from)")
    x.add_argument("--from", dest="start", default="", metavar="START",
                   help="the model the checkpoint was fine-tuned from (anything model.init_from accepts)")
    x.set_defaults(func=cmd_export)

    pl = sub.add_parser("plot", help="training curves of a run (loss, lr, evaluations) as a PNG")
    pl.add_argument("run_dir", help="a run directory (train.output_dir) or its metrics.jsonl")
    pl.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    from .cli_data import add_data_parser  # declip data check | shard

    add_data_parser(sub)
    return p


def one_line(error: BaseException) -> str:
    """What the user reads: the message, with the cause of a full disk said plainly."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"disk full: {error}"
    if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return str(error)
    lines = str(error).strip().splitlines()
    if lines and lines[0].startswith("Caught ") and "Original Traceback" in str(error):  # from a loader worker
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "val_manifest", None) and not args.val_root:
        print("error: --val-manifest needs --val-root", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (DeclipError, OSError) as e:
        if args.debug:
            raise
        message = f"{'config error' if isinstance(e, ConfigError) else 'error'}: {one_line(e)}"
        print(message, file=sys.stderr)
        record = logging.LogRecord("declip", logging.ERROR, __file__, 0, message, None, sys.exc_info())
        for handler in logging.getLogger().handlers:  # the run's train.log, with the traceback for later
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        return 2 if isinstance(e, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
