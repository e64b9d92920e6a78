"""The serve config: TOML into attrs classes, every problem reported with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

import trio_supervise as ts
from trio_supervise import ConfigError
from trio_supervise._cli import main
from trio_supervise.serve import PolicyConfig, ServeConfig

EXAMPLE = Path(__file__).parent.parent / "examples" / "serve.toml"


def test_the_example_config_loads_with_defaults_filled_in() -> None:
    config = ServeConfig.from_toml(EXAMPLE)
    assert config.server.port == 8000 and config.batching.max_batch_size == 32
    (worker,) = config.workers
    assert (worker.name, worker.replicas, worker.runner_args) == ("mock", 2, {"delay": 0.01})
    assert worker.isolation == "inline" and worker.max_attempts == 2
    assert ServeConfig.from_dict(config.to_dict()) == config
    policy = worker.policy
    assert policy is not None
    applied = policy.apply(ts.DEVICE_POLICY)
    assert applied.intensity == ts.RestartIntensity(5, 60.0)
    assert applied.backoff == ts.Backoff(0.1, 5.0)
    assert applied.decider is ts.DEVICE_POLICY.decider
    assert PolicyConfig().apply(ts.DEVICE_POLICY) == ts.DEVICE_POLICY


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    data = {
        "server": {"port": 99999, "drain_timeout": 0},
        "batching": {"max_wait": -1},
        "workers": [
            {"name": "a", "runner": "m:f", "policy": {"within": -1}},
            {"name": "a", "runner": "bad", "replicas": 0, "device": "gpu", "standby": True},
            {"name": "b", "runner": "m:f", "policy": {"backoff": {"initial": 5, "maximum": 1}}},
        ],
    }
    with pytest.raises(ts.ConfigError) as info:
        ServeConfig.from_dict(data)
    assert info.value.problems == (
        "server.port: must be in [0, 65535], got 99999",
        "server.drain_timeout: must be > 0, got 0.0",
        "batching.max_wait: must be >= 0, got -1.0",
        "workers[0].policy.within: must be > 0, got -1.0",
        "workers[1].name: must be unique, got 'a'",
        "workers[1].runner: must be an import path 'module:factory', got 'bad'",
        "workers[1].device: must be 'auto', 'cpu' or 'cuda:N', got 'gpu'",
        "workers[1].replicas: must be >= 1, got 0",
        "workers[1].standby: needs isolation = 'process' or 'ray', got True",
        "workers[2].policy.backoff: initial must be <= maximum, got initial=5.0 > maximum=1.0",
    )
    assert str(info.value).startswith("invalid config (10 problems):\nserver.port: must be")
    assert isinstance(info.value, ValueError)


def test_unknown_keys_and_wrong_types_are_refused_with_paths() -> None:
    data = {"server": {"bogus": 1}, "workers": [{"name": "a", "runner": "m:f", "replica": 2}]}
    with pytest.raises(ts.ConfigError) as info:
        ServeConfig.from_dict(data)
    assert info.value.problems == (
        "server: extra fields found (bogus)",
        "workers[0]: extra fields found (replica)",
    )
    with pytest.raises(ts.ConfigError) as info:
        ServeConfig.from_dict({"server": {"port": "eighty"}, "workers": []})
    assert info.value.problems == ("server.port: invalid value for type, expected int",)
    with pytest.raises(ts.ConfigError, match=r"^invalid config \(1 problem\):\nworkers: must name"):
        ServeConfig.from_dict({})


def test_toml_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1\n")
    with pytest.raises(ts.ConfigError, match=r"broken.toml: not valid TOML: "):
        ServeConfig.from_toml(broken)
    with pytest.raises(ts.ConfigError, match=r"^cannot read config '.*missing.toml'"):
        ServeConfig.from_toml(tmp_path / "missing.toml")


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert '"max_batch_size": 32' in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = -1\nbogus = 1\n[[workers]]\nname = ""\nrunner = "x"\n')
    assert main(["config", "check", str(bad)]) == 2
    out = capsys.readouterr().out
    for problem in (
        "server: extra fields found (bogus)",
        "server.port: must be in [0, 65535], got -1",
        "workers[0].name: must be a non-empty name, got ''",
        "workers[0].runner: must be an import path 'module:factory', got 'x'",
    ):
        assert problem in out


def test_runner_arguments_are_checked_against_the_factory() -> None:
    remote = "trio_supervise.runners.remote:RemoteRunner"
    config = ServeConfig.from_dict(
        {
            "workers": [
                {"name": "a", "runner": remote,
                 "runner_args": {"base_url": "http://h", "model": "m", "api_key": "sk-1"}},
                {"name": "b", "runner": remote, "runner_args": {"model": "m"},
                 "replica_args": [{"base_url": "http://h1"}, {"base_urls": "http://h2"}]},
                {"name": "c", "runner": "no_such_module_here:F"},
                {"name": "d", "runner": "no_such_module_here:F", "isolation": "process"},
            ]
        }
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        config.check_runners()
    problems = caught.value.problems
    assert len(problems) == 3  # the process-isolated runner is not imported here
    assert problems[0].startswith("workers[0].runner_args: ") and "'api_key'" in problems[0]
    assert problems[1].startswith("workers[1].replica_args[1]: ") and "'base_url'" in problems[1]
    assert problems[2].startswith("workers[2].runner: cannot import")
    assert "sk-1" not in str(caught.value)


def test_replica_args_give_one_replica_each() -> None:
    w = {"name": "a", "runner": "m:f", "runner_args": {"x": 1},
         "replica_args": [{"y": 1}, {"x": 2}]}  # fmt: skip
    config = ServeConfig.from_dict({"workers": [w]})
    worker = config.workers[0]
    assert worker.replica_count == 2
    assert [worker.args_of(0), worker.args_of(1)] == [{"x": 1, "y": 1}, {"x": 2}]
    with pytest.raises(ConfigError, match=r"workers\[0\]\.replicas: must be left out or 2"):
        ServeConfig.from_dict({"workers": [{**w, "replicas": 3}]})
