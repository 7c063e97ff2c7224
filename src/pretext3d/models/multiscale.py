"""A U-Net decoder over any encoder that gives feature maps at several scales.

Fine-tune what you pretrained, whatever it is: a pretext3d encoder, a timm model
(``features_only=True`` or any model with ``forward_intermediates``), a MONAI encoder
(``ResNetFeatures``, the encoders of ``FlexibleUNet``, ``resnet10``), a torchvision ResNet, or
any ``nn.Module`` whose intermediate outputs you name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_spatial_dims
from pretext3d.models import _layers as L
from pretext3d.models.base import Encoder, evaluating
from pretext3d.models.unet import DoubleConv

__all__ = ["DenseHead", "MultiScaleDecoder", "MultiScaleUNet", "default_decoder_widths"]


def _first_conv(module: nn.Module) -> nn.Conv2d | nn.Conv3d | None:
    return next((m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)


def _maps(value: object) -> list[Tensor] | None:
    """``value`` as a list of feature maps, or ``None`` if it is not a list or tuple of tensors."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        return list(value)
    return None


def default_decoder_widths(feature_channels: Sequence[int]) -> list[int]:
    """Decoder widths, finest first: the second-deepest map's channels (at most 256), halved per finer stage.

    Not below 16 by halving, never above the skip's own channels. The library's U-Net encoder (16-256) gets
    its mirror (16/32/64/128); a ResNet's 64/64/128/256/512 gets 32/64/128/256 instead of 64
    channels at the finest scale, which made the decoder ~7x the encoder's cost at full
    resolution (benchmarks/multiscale.py).

    Examples:
        >>> default_decoder_widths([16, 32, 64, 128, 256]), default_decoder_widths([64, 64, 128, 256, 512])
        ([16, 32, 64, 128], [32, 64, 128, 256])
        >>> default_decoder_widths([96])   # one map: one stage at its width
        [96]
    """
    channels = list(feature_channels)
    if len(channels) == 1:
        return [min(channels[0], 256)]
    widths = [min(channels[-2], 256)]
    for skip in reversed(channels[:-2]):  # toward full resolution
        widths.insert(0, min(skip, max(16, widths[0] // 2)))
    return widths


def _resnet_stages(encoder: nn.Module) -> list[str] | None:
    """A torchvision/MONAI-style ResNet's stem and stages (``layer1`` ... ``layer4``); else ``None``."""
    names = dict(encoder.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)) and not hasattr(encoder, "forward_intermediates"):
        stem = "act" if "act" in names else "relu" if "relu" in names else None
        return [*([stem] if stem else []), "layer1", "layer2", "layer3", "layer4"]
    return None


class _Capture:
    """A forward hook that keeps a stage's output while its reader runs the encoder.

    An object, not a closure, so that a deep copy of the network hooks the copy's reader.
    """

    def __init__(self, reader: _FeatureReader) -> None:
        self.reader = reader

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        # only while this reader runs the encoder (a shared encoder runs elsewhere too)
        if self.reader.capturing and isinstance(output, Tensor):
            self.reader.captured.append(output)


class _FeatureReader:
    """Finds an encoder's multi-scale feature maps once (on a probe) and reads them on every call.

    A plain object holding the encoder, so that a module keeping one does not register the
    encoder a second time (a :class:`DenseHead` shares its :class:`~pretext3d.PretextModel`'s).
    """

    def __init__(
        self,
        encoder: nn.Module,
        stages: Sequence[str] | None,
        spatial_dims: int | None,
        in_channels: int | None,
        probe_size: int,
    ) -> None:
        self.encoder = encoder
        conv = _first_conv(encoder)
        if spatial_dims is None:
            spatial_dims = getattr(encoder, "spatial_dims", None) or (
                3 if isinstance(conv, nn.Conv3d) else 2 if conv is not None else None
            )
            if spatial_dims is None:
                raise ValueError(
                    "the encoder has no convolution to read spatial_dims from; pass spatial_dims"
                )
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if in_channels is None:
            in_channels = getattr(encoder, "in_channels", None) or (conv.in_channels if conv else None)
            if in_channels is None:
                raise ValueError("the encoder has no convolution to read in_channels from; pass in_channels")
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.captured: list[Tensor] = []
        self.capturing = False
        self.stage_names = list(stages) if stages is not None else None
        if self.stage_names is not None:
            self._hook_stages(self.stage_names)
        maps, self.source = self._probe(probe_size)
        shapes = [tuple(m.shape[2:]) for m in maps]
        self.keep = _finest_first(shapes)
        kept = [maps[i] for i in self.keep]
        self.channels = [int(m.shape[1]) for m in kept]
        self.reductions = [max(1, round(probe_size / m.shape[2])) for m in kept]

    def _hook_stages(self, names: list[str]) -> None:
        modules = dict(self.encoder.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown or not names:
            children = [n for n, _ in self.encoder.named_children()]
            raise ValueError(
                f"stages must name submodules of the encoder, got {unknown or names}; its top-level "
                f"modules are {children} (any name of encoder.named_modules() works)"
            )
        for name in names:
            modules[name].register_forward_hook(_Capture(self))

    def read(self, x: Tensor, source: str | None = None) -> list[Tensor]:
        """The encoder's maps of ``x`` as ``source`` gives them (all of them, in its order)."""
        source = source or self.source
        if source == "stages":
            self.captured, self.capturing = [], True
            try:
                self.encoder(x)
                return self.captured
            finally:
                self.captured, self.capturing = [], False
        if source == "forward_intermediates":
            method: Callable[..., Any] = getattr(self.encoder, source)
            out = method(x) if isinstance(self.encoder, Encoder) else method(x, intermediates_only=True)
        elif source == "forward_features":
            out = getattr(self.encoder, source)(x)
        else:
            out = self.encoder(x)
        maps = _maps(out)
        if maps is None:
            raise ValueError(f"encoder.{source} returned {type(out).__name__}, not a list of feature maps")
        return maps

    def __call__(self, x: Tensor) -> list[Tensor]:
        """The maps used, finest first."""
        maps = self.read(x)
        return [maps[i] for i in self.keep]

    def _probe(self, size: int) -> tuple[list[Tensor], str]:
        conv = _first_conv(self.encoder)
        if conv is not None:
            dims = len(conv.kernel_size)
            if dims != self.spatial_dims or conv.in_channels != self.in_channels:
                raise ValueError(
                    f"the encoder's first convolution is a Conv{dims}d taking {conv.in_channels} channel(s), "
                    f"but spatial_dims={self.spatial_dims} and in_channels={self.in_channels} were given: "
                    f"pass spatial_dims={dims}, in_channels={conv.in_channels}"
                )
        device = conv.weight.device if conv is not None else torch.device("cpu")
        x = torch.zeros(1, self.in_channels, *[size] * self.spatial_dims, device=device)
        if self.stage_names is not None:
            candidates = ["stages"]
        else:
            candidates = ["forward"]
            for name, position in (("forward_intermediates", 0), ("forward_features", 1)):
                if callable(getattr(self.encoder, name, None)):
                    candidates.insert(position, name)
            if _resnet_stages(self.encoder) is not None:
                candidates.append("resnet")
        errors = []
        with evaluating(self.encoder):
            for source in candidates:
                if source == "resnet":  # the last resort: a ResNet's stages by name
                    self.stage_names = _resnet_stages(self.encoder)
                    self._hook_stages(self.stage_names or [])
                    source = "stages"
                try:
                    maps = self.read(x, source)
                except Exception as err:  # a candidate that does not apply: try the next
                    errors.append(f"{source}: {type(err).__name__}: {str(err)[:120]}")
                    continue
                if source == "stages" and len(maps) != len(self.stage_names or []):
                    errors.append(f"stages gave {len(maps)} outputs for {len(self.stage_names or [])} names")
                    continue
                if all(m.dim() == 2 + self.spatial_dims for m in maps):
                    return maps, source
                errors.append(f"{source}: not maps of {self.spatial_dims} spatial axes")
        children = [n for n, _ in self.encoder.named_children()]
        raise ValueError(
            f"cannot find multi-scale features of {type(self.encoder).__name__} on a probe of size {size} "
            f"({'; '.join(errors)}). Pass stages=[...] naming the submodules whose outputs are the skip "
            f"features (its top-level modules: {children}), or a larger probe_size"
        )


def _finest_first(shapes: list[tuple[int, ...]]) -> list[int]:
    """Indices of the maps to use, finest first; at equal resolution the later (deeper) one."""
    by_size: dict[tuple[int, ...], int] = {}
    for i, shape in enumerate(shapes):
        by_size[shape] = i
    return sorted(by_size.values(), key=lambda i: -torch.tensor(shapes[i]).prod().item())


class MultiScaleDecoder(nn.Module):
    """The decoder of :class:`MultiScaleUNet` and :class:`DenseHead`.

    Skip stages, a last full-resolution stage where needed, a 1x1 output convolution.

    Built from what a :class:`_FeatureReader` found (``reader.channels``, ``reader.reductions``);
    :meth:`decode` takes the maps and the input's spatial size.

    Examples:
        >>> head = DenseHead(p3.models.UNetEncoder(2, 1, widths=(8, 16)), out_channels=1)
        >>> isinstance(head, MultiScaleDecoder), len(head.stages)   # one skip stage, a 1x1 output
        (True, 1)
    """

    def _build_decoder(
        self,
        reader: _FeatureReader,
        out_channels: int,
        decoder_widths: Sequence[int] | None,
        norm: str,
    ) -> None:
        self.spatial_dims, self.in_channels = reader.spatial_dims, reader.in_channels
        self.source = reader.source
        self.feature_channels, self.feature_reductions = reader.channels, reader.reductions
        decoder_default = decoder_widths is None
        if decoder_widths is None:
            decoder_widths = default_decoder_widths(self.feature_channels)
        widths = [check_int(f"decoder_widths[{i}]", w, 1) for i, w in enumerate(decoder_widths)]
        levels = len(self.feature_channels)
        if len(widths) != max(1, levels - 1):
            raise ValueError(
                f"decoder_widths must give {max(1, levels - 1)} widths (one per feature map but the "
                f"deepest, finest first), got {len(widths)}"
            )
        d = self.spatial_dims
        self.stages = nn.ModuleList()
        below = self.feature_channels[-1]
        for level in range(levels - 2, -1, -1):  # from the second-deepest map up to the finest
            self.stages.insert(
                0, DoubleConv(d, below + self.feature_channels[level], widths[level], norm, 0.0)
            )
            below = widths[level]
        self.full_resolution = self.feature_reductions[0] > 1
        # a stage at full resolution when the finest map is coarser: half as wide again (at least 16)
        final = min(widths[0], max(16, widths[0] // 2)) if decoder_default else widths[0]
        self.final = DoubleConv(d, below, final, norm, 0.0) if self.full_resolution else nn.Identity()
        self.head = L.conv(d)(final if self.full_resolution else below, out_channels, 1)
        self.out_channels = out_channels

    def decode(self, maps: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Output ``(N, out_channels, *size)`` from the maps (finest first) of an input of ``size``."""
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        y = maps[-1]
        for stage, skip in zip(reversed(self.stages), maps[-2::-1], strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode=mode, align_corners=False)
            y = stage(torch.cat([y, skip], dim=1))
        if self.full_resolution:
            y = self.final(F.interpolate(y, size=tuple(size), mode=mode, align_corners=False))
        out: Tensor = self.head(y)
        return out


class MultiScaleUNet(MultiScaleDecoder):
    """A U-Net decoder over the multi-scale features of any (pretrained) encoder.

    The encoder's feature maps are found once, on a probe input of zeros, in this order:

    1. ``stages`` given: the outputs of those submodules (by their ``named_modules`` names),
       captured with forward hooks while the encoder runs; any ``nn.Module`` works this way
       (MONAI's ``resnet10``: ``["act", "layer1", "layer2", "layer3", "layer4"]``);
    2. a pretext3d encoder: its ``forward_intermediates``;
    3. a model with timm's ``forward_intermediates(x, intermediates_only=True)``;
    4. a ``forward`` (or ``forward_features``) that returns a list or tuple of feature maps
       (timm's ``features_only=True``, MONAI's ``ResNetFeatures`` and ``FlexibleUNet`` encoders);
    5. a torchvision- or MONAI-style ResNet (top-level ``layer1`` ... ``layer4`` after a stem
       ending in ``act`` or ``relu``): those stages, as in 1 (MONAI's ``resnet10``,
       torchvision's ``resnet18``, whose ``forward`` pools).

    Maps are ordered finest first (at equal resolution the later one is kept). Each decoder
    stage upsamples the coarser result to the skip's exact size (linear interpolation, so
    no size rule beyond the encoder's own), concatenates the skip and applies a double
    convolution; if the finest map is coarser than the input, a last stage at full
    resolution follows; a 1x1 convolution gives the logits.

    Args:
        encoder: the encoder (e.g. ``pretext_model.encoder``).
        out_channels: output classes (logits).
        stages: names of submodules whose outputs are the skip features (see above).
        spatial_dims: 2 or 3; default that of the encoder's first convolution.
        in_channels: input channels; default those of the encoder's first convolution.
        decoder_widths: channels of each decoder stage, finest first, one per feature map
            except the deepest; default :func:`default_decoder_widths` (halving toward full
            resolution, as MONAI's ``FlexibleUNet`` and the library's own U-Net do; a last
            stage at full resolution, where the finest map is coarser, gets half the finest
            width again, at least 16). Given widths keep the full-resolution stage at the
            finest one.
        norm: normalisation of the decoder (``"batch"``, ``"instance"``, ``"group"``).
        probe_size: spatial size of the probe input (large enough for the encoder).
        copy_encoder: use a deep copy (default), so that fine-tuning leaves the pretrained
            encoder untouched; ``False`` shares the module.

    Attributes:
        source: how the features are read (``"stages"``, ``"forward_intermediates"``,
            ``"forward"`` or ``"forward_features"``).
        feature_channels: channels of the feature maps used, finest first.
        feature_reductions: their downsampling factors on the probe (input size / map size).

    Shapes:
        ``(N, in_channels, *spatial)`` -> ``(N, out_channels, *spatial)``.

    Examples:
        >>> from monai.networks.nets import resnet10
        >>> encoder = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False)  # e.g. pretrained
        >>> unet = MultiScaleUNet(encoder, out_channels=3)   # a ResNet: its stem, then each stage
        >>> unet.source, unet.feature_channels, unet.feature_reductions
        ('stages', [64, 64, 128, 256, 512], [1, 2, 4, 8, 16])
        >>> unet(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])

    References:
        - Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
          MICCAI 2015.
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        *,
        stages: Sequence[str] | None = None,
        spatial_dims: int | None = None,
        in_channels: int | None = None,
        decoder_widths: Sequence[int] | None = None,
        norm: L.Norm = "batch",
        probe_size: int = 64,
        copy_encoder: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        check_int("out_channels", out_channels, 1)
        check_choice("norm", norm, ("batch", "instance", "group"))
        check_int("probe_size", probe_size, 1)
        self.encoder = copy.deepcopy(encoder) if copy_encoder else encoder
        self._reader = _FeatureReader(self.encoder, stages, spatial_dims, in_channels, probe_size)
        self._build_decoder(self._reader, out_channels, decoder_widths, norm)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, out_channels, *spatial)``."""
        L.check_input(x, self.spatial_dims, self.in_channels, 1, "any size the encoder takes")
        return self.decode(self._reader(x), x.shape[2:])


class DenseHead(MultiScaleDecoder):
    """A decoder that restores full resolution from a shared encoder's multi-scale features.

    The head of the dense pretext tasks (:class:`~pretext3d.tasks.ModelsGenesis`,
    :class:`~pretext3d.tasks.MaskedImageModeling`): :class:`MultiScaleUNet`'s decoder and
    feature detection (so it works on the library's U-Net encoder, the DenseNet, timm and MONAI
    ResNets alike), with a 1x1 output convolution to the image's channels. Unlike
    :class:`MultiScaleUNet` it does not own the encoder: it runs the one it was built on (the
    :class:`~pretext3d.PretextModel`'s, shared with the other tasks' heads), and its
    ``state_dict`` holds the decoder alone, which the encoder file keeps beside the encoder
    (:func:`~pretext3d.models.save_encoder` with ``decoder=``) and
    :func:`~pretext3d.models.load_decoder` loads into a :class:`MultiScaleUNet` for
    fine-tuning.

    Args:
        encoder: the encoder whose features it decodes (not copied, not registered).
        out_channels: output channels; default the encoder's input channels.
        stages: as for :class:`MultiScaleUNet`.
        decoder_widths: as for :class:`MultiScaleUNet`.
        norm: as for :class:`MultiScaleUNet`.
        probe_size: as for :class:`MultiScaleUNet`.

    Attributes:
        options: the arguments that rebuild this decoder's layout (``stages``,
            ``decoder_widths``, ``norm``, ``probe_size``), saved with its weights.

    Shapes:
        ``(N, C, *spatial)`` -> ``(N, out_channels, *spatial)``.

    Examples:
        >>> encoder = p3.models.UNetEncoder(3, widths=(8, 16, 32))
        >>> head = DenseHead(encoder)
        >>> head(torch.randn(2, 1, 16, 16, 16)).shape   # the image's size and channels
        torch.Size([2, 1, 16, 16, 16])
        >>> any(k.startswith("encoder") for k in head.state_dict())   # the decoder alone
        False
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int | None = None,
        *,
        stages: Sequence[str] | None = None,
        decoder_widths: Sequence[int] | None = None,
        norm: L.Norm = "batch",
        probe_size: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        check_choice("norm", norm, ("batch", "instance", "group"))
        check_int("probe_size", probe_size, 1)
        self._reader = _FeatureReader(encoder, stages, None, None, probe_size)
        channels = (
            self._reader.in_channels if out_channels is None else check_int("out_channels", out_channels, 1)
        )
        self._build_decoder(self._reader, channels, decoder_widths, norm)
        self.options: dict[str, Any] = {
            "stages": None if stages is None else list(stages),
            "decoder_widths": None if decoder_widths is None else list(decoder_widths),
            "norm": norm,
            "probe_size": probe_size,
        }

    def forward(self, x: Tensor) -> Tensor:
        """The restored image ``(N, out_channels, *spatial)`` of ``x`` ``(N, C, *spatial)``."""
        return self.decode(self._reader(x), x.shape[2:])
