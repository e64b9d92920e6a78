import pickle

import pytest

import trio_supervise as ts
from trio_supervise._errors import __all__ as _error_names

error_names = [name for name in _error_names if isinstance(getattr(ts, name), type)]

RETRYABLE = {
    "ContextPoisoned": True,
    "HungWorker": True,
    "OutOfMemory": True,
    "WorkerStopped": True,
    "Backpressure": True,
    "RequestTimeout": True,
    "Unrecoverable": False,
    "BadRequest": False,
    "RunnerError": False,
    "RateLimited": True,
    "ServerError": True,
    "NetworkError": True,
    "CircuitOpen": True,
    "Unauthorized": False,
}


@pytest.mark.parametrize("name", error_names)
def test_every_error_is_exported_constructible_and_subclassable(name: str) -> None:
    cls = getattr(ts, name)
    assert name in ts.__all__
    exc = cls("message")
    assert str(exc) == "message"
    assert isinstance(exc, ts.SuperviseError)

    class Mine(cls):  # type: ignore[valid-type,misc]
        pass

    assert isinstance(Mine("m"), cls)


@pytest.mark.parametrize(("name", "retryable"), sorted(RETRYABLE.items()))
def test_retryable_defaults(name: str, retryable: bool) -> None:
    cls = getattr(ts, name)
    assert issubclass(cls, ts.InferenceError)
    assert cls("m").retryable is retryable
    assert cls("m", retryable=not retryable).retryable is (not retryable)


def test_inference_error_fields_and_repr() -> None:
    exc = ts.OutOfMemory("no room", retry_after=2)
    assert exc.message == "no room"
    assert exc.retry_after == 2.0
    assert repr(exc) == "OutOfMemory('no room', retry_after=2.0)"
    assert repr(ts.Unrecoverable("x", retryable=True)) == "Unrecoverable('x', retryable=True)"


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3"])
def test_retry_after_must_be_a_finite_non_negative_number(bad: object) -> None:
    with pytest.raises(
        ValueError, match=r"^retry_after must be a finite number >= 0 or None, got "
    ):
        ts.ContextPoisoned("x", retry_after=bad)  # type: ignore[arg-type]


def test_errors_pickle_with_their_fields() -> None:
    exc = ts.ContextPoisoned("sticky", retryable=False, retry_after=1.5)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is ts.ContextPoisoned
    assert (back.message, back.retryable, back.retry_after) == ("sticky", False, 1.5)


def test_invalid_policy_is_a_value_error() -> None:
    assert issubclass(ts.InvalidPolicy, ValueError)
    assert issubclass(ts.InvalidPolicy, ts.SuperviseError)
    assert not issubclass(ts.RestartIntensityExceeded, ts.InferenceError)


def test_all_lists_only_real_names() -> None:
    for name in ts.__all__:
        assert hasattr(ts, name), name
    assert len(set(ts.__all__)) == len(ts.__all__)
