"""Validation during training: PCK@1/3/5 px and the loss on fixed held-out synthetic pairs."""
from __future__ import annotations

from typing import Any

import torch

from ..models.roma import RoMa
from .data import SynthConfig, SyntheticPairs, collate
from .losses import LossConfig, pck, roma_loss


class Validator:
    """Fixed held-out synthetic pairs (val_root, seeds val_seed + i) -> PCK@1/3/5 px and loss."""

    def __init__(self, cfg: Any, loss_cfg: LossConfig):
        """``cfg``: the run's ``TrainConfig`` (val_root, val_seed, val_pairs, val_synth, resolution, batch_size)."""
        ds = SyntheticPairs(cfg.val_root, cfg.resolution, seed=cfg.val_seed, length=cfg.val_pairs,
                            cfg=SynthConfig(**cfg.val_synth))
        self.batches = [collate([ds[i] for i in range(j, min(j + cfg.batch_size, cfg.val_pairs))])
                        for j in range(0, cfg.val_pairs, cfg.batch_size)]
        self.loss_cfg = loss_cfg

    @torch.no_grad()
    def __call__(self, model: RoMa, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for b in self.batches:
            b = {k: v.to(device) for k, v in b.items()}
            out = model(b["im_A"], b["im_B"])
            _, parts = roma_loss(out, b["warp"], b["mask"], self.loss_cfg)
            res = pck(out[1]["flow"], b["warp"], b["mask"])
            res["loss"] = parts["total"]
            k = b["im_A"].shape[0]
            for key, v in res.items():
                sums[key] = sums.get(key, 0.0) + v * k
            n += k
        model.train(was_training)
        return {k: v / n for k, v in sums.items()}
