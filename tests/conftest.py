import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub

from declip.config import load_config  # noqa: E402

TINY = [
    "train.steps=4", "train.batch_size=8", "data.num_workers=0", "model.vision.image_size=32",
    "model.vision.patch_size=8", "model.vision.width=64", "model.text.width=64", "model.embed_dim=64",
    "method.queue_size=64", "method.simsiam_proj_dim=32", "method.simsiam_pred_dim=16",
    "train.progress=false", "train.tensorboard=false", "eval.max_images=20", "train.log_every=1",
    "optim.warmup_steps=2", "train.ckpt_every=0", "data.builtin_size=512",
]


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides):
        return load_config(None, [*TINY, f"train.output_dir={tmp_path / 'run'}", *overrides])

    return make
