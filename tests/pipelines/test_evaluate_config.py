"""Task specs and evaluation configs: every shipped file loads, and a wrong one is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from braindino.config import ConfigError, load_config
from pipelines.evaluation.config import EvaluateConfig, load_task

REPO = Path(__file__).resolve().parents[2]
PAPER_TASKS = {"adni", "oasis1", "abide", "brats-sequence", "ucsf-pdgm-idh", "upenn-gbm-survival", "ixi-brain-age",
               "atlas-stroke", "brats-tumour"}


def test_every_shipped_task_and_suite_loads():
    tasks = {path.stem: load_task(path)[0] for path in (REPO / "configs" / "tasks").glob("*.yaml")}
    assert PAPER_TASKS | {"bundled-sequence", "bundled-tissue", "bundled-tumour", "bundled-axial-position"} <= set(tasks)
    assert {t.family for t in tasks.values()} >= {"tumour_segmentation", "neuro_classification", "brain_age", "stroke_time",
                                                  "molecular_status", "sequence_classification", "survival"}
    assert all(name == task.name for name, task in tasks.items())
    for suite in (REPO / "configs" / "evaluate").glob("*.yaml"):
        config = load_config(EvaluateConfig, suite)
        assert config.tasks and all((REPO / path).exists() for path in config.tasks)
    paper = load_config(EvaluateConfig, REPO / "configs" / "evaluate" / "paper.yaml")
    assert {Path(p).stem for p in paper.tasks} == PAPER_TASKS


@pytest.mark.parametrize("change,message", [
    ("family: liver_segmentation", "family 'liver_segmentation' is not one of"),
    ("metric: dice", "metric 'dice' does not fit a classification task"),
    ("target: {source: label}", "a classification task needs target"),
    ("name: ADNI", "must be lower-case"),
])
def test_a_wrong_task_spec_is_refused_naming_the_file_and_the_problem(tmp_path, change, message):
    text = (REPO / "configs" / "tasks" / "adni.yaml").read_text()
    key = change.split(":")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")] + [change]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message) as raised:
        load_task(path)
    assert str(path) in str(raised.value)
