"""The OpenAI wire format, sans-I/O: pure functions and values, spoken by the server
(:mod:`trio_supervise.serve`) and by :class:`~trio_supervise.runners.remote.RemoteRunner` alike.

No sockets, no Trio, no HTTP library: bytes and dicts in, typed values (or a typed error) out.
Each endpoint has its module, built on what every endpoint shares:

* ``_completions.py``: ``/v1/completions`` both ways (request bodies, answers);
* ``_chat.py``: ``/v1/chat/completions`` both ways (messages, the default chat template,
  answers);
* ``_answers.py``: what both share: a body read (:class:`Generation`: its choices' requests),
  an endpoint's writers of its answers (:class:`Answers`), usage over choices;
* ``_output.py``: one choice's output as a client gets it (the stop sequence cut);
* ``_logprobs.py``: log probabilities as each endpoint writes them;
* ``_tokenize.py``: vLLM's ``/tokenize`` and ``/detokenize``;
* ``_fields.py``: the request fields every generating endpoint shares (``stop``, ``seed``,
  ``n``, ``max_tokens``, the sampling fields, ``stream_options``, ...), read and checked
  against what every tier can carry, and written; the table of fields no tier honours, refused
  unless neutral;
* ``_models.py``: ``/v1/models``, ``/v1/models/{id}`` and ``/version``;
* ``_choices.py``: finish reasons and usage, both ways;
* ``_sse.py``: server-sent events (``data: {...}``, ``data: [DONE]``), framed and read;
* ``_status.py``: errors <-> HTTP statuses (and Retry-After), both ways;
* ``_json.py``: the JSON encoder, and the strict decoder of a request body.

A new endpoint is a module of its own next to ``_completions.py``, reusing the rest.
"""

from ._answers import Answers, Generation, Prompt, total_usage
from ._chat import CHAT, CHAT_PATH, MAX_MESSAGES, chat_request, parse_chat, render_chat
from ._choices import finish_reason_name, finish_reason_of, usage_body, usage_of
from ._completions import COMPLETION, COMPLETIONS_PATH, completion_request, parse_completion
from ._fields import (
    INT64,
    MAX_CHOICES,
    MAX_STOP,
    UNHONOURED,
    Shared,
    choice_seed,
    include_usage,
    refuse_unhonoured,
    sampling_body,
    shared_fields,
)
from ._json import decode_object, encode_json
from ._logprobs import chat_logprobs, completion_logprobs
from ._models import (
    MODEL_PREFIX,
    MODELS_PATH,
    VERSION_PATH,
    model_named,
    model_object,
    models_body,
    version_body,
)
from ._output import ChoiceOutput, Piece
from ._sse import DONE_DATA, SSE_DONE, StreamChoice, StreamEvent, decode_event, sse_data, sse_event
from ._status import (
    error_body,
    error_detail,
    error_for_status,
    error_object,
    error_status,
    retry_after_header,
    retry_after_seconds,
)
from ._tokenize import DETOKENIZE_PATH, TOKENIZE_PATH, parse_detokenize, parse_tokenize

__all__ = [
    "CHAT",
    "CHAT_PATH",
    "COMPLETION",
    "COMPLETIONS_PATH",
    "DETOKENIZE_PATH",
    "DONE_DATA",
    "INT64",
    "MAX_CHOICES",
    "MAX_MESSAGES",
    "MAX_STOP",
    "MODELS_PATH",
    "MODEL_PREFIX",
    "SSE_DONE",
    "TOKENIZE_PATH",
    "UNHONOURED",
    "VERSION_PATH",
    "Answers",
    "ChoiceOutput",
    "Generation",
    "Piece",
    "Prompt",
    "Shared",
    "StreamChoice",
    "StreamEvent",
    "chat_logprobs",
    "chat_request",
    "choice_seed",
    "completion_logprobs",
    "completion_request",
    "decode_event",
    "decode_object",
    "encode_json",
    "error_body",
    "error_detail",
    "error_for_status",
    "error_object",
    "error_status",
    "finish_reason_name",
    "finish_reason_of",
    "include_usage",
    "model_named",
    "model_object",
    "models_body",
    "parse_chat",
    "parse_completion",
    "parse_detokenize",
    "parse_tokenize",
    "refuse_unhonoured",
    "render_chat",
    "retry_after_header",
    "retry_after_seconds",
    "sampling_body",
    "shared_fields",
    "sse_data",
    "sse_event",
    "total_usage",
    "usage_body",
    "usage_of",
    "version_body",
]
