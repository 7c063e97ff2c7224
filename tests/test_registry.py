"""The registries: one table of tasks and one of encoders, open to users' own."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.registry import ENCODERS, TASKS, Registry


@pytest.fixture
def clean_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    monkeypatch.setattr(ENCODERS, "_entries", dict(ENCODERS._entries))


def test_built_ins_are_registered_under_their_names() -> None:
    assert TASKS.names() == ["cpc", "exemplar", "genesis", "jigsaw", "mim", "rotation", "rpl"]
    assert TASKS.get("rpl") is p3.tasks.RelativePatchLocation
    assert ENCODERS.names() == ["conv", "densenet", "unet"]
    assert ENCODERS.get("unet") is p3.models.UNetEncoder
    assert ENCODERS.name_of(p3.models.DenseNetEncoder) == "densenet"
    assert ENCODERS.name_of(nn.Linear) is None


def test_registry_refuses_duplicates_and_suggests_names() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("a", 1)
    registry.register("a", 1)  # the same object again is fine
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.register("a", 2)
    registry.register("a", 2, overwrite=True)
    assert registry.get("a") == 2 and "a" in registry and len(registry) == 1
    with pytest.raises(KeyError, match=r"unknown thing 'b'.* Registered: a"):
        registry.get("b")
    with pytest.raises(KeyError, match="did you mean 'rotation'"):
        TASKS.get("rotaton")
    for bad in ["", " a", 3]:
        with pytest.raises(ValueError, match="must be a non-empty string"):
            registry.register(bad, 0)  # type: ignore[arg-type]


@pytest.mark.usefixtures("clean_registries")
def test_register_decorators_check_what_they_get() -> None:
    with pytest.raises(TypeError, match="takes a PretextTask subclass"):
        p3.register_task("bad")(nn.Linear)
    with pytest.raises(TypeError, match="takes a class or callable"):
        p3.register_encoder("bad")(3)  # type: ignore[type-var]

    @p3.register_task("rotation2")
    class MyRotation(p3.tasks.Rotation):
        pass

    assert TASKS.get("rotation2") is MyRotation


@pytest.mark.usefixtures("clean_registries")
def test_a_users_encoder_named_in_a_toml_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "my_encoders.py").write_text(
        textwrap.dedent("""
        from torch import nn
        import pretext3d

        @pretext3d.register_encoder("tiny")
        class Tiny(nn.Module):
            def __init__(self, spatial_dims, in_channels=1, width=4):
                super().__init__()
                self.config = {"spatial_dims": spatial_dims, "in_channels": in_channels, "width": width}
                conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
                self.net = nn.Sequential(conv(in_channels, width, 3, padding=1), nn.ReLU())
                self.num_features = width

            def forward(self, x):
                return self.net(x)
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "pretrain.toml"
    encoder = tmp_path / "tiny.pt"
    config.write_text(
        f'plugins = ["my_encoders"]\nencoder = "tiny"\nencoder_options = {{width = 6}}\n'
        f'held_out = 2\noutput = "{encoder}"\n[data]\ncount = 6\nsize = 16\n'
        "[pretrain]\nsteps = 2\nbatch_size = 2\nprogress = false\n"
    )
    assert main(["pretrain", "--config", str(config)]) == 0
    assert p3.models.encoder_name(encoder) == "tiny"
    rebuilt = p3.models.load_encoder(encoder)
    assert type(rebuilt).__name__ == "Tiny" and rebuilt.num_features == 6
    x = torch.randn(1, 1, 8, 8, 8)
    assert rebuilt(x).shape == (1, 6, 8, 8, 8)
    # without the plugin the name is unknown, and the error says how to add it
    config.write_text(config.read_text().replace('plugins = ["my_encoders"]\n', ""))
    monkeypatch.setattr(ENCODERS, "_entries", {k: v for k, v in ENCODERS._entries.items() if k != "tiny"})
    assert main(["pretrain", "--config", str(config)]) == 2
    config.write_text('plugins = ["no_such_module"]\n')
    assert main(["pretrain", "--config", str(config)]) == 2
    # a plugin that cannot be compiled or raises at import: one line naming it, no traceback
    (tmp_path / "broken_syntax.py").write_text("def oops(:\n")
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('no licence server')\n")
    for module, message in [
        ("broken_syntax", r"importing 'broken_syntax' failed: SyntaxError: .*broken_syntax.py, line 1"),
        ("raises_at_import", r"importing 'raises_at_import' failed: RuntimeError: no licence server"),
    ]:
        config.write_text(f'plugins = ["{module}"]\n')
        capsys.readouterr()
        assert main(["pretrain", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err


def test_monai_networks_are_encoders_by_name_and_their_files_rebuild(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from pretext3d.models import encoder_info, load_encoder, save_encoder

    encoder = p3.create_encoder("monai/resnet10", spatial_dims=3, in_channels=1, widen_factor=0.25)
    x = torch.randn(2, 1, 16, 16, 16)
    assert encoder(x).shape == (2, 128)  # pooled features: feed_forward=False, no classifier
    save_encoder(encoder, tmp_path / "resnet.pt")
    assert encoder_info(tmp_path / "resnet.pt")["encoder"] == "monai/resnet10"
    rebuilt = load_encoder(tmp_path / "resnet.pt")
    encoder.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), encoder(x))  # the same network and weights
    assert "monai/resnet10" in p3.registry.ENCODERS and "monai/" not in p3.registry.ENCODERS
    with pytest.raises(ValueError, match=r"MONAI has no network 'resnet1O'; did you mean .*'resnet10'"):
        p3.create_encoder("monai/resnet1O", spatial_dims=3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_monai_networks_that_name_their_arguments_otherwise_are_built_or_refused_clearly(
    spatial_dims: int,
) -> None:
    pytest.importorskip("monai")
    densenet = p3.create_encoder(
        "monai/DenseNet121", spatial_dims=spatial_dims, in_channels=2, out_channels=4
    )
    assert densenet(torch.randn(2, 2, *[32] * spatial_dims)).shape == (2, 4)
    # Quicknat (2D) calls its input channels num_channels: set in the options, checked against the data
    message = r"Quicknat reads 1 channel\(s\), but the data have 3: set its channel argument \(num_channels\)"
    with pytest.raises(ValueError, match=message):
        p3.create_encoder("monai/Quicknat", spatial_dims=2, in_channels=3)
    assert p3.create_encoder("monai/Quicknat", spatial_dims=2, in_channels=3, num_channels=3) is not None
    if spatial_dims == 3:  # HoVerNet takes no spatial_dims: it is 2D
        with pytest.raises(
            ValueError, match=r"HoVerNet is a 2D network here, but the data are 3D \(it takes no"
        ):
            p3.create_encoder("monai/HoVerNet", spatial_dims=3, in_channels=3)


def test_a_foreign_encoder_whose_library_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(
        ValueError, match=r"encoder 'timm/resnet18' needs timm, which is not installed: pip install timm"
    ):
        p3.create_encoder("timm/resnet18", spatial_dims=2, in_channels=3)
    with pytest.raises(ValueError, match="unknown encoder 'tim/resnet18'"):
        p3.create_encoder("tim/resnet18")


def test_a_pretraining_config_names_a_monai_encoder(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from pretext3d.experiments import Pretraining, pretrain_encoder
    from pretext3d.models import load_encoder

    config = Pretraining(
        task="rotation", encoder="monai/resnet10", encoder_options={"widen_factor": 0.25},
        data=p3.data.DataSpec(kind="ct-phantom", count=6, size=16), held_out=2,
        pretrain=p3.PretrainConfig(steps=1, batch_size=2, device="cpu", progress=False, shortcut_check=0),
        output=str(tmp_path / "enc.pt"),
    )  # fmt: skip
    record = pretrain_encoder(config, log=lambda line: None)
    assert record["steps"] == 1 and type(load_encoder(tmp_path / "enc.pt")).__name__ == "ResNet"


@pytest.mark.usefixtures("clean_registries")
def test_plugins_beside_the_config_import_without_pythonpath(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pretext3d.cli import main

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "beside_the_config_plugin.py").write_text(
        "import pretext3d as p3\n"
        "@p3.register_encoder('tiny-from-the-config-folder')\n"
        "def tiny(spatial_dims, in_channels=1):\n"
        "    return p3.models.ConvEncoder(spatial_dims, in_channels, widths=(2, 4))\n"
    )
    (folder / "pretrain.toml").write_text(
        'plugins = ["beside_the_config_plugin"]\ntask = "rotation"\nencoder = "tiny-from-the-config-folder"\n'
        'data = { kind = "ct-phantom", count = 6, size = 16 }\nheld_out = 2\n'
        f'output = "{(tmp_path / "enc.pt").as_posix()}"\n'
        'pretrain = { steps = 1, batch_size = 2, device = "cpu", progress = false, shortcut_check = 0 }\n'
    )
    assert main(["pretrain", "--config", str(folder / "pretrain.toml")]) == 0, capsys.readouterr().err
    assert "tiny-from-the-config-folder" in ENCODERS and (tmp_path / "enc.pt").exists()


class Plain(nn.Module):
    """A user's encoder that keeps no config dict: its options are recorded by create_encoder."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, width: int = 4, **extra: float) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.net = conv(in_channels, width, 3, padding=1)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_plugin_encoder_s_options_round_trip_and_refusals_agree(
    tmp_path: Path, clean_registries: None, spatial_dims: int
) -> None:
    p3.registry.register_encoder("plain")(Plain)
    made = p3.create_encoder("plain", spatial_dims=spatial_dims, in_channels=2, width=8, gain=0.5)
    p3.models.save_encoder(made, tmp_path / "made.pt")
    config = p3.models.encoder_info(tmp_path / "made.pt")["config"]
    assert config == {"spatial_dims": spatial_dims, "in_channels": 2, "width": 8, "gain": 0.5}  # defaults too
    rebuilt = p3.models.load_encoder(tmp_path / "made.pt")
    assert rebuilt.num_features == 8 and torch.equal(rebuilt.net.weight, made.net.weight)
    recipe = p3.experiments.GradingRecipe(backbone="plain", backbone_options={"width": 4, "gain": 0.5})
    with pytest.raises(
        ValueError, match=r"built with options \{.*'width': 8.*\}, but the recipe's backbone_options"
    ):
        recipe.check_encoder(2, tmp_path / "made.pt")  # what was recorded beside what was asked
    # built directly: nothing recorded, and every path says so in the same words
    p3.models.save_encoder(Plain(spatial_dims, 2, 8), tmp_path / "direct.pt")
    for call in (lambda: p3.models.load_encoder(tmp_path / "direct.pt"),
                 lambda: recipe.check_encoder(2, tmp_path / "direct.pt")):  # fmt: skip
        with pytest.raises(
            ValueError, match="holds a 'plain' encoder whose constructor options were not recorded"
        ):
            call()


def test_the_library_s_own_encoder_saved_by_hand_fine_tunes_as_a_backbone(tmp_path: Path) -> None:
    p3.models.save_encoder(p3.models.ConvEncoder(3, 1, (8, 16, 32)), tmp_path / "conv.pt")
    for options in ({"widths": [8, 16, 32]}, {}):
        recipe = p3.experiments.SegmentationRecipe(backbone="conv", backbone_options=options, crop=None)
        recipe.check_encoder(1, tmp_path / "conv.pt")  # the same architecture: accepted
    recipe = p3.experiments.SegmentationRecipe(
        backbone="conv", backbone_options={"widths": [8, 16]}, crop=None
    )
    with pytest.raises(ValueError, match=r"built with options .*'widths': \[8, 16, 32\]"):
        recipe.check_encoder(1, tmp_path / "conv.pt")


@pytest.mark.parametrize(("kind", "family"), [("fundus-phantom", "densenet"), ("ct-phantom", "unet")])
def test_the_default_encoder_follows_the_data_s_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, family: str
) -> None:
    """A pretraining config that names no encoder pretrains what the data's recipe fine-tunes."""
    status = main([
        "pretrain", "--defaults", "--set", f"output={tmp_path / 'enc.pt'}", "--set", "held_out=2",
        "--set", f'data={{kind="{kind}", count=6, size=32}}',
        "--set", "pretrain={steps=1, batch_size=2, device='cpu', progress=false}",
    ])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert (
        p3.models.encoder_name(tmp_path / "enc.pt") == family and "encoders by default" not in out
    )  # no recipe note
    assert (
        tmp_path / "enc.pt.run" / "pretraining.png"
    ).exists() and "its curves to" in out  # drawn, like reproduce
