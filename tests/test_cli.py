"""The command line: end to end, disjoint pretraining pools, config errors, example configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.experiments import DataEfficiencyConfig, SegmentationRecipe, run_data_efficiency


@pytest.fixture(scope="module")
def fundus() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, grades = p3.data.fundus_phantom_batch(24, 32, seed=0)
    return images, grades, [f"img{i}" for i in range(24)]


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder = tmp_path / "rotation.pt"
    assert (
        main(
            [
                "pretrain",
                "--defaults",
                "--set",
                "pretrain.steps=4",
                "--set",
                "data.count=12",
                "--set",
                "held_out=4",
                "--set",
                "pretrain.batch_size=2",
                "--set",
                "pretrain.progress=false",
                "--set",
                f'output="{encoder}"',
            ]
        )
        == 0
    )
    record = json.loads(Path(f"{encoder}.json").read_text())
    assert 0 <= record["pretext_accuracy"] <= 1 and record["synthetic"] is True
    config = tmp_path / "de.toml"
    config.write_text(f"""
output_dir = "{tmp_path / "de"}"
[data]
kind = "ct-phantom"
count = 12
[methods]
scratch = ""
rotation = "{encoder}"
[segmentation]
crop = 16
[experiment]
fractions = [0.5, 1.0]
split_seeds = [0]
[experiment.train]
epochs = 1
steps_per_epoch = 1
batch_size = 2
""")
    assert main(["data-efficiency", "--config", str(config)]) == 0
    assert len(list((tmp_path / "de" / "runs").glob("*.json"))) == 4
    assert "SYNTHETIC" in (tmp_path / "de" / "summary.md").read_text()
    assert (
        main(
            [
                "finetune",
                "--defaults",
                "--set",
                "data.count=12",
                "--set",
                "fraction=0.5",
                "--set",
                "train.epochs=1",
                "--set",
                "train.steps_per_epoch=1",
                "--set",
                f'output_dir="{tmp_path / "ft"}"',
                "--set",
                f'encoder="{encoder}"',
                "--set",
                'name="rotation"',
            ]
        )
        == 0
    )
    assert (tmp_path / "ft" / "runs" / "rotation__p0__s0__r0__f0.5.json").exists()
    # finetune runs the one repetition it names (0.1 ran repetitions 0..r)
    args = ["--set", "data.count=12", "--set", "fraction=0.5", "--set", "repetition=1"]
    args += ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=1"]
    assert main(["finetune", "--defaults", *args, "--set", f'output_dir="{tmp_path / "ft1"}"']) == 0
    assert [p.name for p in (tmp_path / "ft1" / "runs").glob("*.json")] == ["run__p0__s0__r1__f0.5.json"]


def test_cli_pretraining_pool_is_disjoint_from_the_labelled_cases(tmp_path: Path) -> None:
    from pretext3d.data import DataSpec

    spec = DataSpec(kind="fundus-phantom", count=6, size=16)
    _, _, labelled = spec.labelled()
    pool = spec.unlabelled().case_ids  # type: ignore[attr-defined]
    assert not set(labelled) & set(pool)
    transductive = DataSpec(kind="fundus-phantom", count=6, size=16, include_labelled=True)
    assert transductive.unlabelled().case_ids == labelled  # type: ignore[attr-defined]
    # an encoder pretrained on the labelled cases is refused by data-efficiency unless transductive
    encoder = tmp_path / "enc.pt"
    args = ["--set", "data.count=12", "--set", "data.include_labelled=true", "--set", "held_out=4"]
    args += ["--set", "pretrain.steps=1", "--set", "pretrain.batch_size=2", "--set", f'output="{encoder}"']
    assert main(["pretrain", "--defaults", *args]) == 0
    assert json.loads(Path(f"{encoder}.json").read_text())["transductive"] is True
    common = ["--set", "data.count=12", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1"]
    common += ["--set", f'encoder="{encoder}"', "--set", f'output_dir="{tmp_path / "ft"}"']
    assert main(["finetune", "--defaults", *common]) == 2
    assert (
        main(
            [
                "finetune",
                "--defaults",
                *common,
                "--set",
                f'output_dir="{tmp_path / "ft2"}"',
                "--set",
                "transductive=true",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["data-efficiency", "--defaults", "--set", "experiment.train.lrr=0.1"],
            "unknown key 'lrr' in [experiment.train]; did you mean 'lr'?",
        ),
        (
            ["pretrain", "--defaults", "--set", "pretrain.stpes=3"],
            "unknown key 'stpes' in [pretrain]; did you mean 'steps'?",
        ),
        (
            ["pretrain", "--defaults", "--set", "task_options.gird=2", "--set", 'task="jigsaw"'],
            "unknown key 'gird' in [task_options] for Jigsaw; did you mean 'grid'?",
        ),
        (
            ["pretrain", "--defaults", "--set", 'task="rotaton"'],
            "unknown task 'rotaton'; did you mean 'rotation'?",
        ),
        (["finetune", "--defaults", "--set", 'train.epochs="ten"'], "train.epochs must be an integer"),
        (
            ["finetune", "--defaults", "--set", "data.include_labelled=true"],
            "data.include_labelled applies to the pretraining",
        ),
        (["pretrain", "--defaults", "--set", "data.count=0"], "data.count must be an int >= 1, got 0"),
    ],
)
def test_cli_config_errors_name_the_key(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_pairing_that_cannot_load_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conv, wide = tmp_path / "conv.pt", tmp_path / "wide.pt"
    p3.models.save_encoder(p3.models.ConvEncoder(3), conv)
    p3.models.save_encoder(p3.models.UNetEncoder(3, widths=(4, 8, 16, 32)), wide)
    for file, message in [
        (conv, "holds a 'conv' encoder, but SegmentationRecipe fine-tunes 'unet' encoders"),
        (wide, "does not fit SegmentationRecipe's model"),
    ]:
        out = tmp_path / f"de_{file.stem}"
        code = main(
            [
                "data-efficiency",
                "--defaults",
                "--set",
                f'methods.rotation="{file}"',
                "--set",
                f'output_dir="{out}"',
            ]
        )
        assert code == 2 and message in capsys.readouterr().err
        assert not out.exists(), "refused before any data were read or any run started"
    # the library path refuses it too, before training
    images, labels, _ = p3.data.DataSpec(count=8, size=16).labelled()
    with pytest.raises(ValueError, match="fine-tunes 'unet' encoders"):
        run_data_efficiency(
            SegmentationRecipe(),
            images,
            labels,
            {"conv": str(conv)},
            DataEfficiencyConfig(),
            tmp_path / "lib",
        )
    # pretraining a conv encoder on CT data says it will not load into the U-Net recipe
    args = [
        "--set",
        'encoder="conv"',
        "--set",
        "pretrain.steps=1",
        "--set",
        "data.count=6",
        "--set",
        "held_out=2",
        "--set",
        "pretrain.batch_size=2",
    ]
    assert main(["pretrain", "--defaults", *args, "--set", f'output="{tmp_path / "c.pt"}"']) == 0
    assert "to fine-tune this 'conv' encoder, set its backbone = 'conv'" in capsys.readouterr().out


def test_cli_pretrains_several_tasks_streaming_from_a_scan_folder(tmp_path: Path) -> None:
    root = p3.data.write_task07_phantom(tmp_path, num_train=0, num_test=6, size=20)
    config = tmp_path / "pretrain.toml"
    config.write_text(f"""
encoder = "unet"
held_out = 2
output = "{tmp_path / "enc.pt"}"
[data]
kind = "volume-folder"
path = "{root / "imagesTs"}"
size = 16
preprocessing = {{ modality = "ct" }}
[[tasks]]
name = "rotation"
[[tasks]]
name = "rpl"
weight = 0.5
options = {{ grid = 3, jitter = 0 }}
[pretrain]
steps = 2
batch_size = 2
device = "cpu"
progress = false
""")
    assert main(["pretrain", "--config", str(config)]) == 0
    record = json.loads((tmp_path / "enc.pt.json").read_text())
    assert record["tasks"] == ["rotation", "rpl"] and record["task_weights"] == [1.0, 0.5]
    assert len(record["pretraining_cases"]) == 6 and record["synthetic"] is False
    assert isinstance(p3.models.load_encoder(tmp_path / "enc.pt"), p3.models.UNetEncoder)
    rows = [json.loads(line) for line in (tmp_path / "enc.pt.run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/rpl" in r for r in rows) and any("held_out_accuracy/rotation" in r for r in rows)
    # rerunning the same command resumes the finished run: nothing is trained again
    assert main(["pretrain", "--config", str(config)]) == 0
    # the same settings into another file give the same weights (the encoder's init follows the seed)
    again = tmp_path / "again.pt"
    assert main(["pretrain", "--config", str(config), "--set", f'output="{again}"']) == 0
    assert p3.provenance.file_sha256(again) == p3.provenance.file_sha256(tmp_path / "enc.pt")


@pytest.mark.parametrize("command", ["pretrain", "finetune", "data-efficiency", "reproduce"])
def test_help_is_plain_text_with_defaults_as_a_valid_toml_config(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomllib

    from pretext3d.cli import COMMANDS, SET_EXAMPLES
    from pretext3d.config import from_mapping, merge_override, parse_override

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Attributes:" in text and f"--set {SET_EXAMPLES[command]}" in text
    assert ">>>" not in text and "References:" not in text  # the API examples stay in the API docs
    assert "``" not in text and ":class:" not in text and "null" not in text  # no markup, no JSON
    cls = COMMANDS[command][0]
    printed = text.split("--set " + SET_EXAMPLES[command] + "):", 1)[1].split("\noptions:")[0]
    defaults = tomllib.loads(printed)
    assert from_mapping(cls, defaults) == cls()  # the printed defaults are a config that gives them
    values: dict[str, object] = {}
    merge_override(values, *parse_override(SET_EXAMPLES[command]))
    from_mapping(cls, values)  # the --set example is valid for this command


def test_no_config_is_refused_unless_the_defaults_are_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain"]) == 2
    assert "no --config given" in capsys.readouterr().err and not (tmp_path / "encoder.pt").exists()
    small = ["--set", "pretrain.steps=1", "--set", "pretrain.batch_size=2", "--set", "held_out=2"]
    small += ["--set", "data.count=6", "--set", "pretrain.device='cpu'", "--set", "pretrain.progress=false"]
    assert main(["pretrain", "--defaults", *small]) == 0 and (tmp_path / "encoder.pt").exists()


def test_each_command_is_a_library_config_and_one_library_function() -> None:
    import pretext3d.experiments as ex
    from pretext3d.cli import COMMANDS

    for name, (config, run) in COMMANDS.items():
        assert config.__module__.startswith("pretext3d.experiments.") and run.__module__.startswith(
            "pretext3d.experiments."
        ), name
        assert (
            getattr(ex, config.__name__) is config and getattr(ex, run.__name__) is run
        )  # public, not CLI-only
    source = (Path(__file__).parent.parent / "src" / "pretext3d" / "cli.py").read_text()
    for logic in ("RunLock", "LOCAL_RANK", "os.environ", "write_report"):  # lives in the library
        assert logic not in source, logic


def test_labels_the_recipe_cannot_hold_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "de"
    overrides = ["--set", "segmentation.num_classes=2", "--set", f'output_dir="{out}"']
    code = main(["data-efficiency", "--defaults", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # a configuration error
    assert "labels hold classes 0..2, but SegmentationRecipe has num_classes=2" in err
    assert not (out / "config.json").exists()


def test_issue_39_ctrl_c_while_the_command_starts_ends_it_quietly() -> None:
    import os
    import subprocess
    import sys

    # a Ctrl-C that lands while torch is imported (the first second or more of every command)
    code = """import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv = ["pretext3d", "--help"]
import _pretext3d_console
_pretext3d_console.console()
"""
    src = str(Path(__file__).parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130 and "interrupted while starting; nothing was run" in done.stderr
