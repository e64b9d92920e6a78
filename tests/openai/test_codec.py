"""The OpenAI codec as a specification: bytes and dicts in, values or typed errors out, with no
socket and no clock. What the server writes, the client reads back unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

import trio_supervise as ts
from trio_supervise import openai
from trio_supervise._errors import ModelNotFound


def read_back(event: bytes) -> openai.StreamEvent:
    """What a client reads of one event a server wrote."""
    (line, blank, end) = event.decode().split("\n")
    assert (blank, end) == ("", "")
    data = openai.sse_data(line)
    assert data is not None
    return openai.decode_event(data, "http://backend")


# --- a request body, read -------------------------------------------------------------------


def test_a_body_is_read_with_its_defaults() -> None:
    asked = openai.parse_completion(b'{"prompt": "once", "stop": "\\n", "seed": 3}')
    assert asked == openai.CompletionRequest(
        "once",
        ts.SamplingParams(max_tokens=16, temperature=1.0, top_p=1.0, seed=3, stop=("\n",)),
        model=None,
        stream=False,
        continuation="auto",
    )
    request = asked.request("cmpl-1")
    assert (request.id, request.prompt, request.params) == ("cmpl-1", "once", asked.params)
    assert request.continuation == "auto"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "the body must be a JSON object, got list"),
        (b"{", "the body must be a JSON object: "),
        (b'{"prompt": "\\ud800"}', "a lone UTF-16 surrogate"),
        (b'{"prompt": 1}', "prompt must be a string, got 1"),
        (b'{"prompt": "a", "n": 2}', "n must be an integer in [1, 1], got 2"),
        (b'{"prompt": "a", "stop": ""}', "stop must be a non-empty string or a list of them"),
        (b'{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "at most 4 sequences, got 5"),
        (b'{"prompt": "a", "model": 3}', "model must be a string, got 3"),
        (b'{"prompt": "a", "stream": 1}', "stream must be a boolean, got 1"),
        (b'{"prompt": "a", "continuation": "x"}', "continuation must be 'auto', 'replay'"),
        (b'{"prompt": "a", "max_tokens": 0}', "max_tokens must be an integer in [1, "),
        (b'{"prompt": "a", "temperature": true}', "temperature must be a number, got True"),
        (b'{"prompt": "a", "top_p": 1.5}', "top_p must be a number in [0, 1], got 1.5"),
        (b'{"prompt": "a", "seed": 18446744073709551616}', "seed must be an integer in ["),
    ],
)
def test_a_bad_body_is_a_bad_request_that_names_the_field(body: bytes, message: str) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        openai.parse_completion(body)
    assert message in str(caught.value)


# --- a request body, written ------------------------------------------------------------------


def test_a_client_writes_what_a_server_reads() -> None:
    params = ts.SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, seed=11, stop=("x",))
    body = openai.completion_request("m", ts.Request("r", "hello", params))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    asked = openai.parse_completion(json.dumps(body).encode())
    assert (asked.prompt, asked.params, asked.model) == ("hello", params, "m")
    ids = openai.completion_request("m", ts.Request("r", (1, 2), ts.SamplingParams(max_tokens=1)))
    assert ids["prompt"] == [1, 2] and "seed" not in ids and "stop" not in ids


def test_a_chat_request_sends_the_prompt_as_one_user_message() -> None:
    body = openai.chat_request("m", ts.Request("r", "hi", ts.SamplingParams(max_tokens=2)))
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["max_tokens"] == 2
    with pytest.raises(ts.BadRequest, match="text prompt, not token ids"):
        openai.chat_request("m", ts.Request("r", (1, 2), ts.SamplingParams(max_tokens=1)))


# --- a response, written and read back --------------------------------------------------------


def test_a_whole_completion() -> None:
    body = openai.completion_body("c", "m", 1700, "text", ts.FinishReason.LENGTH, ts.Usage(2, 3))
    assert body == {
        "id": "c",
        "object": "text_completion",
        "created": 1700,
        "model": "m",
        "choices": [{"index": 0, "text": "text", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
    }
    stopped = openai.completion_body("c", "m", 1700, "", ts.FinishReason.STOP, None)
    assert stopped["choices"][0]["finish_reason"] == "stop" and "usage" not in stopped


def test_each_streamed_chunk_reads_back_as_it_was() -> None:
    chunks = [
        ts.Chunk("c", (5, 6), "ab"),
        ts.Chunk("c", (7,), "c", finish_reason=ts.FinishReason.LENGTH, usage=ts.Usage(1, 3)),
    ]
    read = [read_back(openai.completion_event("c", "m", 1700, chunk)) for chunk in chunks]
    assert read == [
        openai.StreamEvent((openai.StreamChoice("ab", (5, 6), None),), None),
        openai.StreamEvent(
            (openai.StreamChoice("c", (7,), ts.FinishReason.LENGTH),), ts.Usage(1, 3)
        ),
    ]
    assert openai.sse_data(openai.SSE_DONE.decode().split("\n")[0]) == openai.DONE_DATA


def test_a_chat_event_is_read_as_a_completion_event_is() -> None:
    data = {"choices": [{"delta": {"content": "hi"}, "finish_reason": "eos"}]}
    (choice,) = openai.decode_event(json.dumps(data), "u").choices
    assert choice == openai.StreamChoice("hi", (), ts.FinishReason.STOP)  # unknown: "stop"


def test_lines_without_data_carry_nothing() -> None:
    assert [openai.sse_data(line) for line in ("", ": ping", "event: x", "data:{}")] == [
        None,
        None,
        None,
        "{}",
    ]


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ("{", ts.ServerError, "http://b sent an event that is not JSON"),
        ("[]", ts.ServerError, "http://b sent an event that is not an object"),
        ('{"choices": ["oops"]}', ts.ServerError, "choices that are not a list of objects"),
        ('{"error": {"message": "gone", "code": 503}}', ts.ServerError, "failed mid-stream: gone"),
        ('{"error": {"message": "slow", "code": 429}}', ts.RateLimited, "mid-stream: slow"),
        ('{"error": "plain"}', ts.ServerError, "http://b failed mid-stream: plain"),
    ],
)
def test_a_bad_or_error_event_is_its_typed_error(
    data: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        openai.decode_event(data, "http://b")
    assert type(caught.value) is error and words in str(caught.value)


# --- errors <-> statuses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "client_sees"),
    [
        (ts.BadRequest("x"), ts.BadRequest),
        (ModelNotFound("x"), ts.BadRequest),
        (ts.Backpressure("x"), ts.RateLimited),
        (ts.RateLimited("x", retry_after=2.0), ts.RateLimited),
        (ts.ServerError("x"), ts.ServerError),
        (ts.Unauthorized("x"), ts.ServerError),  # the server's backend refused it: a 502
        (ts.RequestTimeout("x"), ts.ServerError),
        (ts.WorkerStopped("x"), ts.ServerError),
        (ts.RunnerError("x"), ts.ServerError),
    ],
)
def test_what_a_server_answers_a_front_reads_as_its_error(
    error: ts.InferenceError, client_sees: type[ts.InferenceError]
) -> None:
    status, retry_after = openai.error_status(error)
    body: dict[str, Any] = openai.error_body(error, status)
    message = openai.error_detail(json.dumps(body).encode())
    seen = openai.error_for_status(status, message, retry_after)
    assert type(seen) is client_sees
    assert message == (str(error) if status != 500 else "internal error (logged on the server)")
    assert seen.retry_after == retry_after


def test_retry_after_both_ways() -> None:
    assert [openai.retry_after_header(s) for s in (0.0, 0.2, 1.0, 2.5)] == [b"1", b"1", b"1", b"3"]
    assert openai.retry_after_seconds("3") == 3.0
    assert openai.retry_after_seconds("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert openai.retry_after_seconds("-5") == 0.0 and openai.retry_after_seconds("inf") is None


def test_an_error_body_that_is_not_openai_style_is_quoted_short() -> None:
    assert openai.error_detail(b"<html>bad gateway</html>  ") == "<html>bad gateway</html>"
    assert openai.error_detail(b'{"error": "plain"}') == "plain"
    assert len(openai.error_detail(b"x" * 10_000)) == 300


# --- fields no tier honours yet, and stream_options -----------------------------------------

UNHONOURED: dict[str, tuple[list[Any], list[Any]]] = {
    # field: (neutral values, accepted; values that ask for something, refused)
    "best_of": ([None, 1, 1.0], [2, 0, True]),
    "echo": ([None, False], [True, 0]),
    "logprobs": ([None], [0, 2, True]),
    "suffix": ([None], ["", "end"]),
    "presence_penalty": ([None, 0, 0.0], [0.5, -2, False]),
    "frequency_penalty": ([None, 0, 0.0], [1.0, "0"]),
    "logit_bias": ([None, {}], [{"50256": -100}, []]),
    "top_k": ([None, -1, 0], [40, 1, False]),
    "min_p": ([None, 0, 0.0], [0.1]),
    "repetition_penalty": ([None, 1, 1.0], [1.2, 0]),
    "min_tokens": ([None, 0], [5]),
    "ignore_eos": ([None, False], [True]),
    "include_stop_str_in_output": ([None, False], [True]),
    "use_beam_search": ([None, False], [True]),
    "tools": ([None, []], [[{"type": "function", "function": {"name": "f"}}]]),
    "tool_choice": ([None, "none"], ["auto", "required"]),
    "functions": ([None, []], [[{"name": "f"}]]),
    "function_call": ([None, "none"], ["auto"]),
    "response_format": ([None, {"type": "text"}], [{"type": "json_object"}, "text"]),
}


def test_the_table_of_unhonoured_fields_is_the_one_tested() -> None:
    assert list(openai.UNHONOURED) == list(UNHONOURED)


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, (neutral, _) in UNHONOURED.items() for value in neutral],
)
def test_an_unhonoured_field_at_its_neutral_value_is_accepted(field: str, value: Any) -> None:
    asked = openai.parse_completion(json.dumps({"prompt": "a", field: value}).encode())
    assert asked.prompt == "a"


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, (_, refused) in UNHONOURED.items() for value in refused],
)
def test_an_unhonoured_field_that_asks_for_something_is_a_bad_request_naming_it(
    field: str, value: Any
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        openai.parse_completion(json.dumps({"prompt": "a", field: value}).encode())
    message = str(caught.value)
    assert message.startswith(f"{field} is not supported by this server: it accepts ")
    assert message.endswith(f", got {value!r}")


def test_the_first_unhonoured_field_in_the_tables_order_is_named() -> None:
    body = {"prompt": "a", "use_beam_search": True, "top_k": 5, "echo": True}
    with pytest.raises(ts.BadRequest, match=r"^echo is not supported"):
        openai.parse_completion(json.dumps(body).encode())
    # the shared fields are checked first
    with pytest.raises(ts.BadRequest, match=r"^n must be"):
        openai.parse_completion(json.dumps({**body, "n": 2}).encode())


def test_unknown_fields_stay_ignored() -> None:
    asked = openai.parse_completion(b'{"prompt": "a", "user": "u1", "whatever": [1, {"x": 2}]}')
    assert asked == openai.parse_completion(b'{"prompt": "a"}')


def test_stream_options_include_usage_is_read_with_a_stream_only() -> None:
    def read(body: dict[str, Any]) -> bool:
        return openai.parse_completion(json.dumps({"prompt": "a", **body}).encode()).include_usage

    assert read({"stream": True, "stream_options": {"include_usage": True}}) is True
    assert read({"stream": True, "stream_options": {"include_usage": False}}) is False
    assert read({"stream": True, "stream_options": {}}) is False
    assert read({"stream": True, "stream_options": None}) is False
    assert read({"stream": True}) is False
    assert read({"stream_options": None}) is False
    neutral = {"include_usage": True, "continuous_usage_stats": False}
    assert read({"stream": True, "stream_options": neutral}) is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"stream_options": {"include_usage": True}},
            "stream_options is only allowed when stream is true",
        ),
        (
            {"stream": False, "stream_options": {}},
            "stream_options is only allowed when stream is true",
        ),
        ({"stream": True, "stream_options": True}, "stream_options must be an object, got True"),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage must be a boolean, got 1",
        ),
        (
            {"stream": True, "stream_options": {"continuous_usage_stats": True}},
            "stream_options.continuous_usage_stats is not supported by this server: "
            "stream_options accepts include_usage (and continuous_usage_stats: null or false), "
            "got True",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": True, "every": 2}},
            "stream_options.every is not supported by this server: stream_options accepts "
            "include_usage, got 2",
        ),
    ],
)
def test_bad_stream_options_are_a_bad_request_naming_them(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        openai.parse_completion(json.dumps({"prompt": "a", **body}).encode())
    assert str(caught.value) == message


def test_a_stream_that_asked_for_its_usage_ends_with_an_event_of_it_alone() -> None:
    events = openai.UsageEvents()
    first = events("cmpl-1", "m", 7, ts.Chunk("cmpl-1", (1, 2), "ab"))
    usage = ts.Usage(3, 4)
    end = events("cmpl-1", "m", 7, ts.Chunk("cmpl-1", (3,), "c", ts.FinishReason.LENGTH, usage))
    last = events.last("cmpl-1", "m", 7)
    bodies = [json.loads(e.decode().removeprefix("data: ")) for e in (first, end, last)]
    assert [b["usage"] for b in bodies] == [
        None,
        None,
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    ]
    assert bodies[1]["choices"] == [
        {"index": 0, "text": "c", "logprobs": None, "finish_reason": "length", "token_ids": [3]}
    ]
    assert bodies[2] == {"id": "cmpl-1", "object": "text_completion", "created": 7,
                         "model": "m", "choices": [], "usage": bodies[2]["usage"]}  # fmt: skip
    # a front reads each back: text and ids, then the usage alone
    assert read_back(first).choices[0].text == "ab" and read_back(end).usage is None
    assert read_back(last) == openai.StreamEvent((), usage)
    assert openai.UsageEvents().last("c", "m", 7).endswith(b'"choices":[],"usage":null}\n\n')


# --- models and version ----------------------------------------------------------------------


def test_one_model_is_the_object_the_list_holds_or_a_404_naming_the_models() -> None:
    listed = openai.models_body(["a", "org/b"])
    assert listed == {
        "object": "list",
        "data": [openai.model_object("a"), openai.model_object("org/b")],
    }
    assert openai.model_named("org/b", ["a", "org/b"]) == listed["data"][1]
    with pytest.raises(ModelNotFound) as caught:
        openai.model_named("c", ["a", "org/b"])
    assert str(caught.value) == "model 'c' is not served here; models: ['a', 'org/b']"
    assert openai.error_status(caught.value) == (404, None)


def test_the_version_is_the_packages() -> None:
    assert openai.version_body() == {"version": ts.__version__}
