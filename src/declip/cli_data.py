"""``declip data check|shard|to-wds|example``: the command-line side of :mod:`declip.data.tools` and the eval
layer's data tools (kept out of the data layer)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DataError, os_error_text


def cmd_check(args) -> int:
    from .data.tools import check_manifest

    if args.timeout <= 0 or args.max_image_pixels <= 0 or args.max_image_bytes <= 0:
        print("error: --timeout, --max-image-pixels and --max-image-bytes must be > 0", file=sys.stderr)
        return 2
    try:
        report = check_manifest(args.manifest, args.root, args.threads, args.examples, args.image_size,
                                progress=not args.no_progress, timeout_s=args.timeout,
                                max_pixels=args.max_image_pixels, allow_outside_root=args.allow_outside_root,
                                classnames=args.classnames, max_bytes=args.max_image_bytes)
    except (OSError, DataError) as e:  # no manifest to check (missing, a folder, empty): 2, not 1
        print(f"error: {os_error_text(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2
    return 1 if report["problems"] else 0


def cmd_shard(args) -> int:
    from .data.tools import shard_manifest

    try:
        stats = shard_manifest(args.manifest, args.root, args.out, args.max_side, args.shard_size,
                               args.threads, args.quality, progress=not args.no_progress,
                               max_bytes=args.max_image_bytes)
    except (OSError, DataError) as e:
        print(f"error: {os_error_text(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2
    return 0 if stats["samples"] else 1


def cmd_to_wds(args) -> int:
    from .config import Config, ConfigError, config_from_dict
    from .data.labelled import manifest_kind
    from .eval.common import EvalDataError, show_progress
    from .eval.to_wds import captions_to_wds, check_out, clip_benchmark_command, labelled_to_wds

    flags = {"classnames": args.classnames, "templates": args.templates, "val_kind": args.val_kind,
             "max_images": args.max_images}
    given = {k: v for k, v in flags.items() if v is not None}
    tree = Config().to_dict()
    tree["eval"].update(given)
    try:
        cfg = config_from_dict(tree, {f"eval.{k}": f"command line (--{k.replace('_', '-')})" for k in given})
        if not Path(args.manifest).is_file():
            raise EvalDataError(f"manifest not found: {args.manifest}")
        check_out(args.out, args.manifest, args.root, args.overwrite)  # before anything is read or written
        kind = manifest_kind(args.manifest) if args.kind == "auto" else args.kind
        convert = labelled_to_wds if kind == "labelled" else captions_to_wds
        with show_progress(not args.no_progress):  # a bar on a terminal, as data check and shard draw
            stats = convert(cfg, args.manifest, args.root, args.out)
    except (ConfigError, EvalDataError, OSError) as e:
        text = os_error_text(e) if isinstance(e, OSError) else e
        print(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {text}", file=sys.stderr)
        return 2
    what = f"{stats['classes']} classes, {stats['templates']} templates" if kind == "labelled" else "retrieval"
    print(f"wrote {stats['samples']} {kind} samples ({what}) to {stats['out']} in CLIP_benchmark's wds layout")
    lost = stats["bad_lines"] + sum(stats["unreadable"].values())
    if lost:
        print(f"skipped: {stats['bad_lines']} bad lines, unreadable images {stats['unreadable']}; e.g. "
              f"{stats['examples'][0]}")
    print("evaluate an exported model (declip export CKPT EXPORT_DIR; give EXPORT_DIR as an absolute path):\n  "
          + clip_benchmark_command(args.out, kind))
    return 0


def cmd_example(args) -> int:
    from .eval.example_data import write_example

    if min(args.pairs, args.labelled, args.captions) < 2:
        print("error: --pairs, --labelled and --captions must be >= 2", file=sys.stderr)
        return 2
    paths = write_example(args.dir, args.pairs, args.labelled, args.captions, show=not args.no_progress)
    print(f"wrote an example own-data set to {paths['root']} (images under {paths['images'].name}/):\n"
          f"  captions.jsonl       {args.pairs} training pairs (filename, caption)\n"
          f"  labels.jsonl         {args.labelled} held-out labelled scenes, 10 shapes (zero-shot)\n"
          f"  test_captions.jsonl  {args.captions} held-out scenes, 2 captions each (retrieval)\n"
          f"next: cd {paths['root']} and follow the README's \"Train on your own data\" (declip docs readme)")
    return 0


def add_data_parser(sub) -> None:
    """Register ``declip data check|shard|to-wds`` on the top-level sub-parsers."""
    d = sub.add_parser("data", help="check a manifest; write it as training shards or as a CLIP_benchmark set; "
                       "write an example set")
    dsub = d.add_subparsers(dest="data_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("manifest", help="JSON-lines manifest: captions (filename, caption) or, for check, "
                       "labelled (filename, label, label_name)")
        p.add_argument("--root", required=True, help="folder the manifest's filenames are relative to (a URL "
                       "such as s3://bucket/images works too)")
        p.add_argument("--threads", type=int, default=8, help="decoding threads (default 8)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a terminal)")
        p.add_argument("--max-image-bytes", type=int, default=64 * 2**20,
                       help="larger image files count as too_large, unread (data.max_image_bytes; default 64 MiB)")

    c = dsub.add_parser("check", help="validate every line of a caption or labelled manifest (the kind is "
                        "told from the file); exit status 1 if any is unusable")
    common(c)
    c.add_argument("--examples", type=int, default=5, help="examples shown per problem")
    c.add_argument("--image-size", type=int, default=224, help="model input side (decode as training does)")
    c.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to read and decode one sample before it counts as timeout (data.sample_timeout_s)")
    c.add_argument("--max-image-pixels", type=int, default=64_000_000,
                   help="larger images count as too_large (data.max_image_pixels)")
    c.add_argument("--allow-outside-root", action="store_true",
                   help="accept absolute and '..' filenames (data.allow_outside_root)")
    c.add_argument("--classnames", default=None, help="labelled manifest: class-name file (line i names label "
                   "i); labels must then be below its line count")
    c.set_defaults(func=cmd_check)

    s = dsub.add_parser("shard", help="write training webdataset shards: key.jpg + key.txt + key.json")
    common(s)
    s.add_argument("--out", required=True, help="output folder for 00000.tar, 00001.tar, ...")
    s.add_argument("--max-side", type=int, default=256, help="shrink so the longer side is at most this")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    s.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    s.set_defaults(func=cmd_shard)

    w = dsub.add_parser("to-wds", help="write a labelled or caption manifest as a CLIP_benchmark data set "
                        "(its local webdataset layout: --dataset wds/NAME --dataset_root OUT)")
    w.add_argument("manifest", help="labelled (filename, label, label_name) or caption (filename, caption) "
                   "JSON lines")
    w.add_argument("--root", required=True, help="folder the manifest's filenames are relative to")
    w.add_argument("--out", required=True, help="output folder (test/N.tar, classnames.txt, templates, ...): new "
                   "or empty, outside the data's folders")
    w.add_argument("--overwrite", action="store_true", help="--out holds an earlier conversion: replace its "
                   "files (test/*.tar, test/nshards.txt, the layout's .txt files); other files are kept")
    w.add_argument("--kind", choices=("auto", "labelled", "captions"), default="auto",
                   help="auto: labelled when lines have 'label' and no 'caption'")
    w.add_argument("--classnames", default=None, help="as declip eval --classnames (default: label_name)")
    w.add_argument("--templates", default=None, help="as declip eval --templates (default openai-imagenet-80)")
    w.add_argument("--val-kind", default=None, choices=("auto", "imagenet", "generic"),
                   help="as declip eval --val-kind")
    w.add_argument("--max-images", type=int, default=None, help="cap, as declip eval --max-images")
    w.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a terminal)")
    w.set_defaults(func=cmd_to_wds)

    e = dsub.add_parser("example", help="write a small example own-data set (generated shapes): captions.jsonl, "
                        "labels.jsonl, test_captions.jsonl and images/, as the README's own-data section uses")
    e.add_argument("dir", help="output folder (created)")
    e.add_argument("--pairs", type=int, default=500, help="training image-caption pairs (default 500)")
    e.add_argument("--labelled", type=int, default=200, help="held-out labelled scenes, zero-shot (default 200)")
    e.add_argument("--captions", type=int, default=100,
                   help="held-out scenes with 2 captions each, retrieval (default 100)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a terminal)")
    e.set_defaults(func=cmd_example)
