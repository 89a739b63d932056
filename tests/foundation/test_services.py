"""The local services answer for real: S3 on loopback, a Ray task, an MLflow run read back."""

import pyarrow.fs as pafs


def test_object_round_trips_through_s3_and_is_listed_by_pyarrow(object_store, bucket):
    client = object_store.boto3_client()
    client.put_object(Bucket=bucket, Key="raw/a/scan.nii", Body=b"\x5c\x01\x00\x00payload")
    assert client.get_object(Bucket=bucket, Key="raw/a/scan.nii")["Body"].read() == b"\x5c\x01\x00\x00payload"

    fs, root = object_store.resolve(f"s3://{bucket}/raw")
    listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    assert [(info.path, info.size) for info in listed if info.is_file] == [(f"{bucket}/raw/a/scan.nii", 11)]


def test_a_ray_task_runs(ray_session):
    @ray_session.remote
    def square(x):
        return x * x

    assert ray_session.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]


def test_mlflow_run_is_logged_and_read_back(mlflow_local):
    import mlflow

    from pipelines.tracking import TrackingConfig, use_experiment

    config = TrackingConfig(mlflow_local.tracking_uri, "foundation", mlflow_local.artifact_root)
    experiment_id = use_experiment(config)
    with mlflow.start_run() as run:
        mlflow.log_param("size", "tiny")
        mlflow.log_metric("loss", 1.5, step=3)
        mlflow.log_text("hello", "notes/readme.txt")

    stored = mlflow.get_run(run.info.run_id)
    assert stored.info.experiment_id == experiment_id
    assert stored.data.params == {"size": "tiny"}
    assert stored.data.metrics == {"loss": 1.5}
    assert stored.info.artifact_uri.startswith(mlflow_local.artifact_root)
    assert mlflow.artifacts.load_text(f"{stored.info.artifact_uri}/notes/readme.txt") == "hello"
    assert use_experiment(config) == experiment_id  # idempotent


def test_bundled_real_mri_lands_in_the_bucket_byte_for_byte(object_store, bucket):
    from infra.local.catalogue import entry
    from infra.local.bundled import scan_files, upload_bundled

    datasets = {"icbm152": ["icbm2009c_t2"], "heudiconv": ["heudiconv_dwi"]}
    written = upload_bundled(object_store, bucket, datasets)

    assert written["icbm152"] == ["raw/icbm152/icbm2009c_t2/mni_icbm152_t2_tal_nlin_sym_09c.nii"]
    dicoms = scan_files(entry("heudiconv_dwi"))
    assert written["heudiconv"] == [f"raw/heudiconv/heudiconv_dwi/{f.name}" for f in dicoms]
    body = object_store.boto3_client().get_object(Bucket=bucket, Key=written["heudiconv"][0])["Body"].read()
    assert body == dicoms[0].read_bytes()
