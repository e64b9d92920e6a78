"""Requests, batches and chunks refuse bad values with a BadRequest that says what was wrong."""

import pytest

import trio_supervise as ts
from trio_supervise import Batch, Chunk, Request, SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, r"^max_tokens must be an int in \[1, 2\*\*63 - 1\], got 0$"),
        ({"max_tokens": 2**63}, r"^max_tokens must be an int in \[1, 2\*\*63 - 1\], got 9223"),
        ({"max_tokens": 2, "temperature": -1}, r"^temperature must be a number in \[0, 100\]"),
        ({"max_tokens": 2, "top_p": 0}, r"^top_p must be a number in \(0, 1\], got 0$"),
        ({"max_tokens": 2, "seed": 1.5}, r"^seed must be an int in \[-2\*\*63, 2\*\*63 - 1\] or"),
        ({"max_tokens": 2, "seed": 2**64}, r"^seed must be an int in .* got 18446744073709551616$"),
        ({"max_tokens": 2, "seed": -(2**63) - 1}, r"^seed must be an int in"),
        ({"max_tokens": 2, "stop": ("\ud800",)}, r"^stop must be valid Unicode text, got a lone"),
        ({"max_tokens": 2, "stop": ["x"]}, r"^stop must be a tuple of non-empty str"),
    ],
)
def test_sampling_params_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ts.BadRequest, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_request_and_batch_validation() -> None:
    params = SamplingParams(4)
    with pytest.raises(ts.BadRequest, match=r"^id must be a non-empty str, got ''$"):
        Request("", "p", params)
    with pytest.raises(ts.BadRequest, match=r"^prompt must be a str or a tuple of token ids"):
        Request("a", ["p"], params)  # type: ignore[arg-type]
    with pytest.raises(ts.BadRequest, match=r"^prompt token ids must be ints in \[0, 2\*\*63"):
        Request("a", (1, -2), params)
    with pytest.raises(ts.BadRequest, match=r"^prompt token ids must be ints in \[0, 2\*\*63"):
        Request("a", (1, 2**63), params)
    with pytest.raises(ts.BadRequest, match=r"^prompt must be valid Unicode text, got a lone sur"):
        Request("a", "ok \udfff", params)
    assert Request("a", "\U0001f600 ünïcode", params).prompt.startswith("\U0001f600")
    with pytest.raises(ts.BadRequest, match=r"^params must be a SamplingParams, got 4$"):
        Request("a", "p", 4)  # type: ignore[arg-type]
    with pytest.raises(ts.BadRequest, match=r"^a batch needs at least one request, got none$"):
        Batch([])
    with pytest.raises(ts.BadRequest, match=r"^request ids in a batch must be unique"):
        Batch([Request("a", "p", params), Request("a", "q", params)])
    batch = Batch([Request("a", "p", params)], 3, cancelled={"a"})
    assert batch.is_cancelled("a") and not batch.is_cancelled("b")
    assert Chunk("a", (1,), "x", ts.FinishReason.STOP).final
    assert not Chunk("a").final
    assert issubclass(ts.BadRequest, ts.InferenceError) and not ts.BadRequest("x").retryable
