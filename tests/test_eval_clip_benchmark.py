"""The ecosystem check: an exported model evaluates in CLIP_benchmark, offline, on a local folder.

CLIP_benchmark is a dev-only dependency (``pip install -e '.[dev]'``); without it this test is skipped. The data
is the built-in zero-shot set in CLIP_benchmark's local WebDataset layout (``declip eval --write-builtin``).
With the transform open_clip builds from the export's preprocess_cfg (what ``clip_benchmark eval --model_type
open_clip --model local-dir:EXPORT`` uses) CLIP_benchmark must give exactly our numbers: same towers, tokenizer,
prompts, pixels.

NumPy >= 2.4 breaks CLIP_benchmark 1.6.2's top-k helper (``float()`` of a 1-element 1-D array; upstream
LAION-AI/CLIP_benchmark#147): there the helper is replaced by an equivalent for this test; everything else
(classifier, data, balanced accuracy) is CLIP_benchmark's own.
"""
import pytest
import torch

pytest.importorskip("sklearn", reason="CLIP_benchmark's metrics need scikit-learn (dev extra)")
pytest.importorskip("clip_benchmark", reason="CLIP_benchmark is not installed (dev extra: pip install -e '.[dev]')")

from clip_benchmark.datasets.builder import build_dataset  # noqa: E402
from clip_benchmark.metrics import zeroshot_classification  # noqa: E402
from clip_benchmark.models import load_clip  # noqa: E402

from declip.eval.builtin_sets import write_builtin  # noqa: E402
from declip.eval.suite import run_evaluation
from declip.export import load_towers  # noqa: E402
from declip.export import export_open_clip  # noqa: E402
from declip.methods import build_method  # noqa: E402


def _topk_accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's ``accuracy`` contract (fractions, in ``topk`` order), without the NumPy 2.4 failure."""
    pred = output.topk(max(topk), 1).indices.t()
    correct = pred == target.view(1, -1)
    return [correct[:k].any(dim=0).float().mean().item() for k in topk]


def test_clip_benchmark_zero_shot_runs_on_an_exported_model(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        zeroshot_classification.accuracy(torch.eye(2), torch.tensor([0, 1]))
    except TypeError:  # NumPy >= 2.4 (see the module docstring)
        monkeypatch.setattr(zeroshot_classification, "accuracy", _topk_accuracy)
    cfg = tiny_cfg("eval.num_workers=0", "eval.max_images=20")
    torch.manual_seed(0)
    torch.save({"model": build_method(cfg).state_dict(), "config": cfg.to_dict(), "step": 1}, tmp_path / "c.pt")
    out = export_open_clip(tmp_path / "c.pt", tmp_path / "export")
    sets = write_builtin(tmp_path / "data", max_images=20)

    # what `clip_benchmark eval --model_type open_clip --model local-dir:OUT --dataset wds/shapes` does
    model, transform, tokenizer = load_clip("open_clip", f"local-dir:{out}", "declip", None, "cpu")
    model.eval()
    dataset = build_dataset("wds/shapes", root=str(sets["clip_benchmark"]), transform=transform,
                            split="test", task="zeroshot_classification")
    loader = torch.utils.data.DataLoader(dataset.batched(8), batch_size=None, shuffle=False, num_workers=0)
    metrics = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, dataset.templates,
                                               device="cpu", amp=False)
    assert dataset.classes[:3] == ["circle", "square", "triangle"] and len(dataset.classes) == 10
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(metrics)

    clip, ckpt_cfg, _ = load_towers(tmp_path / "c.pt")
    ours = run_evaluation(clip, ckpt_cfg, "cpu", tasks=("zeroshot",))
    assert 100 * metrics["acc1"] == pytest.approx(ours["builtin/top1"])
    assert 100 * metrics["mean_per_class_recall"] == pytest.approx(ours["builtin/balanced_top1"])


def _own_data(folder, n=15):
    """``n`` JPEGs larger than twice the tiny model's input (so draft-mode decoding would change the pixels),
    a labelled manifest (3 classes, named by label_name) and a caption manifest (2 captions per image)."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    names = ["red thing", "green thing", "blue thing"]
    labelled, captions = [], []
    for i in range(n):
        pixels = rng.integers(0, 90, (88, 104, 3), dtype=np.uint8)
        pixels[..., i % 3] += rng.integers(100, 160, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.jpg", quality=90)
        labelled.append({"filename": f"{i}.jpg", "label": i % 3, "label_name": names[i % 3]})
        captions += [{"filename": f"{i}.jpg", "caption": f"a {names[i % 3]} number {i}"},
                     {"filename": f"{i}.jpg", "caption": f"photo {i} of something {names[i % 3].split()[0]}"}]
    for name, rows in (("labelled.jsonl", labelled), ("captions.jsonl", captions)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_clip_benchmark_on_converted_own_data_equals_declip_eval(tiny_cfg, tmp_path, monkeypatch, capsys):
    """`declip data to-wds` on an own labelled and caption manifest; CLIP_benchmark's zero-shot and retrieval
    on the converted folders give `declip eval --no-jpeg-draft`'s numbers (same transform)."""
    import json

    from clip_benchmark.metrics import zeroshot_retrieval

    from declip.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        zeroshot_classification.accuracy(torch.eye(2), torch.tensor([0, 1]))
    except TypeError:  # NumPy >= 2.4 (see the module docstring)
        monkeypatch.setattr(zeroshot_classification, "accuracy", _topk_accuracy)
    cfg = tiny_cfg("eval.num_workers=0")
    torch.manual_seed(0)
    torch.save({"model": build_method(cfg).state_dict(), "config": cfg.to_dict(), "step": 1}, tmp_path / "c.pt")
    out = export_open_clip(tmp_path / "c.pt", tmp_path / "export")
    data = tmp_path / "own"
    _own_data(data)
    for manifest, wds in (("labelled.jsonl", "own_cls"), ("captions.jsonl", "own_ret")):
        assert main(["data", "to-wds", str(data / manifest), "--root", str(data / "img"),
                     "--out", str(tmp_path / wds)]) == 0
    printed = capsys.readouterr().out
    assert f"--dataset wds/own_ret --dataset_root {tmp_path / 'own_ret'} --task zeroshot_retrieval" in printed
    assert (tmp_path / "own_ret" / "dataset_type.txt").read_text() == "retrieval\n"

    assert main(["eval", "--checkpoint", str(tmp_path / "c.pt"), "--val-manifest", str(data / "labelled.jsonl"),
                 "--val-root", str(data / "img"), "--captions", str(data / "captions.jsonl"),
                 "--root", str(data / "img"), "--num-workers", "0", "--no-jpeg-draft"]) == 0
    ours = json.loads(capsys.readouterr().out)

    # what the printed `clip_benchmark eval --model_type open_clip --model local-dir:EXPORT` does: open_clip's
    # model, tokenizer AND transform, the transform built from the export's preprocess_cfg
    model, transform, tokenizer = load_clip("open_clip", f"local-dir:{out}", "declip", None, "cpu")
    model.eval()

    def loader(folder, task):
        ds = build_dataset(f"wds/{folder}", root=str(tmp_path / folder), transform=transform, split="test",
                           task=task)
        return ds, torch.utils.data.DataLoader(ds.batched(4), batch_size=None, shuffle=False, num_workers=0)

    ds, dl = loader("own_cls", "zeroshot_classification")
    assert ds.classes == ["red thing", "green thing", "blue thing"] and len(ds.templates) == 80
    zs = zeroshot_classification.evaluate(model, dl, tokenizer, ds.classes, ds.templates, device="cpu", amp=False)
    _, dl = loader("own_ret", "zeroshot_retrieval")
    ret = zeroshot_retrieval.evaluate(model, dl, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])

    assert ours["val/images"] == 15 and ours["retrieval/texts"] == 30
    assert 100 * zs["acc1"] == pytest.approx(ours["val/top1"], abs=1e-3)
    assert 100 * zs["mean_per_class_recall"] == pytest.approx(ours["val/balanced_top1"], abs=1e-3)
    for k in (1, 5, 10):  # CLIP_benchmark's image retrieval = text -> image
        assert 100 * ret[f"image_retrieval_recall@{k}"] == pytest.approx(ours[f"retrieval/t2i_r{k}"], abs=1e-3)
        assert 100 * ret[f"text_retrieval_recall@{k}"] == pytest.approx(ours[f"retrieval/i2t_r{k}"], abs=1e-3)
