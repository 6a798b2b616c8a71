"""``declip data check|shard``: the command-line side of :mod:`declip.data.tools` (kept out of the data layer)."""
from __future__ import annotations

import argparse
import sys

from .errors import DataError



def cmd_check(args) -> int:
    from .data.tools import check_manifest

    try:
        report = check_manifest(args.manifest, args.root, args.threads, args.examples, args.image_size,
                                progress=not args.no_progress, classnames=args.classnames)
    except (OSError, DataError) as e:  # no manifest to check (missing, a folder, empty): 2, not 1
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if report["problems"] else 0


def cmd_shard(args) -> int:
    from .data.tools import shard_manifest

    try:
        stats = shard_manifest(args.manifest, args.root, args.out, args.max_side, args.shard_size,
                               args.threads, args.quality, progress=not args.no_progress)
    except (OSError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if stats["samples"] else 1


def add_data_parser(sub) -> None:
    """Register ``declip data check|shard`` on the top-level sub-parsers."""
    d = sub.add_parser("data", help="check a manifest, or convert it to webdataset shards")
    dsub = d.add_subparsers(dest="data_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("manifest", help="JSON-lines manifest: captions (filename, caption) or, for check, "
                       "labelled (filename, label, label_name)")
        p.add_argument("--root", required=True, help="folder the manifest's filenames are relative to")
        p.add_argument("--threads", type=int, default=8, help="decoding threads (default 8)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a terminal)")

    c = dsub.add_parser("check", help="validate every line of a caption or labelled manifest (the kind is "
                        "told from the file); exit status 1 if any is unusable")
    common(c)
    c.add_argument("--examples", type=int, default=5, help="examples shown per problem")
    c.add_argument("--image-size", type=int, default=224, help="model input side (decode as training does)")
    c.add_argument("--classnames", default=None, help="labelled manifest: class-name file (line i names label "
                   "i); labels must then be below its line count")
    c.set_defaults(func=cmd_check)

    s = dsub.add_parser("shard", help="write webdataset shards: key.jpg + key.txt + key.json")
    common(s)
    s.add_argument("--out", required=True, help="output folder for 00000.tar, 00001.tar, ...")
    s.add_argument("--max-side", type=int, default=256, help="shrink so the longer side is at most this")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    s.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    s.set_defaults(func=cmd_shard)
