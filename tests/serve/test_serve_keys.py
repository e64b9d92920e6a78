"""API keys: every model route asks for ``Authorization: Bearer <key>`` once a key is set (in the
config, a key file or ``TRIO_SUPERVISE_API_KEY``); a missing or wrong one is a 401 with
``WWW-Authenticate: Bearer``, which the official client raises as ``AuthenticationError``; the
probes stay open, ``/metrics`` too unless told; and no key is ever shown: not in a log, an
error, ``config check`` or a problem of the config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_supervise import ConfigError
from trio_supervise._cli import main
from trio_supervise.serve import ServeConfig
from trio_supervise.serve._keys import ENV_VAR, ApiKeys, load_api_keys

from ..support.helpers import serve_config, start_server

openai = pytest.importorskip("openai")

KEY = "sk-test-4f1c2b9e"
FILE_KEY = "sk-from-the-file-77"
ENV_KEY = "sk-from-the-environment-31"


def keyed(**server: Any) -> ServeConfig:
    return serve_config(server={"api_keys": [KEY], **server})


async def test_every_model_route_asks_for_a_key_and_the_probes_do_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, keyed())
            good = {"authorization": f"Bearer {KEY}"}
            bad = {"authorization": "Bearer sk-wrong"}
            async with httpx.AsyncClient(base_url=handle.url) as http:
                answers = {
                    "no key": await http.get("/v1/models"),
                    "bad key": await http.get("/v1/models", headers=bad),
                    "not bearer": await http.get("/v1/models", headers={"authorization": KEY}),
                    "workers": await http.get("/v1/workers"),
                    "completion": await http.post("/v1/completions", json={"prompt": "a"}),
                    "good": await http.get("/v1/models", headers=good),
                    "good workers": await http.get("/v1/workers", headers=good),
                    "healthz": await http.get("/healthz"),
                    "readyz": await http.get("/readyz"),
                    "version": await http.get("/version"),
                    "metrics": await http.get("/metrics"),
                    "unknown": await http.get("/nope"),
                }
            client = openai.OpenAI(base_url=f"{handle.url}/v1", api_key="sk-wrong", max_retries=0)
            right = openai.OpenAI(base_url=f"{handle.url}/v1", api_key=KEY, max_retries=0)

            def run() -> dict[str, Any]:
                with pytest.raises(openai.AuthenticationError) as refused:
                    client.completions.create(model="mock", prompt="a", max_tokens=2)
                done = right.chat.completions.create(
                    model="mock", messages=[{"role": "user", "content": "a"}], max_tokens=2
                )
                return {"refused": refused.value, "done": done}

            got = await trio.to_thread.run_sync(run)
            client.close()
            right.close()
            handle.drain()
    for name in ("no key", "bad key", "not bearer", "workers", "completion"):
        answer = answers[name]
        assert answer.status_code == 401, name
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["type"] == "Unauthorized"
    for name in ("good", "good workers", "healthz", "readyz", "version", "metrics"):
        assert answers[name].status_code == 200, name
    assert answers["unknown"].status_code == 404
    assert got["refused"].status_code == 401
    assert got["done"].choices[0].message.content
    shown = caplog.text + "".join(a.text for a in answers.values()) + str(got["refused"])
    assert KEY not in shown and "sk-wrong" not in shown


async def test_metrics_ask_for_a_key_when_told() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await start_server(nursery, keyed(metrics_need_key=True))
            async with httpx.AsyncClient(base_url=handle.url) as http:
                closed = await http.get("/metrics")
                opened = await http.get("/metrics", headers={"authorization": f"Bearer {KEY}"})
                health = await http.get("/healthz")
            handle.drain()
    assert (closed.status_code, opened.status_code, health.status_code) == (401, 200, 200)


def test_keys_come_from_the_config_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# the team's keys\n\n{FILE_KEY}\n")
    config = keyed(api_key_file=str(path))
    keys = load_api_keys(config.server, {ENV_VAR: ENV_KEY})
    assert isinstance(keys, ApiKeys)
    for key in (KEY, FILE_KEY, ENV_KEY):
        assert keys.accepts(f"Bearer {key}".encode())
        assert keys.accepts(f"bearer  {key} ".encode())
    assert not keys.accepts(b"Bearer sk-other") and not keys.accepts(None)
    assert not keys.accepts(f"Basic {KEY}".encode())
    assert KEY not in repr(keys)
    assert load_api_keys(serve_config().server, {}) is None  # no key anywhere: none asked for
    with pytest.raises(ConfigError, match=r"cannot read the API key file '.*nope'"):
        load_api_keys(keyed(api_key_file=str(tmp_path / "nope")).server, {})
    path.write_text("sk-has a space\n")
    with pytest.raises(ConfigError, match=r"line 1: .*\(the line is not shown\)") as bad:
        load_api_keys(serve_config(server={"api_key_file": str(path)}).server, {})
    assert "sk-has" not in str(bad.value)


def test_no_key_is_shown_by_the_config_or_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = keyed()
    assert config.to_dict()["server"]["api_keys"] == ["<hidden>"]
    assert config.to_dict(secrets=True)["server"]["api_keys"] == [KEY]
    assert KEY not in repr(config)
    for value in (KEY, [f" {KEY}"], [7]):
        with pytest.raises(ConfigError) as problem:
            serve_config(server={"api_keys": value})
        assert KEY not in str(problem.value) and "not shown (a secret)" in str(problem.value)
    toml = tmp_path / "serve.toml"
    toml.write_text(
        f'[server]\napi_keys = ["{KEY}"]\n\n[[workers]]\nname = "mock"\n'
        'runner = "trio_supervise.runners.mock:MockRunner"\n'
    )
    assert main(["config", "check", str(toml)]) == 0
    head, _, effective = capsys.readouterr().out.partition("\n")
    assert head.endswith("valid; the effective config:")
    assert KEY not in effective and json.loads(effective)["server"]["api_keys"] == ["<hidden>"]


def test_serve_with_a_key_file_that_cannot_be_read_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", "--api-key-file", str(tmp_path / "nope")]) == 2
    assert "cannot read the API key file" in capsys.readouterr().err
