"""Put a pretext task's head on any encoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretext3d.tasks.base import PretextTask

__all__ = ["PretextModel", "infer_num_features"]


class PretextModel(nn.Module):
    """An encoder with a pretext task's head on top.

    The encoder can be any module mapping ``(N, C, *spatial)`` to features ``(N, F)`` or
    ``(N, F, *spatial)``. For patch tasks (``task.num_patches`` set) all ``B * P``
    patches go through the one shared encoder in a single batch. After pretraining,
    ``model.encoder`` is the module to fine-tune.

    Args:
        encoder: the network to pretrain.
        task: the pretext task; it chooses the head (``task.make_head``).
        num_features: the encoder's feature width ``F``. If ``None`` it is read from
            ``encoder.num_features`` or ``encoder.out_channels``, else probed once by
            running the encoder on zeros (see :func:`infer_num_features`).
        head: a head to use instead of the task's default.

    Shapes:
        ``forward(views)``: ``(B, C, *spatial)`` or ``(B, P, C, *patch)``, as the task
        makes them -> logits ``(B, num_classes)``.

    Example:
        >>> task = Rotation(spatial_dims=3)
        >>> model = PretextModel(my_encoder, task)
        >>> views, labels = task(volumes)
        >>> loss = task.loss(model(views), labels)
    """

    def __init__(
        self,
        encoder: nn.Module,
        task: PretextTask,
        *,
        num_features: int | None = None,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        if not isinstance(task, PretextTask):
            raise TypeError(f"task must be a pretext3d PretextTask, got {type(task).__name__}")
        self.encoder = encoder
        self.task = task
        if head is None:
            if num_features is None:
                num_features = infer_num_features(encoder, task.spatial_dims)
            head = task.make_head(num_features)
        self.head = head

    def forward(self, views: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for the task's views."""
        patches = self.task.num_patches
        if patches is None:
            out: Tensor = self.head(self.encoder(views))
            return out
        if views.dim() != self.task.spatial_dims + 3 or views.shape[1] != patches:
            raise ValueError(
                f"views must have shape (B, {patches}, C, *patch) for {type(self.task).__name__}, "
                f"got {tuple(views.shape)}"
            )
        out = self.head(self.encoder(views.flatten(0, 1)))
        return out


def infer_num_features(encoder: nn.Module, spatial_dims: int, probe_size: int = 32) -> int:
    """The encoder's feature width ``F``: declared, or measured on one zero input.

    Looks for an int ``encoder.num_features`` or ``encoder.out_channels``. Otherwise runs
    ``encoder`` once (in eval mode, without gradients, on its parameters' device) on
    zeros of shape ``(1, C, probe_size, ...)``, where ``C`` is ``encoder.in_channels`` or
    the ``in_channels`` of its first convolution, and reads ``F`` from dim 1 of the output.

    Raises:
        ValueError: if neither works; pass ``num_features`` explicitly then.
    """
    for name in ("num_features", "out_channels"):
        value = getattr(encoder, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
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
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(1, in_channels, *[probe_size] * spatial_dims, device=device))
    except Exception as err:
        raise ValueError(
            f"probing {type(encoder).__name__} with a zero input of spatial size {probe_size} "
            f"failed ({err}); pass num_features=..."
        ) from err
    finally:
        encoder.train(was_training)
    if not isinstance(out, Tensor) or out.dim() < 2:
        raise ValueError(
            f"{type(encoder).__name__} must return features (N, F) or (N, F, *spatial), got "
            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}; pass num_features=..."
        )
    return int(out.shape[1])
