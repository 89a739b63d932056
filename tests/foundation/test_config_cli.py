"""Typed configs fail loudly with the file and key; the CLI lists its commands."""

import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from braindino.config import REDACTED, ConfigError, flatten, load_config, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Job:
    name: str
    optim: Optim = field(default_factory=Optim)
    crops: list[int] = field(default_factory=lambda: [224, 96])


def test_yaml_and_overrides_build_the_typed_tree(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: run-1\noptim:\n  lr: 2\n")
    config = load_config(Job, path, ["optim.betas=[0.8, 0.9]", "crops=[256]"])
    assert config == Job("run-1", Optim(2.0, (0.8, 0.9)), [256])
    assert flatten(to_dict(config))["optim.lr"] == 2.0


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("name: x\noptim:\n  lr_max: 1\n", [], "unknown key 'optim.lr_max'"),
        ("optim: {}\n", [], "missing required key 'name'"),
        ("name: x\noptim:\n  lr: fast\n", [], "optim.lr must be float"),
        ("name: x\n", ["optim.betas=[1]"], "optim.betas must have 2 items"),
        ("- a\n", [], "top level must be a mapping"),
    ],
)
def test_bad_config_names_the_file_and_key(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(Job, path, overrides)
    assert message in str(err.value) and str(path) in str(err.value)


def test_cli_help_lists_commands_and_rejects_bad_keys():
    exe = Path(sys.executable).parent / "braindino"
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in help_text
    bad = subprocess.run([exe, "demo", "--set", "bucket_name=x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown key 'bucket_name'" in bad.stderr


def test_print_config_gives_yaml_that_loads_back_with_the_credentials_redacted(tmp_path):
    from pipelines.train.config import PretrainConfig

    exe = Path(sys.executable).parent / "braindino"
    config_file = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny-cpu.yaml"
    overrides = ["model.vit.size=small", "data.store.access_key=AKIA-TEST", "data.store.secret_key=s3cr3t-value"]
    done = subprocess.run([exe, "pretrain", "--config", config_file, *(f"--set={o}" for o in overrides), "--print-config"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "s3cr3t-value" not in done.stdout and "AKIA-TEST" not in done.stdout
    printed = tmp_path / "printed.yaml"
    printed.write_text(done.stdout)
    expected = load_config(PretrainConfig, config_file, overrides)
    loaded = load_config(PretrainConfig, printed)
    assert loaded.data.store.secret_key == loaded.data.store.access_key == REDACTED
    assert replace(loaded, data=replace(loaded.data, store=expected.data.store)) == expected
    assert loaded.model.vit.embed_dim == 384
    assert "s3cr3t-value" not in repr(expected) and "AKIA-TEST" not in repr(expected)  # nor in logs and tracebacks


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_pretraining_config_loads_with_two_stages(path):
    """A shipped config that the typed tree no longer accepts fails here, not hours into a cluster job."""
    from pipelines.train.config import PretrainConfig

    config = load_config(PretrainConfig, path)
    assert config.stage1.iterations > 0 and config.stage2.iterations > 0
    assert config.name == path.stem
