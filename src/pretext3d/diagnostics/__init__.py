"""What a pretext task can be solved from, and what an encoder's frozen features carry.

A rising pretext accuracy is what a shortcut produces too: a jigsaw whose tiles give their
absolute position away by the field-of-view border, or a rotation of a flat crop. Two checks
say more than the pretext loss:

* :func:`shortcut_score`: how well *trivial statistics* of each view (block means and standard
  deviations per channel, which carry borders, vignetting, colour casts and outlines) predict
  the task's targets, beside chance. A task whose targets follow from them can be solved
  without learning anatomy.
* :class:`FeatureProbe`: a linear (or k-NN) probe on an encoder's frozen features over a
  small labelled set, for classification (pooled features) or segmentation (a linear
  patch probe on the feature map); run on the randomly initialised encoder it gives the
  reference any pretraining has to beat. The :class:`~pretext3d.pretrainer.Pretrainer`
  and the Lightning module run it every few steps; any loop can call it.

Neither needs a new dependency: the classifiers are logistic regressions fitted in torch. The
package holds the shortcut scores (:mod:`~pretext3d.diagnostics.shortcuts`), the probe
(:mod:`~pretext3d.diagnostics.probe`) and the statistics they share
(:mod:`~pretext3d.diagnostics.stats`: :func:`fit_logistic`, :func:`wilson_interval`,
:func:`chance_level`, :func:`pretext_warning`).
"""

from pretext3d.diagnostics.probe import FeatureProbe
from pretext3d.diagnostics.shortcuts import DENSE_SHORTCUT, ShortcutReport, shortcut_score
from pretext3d.diagnostics.stats import (
    MIN_HELD_OUT,
    chance_level,
    fit_logistic,
    pretext_warning,
    view_statistics,
    wilson_interval,
)

__all__ = [
    "DENSE_SHORTCUT",
    "MIN_HELD_OUT",
    "FeatureProbe",
    "ShortcutReport",
    "chance_level",
    "fit_logistic",
    "pretext_warning",
    "shortcut_score",
    "view_statistics",
    "wilson_interval",
]
