"""Self-supervised methods, one module each, filed in BUILDERS by the name of their config.

A builder takes the method config, the pretrain config and the resolved backbone, and returns an
objective for `engine.fit` (forward(batch) -> {"loss": ...}, `backbone()` -> the network to save)
plus the multi-view transform it trains on.
"""
from __future__ import annotations

from typing import Callable

from medalign.registry import Registry

BUILDERS: Registry[Callable] = Registry("SSL method")


def build(method_cfg, cfg, backbone):
    return BUILDERS.get(method_cfg.name)(method_cfg, cfg, backbone)


from medalign.ssl import byol, dino, dinov2, mae, mocov3, simclr  # noqa: E402,F401  (fills the registry)
