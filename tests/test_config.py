"""Config loading and validation: every mistake is one ConfigError naming the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from sweeper.config import ConfigError, SweeperConfig, load_config, parse_overrides
from sweeper.storage import redact_credentials, uri_credentials
from sweeper.yamlio import MAX_NODES, read_yaml
from tests.helpers import tiny_config_data

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def base(**sections: object) -> dict:
    data: dict = {"name": "t", "search": {"space": {"method.params.cov_weight": {"values": [0.0, 1.0]}}}}
    data.update(sections)
    return data


def test_quickstart_loads_with_defaults_filled() -> None:
    config = load_config(QUICKSTART)
    assert config.method.name == "vicreg"
    assert config.method.params == {"inv_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0}
    assert config.selection.param == "method.params.cov_weight"
    assert config.search.space["method.params.cov_weight"].values[0] == 0.0


def test_overrides_apply_dotted_keys_as_yaml() -> None:
    config = load_config(QUICKSTART, overrides=["train.epochs=3", "model.projector=[64, 32]", "name=x"])
    assert config.train.epochs == 3
    assert config.model.projector == [64, 32]
    assert config.name == "x"


def test_with_overrides_revalidates() -> None:
    config = load_config(data=base())
    trial = config.with_overrides({"method.params.cov_weight": 4.0})
    assert trial.method.params["cov_weight"] == 4.0
    assert config.method.params["cov_weight"] == 1.0  # the sweep config is untouched
    with pytest.raises(ConfigError, match="cov_weight"):
        config.with_overrides({"method.params.cov_weight": -1.0})


def test_round_trip_through_dict() -> None:
    config = load_config(QUICKSTART)
    assert SweeperConfig.model_validate(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (base(trian={}), r"^trian: unknown key \(did you mean 'train'\?\)$"),
        (base(train={"epoch": 3}), r"^train\.epoch: unknown key \(did you mean 'epochs'\?\)"),
        (base(train={"epochs": "many"}), r"^train\.epochs: .*integer.*'many'"),
        (base(train={"epochs": -1}), r"^train\.epochs: .*greater than 0"),
        (base(method={"name": "mocov9"}), r"^method\.name: .*'mocov9'"),
        (base(method={"params": {"cov": 1.0}}), r"no hyperparameter 'cov'"),
        (base(data={"dataset": "cifar10"}), r"needs a local data root: set data\.root"),
        (base(data={"dataset": "cifar10", "root": "/no/such/dir"}), r"'/no/such/dir' does not exist"),
        (base(model={"backbone": "vgg"}), r"^model\.backbone: "),
        (base(selection={"tolerance": 1.5}), r"^selection\.tolerance: .*less than 1"),
        (base(selection={"param": "train.lr"}), r"'train\.lr' is not searched"),
        (
            base(search={"space": {"method.params.cov_wieght": {"values": [1]}}}),
            r"'cov_wieght' \(did you mean 'cov_weight'\?\)",
        ),
        (base(search={"space": {"train.lr": {"values": []}}}), r"values is empty"),
        (
            base(search={"algorithm": "optuna", "space": {"train.lr": {"low": 0.0, "high": 1.0, "log": True}}}),
            r"log-scale bounds must be > 0",
        ),
        (base(search={"space": {"train.lr": {"low": 1e-4, "high": 1e-2}}}), r"grid algorithm needs values"),
        ({"search": {}}, r"^name: required key is missing"),
        (base(name="bad name/"), r"not a usable sweep name"),
        (base(name="trailing\n"), r"^name: contains the control character '\\n'"),
        (base(method={"params": {"cov_weight": float("inf")}}), r"^method\.params\.cov_weight: .*finite number"),
        (base(method={"params": {"cov_weight": "inf"}}), r"^method\.params\.cov_weight: .*finite number"),
        (base(method={"params": {"cov": 1.0}}), r"^method\.params\.cov: vicreg has no hyperparameter 'cov'"),
        (base(train={"lr": float("nan")}), r"^train\.lr: .*finite number"),
        (base(selection={"rule": "max", "param": "train.lr"}), r"^selection\.param: 'train\.lr' is not searched"),
        (
            base(search={"objective": "label_free/nesum", "space": {"train.lr": {"values": [1e-3]}}}),
            r"^search\.objective: 'label_free/nesum': nesum is not computed: add it to evaluation\.label_free",
        ),
    ],
)
def test_malformed_config_is_one_clear_line(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(data=data)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line") as info:
        load_config(bad)
    assert "\n" not in str(info.value)
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 9\): save the file as UTF-8"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-4", 1e-4),
        ("-2.5E+3", -2500.0),
        ("1.0e-5", 1e-5),
        (".inf", math.inf),
        ("10", 10),
        ("0x1F", 31),
        ("1e", "1e"),
        ("e5", "e5"),
        ("'1e-4'", "1e-4"),
    ],
)
def test_read_yaml_reads_yaml_12_floats(text: str, expected: object) -> None:
    value = read_yaml(text, source="test")
    assert value == expected and type(value) is type(expected)
    assert yaml.safe_load("1e-4") == "1e-4"  # PyYAML's own SafeLoader is left as it was


def test_read_yaml_bounds_alias_expansion() -> None:
    text = "a: &a [1, 2, 3]\nb: [*a, *a, *a]\n"
    assert read_yaml(text, source="t") == {"a": [1, 2, 3], "b": [[1, 2, 3]] * 3}
    width = 10
    bomb = "l0: &l0 [" + ", ".join(["x"] * width) + "]\n"
    bomb += "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]\n" for i in range(1, 6))
    assert MAX_NODES < width**6
    with pytest.raises(ConfigError, match=rf"^bomb: its aliases expand to more than {MAX_NODES} values"):
        read_yaml(bomb, source="bomb")
    just_under = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]\n" for i in range(1, 4))
    assert len(read_yaml("l0: &l0 [" + ", ".join(["x"] * width) + "]\n" + just_under, source="t")["l3"]) == width


@pytest.mark.parametrize(
    ("uri", "found"),
    [
        ("HTTP://alice:pw@host:1/", "a user name and password"),
        ("http://alice:p/w@host:1/", "a user name and password"),
        ("http://alice:p?w#x@host", "a user name and password"),
        ("https://token@host", "a user name or token"),
        ("s3://KEY:SECRET@bucket/x", "a user name and password"),
        ("s3://bucket/x?Secret_Key=s&region=us-east-1", "secret_key"),
        ("postgresql://user:pw@host/db", "a user name and password"),
        ("postgresql://user@host/db?password=pw", "password"),
        ("postgresql://user@host/db", None),
        ("PostgreSQL+psycopg://user@host:5432/db", None),
        ("sqlite:////home/me@lab/mlflow.db", None),
        ("http://127.0.0.1:5000", None),
        ("journal:/x@y", None),
        ("not a uri", None),
    ],
)
def test_uri_credentials_parses_any_spelling(uri: str, found: str | None) -> None:
    assert uri_credentials(uri) == found
    if found is not None:
        assert "***" in redact_credentials(uri)
        assert not any(secret in redact_credentials(uri) for secret in ("pw", "p/w", "SECRET", "token", "=s&"))


def test_parse_overrides_rejects_missing_equals() -> None:
    assert parse_overrides(["a.b=1", "c=[1, 2]", "d=text", "e=1e-3"]) == {"a.b": 1, "c": [1, 2], "d": "text", "e": 1e-3}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match=r"^--set a: value '\[1, 2': not valid YAML at line 1, column 6 \(") as info:
        parse_overrides(["a=[1, 2"])
    assert "\n" not in str(info.value)


def test_suggest_is_define_by_run() -> None:
    optuna = pytest.importorskip("optuna")
    config = load_config(
        data=base(
            search={
                "algorithm": "optuna",
                "space": {
                    "method.params.cov_weight": {"values": [0.0, 1.0]},
                    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                },
            },
            selection={"param": "method.params.cov_weight"},
        )
    )
    fixed = optuna.trial.FixedTrial({"method.params.cov_weight": 1.0, "train.lr": 3e-3})
    assert config.search.suggest(fixed) == {"method.params.cov_weight": 1.0, "train.lr": 3e-3}


@pytest.mark.parametrize(
    "uri", ["s3://bucket/sweeps", "gs://bucket/sweeps", "file:///tmp/sweeps", "s3://b/s?endpoint_override=h:9000"]
)
def test_filesystem_uris_are_accepted_as_storage(tmp_path: Path, uri: str) -> None:
    data = tiny_config_data(tmp_path)
    assert load_config(data={**data, "storage_path": uri}).storage_path == uri


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/sweeps", r"unsupported storage scheme 'ftp'"),
        ("s3:///sweeps", r"names no bucket"),
        ("s3://b/s?access_key=AKIA&secret_key=x", r"carries access_key, secret_key: credentials do not belong"),
    ],
)
def test_bad_storage_uri_is_refused_with_the_fix(tmp_path: Path, uri: str, message: str) -> None:
    data = tiny_config_data(tmp_path)
    with pytest.raises(ConfigError, match=rf"storage_path: .*{message}") as info:
        load_config(data={**data, "storage_path": uri})
    assert "secret_key=x" not in str(info.value)
