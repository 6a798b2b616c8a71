"""The ecosystem check: an exported model evaluates in CLIP_benchmark, offline, on a local folder.

CLIP_benchmark is a dev-only dependency (``pip install -e '.[dev]'``); without it this test is skipped. The data
is the built-in zero-shot set in CLIP_benchmark's local WebDataset layout (``declip eval --write-builtin``).
With our eval transform CLIP_benchmark must give exactly our top-1: same towers, tokenizer, prompts, images.

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

from declip.data.views import eval_transform  # noqa: E402
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
    model, _, tokenizer = load_clip("open_clip", f"local-dir:{out}", "declip", None, "cpu")
    model.eval()
    size = cfg.model.vision.image_size
    dataset = build_dataset("wds/shapes", root=str(sets["clip_benchmark"]), transform=eval_transform(size),
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
