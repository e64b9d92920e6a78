"""``/v1/chat/completions``, both ways: a request body read into a :class:`Generation`
(:func:`parse_chat`), its messages rendered into a prompt (:func:`render_chat`), its answers
written (:data:`CHAT`), and a client's body (:func:`chat_request`).

A message is ``{"role", "content"}``: the role ``system`` (or ``developer``, read as system),
``user`` or ``assistant``; the content a string or a list of ``{"type": "text", "text"}``
parts (joined). Tool calls, tool messages, images and audio are a 400 naming them. A whole
answer's choice is ``{"index", "message": {"role": "assistant", "content"}, "logprobs",
"finish_reason"}``; a stream's first event of each choice has ``delta: {"role": "assistant",
"content": ""}``, then ``delta: {"content"}`` events, the last one with its ``finish_reason``.

The default template (a model's tokenizer with a ``chat_template`` renders with it instead) is
one line per message, ``{role}: {content}``, then ``assistant: `` where a new assistant message
begins (``add_generation_prompt``); with ``continue_final_message`` the last (assistant) message
is left open, and the answer continues it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._errors import BadRequest, shown
from .._types import ChatMessage, Request
from ._answers import Answers, Generation
from ._fields import field_bool, logprobs_count, refuse_unhonoured, sampling_body, shared_fields
from ._json import decode_object
from ._logprobs import chat_logprobs

__all__ = ["CHAT", "CHAT_PATH", "MAX_MESSAGES", "chat_request", "parse_chat", "read_messages",
           "render_chat"]  # fmt: skip

CHAT_PATH = "/v1/chat/completions"

MAX_MESSAGES = 1024
"""Messages one chat may hold."""

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

_CHAT_UNHONOURED = ("chat_template", "chat_template_kwargs", "reasoning_effort",
                    "web_search_options", "tool_calls")  # fmt: skip
"""Chat fields that would change the answer and that no runner honours: a 400 when set."""


def _content(content: Any, at: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(
                    f'{at}.content[{i}] must be a text part {{"type": "text", "text": '
                    f"...}} (this server takes text only), got {shown(part)}"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{at}.content must be a string or a list of text parts, got {shown(content)}")


def read_messages(messages: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"messages must be a non-empty list of messages, got {shown(messages)}")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(f"messages may hold at most {MAX_MESSAGES} messages, got {len(messages)}")
    read = []
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(
                f"{at} must be an object with a role and content, got {shown(message)}"
            )
        role = message.get("role")
        if role not in _ROLES:
            raise BadRequest(
                f"{at}.role must be 'system', 'developer', 'user' or 'assistant' (this server "
                f"has no tools), got {shown(role)}"
            )
        for key in ("tool_calls", "function_call", "audio", "name"):
            if message.get(key) not in (None, []):
                raise BadRequest(f"{at}.{key} is not supported by this server, got "
                                 f"{shown(message[key])}")  # fmt: skip
        read.append(ChatMessage(_ROLES[role], _content(message.get("content"), at)))
    return tuple(read)


def parse_chat(body: bytes) -> Generation:
    """A chat request's body, read and checked; a BadRequest names the field and says what was
    expected and what was got."""
    data = decode_object(body)
    messages = read_messages(data.get("messages"))
    shared = shared_fields(data, chat=True)
    wants_logprobs = field_bool(data, "logprobs", False)
    top = logprobs_count(data.get("top_logprobs"), "top_logprobs")
    if top is not None and not wants_logprobs:
        raise BadRequest(f"top_logprobs needs logprobs: true, got top_logprobs={top}")
    add_generation = field_bool(data, "add_generation_prompt", True)
    continue_final = field_bool(data, "continue_final_message", False)
    if continue_final and (add_generation or messages[-1].role != "assistant"):
        raise BadRequest(
            "continue_final_message needs add_generation_prompt: false and a last message "
            f"from the assistant, got add_generation_prompt={str(add_generation).lower()} and a "
            f"last message from the {messages[-1].role}"
        )
    if data.get("echo") is not None and data.get("echo") is not False:
        raise BadRequest(f"echo is not supported by the chat endpoint, got {shown(data['echo'])}")
    for key in _CHAT_UNHONOURED:
        if data.get(key) is not None:
            raise BadRequest(f"{key} is not supported by this server, got {shown(data[key])}")
    refuse_unhonoured(data)
    logprobs = (top or 0) if wants_logprobs else None
    return Generation("chat", (), messages, shared, logprobs, False, add_generation, continue_final)


def render_chat(
    messages: Sequence[ChatMessage],
    tokenizer: Any = None,
    *,
    add_generation_prompt: bool = True,
    continue_final: bool = False,
) -> str:
    """A chat's prompt: by the tokenizer's ``chat_template`` where it has one (a
    ``transformers`` tokenizer), else by the default template (see the module docstring)."""
    if getattr(tokenizer, "chat_template", None) is not None:
        rendered = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final,
        )
        if not isinstance(rendered, str):
            raise BadRequest(f"the model's chat template gave {shown(rendered)}, not text")
        return rendered
    lines = [f"{m.role}: {m.content}" for m in messages]
    if continue_final:
        return "\n".join(lines)
    return "".join(line + "\n" for line in lines) + ("assistant: " if add_generation_prompt else "")


def _whole_choice(index: int, text: str, logprobs: Any, offset: int, reason: str | None) -> Any:
    return {"index": index, "message": {"role": "assistant", "content": text},
            "logprobs": chat_logprobs(logprobs), "finish_reason": reason}  # fmt: skip


CHAT = Answers(
    object_whole="chat.completion",
    object_event="chat.completion.chunk",
    prefix="chatcmpl",
    whole_choice=_whole_choice,
    event_choice=lambda index, piece, reason: {
        "index": index,
        "delta": {"content": piece.text} if piece.text or reason is None else {},
        "logprobs": chat_logprobs(piece.logprobs),
        "finish_reason": reason,
    },
    opening=lambda index, _: {
        "index": index,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    },
)
"""The writers of a chat's answers."""


def chat_request(model: str, request: Request) -> dict[str, Any]:
    """A client's body asking ``model`` to stream a chat answer to ``request``: its messages
    (continuing the last one where ``continue_final``), or else its prompt as one user message;
    no ``max_tokens`` where the client gave none (``Request.max_tokens_asked``).

    Raises:
        BadRequest: the request has no messages and its prompt is token ids (a chat takes text).
    """
    if request.messages:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
    elif isinstance(request.prompt, str):
        messages = [{"role": "user", "content": request.prompt}]
    else:
        raise BadRequest("the chat endpoint takes a text prompt, not token ids")
    body: dict[str, Any] = {"model": model, "messages": messages}
    if request.continue_final:
        body |= {"continue_final_message": True, "add_generation_prompt": False}
    body |= sampling_body(request.params)
    if not request.max_tokens_asked:
        del body["max_tokens"]  # the backend counts the prompt: it gives what is left
    return body
