"""Generated bodies against a served process tier and a served inline tier (issue 24).

Any JSON (huge and negative integers, floats, lone surrogates and other unicode, nesting, wrong
types), as a whole body or as the value of each field: every answer is 200 or a 4xx with a JSON
error body, the server answers ``/healthz`` after each, and no tier ever restarts. The servers
are ``trio-supervise serve`` processes, one per isolation, started once for the module.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import served_url

MOCK = "trio_supervise.runners.mock:MockRunner"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["inline", "process"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A served mock model (``max_model_len`` 64, so that any accepted request is short)."""
    path: Path = tmp_path_factory.mktemp(request.param) / "serve.toml"
    path.write_text(
        f"""
[server]
port = 0
[[workers]]
name = "mock"
runner = "{MOCK}"
device = "cpu"
isolation = "{request.param}"
max_model_len = 64
"""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_supervise._cli", "serve", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def drain(out: IO[str]) -> None:
        """Read the server's output as it comes (an access line per request: an unread pipe
        would fill, and the server would block writing its log)."""
        for line in out:
            lines.append(line)
            if line.startswith("serving "):
                ready.set()
        ready.set()  # it ended

    reader = threading.Thread(target=drain, args=(process.stdout,), daemon=True)
    reader.start()
    try:
        ready.wait()
        serving = [line for line in lines if line.startswith("serving ")]
        assert serving, "serve ended before it was ready:\n" + "".join(lines)
        yield served_url(serving[0])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=60)
        process.stdout.close()
        assert process.returncode == 0, "".join(lines)


surrogates = st.characters(codec=None, exclude_categories=())  # lone surrogates included
text = st.text(surrogates, max_size=12)
big = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**300])
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | big
    | st.floats()  # NaN and infinities too: not JSON, so a 400
    | text
)
any_json = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
fields = {
    "prompt": text,
    "max_tokens": st.integers(-2, 80) | big,
    "temperature": st.floats(-1, 3),
    "top_p": st.floats(-0.5, 1.5),
    "seed": st.integers() | big,
    "stop": text | st.lists(text, max_size=6),
    "n": st.integers(0, 2),
    "stream": st.booleans(),
    "model": st.sampled_from(["mock", "other"]),
    "continuation": st.sampled_from(["auto", "replay", "resume", "off", "sideways"]),
}
bodies = st.one_of(
    any_json.map(json.dumps),  # ensure_ascii: a lone surrogate goes as an \\udXXX escape
    st.fixed_dictionaries(
        {}, optional={name: value | any_json for name, value in fields.items()}
    ).map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # nesting
    st.integers(4000, 4400).map(lambda n: '{"prompt": "a", "seed": ' + "9" * n + "}"),
)
raw_bodies = st.one_of(
    bodies.map(str.encode),
    st.fixed_dictionaries(  # text as UTF-8 bytes, not escaped (a surrogate as invalid UTF-8)
        {}, optional={name: value | any_json for name, value in fields.items()}
    ).map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),  # not UTF-8, not JSON
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=raw_bodies)
def test_any_body_gets_200_or_a_4xx_and_no_tier_restarts(server: str, body: bytes) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        response = client.post(
            "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
        if response.status_code == 200:
            if response.headers["content-type"] == "text/event-stream":
                assert response.text.endswith("data: [DONE]\n\n")
                assert '"error"' not in response.text
            else:
                assert response.json()["object"] == "text_completion"
        else:
            error: dict[str, Any] = response.json()["error"]
            assert isinstance(error["message"], str) and error["code"] == response.status_code
        assert client.get("/healthz").status_code == 200
        for worker in client.get("/v1/workers").json()["workers"]:
            assert (worker["state"], worker["generation"], worker["restarts"]) == ("ready", 1, 0)
