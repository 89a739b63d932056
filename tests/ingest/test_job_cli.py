"""The ingest driver's command line: ``--all`` over a folder of specs, local folders in and out, and the
file itself runnable as a script (what ``ray job submit -- python pipelines/ingestion.py`` runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from datastore.manifest import ManifestStore
from datastore.objectstore import ObjectStoreConfig
from pipelines.ingestion import main

REPO = Path(__file__).resolve().parents[2]


def test_pipelines_ingest_py_runs_as_a_file():
    done = subprocess.run([sys.executable, "pipelines/ingestion.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--all" in done.stdout and "--dataset" in done.stdout


def test_all_ingests_every_spec_of_the_folder_from_local_disk(ray_session, tmp_path, real_file, capsys):
    scans = tmp_path / "raw" / "sub-anat"
    scans.mkdir(parents=True)
    (scans / "anatomical.nii").write_bytes(real_file("nibabel_anatomical").read_bytes())
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "tiny.yaml").write_text(f"name: tiny\nsource: {tmp_path / 'raw'}\nlicence: MIT (nibabel test data)\n")
    output = tmp_path / "out"
    args = [
        "--config", str(REPO / "configs" / "ingest.yaml"), "--all",
        "--set", f"datasets_dir={specs}", "--set", f"ingest.output={output}",
        "--set", "ingest.preprocess.spacing=[2.0, 2.0, 2.0]", "--set", "ingest.preprocess.slice_size=64",
        "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", f"tracking.artifact_root={(tmp_path / 'artifacts').as_uri()}",
    ]
    main([*args, "--dry-run"])
    preview = capsys.readouterr().out
    assert "tiny: 1 listed, 1 new, 0 changed, 0 unchanged" in preview and "new sub-anat/anatomical.nii" in preview
    assert not output.exists() and not (tmp_path / "mlflow.db").exists()
    main(args)
    assert "scans ok 1; quarantined 0" in capsys.readouterr().out

    manifest = ManifestStore(str(output), ObjectStoreConfig()).latest()
    assert manifest.version == 1 and manifest.datasets == {"tiny": {"licence": "MIT (nibabel test data)", "citation": ""}}
    (scan,) = manifest.scans.to_pylist()
    assert scan["source_key"] == "sub-anat/anatomical.nii" and scan["status"] == "ok"
    assert manifest.slices.num_rows == scan["slices_kept"] > 0
    assert list((output / "shards" / manifest.run_id).glob("*.tar"))
    assert (output / "qc" / manifest.run_id / "tiny.png").exists()

    main(["--all", "--set", f"datasets_dir={specs}", "--locate", scan["scan_id"]])
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'raw'}/sub-anat/anatomical.nii"
