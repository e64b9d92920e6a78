"""The OpenAI codec as a specification: bytes and dicts in, values or typed errors out, with no
socket and no clock. What the server writes, the client reads back unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def completion(body: dict[str, Any]) -> openai.Generation:
    return openai.parse_completion(json.dumps(body).encode())


def chat(body: dict[str, Any]) -> openai.Generation:
    return openai.parse_chat(json.dumps(body).encode())


def completion_of(body: dict[str, Any]) -> openai.Generation:
    return completion({"prompt": "a", **body})


def chat_of(body: dict[str, Any]) -> openai.Generation:
    return chat({"messages": [{"role": "user", "content": "a"}], **body})


PARSERS: dict[str, Callable[[dict[str, Any]], openai.Generation]] = {
    "completions": completion_of,
    "chat": chat_of,
}
"""Each generating endpoint's reader, of a body that is good but for the fields given."""

DEFAULT_SAMPLING: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "stop": (),
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_tokens": 0,
    "ignore_eos": False,
    "logit_bias": (),
}


# --- a request body, read -------------------------------------------------------------------


def test_a_body_is_read_with_its_defaults() -> None:
    asked = openai.parse_completion(b'{"prompt": "once", "stop": "\\n", "seed": 3}')
    assert asked == openai.Generation(
        "completions",
        ("once",),
        (),
        openai.Shared(
            {**DEFAULT_SAMPLING, "stop": ("\n",)},
            seed=3,
            max_tokens=None,
            n=1,
            model=None,
            stream=False,
            continuation="auto",
            include_usage=False,
            include_stop=False,
        ),
    )
    assert (asked.logprobs, asked.echo, asked.stream) == (None, False, False)
    (request,) = asked.requests("cmpl-1", asked.prompts, [16])
    assert request == ts.Request(
        "cmpl-1", "once", ts.SamplingParams(max_tokens=16, seed=3, stop=("\n",))
    )
    assert request.continuation == "auto" and request.messages == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "the body must be a JSON object, got list"),
        (b"{", "the body must be a JSON object: "),
        (b'{"prompt": "\\ud800"}', "a lone UTF-16 surrogate"),
        (b'{"prompt": 1}', "prompt must be a string, a non-empty list of token ids"),
        (b'{"prompt": "a", "n": 0}', "n must be an integer in [1, 16], got 0"),
        (b'{"prompt": "a", "n": 17}', "n must be an integer in [1, 16], got 17"),
        (b'{"prompt": "a", "stop": ""}', "stop must be a non-empty string or a list of them"),
        (b'{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "at most 4 sequences, got 5"),
        (b'{"prompt": "a", "model": 3}', "model must be a string, got 3"),
        (b'{"prompt": "a", "stream": 1}', "stream must be a boolean, got 1"),
        (b'{"prompt": "a", "continuation": "x"}', "continuation must be 'auto', 'replay'"),
        (b'{"prompt": "a", "max_tokens": 0}', "max_tokens must be an integer in [1, "),
        (b'{"prompt": "a", "temperature": true}', "temperature must be a number, got True"),
        (b'{"prompt": "a", "temperature": 2.5}', "temperature must be a number in [0, 2]"),
        (b'{"prompt": "a", "top_p": 1.5}', "top_p must be a number in [0, 1], got 1.5"),
        (b'{"prompt": "a", "top_p": 0}', "top_p must be a number in (0, 1], got 0"),
        (b'{"prompt": "a", "seed": 18446744073709551616}', "seed must be an integer in ["),
    ],
)
def test_a_bad_body_is_a_bad_request_that_names_the_field(body: bytes, message: str) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        openai.parse_completion(body)
    assert message in str(caught.value)


def test_up_to_max_choices_are_asked_for_with_n() -> None:
    assert openai.MAX_CHOICES == 16
    assert completion({"prompt": "a", "n": 16}).shared.n == 16
    assert chat({"messages": [{"role": "user", "content": "a"}], "n": 16}).shared.n == 16
    with pytest.raises(ts.BadRequest, match=r"^n must be an integer in \[1, 16\], got 17$"):
        chat({"messages": [{"role": "user", "content": "a"}], "n": 17})


def test_a_chats_max_completion_tokens_wins_over_max_tokens() -> None:
    messages = [{"role": "user", "content": "a"}]
    assert chat({"messages": messages}).shared.max_tokens is None
    assert chat({"messages": messages, "max_tokens": 3}).shared.max_tokens == 3
    both = {"messages": messages, "max_tokens": 3, "max_completion_tokens": 5}
    assert chat(both).shared.max_tokens == 5
    assert chat({"messages": messages, "max_completion_tokens": 5}).shared.max_tokens == 5
    with pytest.raises(ts.BadRequest, match=r"^max_completion_tokens must be an integer in"):
        chat({"messages": messages, "max_completion_tokens": 0})
    # a completion has no max_completion_tokens: it stays unknown (ignored)
    assert completion({"prompt": "a", "max_completion_tokens": 5}).shared.max_tokens is None


# --- the sampling fields beyond temperature and top_p -----------------------------------------

SAMPLING_ACCEPTED: list[tuple[str, Any, dict[str, Any]]] = [
    # field, value, what lands in Shared.sampling
    ("top_k", None, {"top_k": 0}),
    ("top_k", -1, {"top_k": 0}),  # vLLM's "all tokens"
    ("top_k", 0, {"top_k": 0}),
    ("top_k", 40, {"top_k": 40}),
    ("min_p", 0.1, {"min_p": 0.1}),
    ("min_p", 1, {"min_p": 1.0}),
    ("presence_penalty", 0.5, {"presence_penalty": 0.5}),
    ("presence_penalty", -2, {"presence_penalty": -2.0}),
    ("frequency_penalty", 2.0, {"frequency_penalty": 2.0}),
    ("repetition_penalty", 1.2, {"repetition_penalty": 1.2}),
    ("repetition_penalty", 2, {"repetition_penalty": 2.0}),
    ("min_tokens", 5, {"min_tokens": 5}),
    ("ignore_eos", True, {"ignore_eos": True}),
    ("logit_bias", {}, {"logit_bias": ()}),
    ("logit_bias", {"50256": -100, "7": 2.5}, {"logit_bias": ((7, 2.5), (50256, -100.0))}),
    (
        "logit_bias",
        {str(i): 1 for i in range(300)},
        {"logit_bias": tuple((i, 1.0) for i in range(300))},
    ),
]


@pytest.mark.parametrize("endpoint", list(PARSERS))
@pytest.mark.parametrize(("field", "value", "lands"), SAMPLING_ACCEPTED)
def test_a_sampling_field_is_accepted_and_lands_in_the_shared_sampling(
    endpoint: str, field: str, value: Any, lands: dict[str, Any]
) -> None:
    asked = PARSERS[endpoint]({field: value})
    assert asked.shared.sampling == {**DEFAULT_SAMPLING, **lands}
    (request,) = asked.requests("r", ["p"], [8])
    assert request.params == ts.SamplingParams(max_tokens=8, **{**DEFAULT_SAMPLING, **lands})


SAMPLING_REFUSED: list[tuple[str, Any, str]] = [
    # field, value, the message's start (it names the field)
    ("top_k", -2, "top_k must be an integer in [-1, "),
    ("top_k", False, "top_k must be an integer, got False"),
    ("top_k", 1.5, "top_k must be an integer, got 1.5"),
    ("min_p", 1.5, "min_p must be a number in [0, 1], got 1.5"),
    ("min_p", -0.1, "min_p must be a number in [0, 1], got -0.1"),
    ("presence_penalty", 2.5, "presence_penalty must be a number in [-2, 2], got 2.5"),
    ("presence_penalty", False, "presence_penalty must be a number, got False"),
    ("frequency_penalty", "0", "frequency_penalty must be a number, got '0'"),
    ("frequency_penalty", -3, "frequency_penalty must be a number in [-2, 2], got -3"),
    ("repetition_penalty", 0, "repetition_penalty must be a number in (0, 2], got 0"),
    ("repetition_penalty", 2.5, "repetition_penalty must be a number in [0, 2], got 2.5"),
    ("min_tokens", -1, "min_tokens must be an integer in [0, "),
    ("min_tokens", 1.0, "min_tokens must be an integer, got 1.0"),
    ("ignore_eos", 1, "ignore_eos must be a boolean, got 1"),
    ("include_stop_str_in_output", "yes", "include_stop_str_in_output must be a boolean"),
    ("logit_bias", [], "logit_bias must be an object of token ids to numbers, got []"),
    ("logit_bias", {"x": 1}, "logit_bias keys must be token ids (0 or more), got 'x'"),
    ("logit_bias", {"-1": 1}, "logit_bias keys must be token ids (0 or more), got '-1'"),
    ("logit_bias", {"1": 101}, "logit_bias values must be numbers in [-100, 100], got 101"),
    ("logit_bias", {"1": True}, "logit_bias values must be numbers in [-100, 100], got True"),
    ("logit_bias", {"1": "1"}, "logit_bias values must be numbers in [-100, 100], got '1'"),
    ("logit_bias", {str(2**63): 1}, "logit_bias keys must be token ids within 64 bits"),
    ("logit_bias", {str(i): 0 for i in range(301)}, "logit_bias may hold at most 300 tokens"),
]


@pytest.mark.parametrize("endpoint", list(PARSERS))
@pytest.mark.parametrize(("field", "value", "message"), SAMPLING_REFUSED)
def test_a_sampling_field_out_of_its_range_is_a_bad_request_naming_it(
    endpoint: str, field: str, value: Any, message: str
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        PARSERS[endpoint]({field: value})
    assert str(caught.value).startswith(message)


def test_include_stop_str_in_output_is_read_into_include_stop() -> None:
    for parse in PARSERS.values():
        assert parse({}).shared.include_stop is False
        assert parse({"include_stop_str_in_output": False}).shared.include_stop is False
        assert parse({"include_stop_str_in_output": True}).shared.include_stop is True


def test_min_tokens_beyond_max_tokens_is_refused_once_max_tokens_is_known() -> None:
    asked = completion({"prompt": "a", "min_tokens": 5})  # max_tokens: the server's to decide
    assert asked.shared.sampling["min_tokens"] == 5
    with pytest.raises(ts.BadRequest, match=r"^min_tokens must be at most max_tokens=4, got 5$"):
        asked.requests("r", asked.prompts, [4])
    assert asked.requests("r", asked.prompts, [5])[0].params.min_tokens == 5


# --- a request body, written ------------------------------------------------------------------


def test_a_client_writes_what_a_server_reads() -> None:
    params = ts.SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, seed=11, stop=("x",))
    body = openai.completion_request("m", ts.Request("r", "hello", params))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    asked = openai.parse_completion(json.dumps(body).encode())
    assert (asked.prompts, asked.shared.model, asked.shared.max_tokens) == (("hello",), "m", 7)
    assert asked.shared.stream is True and asked.shared.include_usage is True
    (request,) = asked.requests("r", asked.prompts, [7])
    assert request == ts.Request("r", "hello", params)
    ids = openai.completion_request("m", ts.Request("r", (1, 2), ts.SamplingParams(max_tokens=1)))
    assert ids["prompt"] == [1, 2] and "seed" not in ids and "stop" not in ids
    assert openai.parse_completion(json.dumps(ids).encode()).prompts == ((1, 2),)


def test_a_chat_request_sends_the_prompt_as_one_user_message() -> None:
    body = openai.chat_request("m", ts.Request("r", "hi", ts.SamplingParams(max_tokens=2)))
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["max_tokens"] == 2
    assert "continue_final_message" not in body
    with pytest.raises(ts.BadRequest, match="text prompt, not token ids"):
        openai.chat_request("m", ts.Request("r", (1, 2), ts.SamplingParams(max_tokens=1)))


# --- a response, written and read back --------------------------------------------------------


def test_a_whole_completion() -> None:
    choice = openai.COMPLETION.whole_choice(0, "text", None, 0, "length")
    body = openai.COMPLETION.whole("c", "m", 1700, [choice], ts.Usage(2, 3))
    assert body == {
        "id": "c",
        "object": "text_completion",
        "created": 1700,
        "model": "m",
        "choices": [{"index": 0, "text": "text", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
    }
    stopped = openai.COMPLETION.whole(
        "c", "m", 1700, [openai.COMPLETION.whole_choice(0, "", None, 0, "stop")], None
    )
    assert stopped["choices"][0]["finish_reason"] == "stop" and "usage" not in stopped
    assert (openai.COMPLETION.prefix, openai.COMPLETION.object_event) == ("cmpl", "text_completion")


def test_a_whole_completion_choice_with_logprobs_counts_offsets_from_the_echo() -> None:
    logprobs = [ts.TokenLogprob("b", -0.5, (("b", -0.5), ("c", -1.0))), ts.TokenLogprob("cd", -1.5)]
    choice = openai.COMPLETION.whole_choice(1, "a:bcd", logprobs, 2, "stop")
    assert choice == {
        "index": 1,
        "text": "a:bcd",
        "logprobs": {
            "tokens": ["b", "cd"],
            "token_logprobs": [-0.5, -1.5],
            "top_logprobs": [{"b": -0.5, "c": -1.0}, {}],
            "text_offset": [2, 3],
        },
        "finish_reason": "stop",
    }


def test_each_streamed_chunk_reads_back_as_it_was() -> None:
    chunks = [
        ts.Chunk("c", (5, 6), "ab"),
        ts.Chunk("c", (7,), "c", finish_reason=ts.FinishReason.LENGTH, usage=ts.Usage(1, 3)),
    ]
    output = openai.ChoiceOutput(())
    read = []
    for chunk in chunks:
        piece = output.feed(chunk)
        reason = openai.finish_reason_name(piece.finish_reason)
        choice = openai.COMPLETION.piece_choice(0, piece, reason)
        read.append(read_back(openai.COMPLETION.event("c", "m", 1700, choice, piece.usage)))
    assert read == [
        openai.StreamEvent((openai.StreamChoice("ab", (5, 6), None),), None),
        openai.StreamEvent(
            (openai.StreamChoice("c", (7,), ts.FinishReason.LENGTH),), ts.Usage(1, 3)
        ),
    ]
    assert openai.sse_data(openai.SSE_DONE.decode().split("\n")[0]) == openai.DONE_DATA


def test_an_echoed_prompt_opens_a_completion_stream_and_nothing_opens_it_otherwise() -> None:
    assert openai.COMPLETION.opening(2, "") is None
    first = openai.COMPLETION.opening(2, "once")
    assert first == {"index": 2, "text": "once", "logprobs": None, "finish_reason": None}
    event = openai.COMPLETION.event("c", "m", 1, first)
    assert read_back(event) == openai.StreamEvent((openai.StreamChoice("once", (), None),), None)


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


# --- fields no tier honours, and stream_options ---------------------------------------------

UNHONOURED: dict[str, tuple[list[Any], list[Any]]] = {
    # field: (neutral values, accepted; values that ask for something, refused)
    "best_of": ([None, 1, 1.0], [2, 0, True]),
    "suffix": ([None], ["", "end"]),
    "use_beam_search": ([None, False], [True, 0]),
    "prompt_logprobs": ([None], [0, 1, False]),
    "tools": ([None, []], [[{"type": "function", "function": {"name": "f"}}]]),
    "tool_choice": ([None, "none"], ["auto", "required"]),
    "functions": ([None, []], [[{"name": "f"}]]),
    "function_call": ([None, "none"], ["auto"]),
    "response_format": ([None, {"type": "text"}], [{"type": "json_object"}, "text"]),
    "audio": ([None], [{"voice": "alloy", "format": "wav"}]),
    "modalities": ([None, ["text"]], [["text", "audio"], ["audio"], "text"]),
    "prediction": ([None], [{"type": "content", "content": "x"}]),
}

MOVED_OUT = ("echo", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "top_k",
             "min_p", "repetition_penalty", "min_tokens", "ignore_eos",
             "include_stop_str_in_output")  # fmt: skip
"""Fields the table held before the codec honoured them (tested above and per endpoint)."""


def test_the_table_of_unhonoured_fields_is_the_one_tested() -> None:
    assert list(openai.UNHONOURED) == list(UNHONOURED)
    assert not set(MOVED_OUT) & set(openai.UNHONOURED)


@pytest.mark.parametrize("endpoint", list(PARSERS))
@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, (neutral, _) in UNHONOURED.items() for value in neutral],
)
def test_an_unhonoured_field_at_its_neutral_value_is_accepted(
    endpoint: str, field: str, value: Any
) -> None:
    asked = PARSERS[endpoint]({field: value})
    assert asked == PARSERS[endpoint]({})


@pytest.mark.parametrize("endpoint", list(PARSERS))
@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, (_, refused) in UNHONOURED.items() for value in refused],
)
def test_an_unhonoured_field_that_asks_for_something_is_a_bad_request_naming_it(
    endpoint: str, field: str, value: Any
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        PARSERS[endpoint]({field: value})
    message = str(caught.value)
    assert message.startswith(f"{field} is not supported by this server: it accepts ")
    assert message.endswith(f", got {value!r}")


def test_the_first_unhonoured_field_in_the_tables_order_is_named() -> None:
    body = {"prompt": "a", "modalities": ["audio"], "use_beam_search": True, "best_of": 3}
    with pytest.raises(ts.BadRequest, match=r"^best_of is not supported"):
        completion(body)
    with pytest.raises(ts.BadRequest, match=r"^use_beam_search is not supported"):
        completion({**body, "best_of": None})
    # the shared fields are checked first
    with pytest.raises(ts.BadRequest, match=r"^n must be"):
        completion({**body, "n": 17})


def test_unknown_fields_stay_ignored() -> None:
    asked = openai.parse_completion(b'{"prompt": "a", "user": "u1", "whatever": [1, {"x": 2}]}')
    assert asked == openai.parse_completion(b'{"prompt": "a"}')


@pytest.mark.parametrize("endpoint", list(PARSERS))
def test_stream_options_include_usage_is_read_with_a_stream_only(endpoint: str) -> None:
    def read(body: dict[str, Any]) -> bool:
        return PARSERS[endpoint](body).shared.include_usage

    assert read({"stream": True, "stream_options": {"include_usage": True}}) is True
    assert read({"stream": True, "stream_options": {"include_usage": False}}) is False
    assert read({"stream": True, "stream_options": {"include_usage": None}}) is False
    assert read({"stream": True, "stream_options": {}}) is False
    assert read({"stream": True, "stream_options": None}) is False
    assert read({"stream": True}) is False
    assert read({"stream_options": None}) is False
    neutral = {"include_usage": True, "continuous_usage_stats": False}
    assert read({"stream": True, "stream_options": neutral}) is True
    assert openai.include_usage({"stream_options": {"include_usage": True}}, True) is True


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
        completion({"prompt": "a", **body})
    assert str(caught.value) == message


def test_a_stream_that_asked_for_its_usage_ends_with_an_event_of_it_alone() -> None:
    answers = openai.COMPLETION
    output = openai.ChoiceOutput(())
    usage = ts.Usage(3, 4)
    piece = output.feed(ts.Chunk("cmpl-1", (1, 2), "ab"))
    first = answers.event("cmpl-1", "m", 7, answers.piece_choice(0, piece, None), usage_null=True)
    piece = output.feed(ts.Chunk("cmpl-1", (3,), "c", ts.FinishReason.LENGTH, usage))
    end = answers.event("cmpl-1", "m", 7, answers.piece_choice(0, piece, "length"), None,
                        usage_null=True)  # fmt: skip
    last = answers.event("cmpl-1", "m", 7, None, usage, usage_null=True)
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
    assert answers.event("c", "m", 7, None, usage_null=True).endswith(
        b'"choices":[],"usage":null}\n\n'
    )
    # without include_usage, an event has no usage key at all
    assert "usage" not in json.loads(answers.event("c", "m", 7, None).decode()[6:])


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
