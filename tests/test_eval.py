"""Zero-shot evaluation: ImageNet's val_official.json form, the classifier math, and top-k bookkeeping."""
import json

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image

from declip.config import load_config
from declip.data.tokenizer import tokenize
from declip.eval.zeroshot import ImageNetVal, run_zero_shot, zero_shot_accuracy
from declip.data.views import eval_transform


class OracleCLIP(torch.nn.Module):
    """Text embedding = one-hot of the class whose name the prompt contains; image embedding = one-hot of the
    class encoded in the image's red channel. A correct evaluator must report 100% top-1."""

    def __init__(self, classnames, templates):
        super().__init__()
        self.lookup = {}
        for c, name in enumerate(classnames):
            for t in templates:
                self.lookup[tuple(tokenize(t(name) if callable(t) else t.format(name))[0].tolist())] = c
        self.n = len(classnames)

    def encode_text(self, ids, normalize=False):
        idx = torch.tensor([self.lookup[tuple(r.tolist())] for r in ids])
        return F.one_hot(idx, self.n).float() + 0.01

    def encode_image(self, images, normalize=False):
        red = images[:, 0].mean(dim=(1, 2)) * 0.229 + 0.485  # undo Normalize
        return F.one_hot((red * 255).round().long(), self.n).float()


def make_imagenet(tmp_path, labels):
    root = tmp_path / "val"
    root.mkdir()
    lines = []
    for i, lab in enumerate(labels):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        Image.new("RGB", (40, 30), (lab, 0, 0)).save(root / name, format="PNG")  # lossless despite the name
        lines.append(json.dumps({"filename": name, "label": lab, "label_name": IMAGENET_CLASSNAMES[lab]}))
    lines.append("{not json")
    lines.append(json.dumps({"filename": "ILSVRC2012_val_missing.JPEG", "label": 1, "label_name": "x"}))
    (tmp_path / "val_official.json").write_text("\n".join(lines) + "\n")
    return tmp_path / "val_official.json", root


def test_imagenet_reader_counts_bad_lines_and_unreadable_images(tmp_path):
    manifest, root = make_imagenet(tmp_path, [0, 3, 7])
    ds = ImageNetVal(str(manifest), str(root), eval_transform(32))
    assert len(ds) == 4 and len(ds.bad_lines) == 1 and "val_official.json:4" in ds.bad_lines[0]
    classes = IMAGENET_CLASSNAMES[:8]
    templates = ["a photo of a {}.", "a {}."]
    res = zero_shot_accuracy(OracleCLIP(classes, templates), ds, classes, templates, "cpu", batch_size=2)
    assert res["top1"] == 100.0 and res["top5"] == 100.0 and res["images"] == 3 and res["unreadable"] == 1


def test_classifier_is_mean_of_normalised_prompts_renormalised():
    from open_clip import build_zero_shot_classifier

    class Fixed(torch.nn.Module):
        def encode_text(self, ids, normalize=False):
            out = torch.stack([torch.tensor([1.0, 0.0]) if r[1] == 320 else torch.tensor([0.0, 3.0]) for r in ids])
            return F.normalize(out, dim=-1) if normalize else out

    w = build_zero_shot_classifier(Fixed(), lambda t: tokenize(list(t)), ["dog"], ["a {}", "the {}"],
                                   num_classes_per_batch=None)
    # prompts -> (1,0) and (0,1) after normalisation; mean (0.5,0.5) renormalised
    torch.testing.assert_close(w[:, 0], torch.tensor([2 ** -0.5, 2 ** -0.5]))


def test_run_zero_shot_on_imagenet_form(tmp_path):
    manifest, root = make_imagenet(tmp_path, [0, 1, 2, 3])
    cfg = load_config(None, ["eval.builtin=false", f"eval.val_manifest={manifest}", f"eval.val_root={root}",
                             "eval.imagenet_templates=1", "eval.num_workers=0", "model.vision.image_size=32"])
    torch.manual_seed(0)
    from declip.models.towers import build_clip

    res = run_zero_shot(build_clip(cfg.model), cfg, "cpu")
    assert res["imagenet/images"] == 4 and res["imagenet/bad_lines"] == 1 and res["imagenet/unreadable"] == 1
    assert 0 <= res["imagenet/top1"] <= res["imagenet/top5"] <= 100 and res["imagenet/chance"] == 0.1
