"""The serve config: TOML into attrs classes, every problem reported with its key path."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import attrs
import pytest

import trio_supervise as ts
from trio_supervise import ConfigError
from trio_supervise._cli import main
from trio_supervise.serve import PolicyConfig, ServeConfig

EXAMPLE = Path(__file__).parents[2] / "examples" / "serve.toml"


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
        "workers[1].replicas: must be >= 1, got 0",  # in file order
        "workers[1].device: must be 'auto', 'cpu' or 'cuda:N', got 'gpu'",
        "workers[1].standby: needs isolation = 'process' or 'ray', got True",
        "workers[2].policy.backoff.initial: must be <= maximum (1.0), got 5.0",
    )
    assert str(info.value).startswith("invalid config (10 problems):\nserver.port: must be")
    assert isinstance(info.value, ValueError)


def test_ray_frames_is_checked() -> None:
    pytest.importorskip("ray")  # a Ray worker's other options need it installed
    data = {
        "workers": [
            {"name": "a", "runner": "m:f", "isolation": "ray", "ray_frames": "tcp"},
            {"name": "b", "runner": "m:f", "ray_frames": "ray"},
            {"name": "c", "runner": "m:f", "isolation": "ray", "ray_frames": "ray"},
        ],
    }
    with pytest.raises(ts.ConfigError) as info:
        ServeConfig.from_dict(data)
    assert info.value.problems == (
        "workers[0].ray_frames: must be 'direct' or 'ray', got 'tcp'",
        "workers[1].ray_frames: needs isolation = 'ray', got 'ray'",
    )


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
    assert info.value.problems == (
        "server.port: must be an integer, got 'eighty'",
        "workers: must name at least one worker, got []",
    )
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


WORKER = {"name": "a", "runner": "m:f"}


def problems_of(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        ServeConfig.from_dict(data)
    return info.value.problems


@pytest.mark.parametrize(
    ("server", "worker", "problem"),
    [
        ({}, {"standby": "false", "isolation": "process"},
         "workers[0].standby: must be true or false, got 'false'"),
        ({"reuse_port": "no"}, {}, "server.reuse_port: must be true or false, got 'no'"),
        ({}, {"standby_load": "0", "isolation": "process"},
         "workers[0].standby_load: must be true or false, got '0'"),
        ({}, {"standby": 1, "isolation": "process"},
         "workers[0].standby: must be true or false, got 1"),
        ({"port": True}, {}, "server.port: must be an integer, got True"),
        ({"port": 80.0}, {}, "server.port: must be an integer, got 80.0"),
        ({}, {"replicas": 2.9}, "workers[0].replicas: must be an integer, got 2.9"),
        ({}, {"max_pending": "8"}, "workers[0].max_pending: must be an integer, got '8'"),
        ({"request_timeout": "30"}, {}, "server.request_timeout: must be a number, got '30'"),
        ({"drain_timeout": False}, {}, "server.drain_timeout: must be a number, got False"),
        ({}, {"readiness_timeout": "5"}, "workers[0].readiness_timeout: must be a number, got '5'"),
        ({}, {"name": 42}, "workers[0].name: must be a string, got 42"),
        ({"host": None}, {}, "server.host: must be a string, got None"),
        ({}, {"replicas": 100_000_000}, "workers[0].replicas: must be <= 1024, got 100000000"),
        ({}, {"hang_timeout": 1e-320},
         "workers[0].hang_timeout: must be >= 0.001 (a millisecond), got 1e-320"),
        ({"drain_timeout": math.inf}, {}, "server.drain_timeout: must be a finite number, got inf"),
        ({"request_timeout": math.nan}, {},
         "server.request_timeout: must be a finite number, got nan"),
        ({"within": 10**400}, {}, "server.within: must be a finite number, got 1000000000"),
        ({}, {"runner_args": [1]}, "workers[0].runner_args: must be a table, got [1]"),
        ({}, {"runner_args": {1: "x"}}, "workers[0].runner_args: a key must be a string, got 1"),
        ({}, {"replica_args": "ab"}, "workers[0].replica_args: must be an array, got 'ab'"),
        ({}, {"policy": 5}, "workers[0].policy: must be a table, got 5"),
    ],
)  # fmt: skip
def test_a_wrong_type_is_refused_never_converted(
    server: dict[str, Any], worker: dict[str, Any], problem: str
) -> None:
    (found,) = problems_of({"server": server, "workers": [{**WORKER, **worker}]})
    assert found.startswith(problem)


def test_an_int_is_a_float_and_none_is_an_unset_optional() -> None:
    config = ServeConfig.from_dict(
        {
            "server": {"drain_timeout": 5, "within": 1},
            "batching": {"max_wait": 0},
            "workers": [{**WORKER, "hang_timeout": 2, "readiness_timeout": None, "policy": None}],
        }
    )
    assert (config.server.drain_timeout, config.server.within) == (5.0, 1.0)
    assert type(config.server.drain_timeout) is float and type(config.batching.max_wait) is float
    (worker,) = config.workers
    assert (worker.hang_timeout, worker.readiness_timeout, worker.policy) == (2.0, None, None)
    assert ServeConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"server": {"max_worker_restarts": 10_001}},
         "server.max_worker_restarts: must be <= 10000, got 10001"),
        ({"server": {"max_connections": 0}}, "server.max_connections: must be >= 1, got 0"),
        ({"server": {"max_connections": 1_000_001}},
         "server.max_connections: must be <= 1000000, got 1000001"),
        ({"server": {"body_timeout": 0}}, "server.body_timeout: must be > 0, got 0.0"),
        ({"server": {"send_timeout": 3_000_000}},
         "server.send_timeout: must be <= 2e+06, got 3000000.0"),
        ({"server": {"keep_alive_timeout": 0.0005}},
         "server.keep_alive_timeout: must be >= 0.001 (a millisecond), got 0.0005"),
        ({"server": {"within": 1e-4}},
         "server.within: must be >= 0.001 (a millisecond), got 0.0001"),
        ({"batching": {"max_batch_size": 4097}},
         "batching.max_batch_size: must be <= 4096, got 4097"),
        ({"batching": {"max_wait": 61}}, "batching.max_wait: must be <= 60, got 61.0"),
        ({"batching": {"max_wait": math.nan}},
         "batching.max_wait: must be a finite number, got nan"),
        ({"worker": {"max_pending": 1_000_001}},
         "workers[0].max_pending: must be <= 1000000, got 1000001"),
        ({"worker": {"max_attempts": 101}}, "workers[0].max_attempts: must be <= 100, got 101"),
        ({"worker": {"readiness_timeout": 0.0001}},
         "workers[0].readiness_timeout: must be >= 0.001 (a millisecond), got 0.0001"),
        ({"worker": {"policy": {"within": 1e-9}}},
         "workers[0].policy.within: must be >= 0.001 (a millisecond), got 1e-09"),
        ({"worker": {"policy": {"max_restarts": 10_001}}},
         "workers[0].policy.max_restarts: must be <= 10000, got 10001"),
        ({"worker": {"replica_args": [{}] * 1025}},
         "workers[0].replica_args: must hold at most 1024 entries (one per replica), got 1025"),
        ({"worker": {"max_model_len": 0}}, "workers[0].max_model_len: must be >= 1, got 0"),
        ({"worker": {"max_model_len": 10_000_001}},
         "workers[0].max_model_len: must be <= 10000000, got 10000001"),
        ({"worker": {"max_model_len": 8.0}},
         "workers[0].max_model_len: must be an integer, got 8.0"),
    ],
)  # fmt: skip
def test_absurd_values_are_refused(data: dict[str, Any], problem: str) -> None:
    worker = {**WORKER, **data.pop("worker", {})}
    assert problems_of({**data, "workers": [worker]}) == (problem,)


def test_the_bounds_themselves_are_accepted() -> None:
    config = ServeConfig.from_dict(
        {
            "server": {"max_worker_restarts": 10_000, "max_connections": 1_000_000,
                       "drain_timeout": 0.001, "body_timeout": 86_400 * 365},
            "batching": {"max_batch_size": 4096, "max_wait": 60},
            "workers": [{**WORKER, "replicas": 1024, "max_pending": 1_000_000,
                         "max_attempts": 100, "hang_timeout": 0.001, "max_model_len": 10_000_000,
                         "policy": {"max_restarts": 10_000, "within": 0.001}}],
        }
    )  # fmt: skip
    assert config.workers[0].replicas == 1024


def test_type_and_range_problems_are_reported_together_in_file_order() -> None:
    assert problems_of({"server": {"port": True, "drain_timeout": 0}, "workers": [WORKER]}) == (
        "server.port: must be an integer, got True",
        "server.drain_timeout: must be > 0, got 0.0",
    )
    data = {
        "workers": [
            {"name": 42, "runner": "m:f", "replicas": 0, "bogus": 1},
            5,
            {"name": "b", "runner": "bad", "isolation": 3, "standby": True,
             "policy": {"backoff": {"initial": 5, "maximum": "x"}}},
            {"runner": "m:f", "max_attempts": 0},
        ],
        "batching": {"max_wait": "soon", "max_batch_size": 0},
        "server": {"reuse_port": "no", "within": -1},
    }  # fmt: skip
    assert problems_of(data) == (
        "workers[0].name: must be a string, got 42",
        "workers[0].replicas: must be >= 1, got 0",
        "workers[0]: extra fields found (bogus)",
        "workers[1]: must be a table, got 5",
        "workers[2].runner: must be an import path 'module:factory', got 'bad'",
        "workers[2].isolation: must be a string, got 3",
        # no "standby needs isolation": the isolation is wrong already
        "workers[2].policy.backoff.maximum: must be a number, got 'x'",
        "workers[3].max_attempts: must be >= 1, got 0",
        "workers[3].name: required field missing",
        "batching.max_wait: must be a number, got 'soon'",
        "batching.max_batch_size: must be >= 1, got 0",
        "server.reuse_port: must be true or false, got 'no'",
        "server.within: must be > 0, got -1.0",
    )


def test_a_workers_table_instead_of_an_array_says_so() -> None:
    assert problems_of({"workers": {"name": "a", "runner": "m:f"}}) == (
        "workers: must be an array of tables ([[workers]]), got {'name': 'a', 'runner': 'm:f'}",
    )


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


WORKER_TOML = "[[workers]]\nname = 'a'\nrunner = 'm:f'\n"


@pytest.mark.parametrize(
    "text",
    [
        f"x = {nested(100_000)}\n",  # the parser itself runs out of stack
        f"{WORKER_TOML}runner_args = {{ x = {nested(100_000)} }}\n",
        f"{WORKER_TOML}runner_args = {{ x = {nested(100)} }}\n",  # parsed, then refused
    ],
    ids=["top-100000", "runner_args-100000", "runner_args-100"],
)
def test_a_deeply_nested_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text(text)
    with pytest.raises(ConfigError, match=r"nested too deeply"):
        ServeConfig.from_toml(deep)
    assert main(["config", "check", str(deep)]) == 2
    assert "nested too deeply" in " ".join(capsys.readouterr().out.split())


def test_a_deeply_nested_dict_is_a_config_error() -> None:
    def config(depth: int) -> dict[str, Any]:  # the top table, workers, a worker, runner_args
        return {"workers": [{**WORKER, "runner_args": {"x": nested_list(depth - 4)}}]}

    ServeConfig.from_dict(config(64))
    assert problems_of(config(65)) == (
        "workers[0].runner_args: nested too deeply (arrays and tables more than 64 deep)",
    )
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ConfigError, match=r"nested too deeply"):
        ServeConfig.from_dict({"workers": [{**WORKER, "runner_args": {"x": cycle}}]})


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_text("[server]\nport = 1" + "0" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"huge.toml: not valid TOML: Exceeds the limit") as info:
        ServeConfig.from_toml(huge)
    assert "set_int_max_str_digits" not in str(info.value)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[server]\nhost = "\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin.toml: not valid TOML: not UTF-8 at byte 17"):
        ServeConfig.from_toml(latin)


def test_the_new_fields_default_and_load(tmp_path: Path) -> None:
    config = ServeConfig.from_dict({"workers": [WORKER]})
    s = config.server
    assert (s.body_timeout, s.keep_alive_timeout, s.max_connections) == (30.0, 5.0, 1000)
    assert s.send_timeout == 30.0
    assert config.workers[0].max_model_len is None
    path = tmp_path / "new.toml"
    path.write_text(
        "[server]\nbody_timeout = 10\nkeep_alive_timeout = 2.5\nmax_connections = 64\n"
        "send_timeout = 4\n"
        "[[workers]]\nname = 'a'\nrunner = 'm:f'\nmax_model_len = 2048\n"
    )
    config = ServeConfig.from_toml(path)
    s = config.server
    assert (s.body_timeout, s.keep_alive_timeout, s.max_connections) == (10.0, 2.5, 64)
    assert s.send_timeout == 4.0
    assert config.workers[0].max_model_len == 2048
    assert ServeConfig.from_dict(config.to_dict()) == config


def test_config_check_reports_types_and_ranges_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nport = true\ndrain_timeout = 0\n[[workers]]\nname = "a"\nrunner = "m:f"\n'
        'replicas = 2.9\nstandby = "false"\nisolation = "process"\n'
    )
    assert main(["config", "check", str(bad)]) == 2
    out = capsys.readouterr().out
    for problem in (
        "server.port: must be an integer, got True",
        "server.drain_timeout: must be > 0, got 0.0",
        "workers[0].replicas: must be an integer, got 2.9",
        "workers[0].standby: must be true or false, got 'false'",
    ):
        assert problem in out


class Lookups:
    """A container of key paths that counts lookups, and cannot be scanned (no ``__iter__``)."""

    def __init__(self) -> None:
        self.paths: Any = set()
        self.count = 0

    def __contains__(self, path: object) -> bool:
        self.count += 1
        return path in self.paths


def test_skipping_an_unread_path_looks_it_up_not_every_unread_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups = Lookups()
    check = ServeConfig._check

    def spy(self: ServeConfig, unread: Any) -> Any:
        assert isinstance(unread, set | frozenset)  # a lookup is a hash, not a scan
        lookups.paths = unread
        return check(self, lookups)

    monkeypatch.setattr(ServeConfig, "_check", spy)

    def count(n: int) -> int:  # n workers, each without a runner: n unread paths
        lookups.count = 0
        workers = [{"name": f"w{i}"} for i in range(n)]
        assert len(problems_of({"workers": workers})) == n
        return lookups.count

    # The same lookups per worker however many unread paths there are: a scan of every unread
    # path for each check fails here, since Lookups has no __iter__.
    per_worker = (count(500) - count(250)) / 250
    assert count(1000) - count(500) == 500 * per_worker <= 500 * 50


def test_repairs_leave_the_callers_data_as_it_was() -> None:
    data = {
        "server": {"port": "x", "bogus": 1},
        "workers": [5, {"runner": "m:f", "runner_args": {1: 2}, "replica_args": ({}, 3)}],
    }
    before = copy.deepcopy(data)
    assert len(problems_of(data)) == 6
    assert data == before


def test_every_backoff_problem_is_reported_at_its_own_key() -> None:
    backoff = {"initial": 5, "maximum": 1, "multiplier": 0.5, "jitter": 2}
    worker = {**WORKER, "policy": {"backoff": backoff}}
    assert problems_of({"workers": [worker]}) == (
        "workers[0].policy.backoff.initial: must be <= maximum (1.0), got 5.0",
        "workers[0].policy.backoff.multiplier: must be >= 1, got 0.5",
        "workers[0].policy.backoff.jitter: must be <= 1, got 2.0",
    )
    backoff = {"initial": -1, "maximum": math.inf, "jitter": -0.5}
    worker = {**WORKER, "policy": {"backoff": backoff}}
    assert problems_of({"workers": [worker]}) == (  # no "initial <= maximum": both are wrong
        "workers[0].policy.backoff.initial: must be >= 0, got -1.0",
        "workers[0].policy.backoff.maximum: must be a finite number, got inf",
        "workers[0].policy.backoff.jitter: must be >= 0, got -0.5",
    )


@pytest.mark.parametrize("maximum", [0, 1, math.inf])
def test_a_backoff_passes_the_config_exactly_when_backoff_accepts_it(maximum: float) -> None:
    for initial, multiplier, jitter in itertools.product(
        (-1, 0, 0.5, 1, 2), (0.5, 1, 3, math.nan), (-0.1, 0, 1, 1.5)
    ):
        fields = {"initial": initial, "maximum": maximum, "multiplier": multiplier}
        worker = {**WORKER, "policy": {"backoff": {**fields, "jitter": jitter}}}
        try:
            ts.Backoff(initial, maximum, multiplier, jitter)
        except ValueError:
            assert problems_of({"workers": [worker]})
        else:
            ServeConfig.from_dict({"workers": [worker]})


def test_replicas_and_workers_are_bounded_in_all() -> None:
    workers = [{**WORKER, "name": f"w{i}", "replicas": 1024} for i in range(3)]
    assert problems_of({"workers": workers}) == (
        "workers: must have at most 1024 replicas in all, got 3072",
    )
    workers = [{**WORKER, "name": f"w{i}", "replicas": 256} for i in range(4)]
    workers[3] = {**WORKER, "name": "w3", "replica_args": [{}] * 256}
    assert ServeConfig.from_dict({"workers": workers}).workers[3].replica_count == 256
    workers[0] = {**workers[0], "replicas": 257}
    assert problems_of({"workers": workers}) == (
        "workers: must have at most 1024 replicas in all, got 1025",
    )
    workers = [{**WORKER, "name": f"w{i}"} for i in range(1025)]
    assert problems_of({"workers": workers}) == (
        "workers: must hold at most 1024 tables, got 1025",
    )
    (worker,) = ServeConfig.from_dict({"workers": [WORKER]}).workers
    more = tuple(attrs.evolve(worker, name=f"w{i}") for i in range(2048))
    with pytest.raises(ConfigError) as info:  # built in Python: validate() says the same
        ServeConfig(workers=more).validate()
    assert info.value.problems == (
        "workers: must hold at most 1024 tables, got 2048",
        "workers: must have at most 1024 replicas in all, got 2048",
    )


@pytest.mark.parametrize("host", ["", "  "])
def test_the_host_must_not_be_empty(host: str) -> None:
    assert problems_of({"server": {"host": host}, "workers": [WORKER]}) == (
        f"server.host: must be a non-empty host name or address, got {host!r}",
    )
