"""Self-supervised methods, one module each, filed by name as timm files models.

A method's builder takes the method config, the pretrain config and a backbone factory, and returns
an objective for `engine.fit` (forward(batch) -> {"loss": ...}, `backbone()` -> the network to save)
plus the multi-view transform it trains on.
"""
from __future__ import annotations

from typing import Callable

_METHODS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn: Callable) -> Callable:
        _METHODS[name] = fn
        return fn
    return wrap


def build(method_cfg, cfg, make_backbone: Callable, mean, std):
    return _METHODS[method_cfg.name](method_cfg, cfg, make_backbone, mean, std)


from medalign.ssl import dino, simclr  # noqa: E402,F401  (fills the registry)
