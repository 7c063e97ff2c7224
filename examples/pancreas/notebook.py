# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Pancreas tumour segmentation: does pretext pretraining help when labels are scarce?
#
# A reproduction of Figure 3 of Taleb et al., "3D Self-Supervised Methods for Medical Imaging"
# (NeurIPS 2020): a 3D U-Net's encoder is pretrained on unlabelled CT by each of the paper's five
# pretext tasks (rotation, jigsaw, relative patch location, exemplar, CPC) and two modern baselines
# (Models Genesis's restoration, masked image modelling), then the whole U-Net is fine-tuned
# to segment the pancreas and its tumour on 5-100 % of the labelled cases, against the same U-Net
# trained from scratch.
#
# **In its `quick` and `demo` modes this notebook runs on the library's SYNTHETIC CT phantoms.**
# They exist to exercise every step on a laptop; their numbers say nothing about real scans. The
# `paper` mode runs the same steps on MSD Task07 (see `paper.toml` and the README).
#
# Keep this file as the notebook's source: `jupytext --to ipynb notebook.py` makes the `.ipynb`.
# Choose the mode with the environment variable `PRETEXT3D_MODE` (`quick`, `demo`, `paper`).

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import pretext3d as p3
from pretext3d.experiments import load_reproduction, run_reproduction, summary_table
from pretext3d.transforms import random_crops

HERE = Path(__file__).parent if "__file__" in globals() else Path.cwd()  # Jupyter: the notebook's folder
MODE = os.environ.get("PRETEXT3D_MODE", "quick")
# settings changed on top of the mode's config, as `--set` takes them (the tests use this for a
# smaller smoke run)
OVERRIDES = json.loads(os.environ.get("PRETEXT3D_SET", "[]"))
config = load_reproduction(HERE / f"{MODE}.toml", OVERRIDES)
print(config.name)
print(f"labelled: {config.data.kind}, {config.data.count} cases of {config.data.size}^3")
print(f"pretraining pool: {config.pretraining_data.kind}, {config.pretraining_data.count} images")
print(f"tasks: {list(config.tasks)}; fractions {config.experiment.fractions}")
print(f"split seeds {config.experiment.split_seeds}; results in {config.output_dir}")

# %% [markdown]
# ## The data
#
# Each labelled case is a CT volume with a label map (0 background, 1 pancreas, 2 tumour). Below:
# the central slices of four cases along the three axes, then their labels.

# %%
images, labels, case_ids = config.data.labelled()
fig = p3.viz.plot_images(images[:4], case_ids[:4], orthogonal=True)
fig = p3.viz.plot_images(labels[:4, None].float(), [f"label of {c}" for c in case_ids[:4]])

# %% [markdown]
# ## What each pretext task shows the encoder
#
# Every task turns a batch of unlabelled volumes into views and targets on the batch's device.
# Each row is one volume: the input (central slice), then its views. Rotation: the rotated
# volume, target = which of 10 rotations. Jigsaw: the patches in shuffled slot order, target =
# which permutation. RPL: the centre patch and a neighbour, target = where the neighbour lies.
# Exemplar: two augmented views of the same volume (its instance id is the target). CPC: the grid
# of patches whose codes the context must predict.

# %%
pool = config.pretraining_data.unlabelled()
volumes = torch.stack([pool[i] for i in range(2)])
for setting in config.tasks.values():
    task = setting.build(3)
    crop = config.pretrain.crop if setting.crop is None else setting.crop
    shown = random_crops(volumes, (crop,) * 3, generator=0) if crop else volumes
    p3.viz.plot_views(task, shown, generator=0)
    plt.show()

# %% [markdown]
# ## The fair protocol
#
# `run_reproduction` pretrains one encoder per task on the unlabelled pool, then fine-tunes every
# task's encoder and a from-scratch U-Net on each label fraction, for several split seeds. The
# comparison is built so that a gain cannot come from the set-up: the baseline is **never
# frozen** (freezing random features starves it) and gets the **same maximum budget and the same
# early-stopping rule** as the pretrained arms; each split seed fixes its own validation and test
# cases, and within a split seed every method sees the **same labelled subset, initialisation of
# the decoder and batch order**, so the methods differ only in the encoder's starting weights;
# the subsets are nested (5 % ⊂ 10 % ⊂ ...). The pretraining pool is drawn from **other cases**
# than the labelled ones, and the runner refuses an encoder whose record lists a validation or
# test case. Differences are **paired** by split seed, with 95 % intervals and Holm-adjusted
# p-values; every result row carries the data's hash, the encoder's hash, the versions and the
# machine. You can check all of this in `reproduction.json`, `config.json` and `results.csv` of
# the results folder.
#
# Finished encoders and runs are kept: rerunning this cell after an interruption resumes.

# %%
out = run_reproduction(config, progress=False)

# %% [markdown]
# ## Pretraining: did the pretext tasks learn?
#
# Held-out pretext accuracy and training loss per step. A task at chance taught nothing; a task
# solved at once may have found a shortcut (the phantoms' outline, say).

# %%
fig, ax = plt.subplots(figsize=(11, 4))
ax.imshow(plt.imread(out / "pretraining.png"))
ax.axis("off")
plt.show()

# %% [markdown]
# ## The data-efficiency curves, with the paper's numbers beside them
#
# First panel: test Dice of the pancreas region per case (mean ± sd over split seeds; ✗ marks a
# flagged run). Second: each task's paired difference against scratch with its 95 % interval.
# Third: the paper's own metric (voxels pooled over all test cases, mean of background, pancreas
# and tumour Dice; background Dice is near 1, which lifts it) for our runs. Fourth, on axes of its
# own: the numbers read off the paper's Figure 3 (real Task07 CT). On phantoms the two are not
# comparable in value; what can be compared is the shape: does any task beat scratch, and at
# which fractions? With the quick mode's 3 split seeds, no answer here is a verdict
# (docs/results.md says how one is made).

# %%
rows = p3.experiments.read_runs(out)
print(summary_table(rows, "pancreas_dice"))
fig, ax = plt.subplots(figsize=(16, 4))
ax.imshow(plt.imread(out / "data_efficiency.png"))
ax.axis("off")
plt.show()
print((out / "summary.md").read_text().split("## Test metrics")[0])

# %% [markdown]
# ## Reusing a pretrained encoder
#
# Every encoder file records its format, the library version that wrote it, its registered name
# and its constructor arguments, so it can be rebuilt without this notebook, e.g. to fine-tune it
# in your own U-Net.

# %%
first = next(iter(config.tasks))
encoder_file = out / "encoders" / f"{first}_p0.pt"
info = p3.models.encoder_info(encoder_file)
print(info)
encoder = p3.models.load_encoder(encoder_file)
unet = p3.models.UNet.from_encoder(encoder, out_channels=3)
print(f"rebuilt {type(encoder).__name__} ({info['parameters']:,} values) inside a U-Net")
