"""A plain fine-tuning loop.

Encoder freeze schedule, early stopping on a validation score and a checkpoint every epoch
(resumable) around the library's one optimisation block
(:class:`~pretext3d.training.Optimization`: AdamW/Adam, gradient clipping, precision with
fp16's gradient scaler, the non-finite check).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from pretext3d import engine
from pretext3d._checks import check_choice, check_count_or_auto, check_int, check_positive, check_precision
from pretext3d.config import checked
from pretext3d.engine import Callback
from pretext3d.training import Optimization, OptimSettings

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer"]

NonFiniteLossError = engine.NonFiniteLossError

Batch = tuple[Tensor, Tensor]

#: settings a run may resume with other values of: they change how fast it runs, not what it computes
_RESUMABLE_WITH_OTHER = ("prefetch", "compile")


@checked
@dataclass
class TrainConfig:
    """Optimisation settings of one fine-tuning run.

    Attributes:
        epochs: number of epochs; the step budget is ``epochs * steps_per_epoch``.
        steps_per_epoch: optimizer steps per epoch.
        batch_size: samples per step.
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (Adam).
        optimizer: ``"adam"`` or ``"adamw"``.
        freeze_encoder_epochs: keep the encoder frozen (no gradient, batch-norm statistics
            fixed) for this many epochs first, then train all layers (the paper: 25).
        grad_clip: clip the gradient norm to this (``None``: no clipping).
        encoder_lr_factor: discriminative learning rates: the encoder's parameters train at
            ``lr * encoder_lr_factor`` (e.g. ``0.1``: pretrained features move slowly while the new
            decoder or head learns at the full rate; Howard & Ruder 2018); ``1.0``: one rate.
            Needs the ``encoder`` given to the Trainer.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast with a gradient scaler; CUDA
            only) or ``"auto"`` (bf16 on a GPU that has it, else fp32), resolved when the run
            starts. Validation runs under the same autocast (the sliding windows included);
            scores and blended logits are taken in fp32.
        channels_last: channels-last weights (``None``: on CUDA only, where convolutions are
            faster in it).
        compile: ``torch.compile`` the model: ``False`` (default: a fine-tuning run is often
            too short to repay the warm-up), ``True``, or ``"auto"``
            (:func:`pretext3d.engine.resolve_compile`: CUDA and 1,000 steps or more).
        prefetch: batches drawn ahead of the step by a background thread, in pinned memory
            and copied to the device without blocking, so that crops and augmentation overlap
            the GPU's work; ``"auto"``: 2 on CUDA, 0 (draw in the step) elsewhere. The batches
            are the same as without prefetching: one thread draws them in order from the run's
            generator, and an epoch draws exactly its own, so a resumed run continues the stream.
        early_stopping_patience: stop after this many epochs without a better validation
            score (``None``: never); the best weights are restored at the end. Patience counts
            from the first improvement on the first epoch's score: a run that has never improved
            on its first epoch keeps training to the budget (and is flagged by the
            data-efficiency runner), so a run that failed to start learning is never called
            converged.
        min_epochs: never stop early before this many epochs. A segmentation network often
            predicts only background for its first epochs (validation Dice 0 while the loss
            still falls); counting patience from the start would stop it before it learns.
        early_stopping_min_delta: an epoch restarts the patience only when its validation
            score beats the best one before it by more than this (Keras's ``min_delta``): a
            run creeping up by noise-sized steps stops; the best epoch's weights are still
            the ones kept. ``0``: any improvement.
        validate_every: validate after every ``k``-th epoch (epochs ``0, k, 2k, ...`` and the
            last), for validation sets that cost much beside an epoch's steps; patience and
            ``min_epochs`` still count epochs, and the best weights are those of the best
            validated epoch.
        seed: seeds the batch sampling (seed the weight initialisation before building
            the model; the data-efficiency runner does).

    Examples:
        >>> config = TrainConfig(epochs=50, lr=1e-4, freeze_encoder_epochs=5, early_stopping_patience=10)
        >>> config.optimizer, config.batch_size
        ('adam', 4)
        >>> TrainConfig(epochs=0)
        Traceback (most recent call last):
        ValueError: epochs must be an int >= 1, got 0
    """

    _renamed_arguments: ClassVar[dict[str, str]] = {
        "autocast": 'precision = "fp32" / "bf16" / "fp16" (or "auto") for autocast = "none" / "bf16" / "fp16"'
    }

    epochs: int = 10
    steps_per_epoch: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    freeze_encoder_epochs: int = 0
    grad_clip: float | None = 1.0
    encoder_lr_factor: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None
    compile: bool | Literal["auto"] = False
    prefetch: int | Literal["auto"] = "auto"
    early_stopping_patience: int | None = None
    min_epochs: int = 0
    early_stopping_min_delta: float = 0.0
    validate_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        """Check the values."""
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_positive("lr", self.lr)
        check_positive("encoder_lr_factor", self.encoder_lr_factor)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)  # <= 0 would zero or reverse the step
        check_choice("optimizer", self.optimizer, ("adam", "adamw"))
        check_precision("precision", self.precision)
        engine.resolve_compile(self.compile, torch.device("cpu"), 1)  # a bool or "auto"
        check_count_or_auto("prefetch", self.prefetch)
        if not 0 <= self.min_epochs <= self.epochs:
            raise ValueError(f"min_epochs must lie in [0, epochs={self.epochs}], got {self.min_epochs}")
        if self.early_stopping_patience is not None:
            check_int("early_stopping_patience", self.early_stopping_patience, 1)
        check_int("min_epochs", self.min_epochs, 0)
        check_positive("early_stopping_min_delta", self.early_stopping_min_delta, allow_zero=True)
        check_int("validate_every", self.validate_every, 1)
        check_int("freeze_encoder_epochs", self.freeze_encoder_epochs, 0)
        check_int("seed", self.seed, 0)
        if not 0 <= self.freeze_encoder_epochs <= self.epochs:
            raise ValueError(
                f"freeze_encoder_epochs must lie in [0, epochs={self.epochs}], "
                f"got {self.freeze_encoder_epochs}"
            )


class Trainer:
    """Train ``model`` with batches from ``sample``; ``encoder`` (a submodule) can be frozen first.

    Freezing: while frozen, the encoder's parameters get no gradient and it runs in eval
    mode, so neither weights nor batch-norm statistics change. The optimizer holds every
    parameter from the start; a parameter without gradient is skipped by Adam/AdamW
    (no update, no state, no weight decay), so on unfreezing its moments start at zero
    exactly as for a freshly built optimizer. A checkpoint (model, optimizer, epoch,
    history, best weights, sampling state) is written atomically after every epoch and
    picked up by a new ``Trainer`` with the same ``checkpoint`` path.

    Args:
        model: the network to train.
        loss_fn: ``loss_fn(model(x), y) -> scalar``.
        sample: ``sample(generator) -> (x, y)``: one training batch.
        config: the settings.
        encoder: the part to freeze first (a submodule of ``model``), or ``None``.
        validate: ``validate(model) -> score`` (higher is better), run after every epoch.
        checkpoint: file to write after every epoch and resume from.
        device: where to train: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``,
            ``"cuda[:i]"`` or a ``torch.device``.
        callbacks: called with each epoch's record (see :data:`pretext3d.engine.Callback`).
        progress: show a bar over the epochs (needs tqdm) with the loss and validation score.
        validate_start: validate the model once before it trains (:attr:`start_score`): the
            starting weights become a candidate for the best, and patience counts from them
            (for a head fitted to frozen features first, LP-FT: when fine-tuning never beats the
            fitted head, the run stops by patience and keeps it; :attr:`best_epoch` is then
            ``-1``). Without it, patience counts from the first improvement on epoch 0.

    Examples:
        Fine-tune a classifier on its encoder's pretrained weights, the encoder frozen for the first epoch:

        >>> model = p3.models.DenseNet(2, in_channels=1, num_classes=2, growth_rate=4, block_config=(2,),
        ...                            init_features=8)
        >>> x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 2, (16,))
        >>> def sample(generator):   # one training batch
        ...     index = torch.randint(0, 16, (4,), generator=generator)
        ...     return x[index], y[index]
        >>> def validate(model):   # higher is better; the best epoch's weights are kept
        ...     return float((model(x).argmax(1) == y).float().mean())
        >>> config = TrainConfig(epochs=2, steps_per_epoch=3, freeze_encoder_epochs=1)
        >>> trainer = Trainer(model, torch.nn.functional.cross_entropy, sample, config,
        ...                   encoder=model.encoder, validate=validate, checkpoint="run.pt")
        >>> history = trainer.fit()   # rerun with the same checkpoint: it resumes
        >>> [h["encoder_frozen"] for h in history], sorted(history[0])
        ([True, False], ['encoder_frozen', 'epoch', 'loss', 'seconds', 'val'])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        sample: Callable[[torch.Generator], Batch],
        config: TrainConfig,
        *,
        encoder: nn.Module | None = None,
        validate: Callable[[nn.Module], float] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        callbacks: Sequence[Callback] = (),
        progress: bool = False,
        validate_start: bool = False,
    ) -> None:
        device = engine.resolve_device(device)
        if validate_start and validate is None:
            raise ValueError("validate_start=True needs validate (the score to start from)")
        if encoder is not None and not any(m is encoder for m in model.modules()):
            raise ValueError("encoder must be a submodule of model")
        if config.freeze_encoder_epochs and encoder is None:
            raise ValueError("freeze_encoder_epochs > 0 needs the encoder to freeze")
        self.model = model.to(device)
        engine.to_channels_last(self.model, setting=config.channels_last, device=device)
        total = config.epochs * config.steps_per_epoch
        self.compiled, self.compile_reason = engine.resolve_compile(config.compile, device, total)
        if self.compiled:
            self.model.compile()  # in place: the state dict keeps its keys
        self.prefetch = (2 if device.type == "cuda" else 0) if config.prefetch == "auto" else config.prefetch
        self.loss_fn, self.sample, self.config = loss_fn, sample, config
        self.encoder, self.validate = encoder, validate
        self.device = device
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.callbacks, self.progress = list(callbacks), bool(progress)
        settings = OptimSettings(config.optimizer, config.lr, config.weight_decay, grad_clip=config.grad_clip)
        precision = engine.resolve_precision(config.precision, device)
        self.optim = Optimization(self._param_groups(), settings, total, device, precision)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_state: dict[str, Tensor] | None = None
        self.validate_start = bool(validate_start)
        #: the validation score of the starting weights (``validate_start``), else ``None``
        self.start_score: float | None = None
        self.epoch = 0
        if self.checkpoint is not None and self.checkpoint.exists():
            self._resume()

    def _param_groups(self) -> list[Any]:
        """All parameters at ``lr``, or the encoder's at ``lr * encoder_lr_factor`` in a group of its own."""
        factor = self.config.encoder_lr_factor
        if factor == 1.0:
            return list(self.model.parameters())
        if self.encoder is None:
            raise ValueError(f"encoder_lr_factor={factor} needs the encoder (Trainer(encoder=...))")
        mine = {id(p) for p in self.encoder.parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in mine]
        return [{"params": rest}, {"params": list(self.encoder.parameters()), "lr": self.config.lr * factor}]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (of :attr:`optim`, the optimisation block)."""
        return self.optim.optimizer

    def frozen(self, epoch: int) -> bool:
        """Whether the encoder is frozen during ``epoch`` (0-based)."""
        return self.encoder is not None and epoch < self.config.freeze_encoder_epochs

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the history (one dict per epoch)."""
        if self.validate_start and self.start_score is None and self.epoch == 0:
            self.start_score = self._validate()
            self.best_score = self.start_score
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with engine.progress(self.config.epochs, self.epoch, self.progress, "fine-tuning epochs") as bar:
            while self.epoch < self.config.epochs:
                if self.stopped_by_patience():
                    break
                record = self._epoch()
                for callback in self.callbacks:
                    callback(record)
                if bar is not None:
                    bar.update(1)
                    shown = {"loss": f"{record['loss']:.3f}"}
                    if "val" in record:
                        shown["val"] = f"{record['val']:.3f}"
                    bar.set_postfix(shown)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self._set_frozen(False)
        self.model.eval()
        return self.history

    def _epoch(self) -> dict[str, Any]:
        """One epoch: its steps, the validation score, the checkpoint; its record."""
        start = time.perf_counter()
        frozen = self.frozen(self.epoch)
        self._set_frozen(frozen)
        losses = [
            self._step(step, x, y) for step, (x, y) in enumerate(self._batches(self.config.steps_per_epoch))
        ]
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "loss": sum(losses) / len(losses),
            "encoder_frozen": frozen,
            "seconds": time.perf_counter() - start,
        }
        last = self.epoch == self.config.epochs - 1
        if self.validate is not None and (self.epoch % self.config.validate_every == 0 or last):
            score = self._validate()
            record["val"] = score
            if score > self.best_score:
                self.best_score = score
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.history.append(record)
        self.epoch += 1
        self._save()
        return record

    def _validate(self) -> float:
        assert self.validate is not None
        self.model.eval()
        with torch.no_grad(), self.optim.autocast():
            return float(self.validate(self.model))

    def _scored(self) -> list[tuple[int, float]]:
        """``(epoch, validation score)`` of every validated epoch, the start (epoch ``-1``) first."""
        start = [(-1, self.start_score)] if self.start_score is not None else []
        return start + [(int(h["epoch"]), float(h["val"])) for h in self.history if "val" in h]

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the best validation score so far (the earliest on ties); ``None`` before any.

        ``-1``: the starting weights (``validate_start``), which no epoch beat.
        """
        scored = self._scored()
        if not scored:
            return None
        return max(scored, key=lambda item: (item[1], -item[0]))[0]

    def _last_improvement(self) -> int | None:
        """The epoch patience counts from: the last to beat the best before it by more than ``min_delta``."""
        scored = self._scored()
        if not scored:
            return None
        anchor, best = scored[0]
        for epoch, value in scored[1:]:
            if value > best + self.config.early_stopping_min_delta:
                anchor, best = epoch, value
        return anchor

    def stopped_by_patience(self) -> bool:
        """Whether early stopping ends the run now.

        It does past ``min_epochs``, once the run has improved on its first epoch's score and then
        gone ``early_stopping_patience`` epochs without beating its best by more than
        ``early_stopping_min_delta``; with ``validate_start``, counted from the starting weights
        too (a start that no epoch beats ends the run once the patience has run out).

        Examples:
            >>> model = torch.nn.Linear(2, 2)
            >>> scores = iter([0.5, 0.4, 0.3, 0.2])   # never better than the first epoch
            >>> config = TrainConfig(epochs=4, steps_per_epoch=1, early_stopping_patience=1)
            >>> sample = lambda g: (torch.randn(4, 2), torch.randint(0, 2, (4,)))
            >>> trainer = Trainer(model, torch.nn.functional.cross_entropy, sample, config,
            ...                   validate=lambda m: next(scores))
            >>> len(trainer.fit()), trainer.best_epoch, trainer.stopped_by_patience()   # to the budget
            (4, 0, False)
        """
        patience = self.config.early_stopping_patience
        anchor = self._last_improvement()
        if patience is None or anchor is None or self.epoch < self.config.min_epochs:
            return False
        if anchor == 0 and self.start_score is None:  # never improved on its first epoch
            return False
        return self.epoch - 1 - anchor >= patience

    def _set_frozen(self, frozen: bool) -> None:
        self.model.train()
        if self.encoder is None:
            return
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()

    def _draw(self) -> Batch:
        """The next batch of the run's stream (in pinned memory when it goes to a GPU)."""
        batch = self.sample(self.generator)
        if not (
            isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)
        ):
            shown = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            kinds = [type(t).__name__ for t in batch] if isinstance(batch, (tuple, list)) else []
            raise TypeError(f"sample(generator) must return a pair of tensors (x, y), got a {shown} {kinds}")
        x, y = batch
        if self.device.type == "cuda" and x.device.type == "cpu":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _batches(self, count: int) -> Iterator[Batch]:
        """An epoch's ``count`` batches on the device, drawn in order (``prefetch`` of them ahead)."""
        if self.prefetch == 0:
            for _ in range(count):
                x, y = self._draw()
                yield x.to(self.device), y.to(self.device)
            return
        # one thread draws in order from the one generator: the stream is that of a plain loop
        with ThreadPoolExecutor(1, thread_name_prefix="pretext3d-prefetch") as pool:
            pending = deque(pool.submit(self._draw) for _ in range(min(self.prefetch, count)))
            drawn = len(pending)
            try:
                while pending:
                    x, y = pending.popleft().result()
                    if drawn < count:
                        pending.append(pool.submit(self._draw))
                        drawn += 1
                    yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            finally:
                for future in pending:  # a step failed: draw no further
                    future.cancel()

    def _step(self, step: int, x: Tensor, y: Tensor) -> float:
        with self.optim.autocast():
            loss = self.loss_fn(self.model(x), y)
        where = f"at epoch {self.epoch}, step {step} of {self.config.steps_per_epoch}"
        self.optim.check_finite(loss, "training loss", where)
        self.optim.backward(loss)
        self.optim.step()
        return float(loss.detach())

    def _save(self) -> None:
        if self.checkpoint is None:
            return
        engine.save_checkpoint(
            self.checkpoint,
            {
                "config": asdict(self.config),
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                **self.optim.state_dict(),
                "history": self.history,
                "best_score": self.best_score,
                "best_state": self.best_state,
                "start_score": self.start_score,
                "generator": self.generator.get_state(),
            },
        )

    def _resume(self) -> None:
        assert self.checkpoint is not None
        required = ("config", "model", "optimizer", "epoch")
        state = engine.load_checkpoint(self.checkpoint, required, self.device)
        if state is None:  # unreadable: reported, removed, the run starts over
            return
        changed = engine.changed_settings(state["config"], asdict(self.config), ignore=_RESUMABLE_WITH_OTHER)
        if changed:
            raise ValueError(
                f"checkpoint {str(self.checkpoint)!r} was written with other settings (changed: "
                f"{', '.join(changed[:8])}); delete it or use another path"
            )
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state)
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_score, self.best_state = state["best_score"], state["best_state"]
        self.start_score = state.get("start_score")
        self.generator.set_state(state["generator"])
