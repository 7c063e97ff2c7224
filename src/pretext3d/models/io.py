"""Save and load encoder weights alone, between pretext and fine-tuning models."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

from torch import Tensor, nn

from pretext3d._atomic import load_torch, save_torch
from pretext3d._version import __version__
from pretext3d.registry import ENCODERS

__all__ = [
    "encoder_info",
    "encoder_name",
    "load_decoder",
    "load_encoder",
    "load_encoder_weights",
    "save_encoder",
]

_FORMAT = "pretext3d-encoder-v1"
# constructor arguments renamed since 0.1, so that older files still load
_RENAMED = {"drop_rate": "dropout"}
# Where an encoder sits inside the models that hold one.
_PREFIXES = ("encoder.", "features.", "module.encoder.")


def save_encoder(encoder: nn.Module, path: str | PathLike[str], *, decoder: nn.Module | None = None) -> None:
    """Write an encoder's weights (and, for the library's encoders, its config) to ``path``.

    Args:
        encoder: any module. For an encoder whose class is registered
            (:data:`pretext3d.registry.ENCODERS`: the library's own, or yours) and that
            has a ``config`` dict of its constructor arguments, or one built by
            :func:`~pretext3d.registry.create_encoder` (``"timm/resnet18"``, ``"monai/resnet10"``),
            the file also records its name and config, so :func:`load_encoder` can rebuild it.
        path: file to write (``torch.save`` format), atomically.
        decoder: a pretrained :class:`~pretext3d.models.DenseHead` on this encoder (a dense
            task's head), kept beside it for :func:`load_decoder`.

    Examples:
        >>> save_encoder(p3.models.UNetEncoder(3, widths=(8, 16)), "encoder.pt")
        >>> encoder_info("encoder.pt")["encoder"], type(load_encoder("encoder.pt")).__name__
        ('unet', 'UNetEncoder')
    """
    config = getattr(encoder, "config", None)
    name = ENCODERS.name_of(type(encoder))
    built = getattr(encoder, "_pretext3d_build", None)  # create_encoder("timm/...") or ("monai/...")
    if isinstance(built, Mapping):
        name, config = built["encoder"], built["config"]
    payload = {
        "format": _FORMAT,
        "pretext3d_version": __version__,
        "encoder": name,
        "class": type(encoder).__name__,
        "config": dict(config) if isinstance(config, Mapping) else None,
        "state_dict": encoder.state_dict(),
    }
    if decoder is not None:
        payload["decoder"] = {
            "class": type(decoder).__name__,
            "options": dict(getattr(decoder, "options", {})),
            "state_dict": decoder.state_dict(),
        }
    save_torch(path, payload)


def encoder_info(path: str | PathLike[str]) -> dict[str, Any]:
    """What an encoder file holds besides its weights.

    Returns:
        ``format`` (``"pretext3d-encoder-v1"``), ``pretext3d_version`` (the library that wrote
        it; ``None`` for files of 0.1), ``encoder`` (the registered name, ``None`` if
        unregistered), ``class``, ``config`` (its constructor arguments, ``None`` if it has
        none), ``parameters`` (the number of values in its state dict) and ``decoder`` (``None``,
        or the pretrained decoder's ``class``, ``options`` and ``parameters``).

    Examples:
        >>> save_encoder(p3.models.UNetEncoder(3, widths=(8, 16)), "encoder.pt")
        >>> info = encoder_info("encoder.pt")
        >>> info["format"], info["encoder"], info["config"]["widths"]
        ('pretext3d-encoder-v1', 'unet', (8, 16))
    """
    payload = _read(path)
    return {
        "format": payload["format"],
        "pretext3d_version": payload.get("pretext3d_version"),
        "encoder": _registered_name(payload),
        "class": payload.get("class"),
        "config": payload.get("config"),
        "parameters": sum(v.numel() for v in payload["state_dict"].values()),
        "decoder": None
        if payload.get("decoder") is None
        else {
            "class": payload["decoder"]["class"],
            "options": payload["decoder"]["options"],
            "parameters": sum(v.numel() for v in payload["decoder"]["state_dict"].values()),
        },
    }


def encoder_name(path: str | PathLike[str]) -> str | None:
    """The registered name of the encoder saved in ``path`` (``"unet"``, ...), or ``None`` if unregistered.

    Examples:
        >>> save_encoder(p3.models.DenseNetEncoder(2, 3, growth_rate=8, block_config=(2,)), "densenet.pt")
        >>> encoder_name("densenet.pt")
        'densenet'
        >>> # any module can be saved; only registered ones are named
        >>> save_encoder(torch.nn.Conv2d(3, 8, 3), "conv.pt")
        >>> encoder_name("conv.pt") is None
        True
    """
    return _registered_name(_read(path))


def _registered_name(payload: dict[str, Any]) -> str | None:
    name = payload.get("encoder")
    if name is None:  # files of 0.1 name the class only
        builders = {getattr(ENCODERS.get(n), "__name__", None): n for n in ENCODERS.names()}
        name = builders.get(payload.get("class"))
    return str(name) if name is not None else None


def load_encoder(path: str | PathLike[str]) -> nn.Module:
    """Rebuild an encoder saved by :func:`save_encoder`, by its registered name and config.

    Raises:
        ValueError: the file holds an encoder that is not registered or has no config;
            build the module yourself and call :func:`load_encoder_weights`.

    Examples:
        >>> save_encoder(p3.models.UNetEncoder(2, widths=(8, 16)), "encoder.pt")
        >>> encoder = load_encoder("encoder.pt")   # rebuilt from its name and config, weights loaded
        >>> type(encoder).__name__, encoder.num_features
        ('UNetEncoder', 16)
    """
    payload = _read(path)
    name = _registered_name(payload)
    if name is None or name not in ENCODERS:
        raise ValueError(
            f"{str(path)!r} holds a {payload.get('class')} encoder that is not registered here "
            f"(registered: {ENCODERS.names()}): import the plugin that registers it, or build the module "
            "yourself and call load_encoder_weights(module, path)"
        )
    if payload.get("config") is None:
        raise ValueError(unrecorded_options(path, name))
    config = {_RENAMED.get(k, k): v for k, v in payload["config"].items()}
    encoder: nn.Module = ENCODERS.get(name)(**config)
    encoder.load_state_dict(payload["state_dict"])
    return encoder


def unrecorded_options(path: str | PathLike[str], name: str) -> str:
    """The refusal of an encoder file that names its encoder but not the options it was built with."""
    return (
        f"encoder file {str(path)!r} holds a {name!r} encoder whose constructor options were not recorded "
        "(it was built directly, not by create_encoder or pretext3d pretrain, and its class keeps no "
        f"`config` dict), so it cannot be rebuilt: save an encoder made by p3.create_encoder({name!r}, ...), "
        "or build the module yourself and call load_encoder_weights(module, path)"
    )


def load_encoder_weights(
    encoder: nn.Module,
    source: str | PathLike[str] | Mapping[str, Tensor],
    *,
    strict: bool = True,
) -> None:
    """Load encoder weights into ``encoder`` from a file or a state dict.

    ``source`` may be a :func:`save_encoder` file, the encoder's own state dict, or the
    state dict of a model that holds the encoder (a :class:`~pretext3d.PretextModel`, a
    :class:`~pretext3d.models.UNet`, a :class:`~pretext3d.models.DenseNet`): keys under
    ``encoder.`` or ``features.`` are taken and the rest (heads, decoders) ignored.

    Raises:
        ValueError: when ``strict`` and keys are missing or left over, naming them.

    Examples:
        >>> model = p3.PretextModel(p3.models.UNetEncoder(3, widths=(8, 16)), p3.tasks.Rotation(3))
        >>> unet = p3.models.UNet(3, 1, 3, widths=(8, 16))
        >>> load_encoder_weights(unet.encoder, model.state_dict())   # the keys under "encoder." are taken
    """
    state = _read(source)["state_dict"] if not isinstance(source, Mapping) else dict(source)
    own = set(encoder.state_dict())
    # The raw dict or the part under a known prefix, whichever matches more of the
    # encoder's keys (a U-Net's decoder has keys like its encoder's, so "any match" won't do).
    candidates = [state] + [
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} for prefix in _PREFIXES
    ]
    state = max(candidates, key=lambda c: len(own & set(c)))
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if strict and (missing or unexpected):
        raise ValueError(
            f"encoder weights do not match {type(encoder).__name__}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all), unexpected "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all)"
        )
    mine = encoder.state_dict()
    sizes = [
        f"{k} {tuple(v.shape)} vs {tuple(mine[k].shape)}"
        for k, v in state.items()
        if k in mine and isinstance(v, Tensor) and v.shape != mine[k].shape
    ]
    if sizes:
        raise ValueError(
            f"encoder weights do not fit {type(encoder).__name__}'s widths: {len(sizes)} tensors differ in "
            f"shape (saved vs this encoder), e.g. {'; '.join(sizes[:2])}: build the encoder with the "
            "widths it was pretrained with"
        )
    encoder.load_state_dict(state, strict=strict)


def load_decoder(network: nn.Module, path: str | PathLike[str]) -> list[str]:
    """Start a network's decoder from the pretrained decoder an encoder file keeps.

    A dense task's head (:class:`~pretext3d.models.DenseHead`) is the decoder of a
    :class:`~pretext3d.models.MultiScaleUNet` on the same encoder: its stages load into the
    network's; the 1x1 output convolution does not (it restored intensities, the network
    predicts classes) and starts anew. Load the encoder first (:func:`load_encoder_weights`).

    Args:
        network: a :class:`~pretext3d.models.MultiScaleUNet` (or :class:`~pretext3d.models.DenseHead`)
            built on the encoder the file holds, with the decoder options it was pretrained with.
        path: a :func:`save_encoder` file written with ``decoder=``.

    Returns:
        The names of the tensors loaded.

    Raises:
        ValueError: the file holds no decoder, or its layout differs from the network's
            (naming the tensors and their shapes).

    Examples:
        >>> encoder = p3.models.UNetEncoder(3, widths=(8, 16))
        >>> save_encoder(encoder, "encoder.pt", decoder=p3.models.DenseHead(encoder))
        >>> unet = p3.models.MultiScaleUNet(load_encoder("encoder.pt"), out_channels=3)
        >>> sorted({name.split(".")[0] for name in load_decoder(unet, "encoder.pt")})
        ['stages']
    """
    from pretext3d.models.multiscale import MultiScaleDecoder

    payload = _read(path)
    saved = payload.get("decoder")
    if saved is None:
        raise ValueError(
            f"{str(path)!r} holds no pretrained decoder (only a dense task's pretraining, e.g. genesis "
            "or mim, "
            "writes one); fine-tune without load_decoder"
        )
    if not isinstance(network, MultiScaleDecoder):
        raise TypeError(
            f"load_decoder takes a MultiScaleUNet (or DenseHead), got {type(network).__name__}: build "
            "pretext3d.models.MultiScaleUNet(encoder, out_channels) to start from a pretrained decoder"
        )
    own = {k: v for k, v in network.state_dict().items() if not k.startswith(("encoder.", "head."))}
    state = {k: v for k, v in saved["state_dict"].items() if not k.startswith("head.")}
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        raise ValueError(
            f"the decoder in {str(path)!r} (options {saved['options']}) does not fit "
            f"{type(network).__name__}'s: {len(wrong)} tensors differ in shape (saved vs network)"
            f"{', e.g. ' + '; '.join(wrong[:2]) if wrong else ''}, "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}: build it on the same encoder with the "
            "decoder options the file records"
        )
    network.load_state_dict(state, strict=False)
    return sorted(state)


def _read(path: str | PathLike[str]) -> dict[str, Any]:
    payload = load_torch(path, "encoder file", "an encoder file written by pretext3d.models.save_encoder")
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not an encoder file written by pretext3d.models.save_encoder")
    return payload
