"""Put a pretext task's head on any encoder."""

from __future__ import annotations

import re
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from pretext3d.models.base import evaluating
from pretext3d.models.multiscale import DenseHead
from pretext3d.tasks.base import DenseTask, PretextTask

__all__ = ["PretextModel", "infer_num_features"]

_ADAPT = (
    "wrap the encoder in a module that returns features (N, F) or (N, F, *spatial): e.g. pick the "
    "tensor out of a tuple or dict, pool or reshape tokens (N, T, D) -> (N, D), or create a timm "
    "model with num_classes=0"
)


class PretextModel(nn.Module):
    """An encoder with a pretext task's head on top.

    The encoder may be any module mapping ``(N, C, *spatial)`` to features ``(N, F)`` or
    ``(N, F, *spatial)`` (the contract of the library's encoders, see
    :mod:`pretext3d.models`, and of timm models with ``num_classes=0``). For patch tasks
    (``task.num_patches`` set) all ``B * P`` patches go through the one shared encoder in
    a single batch. For dense tasks (:class:`~pretext3d.tasks.DenseTask`) the head is a
    :class:`~pretext3d.models.DenseHead` built on the encoder itself: it runs the encoder, reads
    its multi-scale feature maps and restores the views' full resolution. After pretraining,
    ``model.encoder`` is the module to fine-tune (and ``model.head`` a dense task's decoder).

    Args:
        encoder: the network to pretrain. If it declares ``spatial_dims``, it must be the
            task's.
        task: the pretext task; it chooses the head (``task.make_head``).
        num_features: the encoder's feature width ``F`` (a dense task's head needs none). If
            ``None`` it is read from
            ``encoder.num_features`` or ``encoder.out_channels``, else probed once by
            running the encoder on zeros (see :func:`infer_num_features`). Every forward
            checks the features against it and names the source if they differ.
        head: a head to use instead of the task's default (then ``F`` is not needed).

    Raises:
        TypeError: ``encoder`` is not a module or ``task`` not a pretext task.
        ValueError: the encoder's ``spatial_dims`` differ from the task's.

    Shapes:
        ``forward(views)``: ``(B, C, *spatial)`` or ``(B, P, C, *patch)``, as the task
        makes them -> what the task's loss reads (logits ``(B, num_classes)``, embeddings
        ``(N, D)``, the CPC head's tensor, or a dense task's restored image ``(B, C, *spatial)``).

    Examples:
        >>> task = p3.tasks.Rotation(spatial_dims=3)
        >>> model = PretextModel(p3.models.UNetEncoder(spatial_dims=3, widths=(8, 16, 32)), task)
        >>> generator = torch.Generator().manual_seed(0)
        >>> views, targets = task(torch.randn(2, 1, 32, 32, 32), generator)
        >>> logits = model(views)
        >>> logits.shape   # (B, num_classes)
        torch.Size([2, 10])
        >>> loss = task.loss(logits, targets, generator=generator)
    """

    def __init__(
        self,
        encoder: nn.Module,
        task: PretextTask[Any, Any],
        *,
        num_features: int | None = None,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if not isinstance(task, PretextTask):
            raise TypeError(f"task must be a pretext3d PretextTask, got {type(task).__name__}")
        declared = getattr(encoder, "spatial_dims", None)
        if isinstance(declared, int) and declared != task.spatial_dims:
            raise ValueError(
                f"{type(encoder).__name__} declares spatial_dims={declared} but the task "
                f"{type(task).__name__} works in {task.spatial_dims}D; build both for the same dims"
            )
        self.encoder = encoder
        self.task = task
        self.num_features: int | None = None
        self._width_source = ""
        self.dense = isinstance(task, DenseTask)
        if head is None and isinstance(task, DenseTask):
            head = DenseHead(encoder)
        elif head is None:
            if num_features is not None:
                self.num_features, self._width_source = num_features, "the num_features argument"
            else:
                self.num_features, self._width_source = _declared_width(encoder)
                if self.num_features is None:
                    self.num_features = infer_num_features(encoder, task.spatial_dims)
                    self._width_source = "probing the encoder"
            head = task.make_head(self.num_features)
        self.head = head

    def forward(self, views: Tensor) -> Tensor:
        """The head's output for the task's views."""
        patches = self.task.num_patches
        if patches is not None:
            if views.dim() != self.task.spatial_dims + 3 or views.shape[1] != patches:
                raise ValueError(
                    f"views must have shape (B, {patches}, C, *patch) for {type(self.task).__name__}, "
                    f"got {tuple(views.shape)}"
                )
            views = rearrange(views, "b p c ... -> (b p) c ...")
        if self.dense:  # the head runs the encoder and decodes its feature maps
            try:
                restored: Tensor = self.head(views)
            except RuntimeError as err:
                if not _SIZE_ERROR.search(str(err)):
                    raise
                raise ValueError(self._too_small(views, err)) from err
            return restored
        try:
            encoded = self.encoder(views)
        except RuntimeError as err:
            if not _SIZE_ERROR.search(str(err)):
                raise
            raise ValueError(self._too_small(views, err)) from err
        features = check_features(encoded, self.task.spatial_dims, type(self.encoder).__name__)
        if self.num_features is not None and features.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self.encoder).__name__} returned {features.shape[1]} feature channels, but "
                f"{self._width_source} gave {self.num_features}; pass num_features={features.shape[1]} "
                "(or fix the encoder's attribute)"
            )
        out: Tensor = self.head(features)
        return out

    def _too_small(self, views: Tensor, err: RuntimeError) -> str:
        """Why the encoder failed on these views: the size the task makes, the size the encoder takes."""
        task, size = self.task, tuple(views.shape[2:])
        name = type(task).__name__
        if hasattr(task, "jitter") and hasattr(task, "grid"):
            made = (
                f"{name} makes patches of {size}: image size // grid ({task.grid}) - jitter ({task.jitter})"
                f" - gap ({getattr(task, 'gap', 0)})"
            )
        elif getattr(task, "patch", None) is not None or task.num_patches is not None:
            made = f"{name} makes patches of {size}"
        else:
            made = f"{name} makes views of {size}"
        accepted = _smallest_accepted(self.encoder, views, max(size))
        took = (
            f"it accepted {accepted} per axis when probed"
            if accepted is not None
            else "it accepted no input up to 256 per axis when probed"
        )
        return (
            f"{type(self.encoder).__name__} cannot take inputs of spatial size {size} "
            f"({str(err).splitlines()[0]}); {made}; {took}. Use larger images or crops, a smaller grid "
            "or jitter, or an encoder that takes smaller inputs"
        )


_SIZE_ERROR = re.compile(r"kernel size|output size|input size|input image|padding size", re.IGNORECASE)


def _smallest_accepted(encoder: nn.Module, views: Tensor, failed: int) -> int | None:
    """The smallest cubic (square) input edge above ``failed`` that ``encoder`` runs on, up to 256."""
    edges: list[int] = [8, *range(16, 257, 16)]
    with evaluating(encoder):
        for edge in edges:
            if edge <= failed:
                continue
            try:
                encoder(views.new_zeros(2, views.shape[1], *[edge] * (views.dim() - 2)))
            except RuntimeError:
                continue
            return edge
    return None


def _declared_width(encoder: nn.Module) -> tuple[int | None, str]:
    for name in ("num_features", "out_channels"):
        value = getattr(encoder, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"encoder.{name}"
    return None, ""


def check_features(out: object, spatial_dims: int, who: str = "the encoder") -> Tensor:
    """Return ``out`` if it is features ``(N, F)`` or ``(N, F, *spatial)``; else say what to do.

    Raises:
        TypeError: ``out`` is a tuple, list, dict or other non-tensor.
        ValueError: ``out`` has a rank that is neither 2 nor ``spatial_dims + 2`` (e.g. a
            token sequence ``(N, T, D)``).
    """
    if not isinstance(out, Tensor):
        kind = type(out).__name__
        if isinstance(out, (tuple, list)):
            kind += f" of {len(out)} " + ", ".join(type(o).__name__ for o in out[:4])
        elif isinstance(out, dict):
            kind += f" with keys {list(out)[:6]}"
        raise TypeError(f"{who} returned a {kind}, not a feature tensor; {_ADAPT}")
    if out.dim() not in (2, spatial_dims + 2):
        raise ValueError(
            f"{who} returned shape {tuple(out.shape)}, which is neither (N, F) nor a {spatial_dims}D "
            f"feature map (N, F, *spatial) (rank {spatial_dims + 2}); a rank-3 output looks like a "
            f"token sequence (N, T, D); {_ADAPT}"
        )
    return out


def infer_num_features(encoder: nn.Module, spatial_dims: int, probe_size: int = 32) -> int:
    """The encoder's feature width ``F``: declared, or measured on one zero input.

    Looks for an int ``encoder.num_features`` or ``encoder.out_channels``. Otherwise runs
    ``encoder`` once (in eval mode, without gradients, on its parameters' device) on
    zeros of shape ``(1, C, probe_size, ...)``, where ``C`` is ``encoder.in_channels`` or
    the ``in_channels`` of its first convolution, and reads ``F`` from dim 1 of the output.

    Raises:
        ValueError: if neither works; pass ``num_features`` explicitly then.

    Examples:
        >>> infer_num_features(p3.models.UNetEncoder(3, widths=(8, 16)), spatial_dims=3)   # declared
        16
        >>> conv = torch.nn.Sequential(torch.nn.Conv2d(1, 12, 3), torch.nn.ReLU())
        >>> infer_num_features(conv, spatial_dims=2)   # measured on one zero input
        12
    """
    width, _ = _declared_width(encoder)
    if width is not None:
        return width
    in_channels = getattr(encoder, "in_channels", None)
    if not isinstance(in_channels, int):
        conv = next((m for m in encoder.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        in_channels = conv.in_channels if conv is not None else None
    if not isinstance(in_channels, int):
        raise ValueError(
            f"cannot tell the feature width of {type(encoder).__name__}: it declares no "
            "num_features/out_channels and has no in_channels or convolution to probe with; "
            "pass num_features=..."
        )
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        with evaluating(encoder):
            out = encoder(torch.zeros(1, in_channels, *[probe_size] * spatial_dims, device=device))
    except Exception as err:
        raise ValueError(
            f"probing {type(encoder).__name__} with a zero input of spatial size {probe_size} "
            f"failed ({err}); pass num_features=..."
        ) from err
    return int(check_features(out, spatial_dims, type(encoder).__name__).shape[1])
