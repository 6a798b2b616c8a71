"""Evaluation suite: the metrics against hand-computed values, the manifest readers, the protocols."""
import json

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image

from declip.config import ConfigError, load_config
from declip.data.tokenizer import tokenize
from declip.data.views import eval_transform
from declip.eval.common import EvalDataError, EvalImages, FileImages
from declip.eval.linear_probe import fit_logreg, linear_probe, predict
from declip.eval.retrieval import group_captions, recall_at_k, retrieval_metrics
from declip.eval.suite import best_metric, run_evaluation
from declip.eval.zeroshot import (classify, load_templates, protocol, read_labelled, zero_shot_metrics)


# ------------------------------------------------------------------------------------------ hand-computed
def test_zero_shot_metrics_hand_computed():
    # 6 images, 3 classes; labels 0,0,0,0,1,2 (majority class 0: 4/6).
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    # predictions (argmax): 0,0,0,1 | 1 | 0  -> top-1 4/6; per class: 3/4, 1/1, 0/1 -> balanced (0.75+1+0)/3
    logits = torch.tensor([[3., 1, 0], [3, 1, 0], [3, 1, 0], [1, 3, 0], [0, 3, 1], [3, 0, 1]])
    m = zero_shot_metrics(logits, labels, num_classes=3)
    assert m["top1"] == pytest.approx(100 * 4 / 6)
    assert m["balanced_top1"] == pytest.approx(100 * (0.75 + 1.0 + 0.0) / 3)
    assert m["top5"] == 100.0  # 3 classes: top-5 = top-3 covers everything
    assert m["chance"] == pytest.approx(100 / 3) and m["majority"] == pytest.approx(100 * 4 / 6)


def test_zero_shot_top5_hand_computed():
    labels = torch.tensor([6, 0])
    scores = torch.arange(7, dtype=torch.float).repeat(2, 1)  # every row ranks 6,5,4,3,2 in the top 5
    m = zero_shot_metrics(scores, labels, num_classes=7)
    assert m["top1"] == 50.0 and m["top5"] == 50.0 and m["balanced_top1"] == 50.0


def test_recall_at_k_hand_computed():
    # 3 images (unit axes), 5 captions: image 0 has captions 0,1; image 1 has 2,3; image 2 has 4.
    images = torch.eye(3)
    texts = F.normalize(torch.tensor([
        [1.0, 0.2, 0.0],   # -> image 0 first            (t2i hit@1)
        [0.1, 1.0, 0.0],   # of image 0, closest to image 1 (t2i miss@1, hit@2)
        [0.0, 1.0, 0.3],   # -> image 1                  (hit@1)
        [0.0, 0.2, 1.0],   # of image 1, closest to image 2 (miss@1)
        [0.9, 0.0, 0.5],   # of image 2, closest to image 0 (miss@1)
    ]), dim=-1)
    text_image = torch.tensor([0, 0, 1, 1, 2])
    r = retrieval_metrics(images, texts, text_image, ks=(1, 2))
    assert r["t2i_r1"] == pytest.approx(100 * 2 / 5)  # captions 0 and 2
    assert r["t2i_r2"] == pytest.approx(100 * 5 / 5)
    # image 0: most similar caption is 0 (own) -> hit; image 1: caption 2 (cos .96) vs 1 (.995) -> caption 1
    # is image 0's -> miss@1, hit@2; image 2: caption 3 (.98, image 1's) -> miss@1; @2: caption 2 .29 vs 4 .49
    # -> caption 4 (own) -> hit.
    assert r["i2t_r1"] == pytest.approx(100 * 1 / 3)
    assert r["i2t_r2"] == pytest.approx(100 * 3 / 3)
    assert r["mean_recall"] == pytest.approx((40 + 100 + 100 / 3 + 100) / 4)


def test_recall_counts_an_image_once_however_many_captions():
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])  # 3 captions x 2 images; all rank image 0 first
    r = recall_at_k(sim, torch.tensor([0, 0, 1]), ks=(1,))
    assert r["t2i_r1"] == pytest.approx(200 / 3)
    assert r["i2t_r1"] == 100.0  # image 0: caption 0; image 1: caption 2 (its own) scores highest for it


def test_linear_probe_separates_a_separable_toy_set():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:4] * 3
    def draw(n):
        y = torch.arange(n) % 4
        return F.normalize(centres[y] + 0.3 * torch.randn(n, 8, generator=g), dim=-1), y
    (xtr, ytr), (xte, yte) = draw(80), draw(40)
    res = linear_probe(xtr, ytr, xte, yte, num_classes=4)
    assert res["top1"] == 100.0 and res["balanced_top1"] == 100.0
    assert 1e-6 <= res["l2"] <= 1e2 and res["val_top1"] == 100.0


def test_logreg_penalty_shrinks_weights():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    weak, strong = fit_logreg(x, y, 2, 1e-4), fit_logreg(x, y, 2, 10.0)
    assert weak[0].norm() > 5 * strong[0].norm()
    assert predict(weak, x).tolist() == [0, 1]


# ----------------------------------------------------------------------------------- manifests + protocols
def write_manifest(path, lines):
    path.write_text("\n".join(ln if isinstance(ln, str) else json.dumps(ln) for ln in lines) + "\n")
    return path


def test_class_names_come_from_label_name(tmp_path):
    m = write_manifest(tmp_path / "m.json", [
        {"filename": "a.png", "label": 1, "label_name": "tabby cat"},
        {"filename": "b.png", "label": 0, "label_name": "golden retriever"},
        {"filename": "c.png", "label": 1, "label_name": "tabby cat"},
        {"filename": "d.png", "label": 0, "label_name": "poodle"},  # contradicts: counted as a bad line
        "{broken",
        {"filename": "e.png", "label": "x"},
    ])
    man = read_labelled(m)
    cfg = load_config(None, [f"eval.val_manifest={m}", f"eval.val_root={tmp_path}"])
    prefix, names, templates, columns = protocol(man, cfg)
    assert prefix == "val" and names == ["golden retriever", "tabby cat"] and columns == {0: 0, 1: 1}
    assert len(templates) == 80 and len(man.records) == 3 and len(man.bad) == 3
    assert any("m.json:5" in b for b in man.bad) and any("contradicts" in b for b in man.bad)


def test_classnames_file_of_the_wrong_length_fails_clearly(tmp_path):
    m = write_manifest(tmp_path / "m.json", [{"filename": f"{i}.png", "label": i} for i in range(3)])
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    cfg = load_config(None, [f"eval.val_manifest={m}", f"eval.val_root={tmp_path}", f"eval.classnames={names}"])
    with pytest.raises(EvalDataError, match=r"names.txt has 2 names, but the labels in .*m.json run 0..2 \(3 "):
        protocol(read_labelled(m), cfg)
    names.write_text("cat\ndog\nbird\n")
    assert protocol(read_labelled(m), cfg)[1] == ["cat", "dog", "bird"]


def test_missing_label_name_asks_for_classnames(tmp_path):
    m = write_manifest(tmp_path / "m.json", [{"filename": "a.png", "label": 7, "label_name": "bird"},
                                             {"filename": "b.png", "label": 2}])
    cfg = load_config(None, [f"eval.val_manifest={m}", f"eval.val_root={tmp_path}"])
    with pytest.raises(EvalDataError, match=r"no label_name for label\(s\) \[2\].*--classnames"):
        protocol(read_labelled(m), cfg)
    m = write_manifest(m, [{"filename": "a.png", "label": 7, "label_name": "bird"},
                           {"filename": "b.png", "label": 2, "label_name": "fish"}])
    assert protocol(read_labelled(m), cfg)[1:4:2] == (["fish", "bird"], {2: 0, 7: 1})  # labels that occur


def test_templates_named_sets_and_files(tmp_path):
    assert load_templates("simple") == ("a photo of a {}.",)
    assert len(load_templates("openai-imagenet-80", 7)) == 7
    f = tmp_path / "t.txt"
    f.write_text("a {} drawing\n\nthe {}\n")
    assert load_templates(str(f)) == ("a {} drawing", "the {}")
    f.write_text("no placeholder\n")
    with pytest.raises(EvalDataError, match="needs '{}'"):
        load_templates(str(f))


def test_imagenet_shaped_manifest_keeps_the_published_protocol(tmp_path):
    m = write_manifest(tmp_path / "val_official.json", [
        {"filename": "x.JPEG", "label": 3, "label_name": IMAGENET_CLASSNAMES[3]},
        {"filename": "y.JPEG", "label": 999, "label_name": IMAGENET_CLASSNAMES[999]},
        {"filename": "z.JPEG", "label": 1000, "label_name": "beyond"},
    ])
    cfg = load_config(None, [f"eval.val_manifest={m}", f"eval.val_root={tmp_path}"])
    man = read_labelled(m)
    prefix, names, _, columns = protocol(man, cfg)  # one label_name is not ImageNet's: generic
    assert prefix == "val" and names[2] == "beyond" and columns == {3: 0, 999: 1, 1000: 2}
    man = read_labelled(write_manifest(m, [{"filename": f"ILSVRC2012_val_{i:08d}.JPEG", "label": i * 7}
                                           for i in range(3)] + [{"filename": "ILSVRC2012_val_9.JPEG",
                                                                  "label": 1000}]))
    prefix, names, templates, _ = protocol(man, cfg)
    assert prefix == "imagenet" and names == list(IMAGENET_CLASSNAMES) and len(templates) == 80
    assert len(man.records) == 3 and "outside [0, 1000)" in man.bad[0]
    generic = load_config(None, [f"eval.val_manifest={m}", f"eval.val_root={tmp_path}", "eval.val_kind=generic"])
    with pytest.raises(EvalDataError, match="no label_name"):  # generic: names must come from somewhere
        protocol(read_labelled(m), generic)


def test_caption_groups_lines_and_lists(tmp_path):
    recs = [{"filename": "a", "caption": "a cat", "_line": 1}, {"filename": "b", "caption": ["a dog", "  "],
            "_line": 2}, {"filename": "a", "caption": "one more cat", "_line": 3},
            {"filename": "c", "caption": "\u732b", "_line": 4}]
    names, caps, skipped = group_captions(recs, "m.json")
    assert names == ["a", "b"] and caps == [["a cat", "one more cat"], ["a dog"]]
    assert skipped == {"empty_caption": 1, "non_latin_caption": 1}


# ----------------------------------------------------------------------------------- decoding + oracle
class OracleCLIP(torch.nn.Module):
    """Text embedding = one-hot of the class named in the prompt; image embedding = one-hot of the class
    written in the image's red channel. A correct evaluator must report 100% top-1."""

    def __init__(self, classnames, templates):
        super().__init__()
        self.lookup = {}
        for c, name in enumerate(classnames):
            for t in templates:
                self.lookup[tuple(tokenize(t(name) if callable(t) else t.format(name))[0].tolist())] = c
        self.n = len(classnames)

    def encode_text(self, ids, normalize=False):
        out = F.one_hot(torch.tensor([self.lookup[tuple(r.tolist())] for r in ids]), self.n).float() + 0.01
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image(self, images, normalize=False):
        red = images[:, 0].mean(dim=(1, 2)) * 0.229 + 0.485  # undo Normalize
        return F.one_hot((red * 255).round().long(), self.n).float()


def test_oracle_scores_100_and_bad_files_are_counted(tmp_path):
    names = ["c0", "c1", "c2", "c3"]
    lines = []
    for i, lab in enumerate([0, 1, 2, 3, 1]):
        Image.new("RGB", (40, 30), (lab, 0, 0)).save(tmp_path / f"{i}.png")
        lines.append({"filename": f"{i}.png", "label": lab, "label_name": names[lab]})
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    lines += [{"filename": "missing.png", "label": 0}, {"filename": "corrupt.png", "label": 2}, "[1, 2]"]
    m = write_manifest(tmp_path / "m.json", lines)
    cfg = load_config(None, [f"eval.val_manifest={m}", f"eval.val_root={tmp_path}", "eval.templates=simple",
                             "eval.builtin=false", "eval.num_workers=0", "model.vision.image_size=32"])
    res = run_evaluation(OracleCLIP(names, ["a photo of a {}."]), cfg, "cpu")
    assert res["val/top1"] == 100.0 and res["val/balanced_top1"] == 100.0 and res["val/images"] == 5
    assert res["val/unreadable"] == 2 and res["val/bad_lines"] == 1
    assert res["val/skip_missing_file"] == 1 and res["val/skip_corrupt_image"] == 1
    assert res["val/chance"] == 25.0 and res["val/majority"] == 40.0
    assert best_metric(res, cfg) == ("val/top1", 100.0)


def test_images_go_through_the_training_decoder(tmp_path):
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")  # transparent black -> white
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # no ink -> white
    ds = EvalImages(FileImages(tmp_path, ["clear.png", "cmyk.jpg", "nope.png"], 16), 3, eval_transform(16))
    white = eval_transform(16)(Image.new("RGB", (20, 20), (255, 255, 255)))
    assert torch.allclose(ds[0][0], white) and torch.allclose(ds[1][0], white, atol=0.05)
    assert ds[2][0] is None and ds[2][2] == "missing_file"


def test_classify_restores_training_mode(tmp_path):
    Image.new("RGB", (8, 8), (1, 0, 0)).save(tmp_path / "a.png")
    clip = OracleCLIP(["x", "y"], ["{}"]).train()
    images = EvalImages(FileImages(tmp_path, ["a.png"], 16), 1, eval_transform(16))
    assert classify(clip, images, [1], ["x", "y"], ["{}"], "cpu")["top1"] == 100.0 and clip.training


# ------------------------------------------------------------------------------------------------ config
def test_config_rejects_unknown_tasks_and_unproducible_best_metric():
    with pytest.raises(ConfigError, match=r"command line \(eval.tasks=\[zeroshot,ocr\]\): eval.tasks"):
        load_config(None, ["eval.tasks=[zeroshot,ocr]"])
    with pytest.raises(ConfigError, match=r"eval.best_metric: 'retrieval/i2t_r1' is produced by no"):
        load_config(None, ["eval.best_metric=retrieval/i2t_r1"])
    with pytest.raises(ConfigError, match="eval.best_metric"):
        load_config(None, ["eval.builtin=false", "eval.best_metric=builtin/top1"])
    cfg = load_config(None, ["eval.tasks=[retrieval,linear-probe]", "eval.best_metric=builtin-probe/top1"])
    assert cfg.eval.tasks == ["retrieval", "linear-probe"]
    load_config(None, ["eval.val_manifest=m.json", "eval.val_root=r", "eval.best_metric=val/balanced_top1"])
    with pytest.raises(ConfigError, match="eval.retrieval_root"):
        load_config(None, ["eval.retrieval_manifest=c.json"])
    with pytest.raises(ConfigError, match="eval.classnames"):
        load_config(None, ["eval.val_kind=imagenet", "eval.classnames=n.txt"])


def test_default_best_metric_prefers_the_first_zero_shot_top1():
    cfg = load_config(None, [])
    res = {"retrieval/mean_recall": 9.0, "probe/top1": 50.0, "val/top1": 20.0, "builtin/top1": 30.0}
    assert best_metric(res, cfg) == ("val/top1", 20.0)
    assert best_metric({"retrieval/mean_recall": 9.0, "probe/top1": 5.0}, cfg) == ("probe/top1", 5.0)
    assert best_metric({}, cfg) is None
