"""medalign: adapt a pretrained vision backbone to your medical imaging domain.

The Python API (medalign.api): `medalign.pretrain`, `finetune`, `evaluate`, `estimate`, `stage`
and `run`, the functions the command line calls.
"""
import os

# albumentations checks PyPI for a newer version on import; hospitals are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

API = ("pretrain", "finetune", "evaluate", "estimate", "stage", "run", "Output")


def __getattr__(name: str):
    # on first use: the API imports the configs, and `medalign --version` should not wait for them
    if name in API:
        from medalign import api

        return getattr(api, name)
    raise AttributeError(f"module 'medalign' has no attribute '{name}'")
