"""LiteMedSAM's image encoder as a timm model: `timm.create_model("litemedsam_tinyvit")`.

LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch) distilled a TinyViT-5M encoder for 256 px medical
images. It does not load into timm's `tiny_vit_5m_224`: its patch embedding is two 1x1 convolutions
at stride 1 (timm's: 3x3 at stride 2, twice), its last patch merging keeps the resolution, and a
SAM-style neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) turns 320 channels into 256. The
feature map is a quarter of the input side (64x64 at 256 px). Built here from timm's TinyViT parts,
so any input size works (the windows pad), and a pooled classifier head is added for fine-tuning.
The encoder was trained on images scaled to [0, 1] with no mean/std, hence mean 0 and std 1.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from timm.layers import ClassifierHead, LayerNorm2d, calculate_drop_path_rates
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.tiny_vit import ConvLayer, ConvNorm, PatchMerging, TinyVitStage

__all__ = ["LiteMedSamTinyVit"]


class PointwiseEmbed(nn.Module):
    """Two 1x1 conv-BN layers at stride 1: every pixel is a token."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: type[nn.Module]):
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 2, 1, 1, 0)
        self.act = act_layer()
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class KeepResolutionMerging(PatchMerging):
    """timm's patch merging with its depthwise conv at stride 1, as LiteMedSAM's last stage has it."""

    def __init__(self, dim: int, out_dim: int, act_layer: type[nn.Module], **dd):
        super().__init__(dim, out_dim, act_layer, **dd)
        self.conv2 = ConvNorm(out_dim, out_dim, 3, 1, 1, groups=out_dim, **dd)


class LiteMedSamTinyVit(nn.Module):
    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10),
                 window_sizes=(7, 7, 14, 7), mlp_ratio: float = 4.0, neck_dim: int = 256,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        act = nn.GELU
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.patch_embed = PointwiseEmbed(in_chans, embed_dims[0], act)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.stages = nn.Sequential(ConvLayer(embed_dims[0], depths[0], act, dpr[:depths[0]]))
        reduction, self.feature_info = 1, [dict(num_chs=embed_dims[0], reduction=1, module="stages.0")]
        for i in range(1, len(depths)):
            last = i == len(depths) - 1
            reduction *= 1 if last else 2
            self.stages.append(TinyVitStage(
                embed_dims[i - 1], embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=KeepResolutionMerging if last else PatchMerging, act_layer=act))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stages.{i}"))
        norm = partial(LayerNorm2d, eps=1e-6)  # SAM's neck norm
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], neck_dim, 1, bias=False), norm(neck_dim),
            nn.Conv2d(neck_dim, neck_dim, 3, padding=1, bias=False), norm(neck_dim))
        self.feature_info.append(dict(num_chs=neck_dim, reduction=reduction, module="neck"))
        self.num_features = self.head_hidden_size = neck_dim
        self.head = ClassifierHead(neck_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {k for k in self.state_dict() if "attention_biases" in k}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+).downsample", (0,)), (r"^stages\.(\d+)\.\w+\.(\d+)", None), (r"^neck", (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.stages(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    "litemedsam_tinyvit.medsam": dict(
        url="", num_classes=0, input_size=(3, 256, 256), pool_size=(64, 64), crop_pct=1.0,
        interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        first_conv="patch_embed.conv1.conv", classifier="head.fc", license="apache-2.0"),
})


@register_model
def litemedsam_tinyvit(pretrained: bool = False, **kwargs) -> LiteMedSamTinyVit:
    return build_model_with_cfg(LiteMedSamTinyVit, "litemedsam_tinyvit", pretrained,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3, 4)), **kwargs)


def from_package(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LiteMedSAM's `image_encoder.*` keys in this model's layout.

    The package's stage i ends with the merging into stage i+1; timm's stage i+1 starts with it.
    """
    out = {}
    for key, value in state.items():
        if not key.startswith("image_encoder."):
            continue
        k = key[len("image_encoder."):].replace(".c.", ".conv.")
        k = k.replace("patch_embed.seq.0.", "patch_embed.conv1.").replace("patch_embed.seq.2.", "patch_embed.conv2.")
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            k = f"stages.{int(i) + 1}.{rest}" if rest.startswith("downsample.") else f"stages.{i}.{rest}"
        out[k] = value
    return out
