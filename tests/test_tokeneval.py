"""Token-wise evaluation (``eval.similarity=token``) of FILIP/DeFILIP checkpoints: the late-interaction scores
against plain loops, chunking, the config rule, and ``declip eval`` on a FILIP checkpoint trained here."""
import json

import pytest
import torch
import torch.nn.functional as F

from declip.config import ConfigError
from declip.eval.tokenwise import late_interaction_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def plain_i2t(image, text, text_len):
    """Mean over every image token of the max over the caption's first ``text_len`` tokens, by loops."""
    return sum(max(float(p @ q) for q in text[:text_len]) for p in image) / len(image)


def plain_t2i(text, text_len, image):
    return sum(max(float(q @ p) for p in image) for q in text[:text_len]) / text_len


def random_tokens(seed, n_img=5, n_txt=7, ni=4, nt=6, d=8):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n_img, ni, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(n_txt, nt, d, generator=g), dim=-1)
    lengths = torch.randint(1, nt + 1, (n_txt,), generator=g)
    text[torch.arange(nt)[None] >= lengths[:, None]] = 50.0  # loud padding: must never win a max or count
    return image, text, torch.arange(nt)[None] < lengths[:, None], lengths.tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_matrix_equals_plain_loops_both_directions(seed):
    image, text, valid, lengths = random_tokens(seed)
    i2t = late_interaction_matrix(image, None, text, valid)
    t2i = late_interaction_matrix(text, valid, image, None)
    for i in range(image.shape[0]):
        for t in range(text.shape[0]):
            assert float(i2t[i, t]) == pytest.approx(plain_i2t(image[i], text[t], lengths[t]), abs=1e-5)
            assert float(t2i[t, i]) == pytest.approx(plain_t2i(text[t], lengths[t], image[i]), abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_equals_unchunked(chunk):
    image, text, valid, _ = random_tokens(5)
    for args in ((image, None, text, valid), (text, valid, image, None)):
        torch.testing.assert_close(late_interaction_matrix(*args, chunk=chunk),
                                   late_interaction_matrix(*args, chunk=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides", [("method.name=clip",), ("method.name=declip",),
                                       ("method.name=filip", "method.filip_weight=0", "method.clip_weight=1")])
def test_token_similarity_without_dense_heads_is_a_config_error(tiny_cfg, overrides):
    with pytest.raises(ConfigError, match=r"eval\.similarity: token needs FILIP's dense heads") as e:
        tiny_cfg(*overrides, "eval.similarity=token")
    assert "\n" not in str(e.value)
    assert tiny_cfg("method.name=filip", "eval.similarity=token").eval.similarity == "token"


def test_towers_alone_cannot_score_tokenwise(tiny_cfg):
    """An exported model / the towers without their dense heads: one clear line, not an AttributeError."""
    from declip.eval.common import EvalDataError
    from declip.eval.suite import run_evaluation
    from declip.methods import build_method

    cfg = tiny_cfg("method.name=filip", "eval.similarity=token", small=True)
    with pytest.raises(EvalDataError, match="exported open_clip model .* have none"):
        run_evaluation(build_method(cfg).clip, cfg, "cpu")


def pair_score_by_hand(clip, heads, pixels, ids):
    """The i2t and t2i score of one image and one caption from the raw tower outputs, by loops: tokens through
    the dense heads, normalised; the caption's tokens are SOT .. its EOT (found by position in the ids)."""
    from declip.models.towers import encode_image_with_tokens, encode_text_with_tokens
    from declip.vocab import EOT_ID

    with torch.no_grad():
        image = F.normalize(heads.image(encode_image_with_tokens(clip, pixels[None])[1][0]), dim=-1)
        text = F.normalize(heads.text(encode_text_with_tokens(clip, ids[None])[1][0]), dim=-1)
    length = ids.tolist().index(EOT_ID) + 1
    return plain_i2t(image, text, length), plain_t2i(text, length, image)


@pytest.mark.parametrize("name", ["filip", "defilip"])
def test_eval_filip_checkpoint_tokenwise(tiny_cfg, capsys, name):
    from declip.cli import main as cli_main
    from declip.data.device_augment import normalize_on_device
    from declip.data.tokenizer import tokenize
    from declip.data.views import eval_transform_uint8
    from declip.eval.builtin_sets import RetrievalImages, retrieval_item
    from declip.eval.tokenwise import TokenTowers, load_dense_heads, retrieval_scorer
    from declip.export import load_towers
    from declip.train.checkpoint import list_checkpoints
    from declip.train.trainer import train
    from helpers import metrics

    # the trainer's own end-of-run evaluation scores token-wise (the method hands it its dense heads)
    cfg = tiny_cfg(f"method.name={name}", "eval.similarity=token", "eval.tasks=[zeroshot,retrieval]", small=True)
    train(cfg)
    assert metrics(cfg.train.output_dir, "eval")[-1]["builtin/top1"] >= 0
    ckpt = str(list_checkpoints(cfg.train.output_dir)[-1][1])
    capsys.readouterr()  # the run's log lines

    argv = ["eval", "--checkpoint", ckpt, "--task", "zeroshot,retrieval", "--builtin"]
    assert cli_main([*argv, "eval.similarity=token"]) == 0
    token = json.loads(capsys.readouterr().out)
    assert cli_main([*argv, "--similarity", "global"]) == 0
    glob = json.loads(capsys.readouterr().out)
    for res in (token, glob):
        assert 0 <= res["builtin/top1"] <= 100 and res["builtin/images"] == 8
        assert all(0 <= res[f"builtin-retrieval/{d}_r{k}"] <= 100 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert token["builtin-retrieval/texts"] == glob["builtin-retrieval/texts"] == 16

    # one image / caption pair: the eval path's i2t and t2i equal the plain loops within 1e-5
    clip, ckpt_cfg, state = load_towers(ckpt)
    towers = TokenTowers(clip, load_dense_heads(state, ckpt_cfg, ckpt)).eval()
    image = normalize_on_device(eval_transform_uint8(ckpt_cfg.model.vision.image_size)(RetrievalImages()(3))[None],
                                "cpu")
    captions = retrieval_item(5)[1]
    context = ckpt_cfg.model.text.context_length
    with torch.no_grad():
        rows = retrieval_scorer(towers, captions, "cpu", context)(image)[0]
    for j, caption in enumerate(captions):
        i2t, t2i = pair_score_by_hand(clip, towers.heads, image[0], tokenize([caption], context)[0])
        assert float(rows[j]) == pytest.approx(i2t, abs=1e-5)
        assert float(rows[len(captions) + j]) == pytest.approx(t2i, abs=1e-5)


def test_token_eval_of_a_clip_checkpoint_or_an_export_is_a_one_line_error(tiny_cfg, tmp_path, capsys):
    from declip.cli import main as cli_main
    from declip.train.checkpoint import list_checkpoints
    from declip.train.trainer import train

    cfg = tiny_cfg("method.name=clip", "train.steps=1", small=True)
    train(cfg)
    ckpt = str(list_checkpoints(cfg.train.output_dir)[-1][1])
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", ckpt, "eval.similarity=token"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eval.similarity" in err and "method.name=clip" in err
    assert cli_main(["eval", "--checkpoint", ckpt, "model.embed_dim=8"]) == 2  # only eval.* keys here
    assert "eval.KEY=VALUE overrides only" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(tmp_path), "--similarity", "token"]) == 1  # e.g. an export folder
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "an exported open_clip model has no dense heads" in err
