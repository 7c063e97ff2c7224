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
# # Diabetic-retinopathy grading: does pretext pretraining help when labels are scarce?
#
# A reproduction of Figure 4 of Taleb et al., "3D Self-Supervised Methods for Medical Imaging"
# (NeurIPS 2020), the 2D experiment: a DenseNet's encoder is pretrained on unlabelled fundus
# photographs by each of the paper's five pretext tasks (rotation, jigsaw, relative patch location,
# exemplar, CPC) and two modern baselines (Models Genesis's restoration, masked image modelling),
# then the whole network is fine-tuned to grade diabetic retinopathy (0-4) on 5-100 % of the
# labelled images, against the same DenseNet trained from scratch.
#
# **In its `quick` and `demo` modes this notebook runs on the library's SYNTHETIC fundus
# phantoms.** They exist to exercise every step on a laptop; their numbers say nothing about real
# photographs. The `paper` mode runs the same steps on APTOS 2019 at 224 px with DenseNet-121
# (see `paper.toml` and the README).
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
print(f"labelled: {config.data.kind}, {config.data.count} images of {config.data.size} px")
print(f"pretraining pool: {config.pretraining_data.kind}, {config.pretraining_data.count} images")
print(f"tasks: {list(config.tasks)}; fractions {config.experiment.fractions}")
print(f"split seeds {config.experiment.split_seeds}; results in {config.output_dir}")

# %% [markdown]
# ## The data
#
# Each labelled image is an RGB fundus photograph with a grade from 0 (no retinopathy) to 4
# (proliferative). Below: one image of each grade.

# %%
images, labels, case_ids = config.data.labelled()
picked = [int((labels == g).nonzero()[0]) for g in range(5) if (labels == g).any()]
fig = p3.viz.plot_images(images[picked], [f"grade {int(labels[i])}" for i in picked])

# %% [markdown]
# ## What each pretext task shows the encoder
#
# Every task turns a batch of unlabelled images into views and targets on the batch's device.
# Each row is one image: the input, then its views. Rotation: the rotated image, target = which
# of 4 rotations. Jigsaw: the tiles in shuffled slot order, target = which permutation. RPL: the
# centre tile and a neighbour, target = where the neighbour lies. Exemplar: two augmented views
# of the same image (its instance id is the target). CPC: the grid of patches whose codes the
# context must predict.

# %%
pool = config.pretraining_data.unlabelled()
photos = torch.stack([pool[i] for i in range(2)])
for setting in config.tasks.values():
    task = setting.build(2)
    crop = config.pretrain.crop if setting.crop is None else setting.crop
    shown = random_crops(photos, (crop,) * 2, generator=0) if crop else photos
    p3.viz.plot_views(task, shown, generator=0)
    plt.show()

# %% [markdown]
# ## The fair protocol
#
# `run_reproduction` pretrains one encoder per task on the unlabelled pool, then fine-tunes every
# task's encoder and a from-scratch DenseNet on each label fraction, for several split seeds. The
# comparison is built so that a gain cannot come from the set-up: the baseline is **never
# frozen** (freezing random features starves it) and gets the **same maximum budget and the same
# early-stopping rule** as the pretrained arms; each split seed fixes its own validation and test
# images, and within a split seed every method sees the **same labelled subset, initialisation
# of the classifier and batch order**, so the methods differ only in the encoder's starting
# weights; the subsets are nested (5 % ⊂ 10 % ⊂ ...) and stratified by grade. The pretraining
# pool is drawn from **other images** than the labelled ones, and the runner refuses an encoder
# whose record lists a validation or test image. Differences are **paired** by split seed, with
# 95 % intervals and Holm-adjusted p-values; every result row carries the data's hash, the
# encoder's hash, the versions and the machine. You can check all of this in
# `reproduction.json`, `config.json` and `results.csv` of the results folder.
#
# Finished encoders and runs are kept: rerunning this cell after an interruption resumes.

# %%
out = run_reproduction(config, progress=False)

# %% [markdown]
# ## Pretraining: did the pretext tasks learn?
#
# Held-out pretext accuracy and training loss per step. A task at chance taught nothing; a task
# solved at once may have found a shortcut (the bright optic disc gives rotation away, say).

# %%
fig, ax = plt.subplots(figsize=(11, 4))
ax.imshow(plt.imread(out / "pretraining.png"))
ax.axis("off")
plt.show()

# %% [markdown]
# ## The data-efficiency curves, with the paper's numbers beside them
#
# First panel: test quadratic weighted kappa (mean ± sd over split seeds; ✗ marks a flagged run).
# Second: each task's paired difference against scratch with its 95 % interval. Third: the
# paper's metric for our runs. Fourth, on axes of its own: the numbers read off the paper's
# Figure 4 (real APTOS 2019; dashed: pretrained on UK Biobank, dotted: pretrained on APTOS). On
# phantoms the values are not comparable; what can be compared is the shape: does any task beat
# scratch, and at which fractions? With the quick mode's 3 split seeds, no answer here is a verdict
# (docs/results.md says how one is made).

# %%
rows = p3.experiments.read_runs(out)
print(summary_table(rows, "qwk"))
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
# in your own classifier.

# %%
first = next(iter(config.tasks))
encoder_file = out / "encoders" / f"{first}_p0.pt"
info = p3.models.encoder_info(encoder_file)
print(info)
encoder = p3.models.load_encoder(encoder_file)
classifier = p3.models.DenseNet(2, 3, 5, **config.grading.encoder_options())
p3.models.load_encoder_weights(classifier.encoder, encoder_file)
print(f"rebuilt {type(encoder).__name__} ({info['parameters']:,} values); loaded into a DenseNet classifier")
