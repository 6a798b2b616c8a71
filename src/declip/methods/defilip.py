"""DeFILIP: DeCLIP's four supervisions plus FILIP's dense term (methods/filip.py DenseTerm).

Reference (Sense-GVT/DeCLIP prototype/model/defilip.py, prototype/solver/defilip_solver.py, config
experiments/defilip_experiments/yfcc15m/yfcc15m_vit_defilip): the model computes dense logits for image view
1/2 x masked/EDA caption, but the last three are returned only with ``dense_aug`` (default False, unset in the
config), so the solver's FILIP loss is image view 1 x the masked caption alone; weights clip 0.4, NN 0.2,
SimSiam 0.2, MLM 0.2, FILIP 0.2. The same image and text forwards serve every term: DeCLIP's ``encode`` also
returns the dense tokens. With ``method.contrast_text=plain`` the dense term reads the plain caption, as the
global terms do.
"""
from __future__ import annotations

from ..config import Config
from .declip import DeCLIP
from .filip import DenseTerm


class DeFILIP(DeCLIP):
    def __init__(self, cfg: Config, clip=None):
        super().__init__(cfg, clip)
        self.w["filip"] = cfg.method.filip_weight
        if self.w["filip"] > 0:
            self.dense = DenseTerm(cfg)

    def forward(self, batch):
        dense = self.w["filip"] > 0
        enc = self.encode(batch, image_tokens=dense, text_tokens=dense)
        losses, metrics = self.supervise(batch, enc)
        if dense:
            b = enc["b"]
            loss, logits, offset = self.dense(enc["image_tokens"][:b], enc["text_tokens"][:b], enc["text_ids"][:b],
                                              gather=not self.cfg.method.local_loss)
            losses["filip"] = self.w["filip"] * loss
            metrics["filip_raw"] = loss.detach()
            metrics["logit_scale_dense"] = self.dense.heads.logit_scale_dense.exp().detach()
        return losses, metrics
