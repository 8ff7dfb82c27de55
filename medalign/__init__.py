"""medalign: adapt a pretrained vision backbone to your medical imaging domain."""
import os

# albumentations checks PyPI for a newer version on import; hospitals are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
