# ruff: noqa: E501, N806 - a table of probes reads best one per line
"""Bad inputs across the public API: each must get a clear error, never a wrong result.

A probe is *clear* when the call raises the exception type a user expects and the message
names what was wrong (the argument, key or file); *unclear* when it raises anything else;
*silent* when it returns. ``python tests/test_bad_inputs.py`` prints the table by area.
"""

from __future__ import annotations

import atexit
import math
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pretext3d as p3
from pretext3d import experiments as ex
from pretext3d import objectives as ob
from pretext3d.config import ConfigError, from_mapping
from pretext3d.data import CTPreprocessing, DataSpec, FundusPreprocessing
from pretext3d.experiments import DataEfficiency, Finetuning, Pretraining
from pretext3d.finetune import TrainConfig, Trainer
from pretext3d.models import ConvEncoder, DenseNetEncoder, UNetEncoder
from pretext3d.tasks import CPC, Exemplar, Jigsaw, RelativePatchLocation, Rotation, RotationParams
from pretext3d.transforms import ExemplarAugmenter, random_crop, random_crops

V3 = torch.randn(2, 1, 8, 8, 8)
V2 = torch.randn(2, 1, 8, 8)
INF, NAN = float("inf"), float("nan")


@dataclass
class Probe:
    area: str
    call: Callable[[], object]
    error: type[BaseException] | tuple[type[BaseException], ...]
    names: str  # a regex the message must match: what was wrong


def probes() -> list[Probe]:
    def task(area: str = "tasks") -> Callable[..., Probe]:
        return lambda call, error, names: Probe(area, call, error, names)

    t, o, tr, m, pe, d, f, e, c = (
        task("tasks"), task("objectives"), task("transforms"), task("models"), task("permutations"),
        task("data"), task("finetune"), task("experiments"), task("config/CLI"),
    )  # fmt: skip
    VE, TE = ValueError, TypeError
    emb, lab = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    tiny_seg = ex.SegmentationRecipe(crop=16)
    images, labels, _ = DataSpec(count=8, size=16).labelled()
    return [
        # --- tasks: construction
        t(lambda: Rotation(4), VE, r"spatial_dims must be an integer in \[2, 3\]"),
        t(lambda: Rotation("3"), TE, r"spatial_dims must be an integer in \[2, 3\]"),
        t(lambda: Rotation(True), TE, "spatial_dims"),
        t(lambda: Rotation(3, "cube"), VE, "rotations"),
        t(lambda: Rotation(3, plane=(0, 0)), VE, "plane"),
        t(lambda: Jigsaw(3, grid=1), VE, "grid"),
        t(lambda: Jigsaw(3, grid=2.5), TE, "grid"),
        t(lambda: Jigsaw(3, jitter=-1), VE, "jitter"),
        t(lambda: Jigsaw(3, num_permutations=0), VE, "num_permutations"),
        t(lambda: Jigsaw(2, grid=2, num_permutations=25), VE, "num_permutations"),
        t(lambda: Jigsaw(3, permutations=torch.zeros(3, 27)), VE, "permutation"),
        t(lambda: RelativePatchLocation(3, grid=4), VE, "grid must be odd"),
        t(lambda: Exemplar(3, protocol="triplet"), VE, "protocol"),
        t(lambda: Exemplar(3, miner="hard"), TE, "miner"),
        t(lambda: Exemplar(3, margin=0), VE, "margin"),
        t(lambda: Exemplar(3, margin=NAN), VE, "margin"),
        t(lambda: Exemplar(3, embedding_dim=0), VE, "embedding_dim"),
        t(lambda: Exemplar(3, memory_size=-1), VE, "memory_size"),
        t(lambda: Exemplar(3, ExemplarAugmenter(2)), VE, "augmenter works in 2D"),
        t(lambda: Exemplar(3, protocol="original", memory_size=8), VE, "protocol='original'"),
        t(lambda: CPC(3, grid=1), VE, "grid"),
        t(lambda: CPC(3, grid=3, steps=3), VE, "steps"),
        t(lambda: CPC(3, overlap=1.0), VE, "overlap"),
        t(lambda: CPC(3, flip_p=2), VE, "flip_p"),
        t(lambda: CPC(3, loss="ce"), VE, "loss"),
        t(lambda: CPC(3, temperature=INF), VE, "temperature"),
        t(lambda: CPC(3, loss="binary", gather=True), VE, "gather"),
        # --- tasks: calls
        t(lambda: Rotation(3)([[1.0]]), TE, "x must be a torch.Tensor"),
        t(lambda: Rotation(3)(V3.long()), TE, "floating-point"),
        t(lambda: Rotation(3)(V3[:0]), VE, "must not be empty"),
        t(lambda: Rotation(3)(V2), VE, r"rank 5\), got shape \(2, 1, 8, 8\)"),
        t(lambda: Rotation(3)(V3[0]), VE, r"task.single\(x\)"),
        t(lambda: Rotation(3)(V3 * NAN), VE, "NaN"),
        t(lambda: Rotation(3)(torch.randn(2, 1, 8, 8, 6)), VE, "needs equal sizes"),
        t(lambda: Jigsaw(3, jitter=3)(V3), VE, "too small for grid=3"),
        t(lambda: CPC(3)(V3), VE, "grid of 32-voxel patches"),
        t(lambda: Rotation(3)(V3, "seed"), TE, "generator must be a torch.Generator, an int seed"),
        t(lambda: Rotation(3)(V3, 1.5), TE, "generator"),
        t(lambda: Exemplar(3).single(V3[0]), VE, "needs a batch"),
        t(lambda: Rotation(3).single(V3), VE, r"single\(\) takes one sample"),
        t(lambda: Rotation(3).loss(torch.randn(2, 11), torch.tensor([0, 1])), VE, "num_classes=10"),
        t(lambda: Rotation(3).loss(torch.randn(2, 10), torch.tensor([0, 1, 2])), VE, "targets"),
        t(lambda: Rotation(3).apply_params(V3, torch.tensor([0, 1])), TE, "params must be a RotationParams"),
        t(lambda: Rotation(3).apply_params(V3, RotationParams(torch.tensor([0]))), VE, "batch of 1"),
        t(lambda: Rotation(3).apply_params(V3, RotationParams(torch.tensor([0, 10]))), VE, "params.rotation"),
        t(lambda: CPC(3, grid=2, patch=4).loss(torch.randn(2, 2, 1, 1, 2, 2, 4), torch.zeros(2)), TE, "targets"),
        t(lambda: Exemplar(3).loss(torch.randn(6), lab), VE, r"embeddings must have shape \(N, D\)"),
        # --- objectives
        t(lambda: ob.TripletMarginLoss(NAN), VE, "margin"),
        o(lambda: ob.InfoNCELoss(INF), VE, "temperature"),
        o(lambda: ob.InfoNCELoss()(torch.randn(3, 4), torch.randn(2, 4)), VE, "keys must hold at least one"),
        o(lambda: ob.InfoNCELoss()(torch.randn(3, 4), torch.randn(3, 5)), VE, "queries and keys"),
        o(lambda: ob.BinaryCPCLoss()(torch.randn(1, 4), torch.randn(1, 4)), VE, "at least 2 keys"),
        o(lambda: ob.BatchHardMiner(max_triplets="2"), TE, "max_triplets"),
        o(lambda: ob.BatchHardMiner(max_triplets=2.5), TE, "max_triplets"),
        o(lambda: ob.BatchHardMiner(max_triplets=0), VE, "max_triplets"),
        o(lambda: ob.SemiHardMiner(margin=-1), VE, "margin"),
        o(lambda: ob.DistanceWeightedMiner(cutoff=2), VE, "cutoff"),
        o(lambda: ob.BatchHardMiner()(emb[:, 0], lab), VE, "embeddings"),
        o(lambda: ob.BatchHardMiner()(emb, lab.float()), TE, "labels"),
        o(lambda: ob.BatchHardMiner()(emb, lab[:3]), VE, "same length"),
        o(lambda: ob.BatchHardMiner()(emb, lab, num_anchors=9), VE, "num_anchors"),
        o(lambda: ob.BatchHardMiner()(emb, lab, generator="x"), TE, "generator"),
        o(lambda: ob.CrossBatchMemory(ob.TripletMarginLoss(), ob.BatchHardMiner(), 4, size=0), VE, "size"),
        o(lambda: ob.CrossBatchMemory(ob.TripletMarginLoss(), ob.BatchHardMiner(), 5)(emb, lab), VE, "dimensions"),
        o(lambda: ob.TripletMarginLoss()(emb, (torch.tensor([0]), torch.tensor([1]), torch.tensor([]))), VE, "length"),
        # --- transforms
        tr(lambda: ExemplarAugmenter(3, brightness=NAN), VE, "brightness"),
        tr(lambda: ExemplarAugmenter(3, contrast=(0.5, INF)), VE, "contrast"),
        tr(lambda: ExemplarAugmenter(3, zoom_range=1.0), VE, "zoom_range"),
        tr(lambda: ExemplarAugmenter(3, zoom_range=(0.0, 1.0)), VE, "zoom_range"),
        tr(lambda: ExemplarAugmenter(3, max_angle=200), VE, "max_angle"),
        tr(lambda: ExemplarAugmenter(3, mode="cubic"), VE, "mode"),
        tr(lambda: ExemplarAugmenter(3, flip_p=1.5), VE, "flip_p"),
        tr(lambda: ExemplarAugmenter(3, flip_p="half"), TE, "flip_p"),
        tr(lambda: ExemplarAugmenter(3)(V2), VE, "x must have shape"),
        tr(lambda: random_crops(V3[:0], (4, 4, 4)), VE, "non-empty batch"),
        tr(lambda: random_crops(V3, (9, 4, 4)), VE, "size must give one crop edge"),
        tr(lambda: random_crops(V3, (4, 4)), VE, "size must give one crop edge"),
        tr(lambda: random_crop(np.zeros((4, 4, 4)), (0, 2, 2)), VE, "size must be crop edges"),
        # --- models
        m(lambda: UNetEncoder(1), VE, "spatial_dims"),
        m(lambda: UNetEncoder(3, widths=()), VE, "widths"),
        m(lambda: UNetEncoder(3, widths=(4, 0)), VE, r"widths\[1\]"),
        m(lambda: UNetEncoder(3, norm="layer"), VE, "norm must be one of"),
        m(lambda: UNetEncoder(3, dropout=1.0), VE, "dropout"),
        m(lambda: UNetEncoder(3, width_multiplier=NAN), VE, "width_multiplier"),
        m(lambda: UNetEncoder(3, widths=(4, 8))(torch.randn(2, 2, 8, 8, 8)), VE, r"x must have shape \(N, 1"),
        m(lambda: UNetEncoder(3, widths=(4, 8, 16))(torch.randn(2, 1, 2, 2, 2)), VE, "at least 4"),
        m(lambda: UNetEncoder(3, widths=(4, 8))(torch.randn(1, 1, 2, 2, 2)), VE, "batch norm in training mode"),
        m(lambda: DenseNetEncoder(2, block_config=()), VE, "block_config"),
        m(lambda: DenseNetEncoder(2, growth_rate=0), VE, "growth_rate"),
        m(lambda: ConvEncoder(3, widths=()), VE, "widths"),
        m(lambda: p3.PretextModel(lambda x: x, Rotation(3)), TE, "encoder must be a torch.nn.Module"),
        m(lambda: p3.PretextModel(ConvEncoder(3), "rotation"), TE, "task must be"),
        m(lambda: p3.PretextModel(ConvEncoder(2), Rotation(3)), VE, "spatial_dims=2 but the task"),
        m(lambda: p3.models.UNet(3, widths=(4, 8))(torch.randn(2, 1, 9, 8, 8)), VE, "multiple of 2"),
        m(lambda: p3.models.load_encoder(Path(__file__)), VE, "is not an encoder file"),
        m(lambda: p3.models.load_encoder("no/such/file.pt"), VE, "does not exist"),
        m(lambda: p3.models.load_encoder_weights(ConvEncoder(3), {"x": torch.zeros(1)}), VE, "missing"),
        # --- permutation sets
        pe(lambda: p3.permutations.permutation_set(1, 1), VE, "num_cells"),
        pe(lambda: p3.permutations.permutation_set(9, 10**6), VE, "count must be <= num_cells!"),
        pe(lambda: p3.permutations.permutation_set(21, 10**9), VE, "at most"),
        pe(lambda: p3.permutations.permutation_set(64, 5000), VE, "feasible: count <="),
        pe(lambda: p3.permutations.permutation_set(9, 10, method="best"), VE, "method"),
        pe(lambda: p3.permutations.permutation_set(9, 10, seed=-1), VE, "seed"),
        pe(lambda: p3.permutations.permutation_set(9, 2.5), TE, "count"),
        pe(lambda: p3.permutations.load_permutation_set(Path(__file__)), VE, "test_bad_inputs.py"),
        pe(lambda: p3.permutations.hamming_stats(torch.zeros(1, 3)), VE, "perms must have shape"),
        # --- data
        d(lambda: p3.data.VolumeFolder("/no/such/folder"), VE, "does not exist"),
        d(lambda: p3.data.Task07Pancreas("/no/such/folder"), VE, "does not exist"),
        d(lambda: CTPreprocessing(window=(NAN, 215.0)), VE, "window"),
        d(lambda: CTPreprocessing(spacing=(0.0, 0.0, 0.0)), VE, "spacing"),
        d(lambda: CTPreprocessing(interpolation="nearest"), VE, "interpolation"),
        d(lambda: CTPreprocessing(crop=(0, 1, 1)), VE, "crop"),
        d(lambda: CTPreprocessing(dtype="int8"), VE, "dtype"),
        d(lambda: CTPreprocessing()(np.zeros((4, 4, 4)), (1.0, 1.0)), VE, "spacing must be three"),
        d(lambda: FundusPreprocessing(size=4), VE, "size"),
        d(lambda: FundusPreprocessing(method="crop"), VE, "method"),
        d(lambda: DataSpec(count=0), VE, "data.count"),
        d(lambda: DataSpec(seed=-1), VE, "data.seed"),
        d(lambda: p3.data.read_volume(Path(__file__).with_suffix(".npy")), VE, "test_bad_inputs.npy"),
        # --- fine-tuning
        f(lambda: TrainConfig(lr=0), VE, "lr"),
        f(lambda: TrainConfig(lr=INF), VE, "lr"),
        f(lambda: TrainConfig(lr=NAN), VE, "lr"),
        f(lambda: TrainConfig(epochs=0), VE, "epochs"),
        f(lambda: TrainConfig(grad_clip=-1.0), VE, "grad_clip"),
        f(lambda: TrainConfig(grad_clip=0.0), VE, "grad_clip"),
        f(lambda: TrainConfig(early_stopping_patience=0), VE, "early_stopping_patience"),
        f(lambda: TrainConfig(early_stopping_patience=-1), VE, "early_stopping_patience"),
        f(lambda: TrainConfig(min_epochs=5, epochs=2), VE, "min_epochs"),
        f(lambda: TrainConfig(freeze_encoder_epochs=5, epochs=2), VE, "freeze_encoder_epochs"),
        f(lambda: TrainConfig(optimizer="sgd"), VE, "optimizer"),
        f(lambda: TrainConfig(precision="fp8"), VE, "precision"),
        f(lambda: TrainConfig(weight_decay=-1.0), VE, "weight_decay"),
        f(lambda: TrainConfig(batch_size=2.5), TE, "batch_size"),
        f(lambda: Trainer(nn.Linear(2, 2), nn.MSELoss(), lambda g: (0, 0), TrainConfig(), device="cuda"), VE, "cuda"),
        f(lambda: Trainer(nn.Linear(2, 2), nn.MSELoss(), lambda g: (0, 0), TrainConfig(), device="gpu0"), VE, "device"),
        f(lambda: Trainer(nn.Linear(2, 2), nn.MSELoss(), lambda g: (0, 0), TrainConfig(), encoder=nn.Linear(1, 1)), VE, "encoder must be a submodule"),
        # --- experiments
        e(lambda: ex.DataEfficiencyConfig(fractions=()), VE, "fractions"),
        e(lambda: ex.DataEfficiencyConfig(fractions=(0.0,)), VE, "fractions"),
        e(lambda: ex.DataEfficiencyConfig(fractions=(1.5,)), VE, "fractions"),
        e(lambda: ex.DataEfficiencyConfig(fractions=(0.1, 0.1)), VE, "fractions"),
        e(lambda: ex.DataEfficiencyConfig(fractions=(0.1, 0.1000001)), VE, "fractions"),
        e(lambda: ex.DataEfficiencyConfig(split_seeds=()), VE, "split_seeds"),
        e(lambda: ex.DataEfficiencyConfig(split_seeds=(-1,)), VE, "split_seeds"),
        e(lambda: ex.DataEfficiencyConfig(repetitions=0), VE, "repetitions"),
        e(lambda: ex.DataEfficiencyConfig(baseline_train=TrainConfig(freeze_encoder_epochs=1)), VE, "baseline_train"),
        e(lambda: ex.SegmentationRecipe(crop=10), VE, "crop must be a multiple"),
        e(lambda: ex.SegmentationRecipe(dice_weight=-1.0), VE, "dice_weight"),
        e(lambda: ex.SegmentationRecipe(dice_weight=0.0, ce_weight=0.0), VE, "both be 0"),
        e(lambda: ex.SegmentationRecipe(class_weights=(1.0,)), VE, "class_weights"),
        e(lambda: ex.GradingRecipe(encoding="softmax"), VE, "encoding"),
        e(lambda: ex.run_data_efficiency(tiny_seg, images, labels, {"s": None}, ex.DataEfficiencyConfig(), ""), VE, "output_dir"),
        e(lambda: ex.run_data_efficiency(tiny_seg, images, labels, {}, ex.DataEfficiencyConfig(), "/nonexistent/p3"), VE, "methods"),
        e(lambda: ex.run_data_efficiency(tiny_seg, images, labels, {"a__b": None}, ex.DataEfficiencyConfig(), "/nonexistent/p3"), VE, "method names"),
        e(lambda: ex.run_data_efficiency(tiny_seg, images, labels[:3], {"s": None}, ex.DataEfficiencyConfig(), "/nonexistent/p3"), VE, "same length"),
        e(lambda: ex.run_data_efficiency(tiny_seg, images, labels, {"s": "no/file.pt"}, ex.DataEfficiencyConfig(), "/nonexistent/p3"), VE, "does not exist"),
        # --- configs and the CLI
        c(lambda: from_mapping(Pretraining, {"pretrain": {"stpes": 3}}), ConfigError, "did you mean 'steps'"),
        c(lambda: from_mapping(Pretraining, {"pretrain": {"steps": "3"}}), ConfigError, "steps must be an integer"),
        c(lambda: from_mapping(Pretraining, {"pretrain": {"steps": 0}}), ConfigError, "steps"),
        c(lambda: from_mapping(Pretraining, {"held_out": -1}), ConfigError, "held_out"),
        c(lambda: from_mapping(Pretraining, {"pretrain": {"lr": INF}}), ConfigError, "lr"),
        c(lambda: from_mapping(Pretraining, {"output": ""}), ConfigError, "output"),
        c(lambda: from_mapping(Pretraining, {"task": "rotaton"}), ConfigError, "did you mean 'rotation'"),
        c(lambda: from_mapping(Pretraining, {"encoder": "resnet"}), ConfigError, "unknown encoder 'resnet'"),
        c(lambda: from_mapping(Pretraining, {"data": {"kind": "mri"}}), ConfigError, "data.kind"),
        c(lambda: from_mapping(DataEfficiency, {"methods": {}}), ConfigError, "methods"),
        c(lambda: from_mapping(DataEfficiency, {"output_dir": ""}), ConfigError, "output_dir"),
        c(lambda: from_mapping(DataEfficiency, {"device": "gpu"}), ConfigError, "device"),
        c(lambda: from_mapping(DataEfficiency, {"experiment": {"fractions": [2.0]}}), ConfigError, "fractions"),
        c(lambda: from_mapping(DataEfficiency, {"experiment": {"train": {"grad_clip": -1.0}}}), ConfigError, "grad_clip"),
        c(lambda: from_mapping(Finetuning, {"fraction": 0.0}), ConfigError, "fraction"),
        c(lambda: from_mapping(Finetuning, {"device": "tpu"}), ConfigError, "device"),
        c(lambda: p3.config.load_toml("/no/such.toml"), ConfigError, "cannot read config file"),
        c(lambda: p3.config.parse_override("train.lr"), ConfigError, "KEY=VALUE"),
    ]  # fmt: skip


def probes_round_two(tmp: Path) -> list[Probe]:
    """Issue 26's probes of the code added since the first round (and new ones in its spirit)."""

    def task(area: str) -> Callable[..., Probe]:
        return lambda call, error, names: Probe(area, call, error, names)

    t, f, m, pe, d, e, en = (
        task("tasks"), task("finetune"), task("models"), task("permutations"), task("data"),
        task("experiments"), task("engine"),
    )  # fmt: skip
    VE, TE = ValueError, TypeError
    net = nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 16, 16, 16)
    nan = x.clone()
    nan[0, 0, 3, 3, 3] = NAN
    swi = p3.finetune.sliding_window_inference
    np.savez(tmp / "perms.npz", a=np.arange(8).reshape(2, 4))
    p3.models.save_encoder(UNetEncoder(3, widths=(8, 16, 32)), tmp / "narrow.pt")
    (tmp / "repro.toml").write_text("[tasks.rotation]\n")
    (tmp / "scans").mkdir(exist_ok=True)
    np.save(tmp / "scans" / "a.npy", np.zeros((4, 4, 4), np.float32))
    seg_labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    seg_labels[0, 2, 2, 2] = 2
    return [
        t(lambda: Jigsaw(3, num_permutations=1), VE, "num_permutations must be an int >= 2"),
        t(lambda: Exemplar(3).accuracy(torch.randn(8, 16), torch.arange(6)), VE, "same length, got 8 and 6"),
        t(lambda: CPC(3, grid=3, patch=8).loss(torch.randn(2, 2, 1, 2, 3, 16), None), VE, r"this CPC head's \(2, 'B', 1, 2, 3, 3, 'D'\)"),
        t(lambda: CPC(2, grid=3, patch=4).accuracy(torch.randn(2, 2, 1, 2, 3), None), VE, "this CPC head's"),
        f(lambda: swi(net, nan, 8), VE, "images hold 1 NaN or infinite values"),
        f(lambda: swi(net, x, 16.0), VE, r"window must be an int >= 1 or 3 of them .*got 16.0"),
        f(lambda: swi(net, x, True), VE, "window must be an int >= 1"),
        f(lambda: swi(net, x, (8, 8)), VE, "window must be an int >= 1 or 3 of them"),
        f(lambda: swi(net, x, 8, device="cuda:7" if torch.cuda.is_available() else "cuda"), VE, "device 'cuda(:7)?' is not available"),
        f(lambda: swi(nn.Conv3d(1, 2, 2, stride=2), x, 8), VE, r"logits \(4, 'K', 8, 8, 8\) of the same size, got \(4, 2, 4, 4, 4\)"),
        f(lambda: swi(lambda c: (net(c), net(c)), x, 8), TE, "model must return one logits tensor .* got tuple"),
        f(lambda: swi(lambda c: net(c).transpose(0, 1), x, 8, batch_size=2), VE, "moves the batch axis"),
        pe(lambda: p3.permutations.load_permutation_set(tmp / "perms.npz"), VE, r"perms.npz' is an .npz archive"),
        d(lambda: p3.data.VolumeFolder(tmp / "scans", preprocessing="ct"), TE, "preprocessing must be a CTPreprocessing"),
        d(lambda: p3.data.FundusFolder(tmp, preprocessing="fundus"), TE, "preprocessing must be a FundusPreprocessing"),
        d(lambda: p3.data.write_aptos_phantom(tmp / "aptos", label_noise=1.5), VE, r"label_noise must lie in \[0, 1\]"),
        d(lambda: p3.data.fundus_phantom(0, label_noise=-0.1), VE, "label_noise"),
        m(lambda: p3.models.MultiScaleUNet(UNetEncoder(3, widths=(4, 8)), out_channels=2, spatial_dims=2, in_channels=1), VE, "pass spatial_dims=3, in_channels=1"),
        m(lambda: p3.models.MultiScaleUNet(UNetEncoder(3, widths=(4, 8)), out_channels=2, spatial_dims=3, in_channels=3), VE, "first convolution is a Conv3d taking 1 channel"),
        m(lambda: p3.models.load_encoder_weights(UNetEncoder(3, widths=(16, 32, 64)), tmp / "narrow.pt"), VE, r"do not fit UNetEncoder's widths: \d+ tensors differ"),
        e(lambda: ex.SegmentationRecipe(widths=(16, 32, 64)).check_encoder(1, tmp / "narrow.pt"), VE, "narrow.pt' does not fit SegmentationRecipe's model"),
        e(lambda: ex.SegmentationRecipe(num_classes=2).check_labels(seg_labels), VE, r"labels hold classes 0..2, but SegmentationRecipe has num_classes=2 \(\[segmentation\] num_classes"),
        e(lambda: ex.GradingRecipe(num_classes=3).check_labels(torch.tensor([0, 4])), VE, r"\[grading\] num_classes"),
        e(lambda: ex.load_reproduction(tmp / "repro.toml", "pretrain.steps=3"), TE, "overrides must be a list of 'KEY=VALUE' strings"),
        e(lambda: ex.run_reproduction({"name": "x"}), TE, "config must be a Reproduction"),  # type: ignore[arg-type]
        e(lambda: ex.held_out_block(ex.Reproduction(experiment=ex.DataEfficiencyConfig(split_seeds=(0, 5))), offset=5), VE, "must not share a split seed"),
        en(lambda: p3.engine.read_metrics(_damaged_log(tmp)), VE, r"line 1 is not a JSON row"),
    ]  # fmt: skip


def _damaged_log(tmp: Path) -> Path:
    path = tmp / "damaged.jsonl"
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 0.5}\n')  # damage before the last line
    return path


def classify(probe: Probe) -> str:
    """``"clear"``, ``"unclear"`` or ``"silent"`` (see the module docstring)."""
    try:
        probe.call()
    except probe.error as err:
        return "clear" if re.search(probe.names, str(err)) else "unclear"
    except Exception:
        return "unclear"
    return "silent"


PROBES = probes()
ROUND_TWO = Path(tempfile.mkdtemp(prefix="pretext3d-probes-"))  # the probes' small files
atexit.register(shutil.rmtree, ROUND_TWO, ignore_errors=True)
PROBES += probes_round_two(ROUND_TWO)


@pytest.mark.parametrize("index", range(len(PROBES)), ids=[f"{p.area}-{i}" for i, p in enumerate(PROBES)])
def test_every_bad_input_gets_a_clear_error(index: int) -> None:
    probe = PROBES[index]
    try:
        probe.call()
    except probe.error as err:
        assert re.search(probe.names, str(err)), f"unclear message: {err}"
        return
    pytest.fail(f"no {probe.error} raised: a silent result")


# --- property-based: a wide space of malformed input, never a crash other than the clear kinds

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=6)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool])


@given(
    shape=shapes,
    dtype=dtypes,
    which=st.sampled_from(["rotation", "jigsaw", "rpl", "exemplar", "cpc"]),
    d=st.sampled_from([2, 3]),
)
def test_tasks_on_any_tensor_either_work_or_say_what_is_wrong(
    shape: list[int], dtype: torch.dtype, which: str, d: int
) -> None:
    make = {
        "rotation": lambda: Rotation(d),
        "jigsaw": lambda: Jigsaw(d, grid=2, num_permutations=4, jitter=1),
        "rpl": lambda: RelativePatchLocation(d, grid=3, jitter=0),
        "exemplar": lambda: Exemplar(d),
        "cpc": lambda: CPC(d, grid=2, patch=2, steps=1),
    }[which]
    x = torch.zeros(shape, dtype=dtype) if shape else torch.tensor(0.0).to(dtype)
    try:
        views, _ = make()(x, 0)
    except (ValueError, TypeError) as err:
        assert re.search(r"\bx\b|x's", str(err)), str(err)
        return
    assert views.dtype == dtype and views.shape[0] >= 1 and x.dim() == d + 2


@given(
    lr=st.floats(allow_nan=True, allow_infinity=True),
    grad_clip=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    epochs=st.integers(-3, 5),
    patience=st.one_of(st.none(), st.integers(-3, 5)),
)
def test_train_config_accepts_only_trainable_values(
    lr: float, grad_clip: float | None, epochs: int, patience: int | None
) -> None:
    try:
        config = TrainConfig(lr=lr, grad_clip=grad_clip, epochs=epochs, early_stopping_patience=patience)
    except ValueError as err:
        assert re.search(
            r"\b(lr|grad_clip|epochs|early_stopping_patience|min_epochs|freeze_encoder_epochs)\b", str(err)
        )
        return
    assert math.isfinite(config.lr) and config.lr > 0 and config.epochs >= 1
    assert config.grad_clip is None or (math.isfinite(config.grad_clip) and config.grad_clip > 0)
    assert config.early_stopping_patience is None or config.early_stopping_patience >= 1


@given(num_cells=st.integers(-1, 40), count=st.integers(-1, 400))
def test_permutation_sets_are_valid_or_refused(num_cells: int, count: int) -> None:
    try:
        perms = p3.permutations.permutation_set(num_cells, count)
    except ValueError as err:
        assert re.search(r"num_cells|count", str(err))
        return
    assert perms.shape == (count, num_cells)
    assert torch.equal(perms.sort(1).values, torch.arange(num_cells).expand(count, -1))
    assert len(torch.unique(perms, dim=0)) == count


if __name__ == "__main__":
    table: Counter[tuple[str, str]] = Counter()
    for p in PROBES:
        table[p.area, classify(p)] += 1
    print("| area | tried | clear | unclear | silent |\n|---|---|---|---|---|")
    for area in dict.fromkeys(p.area for p in PROBES):
        counts = [table[area, k] for k in ("clear", "unclear", "silent")]
        print(f"| {area} | {sum(counts)} | {' | '.join(map(str, counts))} |")
    total = [sum(table[a, k] for a in {p.area for p in PROBES}) for k in ("clear", "unclear", "silent")]
    print(f"| all | {sum(total)} | {' | '.join(map(str, total))} |")
    sys.exit(0)
