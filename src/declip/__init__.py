"""declip: data-efficient CLIP pre-training (DeCLIP, ICLR 2022) on open_clip towers."""

__version__ = "0.1.0"
