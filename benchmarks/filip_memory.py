"""Peak memory of FILIP's dense term (losses/filip.py) at growing batch sizes, beside its formula.

    python benchmarks/filip_memory.py [--out benchmarks/results/filip_memory.md]

CPU, tiny token counts and dims (a few seconds per row): one process, so B_local = B_global = B. Measured: the
growth of peak RSS in a fresh process per row (glibc may keep freed pages, so it is an upper bound of what the
term needs at once). The formula (dense_memory_bytes) counts both directions. The ViT-B/32 reference case and its
FLOPs are computed from the formula, not measured.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from declip.losses.filip import TokenwiseInfoNCE, dense_memory_bytes  # noqa: E402

NI, NT, D, K = 16, 24, 32, 8


def peak_bytes(b: int, chunk: int) -> int:
    """Growth of the process's peak RSS over forward + backward of the dense loss alone, in a fresh process (the
    peak RSS never falls, so each row needs its own), inputs and a warm-up step excluded."""
    code = (f"import resource, torch; import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import filip_memory as fm; print(fm.child({b}, {chunk}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def child(b: int, chunk: int) -> int:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)

    def run(n):
        image = torch.randn(n, NI, D, generator=g, requires_grad=True)
        text = torch.randn(n, NT, D, generator=g, requires_grad=True)
        loss, _, _ = TokenwiseInfoNCE(K, chunk)(image, text, torch.ones(n, NT, dtype=torch.bool), torch.tensor(10.0),
                                               gather=False)
        loss.backward()

    run(2)  # warm-up: libraries loaded, allocator set up
    image_in = 4 * b * (NI + NT) * D * 3  # inputs and their gradients: not the dense term's own memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run(b)
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before - image_in)


def formula(b: int, chunk: int) -> int:
    return sum(dense_memory_bytes(b, t, b, K, chunk)["peak"] for t in (NI, NT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="")
    p.add_argument("--chunk", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = ["| batch | chunk | measured peak RSS growth (MiB) | formula, both directions (MiB) | unchunked measured (MiB) |",
            "|---|---|---|---|---|"]
    for b in (8, 16, 32, 64, 128, 256):
        m, u = peak_bytes(b, a.chunk), peak_bytes(b, 0)
        rows.append(f"| {b} | {a.chunk} | {m / 2**20:.2f} | {formula(b, a.chunk) / 2**20:.2f} | {u / 2**20:.2f} |")
    vit = {t: dense_memory_bytes(128, t, 4096, 16, 256) for t in (49, 77)}
    vit0 = {t: dense_memory_bytes(128, t, 4096, 16, 0) for t in (49, 77)}
    gib = 2 ** 30
    flops = 2 * 128 * (49 + 77) * 4096 * 16 * 256  # both directions' similarity einsums, forward (x3 fwd+bwd)
    text = "\n".join([
        "## FILIP dense term: memory", "", f"Command: `python {' '.join(sys.argv)}`", "",
        f"CPU, one process (B_local = B_global = batch), {NI} image / {NT} text tokens, dim {D}, k = {K}.", "",
        *rows, "",
        "Formula per direction (losses/filip.py dense_memory_bytes), query side with T tokens, 4-byte floats:",
        "block = 4 B_local T chunk k (transient, one chunk), saved = (8 + 4) B_local T B_global (argmax indices and",
        "max values kept for backward); peak = block + saved, summed over the image (T = Ni) and text (T = Nt) side.",
        "",
        "ViT-B/32 reference case (128 per device, 49 patch tokens, 77 text positions, global batch 4,096, k = 16):",
        f"- chunk 256: blocks {(vit[49]['block'] + vit[77]['block']) / gib:.2f} GiB + saved "
        f"{(vit[49]['saved'] + vit[77]['saved']) / gib:.2f} GiB = {(vit[49]['peak'] + vit[77]['peak']) / gib:.2f} GiB",
        f"- unchunked: blocks {(vit0[49]['block'] + vit0[77]['block']) / gib:.2f} GiB (+ the same saved)",
        f"- FLOPs of the dense similarities: 2 x 128 x (49 + 77) x 4096 x 16 x 256 = {flops / 1e12:.2f} TFLOP forward "
        f"per device per step (about {3 * flops / 1e12:.2f} TFLOP forward + backward); the heads' Linear maps and "
        "the top-k selection add < 1% of that.", ""])
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
