"""The OpenAI wire format, sans-I/O: pure functions and values, spoken by the server
(:mod:`trio_supervise.serve`) and by :class:`~trio_supervise.runners.remote.RemoteRunner` alike.

No sockets, no Trio, no HTTP library: bytes and dicts in, typed values (or a typed error) out.
Each endpoint has its module, built on what every endpoint shares:

* ``_completions.py``: ``/v1/completions`` both ways (request bodies, whole bodies, events);
* ``_chat.py``: ``/v1/chat/completions`` as a client writes it;
* ``_fields.py``: the request fields every generating endpoint shares (``stop``, ``seed``,
  ``max_tokens``, ``stream_options``, ...), read and checked against what every tier can carry,
  and written; the table of fields no tier honours yet, refused unless neutral;
* ``_models.py``: ``/v1/models``, ``/v1/models/{id}`` and ``/version``;
* ``_choices.py``: finish reasons and usage, both ways;
* ``_sse.py``: server-sent events (``data: {...}``, ``data: [DONE]``), framed and read;
* ``_status.py``: errors <-> HTTP statuses (and Retry-After), both ways;
* ``_json.py``: the JSON encoder, and the strict decoder of a request body.

A new endpoint is a module of its own next to ``_completions.py``, reusing the rest.
"""

from ._chat import CHAT_PATH, chat_request
from ._choices import finish_reason_name, finish_reason_of, usage_body, usage_of
from ._completions import (
    COMPLETIONS_PATH,
    CompletionRequest,
    UsageEvents,
    completion_body,
    completion_event,
    completion_request,
    parse_completion,
)
from ._fields import (
    INT64,
    MAX_STOP,
    UNHONOURED,
    include_usage,
    refuse_unhonoured,
    sampling_body,
    shared_fields,
)
from ._json import decode_object, encode_json
from ._models import (
    MODEL_PREFIX,
    MODELS_PATH,
    VERSION_PATH,
    model_named,
    model_object,
    models_body,
    version_body,
)
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

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "DONE_DATA",
    "INT64",
    "MAX_STOP",
    "MODELS_PATH",
    "MODEL_PREFIX",
    "SSE_DONE",
    "UNHONOURED",
    "VERSION_PATH",
    "CompletionRequest",
    "StreamChoice",
    "StreamEvent",
    "UsageEvents",
    "chat_request",
    "completion_body",
    "completion_event",
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
    "parse_completion",
    "refuse_unhonoured",
    "retry_after_header",
    "retry_after_seconds",
    "sampling_body",
    "shared_fields",
    "sse_data",
    "sse_event",
    "usage_body",
    "usage_of",
    "version_body",
]
