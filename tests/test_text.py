"""MLM masking statistics and the text pipeline in the data workers."""
import random

import torch

from declip.data.text import IGNORE, TextPipeline, TextSpec, mask_tokens
from declip.data.tokenizer import tokenize
from declip.vocab import EOT_ID, MASK_ID, SOT_ID
from declip.data.builtin import BuiltinPairs


def test_masking_statistics_over_many_captions():
    src = BuiltinPairs(3000)
    rng = random.Random(0)
    selected = candidates = to_mask = to_random = kept = 0
    for i in range(len(src)):
        ids = tokenize(src.load(i)[1])[0]
        masked, labels = mask_tokens(ids, rng, 0.15)
        special = (ids == SOT_ID) | (ids == EOT_ID) | (ids == 0)
        assert torch.equal(masked[special], ids[special])  # specials never touched
        assert (labels[special] == IGNORE).all()
        sel = labels != IGNORE
        assert torch.equal(labels[sel], ids[sel])  # labels are the original ids
        assert torch.equal(masked[~sel], ids[~sel])  # unselected positions unchanged
        candidates += int((~special).sum())
        selected += int(sel.sum())
        to_mask += int((masked[sel] == MASK_ID).sum())
        kept += int((masked[sel] == ids[sel]).sum())
        to_random += int(((masked[sel] != MASK_ID) & (masked[sel] != ids[sel])).sum())
    assert candidates > 15000
    assert abs(selected / candidates - 0.15) < 0.01
    assert abs(to_mask / selected - 0.8) < 0.03
    assert abs(to_random / selected - 0.1) < 0.02  # a random id equal to the original counts as kept
    assert abs(kept / selected - 0.1) < 0.02


def test_pipeline_is_deterministic_per_sample_and_leaves_global_rng_alone():
    pipe = TextPipeline(TextSpec(eda=True, mlm=True))
    state = random.getstate()
    a = pipe("a big red circle on a white background", random.Random(7))
    b = pipe("a big red circle on a white background", random.Random(7))
    assert random.getstate() == state
    assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == {"text", "mlm_labels", "text_aug"}
    outs = {tuple(pipe("a big red circle on a white background", random.Random(s))["text_aug"].tolist())
            for s in range(20)}
    assert len(outs) > 3  # EDA really augments


def test_eda_survives_one_word_and_empty_captions():
    pipe = TextPipeline(TextSpec(eda=True, mlm=True))
    for cap in ["circle", "", "!!!", "the"]:
        out = pipe(cap, random.Random(1))
        assert out["text"].shape == (77,) and out["text_aug"][0] == SOT_ID
