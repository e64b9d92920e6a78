"""``/v1/chat/completions`` in the codec: bodies read (messages and the chat's own fields), the
default chat template and a tokenizer's, the answers written, and a client's body."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

import trio_supervise as ts
from trio_supervise import openai
from trio_supervise._types import ChatMessage

USER = {"role": "user", "content": "hi"}


def chat(body: dict[str, Any]) -> openai.Generation:
    return openai.parse_chat(json.dumps(body).encode())


def read_back(event: bytes) -> openai.StreamEvent:
    data = openai.sse_data(event.decode().split("\n")[0])
    assert data is not None
    return openai.decode_event(data, "http://backend")


# --- a body, read -----------------------------------------------------------------------------


def test_a_chat_is_read_with_its_defaults() -> None:
    asked = chat({"messages": [USER], "seed": 4})
    assert asked.endpoint == "chat" and asked.prompts == ()
    assert asked.messages == (ChatMessage("user", "hi"),)
    assert (asked.logprobs, asked.echo) == (None, False)
    assert (asked.add_generation_prompt, asked.continue_final) == (True, False)
    assert (asked.shared.seed, asked.shared.n, asked.shared.max_tokens) == (4, 1, None)


def test_every_role_and_text_parts_are_read() -> None:
    asked = chat(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}],
                },
                {"role": "assistant", "content": "hi", "tool_calls": [], "name": None},
                {"role": "user", "content": []},
            ]
        }
    )
    assert asked.messages == (
        ChatMessage("system", "be brief"),  # a developer's message is read as the system's
        ChatMessage("system", "and kind"),
        ChatMessage("user", "hello"),
        ChatMessage("assistant", "hi"),
        ChatMessage("user", ""),
    )


def test_a_chat_may_hold_max_messages() -> None:
    assert openai.MAX_MESSAGES == 1024
    asked = chat({"messages": [USER] * 1024})
    assert len(asked.messages) == 1024


def test_logprobs_and_top_logprobs_are_read() -> None:
    assert chat({"messages": [USER], "logprobs": False}).logprobs is None
    assert chat({"messages": [USER], "logprobs": True}).logprobs == 0
    assert chat({"messages": [USER], "logprobs": True, "top_logprobs": 5}).logprobs == 5
    assert chat({"messages": [USER], "logprobs": True, "top_logprobs": 20}).logprobs == 20
    asked = chat({"messages": [USER], "logprobs": True, "top_logprobs": 3, "n": 2})
    requests = asked.requests("c", ["user: hi\nassistant: "], [4])
    assert [r.params.logprobs for r in requests] == [3, 3]


def test_continue_final_message_continues_the_assistants_last_message() -> None:
    messages = [USER, {"role": "assistant", "content": "Hel"}]
    asked = chat({"messages": messages, "add_generation_prompt": False,
                  "continue_final_message": True})  # fmt: skip
    assert (asked.add_generation_prompt, asked.continue_final) == (False, True)
    (request,) = asked.requests("c", ["user: hi\nassistant: Hel"], [3])
    assert request.continue_final is True and request.messages == asked.messages
    no_prompt = chat({"messages": [USER], "add_generation_prompt": False})
    assert (no_prompt.add_generation_prompt, no_prompt.continue_final) == (False, False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]},
         "messages[0].role must be 'system', 'developer', 'user' or 'assistant' (this server has "
         "no tools), got 'tool'"),
        ({"messages": [USER, {"role": "function", "content": "x"}]},
         "messages[1].role must be 'system'"),
        ({"messages": [{"content": "x"}]}, "messages[0].role must be 'system'"),
        ({}, "messages must be a non-empty list of messages, got None"),
        ({"messages": "hi"}, "messages must be a non-empty list of messages, got 'hi'"),
        ({"messages": {"role": "user"}}, "messages must be a non-empty list of messages"),
        ({"messages": []}, "messages must be a non-empty list of messages, got []"),
        ({"messages": [USER] * 1025}, "messages may hold at most 1024 messages, got 1025"),
        ({"messages": ["hi"]}, "messages[0] must be an object with a role and content, got 'hi'"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         'messages[0].content[0] must be a text part {"type": "text", "text": ...} (this server '
         "takes text only)"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
         "messages[0].content[0] must be a text part"),
        ({"messages": [{"role": "user", "content": ["hi"]}]},
         "messages[0].content[0] must be a text part"),
        ({"messages": [{"role": "user", "content": None}]},
         "messages[0].content must be a string or a list of text parts, got None"),
        ({"messages": [{"role": "user"}]}, "messages[0].content must be a string"),
        ({"messages": [USER, {"role": "assistant", "content": "",
                              "tool_calls": [{"id": "c1", "type": "function"}]}]},
         "messages[1].tool_calls is not supported by this server, got [{'id': 'c1'"),
        ({"messages": [{"role": "user", "content": "x", "name": "ann"}]},
         "messages[0].name is not supported by this server, got 'ann'"),
        ({"messages": [{"role": "assistant", "content": "x", "function_call": {"name": "f"}}]},
         "messages[0].function_call is not supported by this server"),
        ({"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]},
         "messages[0].audio is not supported by this server"),
        ({"messages": [{"role": "user", "content": "\ud800"}]},
         "the body must be a JSON object: a string holds a lone UTF-16 surrogate"),
        ({"messages": [USER], "top_logprobs": 2},
         "top_logprobs needs logprobs: true, got top_logprobs=2"),
        ({"messages": [USER], "logprobs": False, "top_logprobs": 0},
         "top_logprobs needs logprobs: true, got top_logprobs=0"),
        ({"messages": [USER], "logprobs": True, "top_logprobs": 21},
         "top_logprobs must be an integer in [0, 20], got 21"),
        ({"messages": [USER], "logprobs": 1}, "logprobs must be a boolean, got 1"),
        ({"messages": [USER], "continue_final_message": True, "add_generation_prompt": False},
         "continue_final_message needs add_generation_prompt: false and a last message from the "
         "assistant, got add_generation_prompt=false and a last message from the user"),
        ({"messages": [USER, {"role": "assistant", "content": "He"}],
          "continue_final_message": True},
         "continue_final_message needs add_generation_prompt: false and a last message from the "
         "assistant, got add_generation_prompt=true and a last message from the assistant"),
        ({"messages": [USER], "continue_final_message": 1},
         "continue_final_message must be a boolean, got 1"),
        ({"messages": [USER], "add_generation_prompt": "no"},
         "add_generation_prompt must be a boolean, got 'no'"),
        ({"messages": [USER], "echo": True},
         "echo is not supported by the chat endpoint, got True"),
        ({"messages": [USER], "chat_template": "{{ x }}"},
         "chat_template is not supported by this server, got '{{ x }}'"),
        ({"messages": [USER], "chat_template_kwargs": {}},
         "chat_template_kwargs is not supported by this server"),
        ({"messages": [USER], "reasoning_effort": "low"},
         "reasoning_effort is not supported by this server, got 'low'"),
        ({"messages": [USER], "tools": [{"type": "function"}]}, "tools is not supported"),
        ({"messages": [USER], "n": 17}, "n must be an integer in [1, 16], got 17"),
    ],
)  # fmt: skip
def test_a_bad_chat_is_a_bad_request_that_names_the_field(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ts.BadRequest) as caught:
        chat(body)
    assert str(caught.value).startswith(message)


def test_echo_false_or_null_is_accepted_by_a_chat() -> None:
    assert chat({"messages": [USER], "echo": False}) == chat({"messages": [USER]})
    assert chat({"messages": [USER], "echo": None}) == chat({"messages": [USER]})


def test_echo_that_is_a_number_is_refused_by_a_chat_as_by_a_completion() -> None:
    with pytest.raises(ts.BadRequest, match=r"^echo must be a boolean, got 0$"):
        openai.parse_completion(b'{"prompt": "a", "echo": 0}')
    with pytest.raises(ts.BadRequest, match=r"^echo"):
        chat({"messages": [USER], "echo": 0})


def test_the_messages_are_checked_before_the_other_fields() -> None:
    with pytest.raises(ts.BadRequest, match=r"^messages must be"):
        chat({"messages": [], "n": 17, "echo": True})


# --- the default template and a tokenizer's ---------------------------------------------------

MESSAGES = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hel"),
)


def test_the_default_template_ends_with_the_assistants_turn() -> None:
    assert (
        openai.render_chat(MESSAGES) == "system: Be brief.\nuser: Hi\nassistant: Hel\nassistant: "
    )
    assert openai.render_chat(MESSAGES[:2]) == "system: Be brief.\nuser: Hi\nassistant: "
    assert openai.render_chat(MESSAGES[:2], None) == openai.render_chat(MESSAGES[:2])


def test_the_default_template_without_a_generation_prompt() -> None:
    rendered = openai.render_chat(MESSAGES[:2], add_generation_prompt=False)
    assert rendered == "system: Be brief.\nuser: Hi\n"


def test_the_default_template_leaves_the_final_message_open_to_continue() -> None:
    rendered = openai.render_chat(MESSAGES, add_generation_prompt=False, continue_final=True)
    assert rendered == "system: Be brief.\nuser: Hi\nassistant: Hel"


class FakeTokenizer:
    """What render_chat needs of a ``transformers`` tokenizer."""

    def __init__(self, template: str | None, gives: Any = "RENDERED") -> None:
        self.chat_template = template
        self.gives = gives
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
        self.calls.append((conversation, kwargs))
        return self.gives


@pytest.mark.parametrize(
    ("generation", "continue_final"), [(True, False), (False, False), (False, True)]
)
def test_a_tokenizer_with_a_chat_template_renders_it(
    generation: bool, continue_final: bool
) -> None:
    tokenizer = FakeTokenizer("{% for m in messages %}...{% endfor %}")
    rendered = openai.render_chat(
        MESSAGES, tokenizer, add_generation_prompt=generation, continue_final=continue_final
    )
    assert rendered == "RENDERED"
    assert tokenizer.calls == [
        (
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hel"},
            ],
            {
                "tokenize": False,
                "add_generation_prompt": generation,
                "continue_final_message": continue_final,
            },
        )
    ]


def test_a_tokenizer_without_a_chat_template_gets_the_default_one() -> None:
    tokenizer = FakeTokenizer(None)
    assert openai.render_chat(MESSAGES[:2], tokenizer) == openai.render_chat(MESSAGES[:2])
    assert tokenizer.calls == []
    assert openai.render_chat(MESSAGES[:2], object()) == openai.render_chat(MESSAGES[:2])


def test_a_chat_template_that_gives_no_text_is_a_bad_request() -> None:
    with pytest.raises(ts.BadRequest, match=r"^the model's chat template gave \[1, 2\], not text"):
        openai.render_chat(MESSAGES, FakeTokenizer("t", gives=[1, 2]))


# --- answers, written and read back -----------------------------------------------------------


def test_a_whole_chat_answer() -> None:
    logprobs = [ts.TokenLogprob("Hi", -0.25, (("Hi", -0.25), ("Yo", -2.0)))]
    choices = [
        openai.CHAT.whole_choice(0, "Hi", logprobs, 0, "stop"),
        openai.CHAT.whole_choice(1, "Hello", None, 0, "length"),
    ]
    body = openai.CHAT.whole("chatcmpl-1", "m", 9, choices, ts.Usage(4, 3))
    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 9,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "logprobs": {
                    "content": [
                        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
                            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                            {"token": "Yo", "logprob": -2.0, "bytes": [89, 111]},
                        ]}
                    ]
                },
                "finish_reason": "stop",
            },
            {"index": 1, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None,
             "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
    }  # fmt: skip
    assert openai.CHAT.prefix == "chatcmpl"


def test_a_chat_stream_opens_each_choice_then_sends_deltas_a_front_reads_back() -> None:
    opening = openai.CHAT.opening(1, "ignored")
    assert opening == {"index": 1, "delta": {"role": "assistant", "content": ""},
                       "logprobs": None, "finish_reason": None}  # fmt: skip
    output = openai.ChoiceOutput(("\n",))
    pieces = [
        output.feed(ts.Chunk("c", (1, 2), "Hi")),
        output.feed(ts.Chunk("c", (3,), "\n", ts.FinishReason.STOP, ts.Usage(2, 3))),
    ]
    choices = [
        openai.CHAT.piece_choice(1, p, openai.finish_reason_name(p.finish_reason)) for p in pieces
    ]
    assert choices == [
        {"index": 1, "delta": {"content": "Hi"}, "logprobs": None, "finish_reason": None,
         "token_ids": [1, 2]},
        {"index": 1, "delta": {}, "logprobs": None, "finish_reason": "stop", "token_ids": [3]},
    ]  # fmt: skip
    events = [openai.CHAT.event("chatcmpl-1", "m", 9, c) for c in [opening, *choices]]
    body = json.loads(events[0].decode().removeprefix("data: "))
    assert (body["object"], body["id"], body["choices"]) == (
        "chat.completion.chunk", "chatcmpl-1", [opening]
    )  # fmt: skip
    assert [read_back(e).choices for e in events] == [
        (openai.StreamChoice("", (), None),),
        (openai.StreamChoice("Hi", (1, 2), None),),
        (openai.StreamChoice("", (3,), ts.FinishReason.STOP),),
    ]


def test_a_chat_delta_with_no_text_before_the_end_still_has_content() -> None:
    piece = openai.Piece("", (5,), None, 0)
    assert openai.CHAT.event_choice(0, piece, None)["delta"] == {"content": ""}
    ended = openai.Piece("!", (6,), None, 0, ts.FinishReason.LENGTH)
    assert openai.CHAT.event_choice(0, ended, "length")["delta"] == {"content": "!"}


# --- a client's body --------------------------------------------------------------------------


def test_a_chat_request_sends_its_messages() -> None:
    params = ts.SamplingParams(max_tokens=5, temperature=0.2, seed=8, stop=("\n",))
    messages = (ChatMessage("system", "S"), ChatMessage("user", "U"))
    request = ts.Request("r", "system: S\nuser: U\nassistant: ", params, messages=messages)
    body = openai.chat_request("m", request)
    assert body["model"] == "m"
    assert body["messages"] == [{"role": "system", "content": "S"},
                                {"role": "user", "content": "U"}]  # fmt: skip
    assert "continue_final_message" not in body and "add_generation_prompt" not in body
    assert body | openai.sampling_body(params) == body  # the sampling fields are all there
    asked = chat(body)
    assert asked.messages == messages and asked.continue_final is False
    (read,) = asked.requests("r", [request.prompt], [5])
    assert read == request


def test_a_chat_request_that_continues_the_final_message_says_so() -> None:
    messages = (ChatMessage("user", "U"), ChatMessage("assistant", "Par"))
    params = ts.SamplingParams(max_tokens=3)
    request = ts.Request("r", "user: U\nassistant: Par", params, messages=messages,
                         continue_final=True)  # fmt: skip
    body = openai.chat_request("m", request)
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "Par"}
    asked = chat(body)
    assert (asked.continue_final, asked.add_generation_prompt) == (True, False)
    (read,) = asked.requests("r", [request.prompt], [3])
    assert read == request


def test_a_chat_request_without_max_tokens_asked_leaves_it_to_the_server() -> None:
    params = ts.SamplingParams(max_tokens=4000)
    request = ts.Request("r", "user: U\nassistant: ", params,
                         messages=(ChatMessage("user", "U"),), max_tokens_asked=False)  # fmt: skip
    body = openai.chat_request("m", request)
    assert "max_tokens" not in body and body["messages"] == [{"role": "user", "content": "U"}]
    assert chat(body).shared.max_tokens is None
    asked = openai.chat_request("m", attrs.evolve(request, max_tokens_asked=True))
    assert asked["max_tokens"] == 4000


def test_a_chat_request_never_sends_logprobs() -> None:
    params = ts.SamplingParams(max_tokens=3, logprobs=2, top_k=5)
    body = openai.chat_request("m", ts.Request("r", "hi", params))
    assert "logprobs" not in body and "top_logprobs" not in body and body["top_k"] == 5
