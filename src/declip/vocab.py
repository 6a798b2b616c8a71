"""Token ids shared by the data pipeline, the towers, the MLM loss and export: defined once, here (a leaf).

OpenAI's CLIP BPE ids stay where they are (SOT 49406, EOT 49407) and DeCLIP's mask token is appended as 49408,
so the vocabulary is 49409 and OpenAI/OpenCLIP text weights remain loadable (the reference shifted SOT/EOT).
"""
SOT_ID = 49406
EOT_ID = 49407
MASK_ID = 49408
VOCAB_SIZE = 49409
PAD_ID = 0
NUM_REGULAR_TOKENS = 49406  # ids [0, 49406) are ordinary BPE tokens: the pool for MLM's random replacement
IGNORE_INDEX = -100  # MLM label of a position that was not masked (cross-entropy's ignore_index)


def masked_positions(labels):
    """Flat indices of the masked positions of MLM ``labels`` [B, L]. The collate function computes them on the
    CPU, so the MLM loss can gather its positions on the device without waiting to learn how many there are."""
    return (labels.reshape(-1) != IGNORE_INDEX).nonzero().flatten()
