"""Configs shared by the tests."""

from __future__ import annotations


def tiny_config_data(tmp_path, **overrides) -> dict:
    """A seconds-long digits sweep: 3 VICReg covariance weights, 2 epochs, 8×8 images."""
    data = {
        "name": "tiny",
        "storage_path": str(tmp_path / "sweeps"),
        "seed": 0,
        "data": {"dataset": "digits", "image_size": 8},
        "method": {"name": "vicreg"},
        "model": {"backbone": "small_cnn", "projector": [32, 16]},
        "train": {"epochs": 2, "batch_size": 128, "warmup_epochs": 0},
        "evaluation": {"every_n_epochs": 1, "rankme_samples": 1000, "linear_epochs": 20},
        "search": {
            "algorithm": "grid",
            "space": {"method.params.cov_weight": {"values": [0.0, 1.0, 8.0]}},
            "max_concurrent": 2,
        },
        "selection": {"rule": "plateau", "param": "method.params.cov_weight", "tolerance": 0.05},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def child_runs(config, parent_id: str) -> list:
    """The MLflow child runs of the sweep ``config``'s parent run ``parent_id``, checking that
    the experiment holds exactly that one parent."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent_id]
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
