"""vLLM's ``/tokenize`` and ``/detokenize`` bodies, read and checked."""

from __future__ import annotations

import json
from typing import Any

import pytest

import trio_supervise as ts
from trio_supervise import openai
from trio_supervise._types import ChatMessage
from trio_supervise.openai._tokenize import Detokenize, Tokenize


def tokenize(body: dict[str, Any]) -> Tokenize:
    return openai.parse_tokenize(json.dumps(body).encode())


def detokenize(body: dict[str, Any]) -> Detokenize:
    return openai.parse_detokenize(json.dumps(body).encode())


def test_the_paths_are_vllms() -> None:
    assert (openai.TOKENIZE_PATH, openai.DETOKENIZE_PATH) == ("/tokenize", "/detokenize")


def test_a_prompt_to_tokenize() -> None:
    assert tokenize({"model": "m", "prompt": "Hello"}) == Tokenize("m", "Hello", (), False)
    assert tokenize({"prompt": ""}) == Tokenize(None, "", (), False)
    assert tokenize({"prompt": "a", "add_special_tokens": False}).prompt == "a"


def test_messages_to_tokenize() -> None:
    parts = [{"type": "text", "text": "U"}]
    body = {"model": "m", "messages": [{"role": "developer", "content": "S"},
                                       {"role": "user", "content": parts}]}  # fmt: skip
    messages = (ChatMessage("system", "S"), ChatMessage("user", "U"))
    assert tokenize(body) == Tokenize("m", None, messages, True)
    assert tokenize({**body, "add_generation_prompt": False}) == Tokenize(
        "m", None, messages, False
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "prompt must be a string (or give messages), got None"),
        ({"prompt": [1, 2]}, "prompt must be a string (or give messages), got [1, 2]"),
        ({"prompt": "a", "model": 3}, "model must be a string, got 3"),
        ({"prompt": "a", "add_special_tokens": True},
         "add_special_tokens is not supported by this server, got true"),
        ({"prompt": "a", "add_special_tokens": 1}, "add_special_tokens must be a boolean, got 1"),
        ({"messages": []}, "messages must be a non-empty list of messages, got []"),
        ({"messages": None}, "messages must be a non-empty list of messages, got None"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be 'system'"),
        ({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": 1},
         "add_generation_prompt must be a boolean, got 1"),
    ],
)  # fmt: skip
def test_a_bad_tokenize_body_is_a_bad_request_naming_the_field(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        tokenize(body)
    assert str(caught.value).startswith(message)


def test_tokens_to_detokenize() -> None:
    assert detokenize({"model": "m", "tokens": [1, 2, 3]}) == Detokenize("m", (1, 2, 3))
    assert detokenize({"tokens": []}) == Detokenize(None, ())
    assert detokenize({"tokens": [0, 2**63 - 1]}).tokens == (0, 2**63 - 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "tokens must be a list of at most 1048576 token ids (integers in [0, 2**63 - 1]), "
             "got None"),
        ({"tokens": "12"}, "tokens must be a list of at most 1048576 token ids"),
        ({"tokens": [-1]}, "tokens must be a list of at most 1048576 token ids"),
        ({"tokens": [2**63]}, "tokens must be a list of at most 1048576 token ids"),
        ({"tokens": [True]}, "tokens must be a list of at most 1048576 token ids"),
        ({"tokens": [1.0]}, "tokens must be a list of at most 1048576 token ids"),
        ({"tokens": [[1]]}, "tokens must be a list of at most 1048576 token ids"),
        ({"tokens": [1], "model": ["m"]}, "model must be a string, got ['m']"),
    ],
)  # fmt: skip
def test_a_bad_detokenize_body_is_a_bad_request_naming_the_field(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        detokenize(body)
    assert str(caught.value).startswith(message)


def test_a_body_that_is_not_an_object_is_a_bad_request() -> None:
    for parse in (openai.parse_tokenize, openai.parse_detokenize):
        with pytest.raises(ts.BadRequest, match=r"^the body must be a JSON object, got list$"):
            parse(b"[]")
