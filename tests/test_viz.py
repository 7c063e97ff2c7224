"""Pictures of images and views: one row per image, the input then every view, for every task."""

from __future__ import annotations

import matplotlib
import pytest
import torch

import pretext3d as p3
from pretext3d.registry import TASKS

matplotlib.use("Agg")
SMALL = {
    "jigsaw": {"grid": 2, "num_permutations": 4, "jitter": 1},
    "rpl": {"grid": 3, "jitter": 1},
    "cpc": {"grid": 3, "patch": 8},
    "mim": {"patch": 4},
}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", TASKS.names())
def test_plot_views_shows_the_input_and_every_view(name: str, spatial_dims: int) -> None:
    import matplotlib.pyplot as plt

    task = TASKS.get(name)(spatial_dims, **SMALL.get(name, {}))
    images = torch.rand(2, 1, *([24] * spatial_dims))
    state = {k: v.clone() for k, v in task.state_dict().items()}
    views, _ = task(images, 0)
    task.load_state_dict(state)
    per_image = views.shape[1] if views.ndim == images.ndim + 1 else len(views) // 2
    if isinstance(task, p3.tasks.DenseTask):
        per_image = 2  # the view and the target it restores
    fig = p3.viz.plot_views(task, images, generator=0, max_views=9)
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    assert (rows, cols) == (2, 1 + min(per_image, 9))
    assert fig.axes[0].get_title() == "input"
    assert all(torch.equal(v, state[k]) for k, v in task.state_dict().items())  # the task is unchanged
    if name in ("rotation", "jigsaw", "rpl"):  # a class target is shown with the first view
        assert "target" in fig.axes[1].get_title()
    if isinstance(task, p3.tasks.DenseTask):
        assert fig.axes[1].get_title() == "view" and fig.axes[2].get_title().startswith("target")
    plt.close(fig)


def test_image_slice_shows_the_centre_or_colour() -> None:
    volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    assert torch.equal(p3.viz.image_slice(volume), volume[0, 2])
    assert torch.equal(p3.viz.image_slice(volume, axis=2), volume[0, :, :, 3])
    rgb = p3.viz.image_slice(torch.rand(3, 8, 9) * 5 - 2)
    assert rgb.shape == (8, 9, 3) and rgb.min() == 0 and rgb.max() == 1
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\) or \(C, D, H, W\)"):
        p3.viz.image_slice(torch.zeros(8, 8))


def test_plot_images_draws_orthogonal_slices_of_volumes() -> None:
    import matplotlib.pyplot as plt

    fig = p3.viz.plot_images(torch.rand(3, 1, 8, 8, 8), ["a", "b", "c"], orthogonal=True)
    assert len(fig.axes) == 9 and [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    plt.close(fig)


def test_plot_views_keeps_its_titles_clear_of_the_images_above(spatial_dims: int) -> None:
    images = (
        p3.data.ct_phantom_batch(2, size=36)[0]
        if spatial_dims == 3
        else p3.data.fundus_phantom_batch(2, 36)[0]
    )
    task = p3.tasks.Jigsaw(spatial_dims, grid=3, num_permutations=24, jitter=2)
    figure = p3.viz.plot_views(task, images, max_views=4)
    figure.suptitle("a long title set afterwards, as the documentation's figures do\nover two lines")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    first, second = figure.axes[1], figure.axes[6]  # the same column, rows 1 and 2
    title = second.title.get_window_extent(renderer)
    assert (
        title.y0 >= first.get_window_extent(renderer).y1 or title.y1 <= first.get_window_extent(renderer).y0
    )
    assert not title.overlaps(first.get_window_extent(renderer))
    top = figure._suptitle.get_window_extent(renderer)  # type: ignore[union-attr]
    assert not top.overlaps(first.title.get_window_extent(renderer))  # the suptitle has its room
