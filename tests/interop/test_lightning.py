"""Pretraining through Lightning's Trainer on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import pretext3d as p3

pl = pytest.importorskip("lightning.pytorch")
from pretext3d.lightning import PretextLightningModule  # noqa: E402

QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def _module(spatial_dims: int = 3) -> PretextLightningModule:
    torch.manual_seed(0)  # the encoder's initialisation
    encoder = p3.models.UNetEncoder(spatial_dims, widths=(8, 16))
    tasks = [
        p3.tasks.Rotation(spatial_dims),
        p3.TaskSpec(p3.tasks.Exemplar(spatial_dims), 0.5),
    ]
    return PretextLightningModule(encoder, tasks, lr=3e-3, crop=24, seed=1)


def _loader(spatial_dims: int = 3) -> torch.utils.data.DataLoader[torch.Tensor]:
    kind = "ct" if spatial_dims == 3 else "fundus"
    images = p3.data.PhantomImages(kind, count=8, size=32)
    return torch.utils.data.DataLoader(images, batch_size=4)  # 2 steps per epoch, fixed order


def _fit(module: PretextLightningModule, steps: int, **kwargs: Any) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, **QUIET)
    trainer.fit(module, _loader(), _loader(), **kwargs)
    return trainer


def test_several_tasks_train_one_shared_encoder_and_log_both() -> None:
    module = _module()
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    trainer = _fit(module, 2)
    assert all(m.encoder is module.encoder for m in module.models.values())
    assert any(not torch.equal(v, before[k]) for k, v in module.encoder.state_dict().items())
    logged = set(trainer.logged_metrics)
    for name in ("rotation", "exemplar"):
        assert {f"loss/{name}", f"held_out_loss/{name}", f"held_out_accuracy/{name}"} <= logged
    assert 0.0 <= float(trainer.logged_metrics["held_out_accuracy/rotation"]) <= 1.0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_dense_tasks_train_their_decoder_and_log_the_reconstruction_skill(spatial_dims: int) -> None:
    torch.manual_seed(0)
    encoder = p3.models.UNetEncoder(spatial_dims, 1 if spatial_dims == 3 else 3, widths=(8, 16))
    tasks = [p3.tasks.ModelsGenesis(spatial_dims), p3.tasks.MaskedImageModeling(spatial_dims, patch=8)]
    module = PretextLightningModule(encoder, tasks, lr=3e-3, crop=16, seed=1)
    decoders = {
        name: {k: v.clone() for k, v in m.head.state_dict().items()} for name, m in module.models.items()
    }
    trainer = pl.Trainer(max_steps=2, **QUIET)
    loader = _loader(spatial_dims)
    trainer.fit(module, loader, loader)
    for name in ("genesis", "mim"):
        head = module.models[name].head
        assert isinstance(head, p3.models.DenseHead)  # on the shared encoder, not a copy of it
        assert {id(p) for p in head.parameters()}.isdisjoint(id(p) for p in module.encoder.parameters())
        assert any(not torch.equal(v, decoders[name][k]) for k, v in head.state_dict().items())
        skill = float(trainer.logged_metrics[f"held_out_accuracy/{name}"])  # 1 - error / the baseline's
        assert skill <= 1.0 and torch.isfinite(torch.tensor(skill))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    straight = _module()
    _fit(straight, 4)

    class CrashAfterTwoSteps(pl.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 2:
                trainer.save_checkpoint(tmp_path / "step2.ckpt")
                raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        pl.Trainer(max_steps=4, callbacks=[CrashAfterTwoSteps()], **QUIET).fit(
            _module(), _loader(), _loader()
        )
    resumed = _module()
    _fit(resumed, 4, ckpt_path=tmp_path / "step2.ckpt")
    for key, value in straight.encoder.state_dict().items():
        assert torch.allclose(value.float(), resumed.encoder.state_dict()[key].float(), atol=1e-6), key
    assert int(resumed.models["exemplar"].task.instance_counter) == 4 * 4  # 4 steps of 4 images  # type: ignore[arg-type]


def test_dict_batches_and_metatensors_as_monai_gives_them() -> None:
    from monai.data import MetaTensor

    images = [{"image": MetaTensor(p3.data.PhantomImages("ct", 8, 32)[i])} for i in range(8)]
    loader = torch.utils.data.DataLoader(images, batch_size=4)  # type: ignore[arg-type,var-annotated]
    module = PretextLightningModule(p3.models.UNetEncoder(3, widths=(8, 16)), p3.tasks.Rotation(3))
    pl.Trainer(max_steps=1, limit_val_batches=0, **QUIET).fit(module, loader)
    assert module.global_step == 1
    module = PretextLightningModule(
        p3.models.UNetEncoder(3, widths=(8, 16)), p3.tasks.Rotation(3), image_key="img"
    )
    with pytest.raises(ValueError, match=r"image_key='img'.*\['image'\]"):
        pl.Trainer(max_steps=1, limit_val_batches=0, **QUIET).fit(module, loader)


def test_bad_settings_are_refused() -> None:
    encoder = p3.models.UNetEncoder(3, widths=(8, 16))
    with pytest.raises(ValueError, match="optimizer"):
        PretextLightningModule(encoder, p3.tasks.Rotation(3), optimizer="lamb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one spatial dimension"):
        PretextLightningModule(encoder, [p3.tasks.Rotation(3), p3.tasks.Jigsaw(2)])
    with pytest.raises(ValueError, match="checkpointing switch"):
        PretextLightningModule(torch.nn.Conv3d(1, 4, 3), p3.tasks.Rotation(3), activation_checkpointing=True)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_probe_logs_the_random_reference_then_every_few_steps(spatial_dims: int) -> None:
    from pretext3d.diagnostics import FeatureProbe

    if spatial_dims == 2:
        images, labels = p3.data.fundus_phantom_batch(8, size=32, seed=5)
        encoder = p3.models.DenseNetEncoder(2, 3, growth_rate=4, block_config=(1, 1), init_features=8)
        probe = FeatureProbe(images, labels, every=2)
    else:
        images, labels = p3.data.ct_phantom_batch(8, size=32, seed=5)
        encoder = p3.models.UNetEncoder(3, widths=(8, 16))
        probe = FeatureProbe(images, labels, task="segmentation", every=2)
    module = PretextLightningModule(encoder, p3.tasks.Rotation(spatial_dims), crop=16, probe=probe)
    trainer = pl.Trainer(max_steps=4, **QUIET)
    trainer.fit(module, _loader(spatial_dims))
    assert [h["step"] for h in module.probe_history] == [0, 2, 4]
    assert f"probe/{probe.metric}" in trainer.logged_metrics


def test_the_optimizer_follows_module_lr_as_a_tuner_sets_it() -> None:
    module = _module()
    module.lr = 5e-4  # what Lightning's learning-rate finder does
    trainer = _fit(module, 1)
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == 5e-4
