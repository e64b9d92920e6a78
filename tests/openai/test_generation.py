"""A generating body's choices: a completion's prompt forms, the requests of ``n`` choices per
prompt (ids, indexes, seeds), the usage over choices, and the sampling fields a client writes
and a server reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest

import trio_supervise as ts
from trio_supervise import openai
from trio_supervise._types import ChatMessage


def completion(body: dict[str, Any]) -> openai.Generation:
    return openai.parse_completion(json.dumps(body).encode())


# --- a completion's prompt --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("once", ("once",)),
        ("", ("",)),
        ([1, 2, 3], ((1, 2, 3),)),
        ([0, 2**63 - 1], ((0, 2**63 - 1),)),
        (["a", "b"], ("a", "b")),
        ([[1, 2], [3]], ((1, 2), (3,))),
    ],
)
def test_each_prompt_form_is_read(prompt: Any, prompts: tuple[openai.Prompt, ...]) -> None:
    assert completion({"prompt": prompt}).prompts == prompts


@pytest.mark.parametrize(
    "prompt",
    [None, 1, [], [1, "a"], [True], [1.0], [-1], [2**63], [[1], []], [[1], "a"], [["a"]], {}],
)
def test_a_bad_prompt_is_a_bad_request_naming_it(prompt: Any) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        completion({"prompt": prompt})
    assert str(caught.value).startswith(
        "prompt must be a string, a non-empty list of token ids (integers in [0, 2**63 - 1]), "
        "or a non-empty list of either, got "
    )


def test_n_times_the_prompts_may_be_at_most_max_choices() -> None:
    assert completion({"prompt": ["a", "b"], "n": 8}).shared.n == 8
    assert len(completion({"prompt": [[1]] * 16}).prompts) == 16
    with pytest.raises(ts.BadRequest) as caught:
        completion({"prompt": ["a", "b"], "n": 9})
    assert str(caught.value) == (
        "a request may ask for at most 16 choices (n times the prompts), got n=9 for 2 prompts"
    )
    with pytest.raises(ts.BadRequest, match=r"got n=1 for 17 prompts$"):
        completion({"prompt": ["a"] * 17})


def test_echo_and_logprobs_are_read_but_not_together() -> None:
    assert completion({"prompt": "a", "echo": True}).echo is True
    assert completion({"prompt": "a", "echo": False}).echo is False
    assert completion({"prompt": "a", "logprobs": 0}).logprobs == 0
    assert completion({"prompt": "a", "logprobs": 20}).logprobs == 20
    assert completion({"prompt": "a", "echo": True, "logprobs": None}).echo is True
    refused: list[tuple[dict[str, Any], str]] = [
        ({"echo": 1}, "echo must be a boolean, got 1"),
        ({"logprobs": 21}, "logprobs must be an integer in [0, 20], got 21"),
        ({"logprobs": -1}, "logprobs must be an integer in [0, 20], got -1"),
        ({"logprobs": True}, "logprobs must be an integer in [0, 20], got True"),
        ({"logprobs": 1.0}, "logprobs must be an integer in [0, 20], got 1.0"),
        ({"echo": True, "logprobs": 0}, "echo with logprobs is not supported by this server"),
    ]
    for bad, message in refused:
        with pytest.raises(ts.BadRequest) as caught:
            completion({"prompt": "a", **bad})
        assert str(caught.value).startswith(message)


# --- the requests of a body's choices ---------------------------------------------------------


def test_one_choice_keeps_the_answers_id() -> None:
    asked = completion({"prompt": "a", "seed": 5})
    (request,) = asked.requests("cmpl-x", asked.prompts, [3])
    assert request.id == "cmpl-x" and request.params.seed == 5


def test_each_choice_is_a_request_by_index_prompt_times_n_plus_choice() -> None:
    asked = completion({"prompt": ["p", "q"], "n": 3, "seed": 7, "max_tokens": 9,
                        "continuation": "resume", "stop": "."})  # fmt: skip
    requests = asked.requests("cmpl-x", ["P", "Q"], [4, 6])
    assert [r.id for r in requests] == [f"cmpl-x-{i}" for i in range(6)]
    assert [r.prompt for r in requests] == ["P", "P", "P", "Q", "Q", "Q"]
    assert [r.params.max_tokens for r in requests] == [4, 4, 4, 6, 6, 6]
    seeds = [openai.choice_seed(7, i) for i in range(3)]
    assert [r.params.seed for r in requests] == seeds * 2
    assert seeds[0] == 7 and len(set(seeds)) == 3  # choice 0 keeps the request's seed
    assert all(r.continuation == "resume" and r.params.stop == (".",) for r in requests)
    assert all(r.messages == () and r.params.logprobs is None for r in requests)
    # the same body gives the same requests
    assert asked.requests("cmpl-x", ["P", "Q"], [4, 6]) == requests
    assert (
        completion({"prompt": "p", "n": 3, "seed": 7}).requests("c", ["P"], [4])[2].params.seed
        == seeds[2]
    )


def test_a_choice_seed_is_derived_reproducibly_within_64_bits() -> None:
    assert openai.choice_seed(None, 0) is None and openai.choice_seed(None, 3) is None
    assert openai.choice_seed(-5, 0) == -5
    derived = [openai.choice_seed(s, i) for s in (0, 1, -(2**63), 2**63 - 1) for i in (1, 2, 15)]
    assert derived == [openai.choice_seed(s, i) for s in (0, 1, -(2**63), 2**63 - 1)
                       for i in (1, 2, 15)]  # fmt: skip
    assert len(set(derived)) == len(derived)
    assert all(isinstance(d, int) and openai.INT64[0] <= d <= openai.INT64[1] for d in derived)
    assert openai.choice_seed(1, 1) != openai.choice_seed(2, 1)


def test_an_unseeded_body_gives_unseeded_choices() -> None:
    asked = completion({"prompt": "a", "n": 2})
    assert [r.params.seed for r in asked.requests("c", asked.prompts, [1])] == [None, None]


def test_logprobs_asked_for_are_set_on_every_choice() -> None:
    asked = completion({"prompt": ["a", "b"], "n": 2, "logprobs": 3})
    assert {r.params.logprobs for r in asked.requests("c", asked.prompts, [2, 2])} == {3}


def test_a_chats_choices_carry_its_messages() -> None:
    body = {"messages": [{"role": "developer", "content": "S"}, {"role": "user", "content": "U"}],
            "n": 2, "seed": 1}  # fmt: skip
    asked = openai.parse_chat(json.dumps(body).encode())
    requests = asked.requests("chatcmpl-x", ["rendered"], [5])
    messages = (ChatMessage("system", "S"), ChatMessage("user", "U"))
    assert [(r.id, r.prompt, r.messages) for r in requests] == [
        ("chatcmpl-x-0", "rendered", messages),
        ("chatcmpl-x-1", "rendered", messages),
    ]
    assert [r.params.seed for r in requests] == [1, openai.choice_seed(1, 1)]
    assert not any(r.continue_final for r in requests)


def test_shared_params_are_each_choices_sampling_parameters() -> None:
    shared = completion({"prompt": "a", "temperature": 0.5, "seed": 2, "top_k": 3}).shared
    assert shared.params(10, 0) == ts.SamplingParams(max_tokens=10, temperature=0.5, seed=2,
                                                     top_k=3)  # fmt: skip
    assert shared.params(10, 1).seed == openai.choice_seed(2, 1)


# --- usage over choices -----------------------------------------------------------------------


def test_usage_counts_each_prompt_once_and_every_choices_completion() -> None:
    usages: list[ts.Usage | None] = [ts.Usage(3, 5), ts.Usage(3, 7), ts.Usage(4, 1), ts.Usage(4, 2)]
    assert openai.total_usage(usages, 2) == ts.Usage(7, 15)
    assert openai.total_usage([ts.Usage(3, 5), ts.Usage(3, 6)], 1) == ts.Usage(3, 11)
    assert openai.total_usage([ts.Usage(3, 5)], 1) == ts.Usage(3, 5)


def test_no_usage_where_a_choice_has_none() -> None:
    assert openai.total_usage([ts.Usage(3, 5), None], 1) is None
    assert openai.total_usage([], 1) is None


# --- the sampling fields, written by a client and read by a server ---------------------------

ROUND_TRIPS = [
    ts.SamplingParams(max_tokens=1),
    ts.SamplingParams(max_tokens=7, temperature=0.0, top_p=0.5, seed=-3, stop=("a", "bc")),
    ts.SamplingParams(max_tokens=2**63 - 1, temperature=2.0, seed=2**63 - 1),
    ts.SamplingParams(
        max_tokens=64,
        temperature=0.7,
        top_p=0.95,
        seed=11,
        stop=("\n\n",),
        top_k=40,
        min_p=0.05,
        presence_penalty=-1.5,
        frequency_penalty=2.0,
        repetition_penalty=1.1,
        min_tokens=8,
        ignore_eos=True,
        logit_bias=((7, -100.0), (50256, 2.5)),
    ),
]


@pytest.mark.parametrize("params", ROUND_TRIPS)
def test_what_a_front_sends_a_back_reads_to_the_same_sampling_params(
    params: ts.SamplingParams,
) -> None:
    body = openai.sampling_body(params)
    assert json.loads(json.dumps(body)) == body  # JSON as it is
    shared = openai.shared_fields(json.loads(json.dumps(body)))
    assert shared.max_tokens == params.max_tokens and shared.seed == params.seed
    assert shared.params(params.max_tokens, 0) == params
    assert (shared.stream, shared.include_usage) == (True, True)


def test_a_front_writes_only_the_extra_fields_set() -> None:
    assert openai.sampling_body(ts.SamplingParams(max_tokens=3)) == {
        "max_tokens": 3,
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = openai.sampling_body(ts.SamplingParams(max_tokens=3, top_k=2, logit_bias=((5, 1.0),)))
    assert (body["top_k"], body["logit_bias"]) == (2, {"5": 1.0})
    assert "min_p" not in body and "ignore_eos" not in body


def test_logprobs_are_not_sent_by_a_front() -> None:
    params = ts.SamplingParams(max_tokens=3, logprobs=5)
    body = openai.sampling_body(params)
    assert "logprobs" not in body and "top_logprobs" not in body
    read = openai.shared_fields(body).params(3, 0)
    assert read == ts.SamplingParams(max_tokens=3) and read.logprobs is None


def test_a_chat_body_reads_the_sampling_fields_as_a_completion_body_does() -> None:
    params = ROUND_TRIPS[-1]
    request = ts.Request("r", "p", params, messages=(ChatMessage("user", "p"),))
    asked = openai.parse_chat(json.dumps(openai.chat_request("m", request)).encode())
    assert asked.shared.params(params.max_tokens, 0) == params
    body = openai.completion_request("m", request)
    again = openai.parse_completion(json.dumps(body).encode())
    assert again.shared == asked.shared
