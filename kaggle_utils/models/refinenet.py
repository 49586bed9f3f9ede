"""The seed's RefineNet family: U-Net-style decoders with bilinear upsampling over an smp encoder.

The variants differ only in how a skip feature enters the decoder ("add": projected by a 1x1 conv to
the decoder's width and added; "concat": stacked on the channel axis), in decoder width/depth, and in
auxiliary side outputs for deep supervision (v6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from kaggle_utils.models.weights import download_errors, is_weights_path, load_encoder_weights

Merge = Literal["add", "concat"]


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample (bilinear) to the skip's size, merge the skip, refine with `n_convs` 3x3 convs."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        merge: Merge = "concat",
        n_convs: int = 2,
    ):
        super().__init__()
        if merge not in ("add", "concat"):
            raise ValueError(f"merge must be 'add' or 'concat', got {merge!r}")
        self.merge = merge
        self.in_channels, self.skip_channels, self.out_channels = (
            in_channels,
            skip_channels,
            out_channels,
        )
        self.skip_proj: nn.Module | None = None
        if skip_channels and merge == "add":
            self.skip_proj = nn.Sequential(
                nn.Conv2d(skip_channels, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels)
            )
        conv_in = in_channels + skip_channels if merge == "concat" else in_channels
        self.convs = nn.Sequential(
            *[ConvBNReLU(conv_in if i == 0 else out_channels, out_channels) for i in range(n_convs)]
        )

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            if self.skip_proj is not None:
                x = x + self.skip_proj(skip)
            else:
                x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class RefineNetDecoder(nn.Module):
    """One block per encoder stride, deepest first; the last block returns to input resolution.

    Skips are the encoder features at strides 16, 8, 4, 2 (for depth 5). The stride-1 feature joins
    the last block where the encoder produces a learned one (VGG), and the raw image (ResNet) when
    ``full_res_skip`` asks for it (``image_skip``).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        merge: Merge = "concat",
        n_convs: int = 2,
        full_res_skip: bool = False,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if len(decoder_channels) != depth:
            raise ValueError(
                f"decoder_channels needs one width per encoder stage ({depth}), "
                f"got {list(decoder_channels)}"
            )
        # skip channels per block: strides 2**(depth-1) ... 2, then 1 (the last block)
        skips = [encoder_channels[i] for i in range(depth - 1, 0, -1)]
        skips.append(encoder_channels[0] if full_res_skip else 0)
        self.full_res_skip = full_res_skip
        in_chs = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, merge, n_convs)
            for i, s, o in zip(in_chs, skips, decoder_channels, strict=True)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return every block's output (coarse to fine); the last one is at input resolution."""
        x = features[-1]
        depth = len(features) - 1
        outputs = []
        for i, block in enumerate(self.blocks):
            level = depth - 1 - i  # feature index this block upsamples to
            target = features[level]
            skip = target if level > 0 or self.full_res_skip else None
            x = block(x, skip, (target.shape[-2], target.shape[-1]))
            outputs.append(x)
        return outputs


class RefineNet(nn.Module):
    """Encoder -> RefineNetDecoder -> 1x1 head; optional side outputs for deep supervision.

    forward(x) -> logits (N, classes, H, W); with `deep_supervision` and in training mode
    (logits, [aux logits upsampled to (H, W), coarse to fine]). H and W must be multiples of
    2**encoder_depth (the `SegmentationModel` wrapper pads any size).
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        merge: Merge = "concat",
        convs_per_block: int = 2,
        deep_supervision: bool = False,
        image_skip: bool = False,
    ):
        super().__init__()
        local = encoder_weights is not None and is_weights_path(encoder_weights)
        named = None if local else encoder_weights
        with download_errors(encoder_name, named):
            self.encoder = get_encoder(
                encoder_name, in_channels=in_channels, depth=encoder_depth, weights=named
            )
        if local:
            load_encoder_weights(self.encoder, encoder_weights)  # type: ignore[arg-type]
        enc_channels = list(self.encoder.out_channels)
        decoder_channels = list(decoder_channels)[:encoder_depth]
        self.decoder = RefineNetDecoder(
            enc_channels,
            decoder_channels,
            merge=merge,
            n_convs=convs_per_block,
            # image_skip: the last block also sees the input image itself. Without it the
            # full-resolution block only has upsampled stride-2 features, so an outline can
            # only be placed as finely as those allow; with it, the image's own edges guide it.
            full_res_skip=enc_channels[0] != in_channels or image_skip,
        )
        self.head = nn.Conv2d(decoder_channels[-1], classes, kernel_size=1)
        self.deep_supervision = deep_supervision
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(c, classes, kernel_size=1) for c in decoder_channels[:-1])
            if deep_supervision
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.encoder(x)
        outputs = self.decoder(features)
        logits = self.head(outputs[-1])
        if self.aux_heads is None or not self.training:
            return logits
        size = (x.shape[-2], x.shape[-1])
        aux = [
            F.interpolate(head(o), size=size, mode="bilinear", align_corners=False)
            for head, o in zip(self.aux_heads, outputs[:-1], strict=True)
        ]
        return logits, aux


# name -> (default encoder, fixed construction arguments). Decoder widths/depths are defaults a
# member file may override (decoder_channels, convs_per_block); merge and heads define the variant.
VARIANTS: dict[str, tuple[str, dict]] = {
    "refinenet_v1": ("resnet50", {"merge": "add"}),
    "refinenet_v2": (
        "resnet50",
        {"merge": "concat", "decoder_channels": (256, 128, 64, 32, 16), "convs_per_block": 2},
    ),
    "refinenet_v3": (
        "resnet50",
        {"merge": "concat", "decoder_channels": (512, 256, 128, 64, 32), "convs_per_block": 3},
    ),
    "refinenet_v4": ("resnet34", {"merge": "concat"}),
    "refinenet_v5": ("vgg16", {"merge": "concat"}),
    "refinenet_v6": ("vgg16", {"merge": "concat", "deep_supervision": True}),
}
FIXED_KEYS = ("merge", "deep_supervision")  # what makes a variant; not overridable from a spec
TUNABLE_KEYS = ("encoder_depth", "decoder_channels", "convs_per_block", "image_skip")
