"""The cluster manifests parse and point at jobs and configs that exist in this repository."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "infra" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_and_names_real_scripts_and_configs(manifest):
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert documents and all({"apiVersion", "kind", "metadata"} <= set(d) for d in documents)
    text = manifest.read_text()
    for path in re.findall(r"\b((?:pipelines|configs)/[\w./-]+\.(?:py|yaml))", text):
        assert (ROOT / path).is_file(), f"{manifest.name} names {path}, which does not exist"


def test_the_image_installs_against_the_same_constraints_as_ci():
    dockerfile = (ROOT / "infra" / "image" / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile and "torch==2.13.0" in dockerfile
