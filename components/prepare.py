"""The ``prepare`` component: materialise a dataset's splits once, into the artifact store.

Runs ``nasagent.training.prepared.prepare_dataset``: loads the dataset (downloading it if it is a
torchvision one, hence the trainer image), makes the stratified, seeded validation split and the
test split, and stores them as one ``.npz`` under ``datasets/<name>/`` of the artifact store.
Its output ``spec`` (``prepared:URL``) is the dataset every later step and every trial pod
loads, so the data are fetched from the internet once and split once.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def prepare(dataset: str, val_size: float, seed: int, bucket: str, s3_endpoint: str, prepared: Output[Dataset]) -> str:
    """Split ``dataset`` once and store it; returns the ``prepared:URL`` spec to search with.

    Args:
        dataset: digits | npz:s3://BUCKET/KEY.npz | mnist | fashion_mnist | cifar10 | svhn.
        val_size: Validation split: a count, a fraction, or 0 for min(5000, 20% of the training data).
        seed: Seed of the validation split.
        bucket: Artifact store: "" for s3://mlpipeline/private/<namespace>/nasagent, a bucket name, or a URL
            (s3://..., file:///... locally).
        s3_endpoint: S3 endpoint of the artifact store ("" keeps $NASAGENT_S3_ENDPOINT).
        prepared: Where and how large the splits are (JSON); the data themselves stay in the artifact store.
    """
    from pathlib import Path

    from nasagent import kubeflow
    from nasagent.persistence.artifacts import open_artifacts
    from nasagent.persistence.embedded import nasagent_home
    from nasagent.training.prepared import prepare_dataset, val_size_value

    kubeflow.use_s3_endpoint(s3_endpoint)
    store = open_artifacts(kubeflow.artifacts_url(bucket))
    result = prepare_dataset(dataset, store, nasagent_home() / "data", val_size=val_size_value(val_size), seed=seed)
    print(f"{result.name}: {result.sizes} {'stored at' if result.uploaded else 'already at'} {result.url}", flush=True)
    kubeflow.write_json(Path(prepared.path), result.to_json())
    prepared.metadata.update(
        {"spec": result.spec, "url": result.url, **{f"{k}_size": v for k, v in result.sizes.items()}}
    )
    return result.spec
