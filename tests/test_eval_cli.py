"""``declip eval`` end to end on a tiny checkpoint, the built-in sets written to disk, and evaluation in training."""
import json

import pytest
import torch

from declip.cli import main as cli_main
from declip.eval.builtin_sets import write_builtin
from declip.eval.suite import run_evaluation
from declip.export import load_towers
from declip.methods import build_method
from declip.train.metrics import read_metrics

TINY_EVAL = ["eval.num_workers=0", "eval.batch_size=16"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_builtin(tmp_path_factory.mktemp("builtin"), max_images=20)


@pytest.fixture
def checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*TINY_EVAL)
    torch.manual_seed(0)
    method = build_method(cfg)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": method.state_dict(), "config": cfg.to_dict(), "step": 3}, path)
    return path


def run_cli(capsys, *argv):
    code = cli_main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_zeroshot_on_a_labelled_manifest_counts_bad_lines_and_missing_images(checkpoint, sets, capsys, caplog,
                                                                             tmp_path):
    manifest = tmp_path / "val.json"
    manifest.write_text(sets["val"].read_text() + "not json\n"
                        + json.dumps({"filename": "images/gone.png", "label": 1, "label_name": "square"}) + "\n")
    code, out, err = run_cli(capsys, "--checkpoint", checkpoint, "--task", "zeroshot", "--val-manifest", manifest,
                             "--val-root", sets["root"], "--templates", sets["templates"], "--max-images", 30,
                             "--brief")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("val:"))
    for key in ("top1=", "top5=", "balanced_top1=", "chance=10.00", "majority=10.00", "images=20",
                "unreadable=1", "bad_lines=1", "skip_missing_file=1"):
        assert key in line, (key, line)
    assert "builtin:" not in out  # files given: the built-in set runs only with --builtin
    assert "val.json:21" in caplog.text and "missing_file: " in caplog.text  # reported: where and why


def test_retrieval_and_probe_print_their_metrics(checkpoint, sets, capsys):
    code, out, err = run_cli(capsys, "--checkpoint", checkpoint, "--task", "retrieval", "--captions",
                             sets["captions"], "--root", sets["root"])
    assert code == 0, err
    res = json.loads(out)
    assert {"retrieval/i2t_r1", "retrieval/t2i_r1", "retrieval/i2t_r10", "retrieval/t2i_r5"} <= set(res)
    assert res["retrieval/images"] == 20 and res["retrieval/texts"] == 40 and res["retrieval/t2i_r10"] >= 50
    code, out, err = run_cli(capsys, "--checkpoint", checkpoint, "--task", "linear-probe", "--train-manifest",
                             sets["probe_train"], "--test-manifest", sets["val"], "--root", sets["root"],
                             "--brief")
    assert code == 0, err
    assert out.startswith("probe: top1=") and " l2=" in out and "train_images=20 images=20" in out


def test_bad_inputs_exit_2_with_a_clear_message(checkpoint, sets, capsys, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("circle\nsquare\n")
    code, _, err = run_cli(capsys, "--checkpoint", checkpoint, "--val-manifest", sets["val"], "--val-root",
                           sets["root"], "--classnames", names)
    assert code == 2 and "names.txt has 2 names, but the labels" in err and "(10 classes)" in err
    code, _, err = run_cli(capsys, "--checkpoint", checkpoint, "--task", "retrieval", "--val-manifest",
                           sets["val"], "--val-root", sets["root"])
    assert code == 2 and "--task retrieval has no data" in err
    code, _, err = run_cli(capsys, "--checkpoint", checkpoint, "--task", "ocr")
    assert code == 2 and "(--task)" in err and "eval.tasks" in err


def test_manifests_reproduce_the_builtin_numbers(checkpoint, sets):
    """The written sets are the built-in ones, read through the file path: identical metrics."""
    clip, cfg, _ = load_towers(checkpoint)
    ev = cfg.eval
    ev.max_images, ev.tasks = 20, ["zeroshot", "retrieval", "linear-probe"]
    ev.val_manifest, ev.val_root, ev.templates = str(sets["val"]), str(sets["root"]), str(sets["templates"])
    ev.retrieval_manifest, ev.retrieval_root = str(sets["captions"]), str(sets["root"])
    ev.probe_train_manifest, ev.probe_test_manifest = str(sets["probe_train"]), str(sets["val"])
    ev.probe_train_root = ev.probe_test_root = str(sets["root"])
    res = run_evaluation(clip, cfg, "cpu")
    for metric in ("top1", "top5", "balanced_top1"):
        assert res[f"val/{metric}"] == res[f"builtin/{metric}"]
    for metric in ("i2t_r1", "t2i_r1", "mean_recall"):
        assert res[f"retrieval/{metric}"] == res[f"builtin-retrieval/{metric}"]
    assert res["probe/top1"] == res["builtin-probe/top1"]


def test_training_evaluates_every_task_and_keeps_best_by_the_chosen_metric(tiny_cfg):
    cfg = tiny_cfg("train.steps=2", "eval.every=1", "eval.max_images=10", *TINY_EVAL,
                   "eval.tasks=[zeroshot,retrieval,linear-probe]", "eval.best_metric=builtin-retrieval/mean_recall")
    from declip.train.trainer import train

    summary = train(cfg)
    evals = [r for r in read_metrics(cfg.train.output_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    for key in ("builtin/top1", "builtin/balanced_top1", "builtin-retrieval/i2t_r1", "builtin-probe/top1"):
        assert all(key in r for r in evals), key
    state = torch.load(f"{cfg.train.output_dir}/best.pt", weights_only=True)
    best = max(evals, key=lambda r: r["builtin-retrieval/mean_recall"])
    assert state["best"] == pytest.approx(best["builtin-retrieval/mean_recall"])
    assert summary["eval"]["builtin-probe/images"] == 10


def test_help_says_what_every_command_does(capsys):
    from declip.cli import build_parser

    with pytest.raises(SystemExit):
        cli_main(["-h"])
    text = capsys.readouterr().out
    eval_line = next(line for line in text.splitlines() if line.strip().startswith("declip eval"))
    assert "zero-shot" in eval_line and "retrieval" in eval_line and "linear probe" in eval_line
    assert "declip data check|shard|to-wds" in text
    subs = build_parser()._subparsers._group_actions[0]
    helps = {a.dest: a.help for a in subs._choices_actions}
    assert set(helps) == {"train", "configs", "config", "eval", "export", "plot", "data", "docs"}
    assert all(helps.values()), "every sub-command has a help line"
    assert "recipes" in helps["configs"] and "resolved config" in helps["config"]
    assert "evaluate" in helps["train"] and "retrieval" in helps["eval"] and "CLIP_benchmark" in helps["data"]


def test_eval_jpeg_draft_false_decodes_large_jpegs_at_full_size(tiny_cfg, tmp_path):
    """eval.jpeg_draft (default true: reduced DCT scale, as training); false: exactly PIL's full-size decode,
    as CLIP_benchmark sees the file."""
    import numpy as np
    from PIL import Image

    from declip.eval.common import file_images

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=90)
    draft = file_images(tmp_path, ["a.jpg"], tiny_cfg())  # image_size 32: a 200 px JPEG is over 2x
    exact = file_images(tmp_path, ["a.jpg"], tiny_cfg("eval.jpeg_draft=false"))
    assert draft.load(0).size == (100, 80)
    with Image.open(tmp_path / "a.jpg") as full:
        assert np.array_equal(np.asarray(exact.load(0)), np.asarray(full.convert("RGB")))
    assert not torch.equal(draft[0][0], exact[0][0])  # and the crops the model sees differ
