"""Sphinx configuration for the trio-supervise documentation site.

Why Sphinx rather than MkDocs: ``python -m sphinx -W --keep-going -n`` turns every warning into a
build failure, and nitpicky mode (``-n``) makes every cross-reference that does not resolve one
of them, API references included; autodoc imports the package and reads the real signatures and
docstrings, so the reference cannot drift from the code; and MkDocs 1.x is no longer actively
developed. The pages stay Markdown (MyST-Parser), the theme is furo, and the diagrams are mermaid
(sphinxcontrib-mermaid), rendered in the reader's browser, so the build needs no network.

The strict build, as ``.ci/run`` runs it (``-E`` rereads every page, so that a warning from a page
an earlier build already read is not missed; ``-q`` prints only warnings)::

    python -m sphinx -W --keep-going -n -E -q -b html docs docs/_build/html

The worker's state machine is not drawn by hand: at ``builder-inited``, :func:`write_generated`
writes ``_generated/worker_states.mmd`` (a mermaid state diagram) and
``_generated/worker_transitions.md`` (the same transitions as a table) from the transition table
that the worker itself checks every change against (``trio_supervise.WORKER_TRANSITIONS``).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, TypeVar

import attrs
from sphinx.ext.napoleon.docstring import GoogleDocstring

import trio_supervise
from trio_supervise.worker import _worker
from trio_supervise.worker._worker import WorkerState

HERE = Path(__file__).parent
GENERATED = HERE / "_generated"

project = "trio-supervise"
author = "trio-supervise developers"
copyright = "trio-supervise developers"
release = trio_supervise.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib.mermaid",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

# Markdown: "#anchor" links to headings (policy.md#restart-types), ```{mermaid} fences.
myst_heading_anchors = 3
myst_fence_as_directive = ["mermaid"]

# The API reference: signatures as written, members in source order, Google-style sections.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Napoleon reads the Google-style sections (Args:, Returns:, Raises:, Example::), but through
# google_sections below rather than its own hook, which would read the words before the first colon
# of an attribute docstring ("The restart window (OTP's default: 1 restart ...") as its type.
napoleon_google_docstring = False
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"trio-supervise {release}"
html_static_path: list[str] = []

nitpicky = True

# The public modules. A name they export is documented under the public path
# (``trio_supervise.Policy``), while annotations and docstrings name it by the module that
# defines it (``trio_supervise.supervision._policy.Policy``): resolve_private_names maps one to
# the other.
PUBLIC_MODULES = (
    "trio_supervise",
    "trio_supervise.testing",
    "trio_supervise.devices",
    "trio_supervise.serve",
    "trio_supervise.serve.server",
    "trio_supervise.serve.pool",
    "trio_supervise.serve.app",
    "trio_supervise.serve.metrics",
    "trio_supervise.runners.mock",
    "trio_supervise.runners.charlm",
    "trio_supervise.runners.remote",
    "trio_supervise.runners.transformers",
)

# Names from other packages. No intersphinx: its inventories would be fetched over the network,
# and the build must run without one, so these references stay plain text.
_EXTERNAL = (
    "trio",
    "trio_util",
    "attrs",
    "numpy",
    "cupy",
    "msgspec",
    "httpx",
    "hypercorn",
    "prometheus_client",
    "collections",
    "contextlib",
    "enum",
    "logging",
    "pathlib",
    "types",
    "typing",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(map(re.escape, _EXTERNAL))})(\..*)?"),
]
# References the package's own docstrings and annotations make to private names, which have no
# entry: each one is listed here, with who can remove it.
nitpick_ignore = [
    # The buffer behind a RequestStream, named in the signatures of RequestStream and PoolStream.
    ("py:class", "trio_supervise.tier._requests.RequestState"),
    # One model's queue and replicas in the pool, named in PoolStream's signature.
    ("py:class", "trio_supervise.serve._routing.ModelRoute"),
    # The keyword arguments of Worker and open_worker as one TypedDict (each is described at
    # open_worker), named in their signatures as **options: Unpack[WorkerArguments].
    ("py:class", "trio_supervise.worker._options.WorkerArguments"),
    # What a runner class's load_tokenizer gives (described in docs/worker.md), named in the
    # annotation of WorkerPool.tokenizers.
    ("py:class", "trio_supervise.tier._runner.Tokenizer"),
    # The API keys a server asks for (described in docs/serving.md), named in App's signature.
    ("py:class", "trio_supervise.serve._keys.ApiKeys"),
    # A slot's counts over every worker it ran (the counters of docs/serving.md's Metrics), named
    # in Replica's fields.
    ("py:class", "trio_supervise.serve._replica.SlotTotals"),
    # One request and its answer, as the server's observers get it (metrics, access log, trace),
    # named in Metrics.observe's and App's signatures.
    ("py:class", "trio_supervise.serve._exchange.Exchange"),
    ("py:class", "Exchange"),
]


# --- the worker state machine, generated ---------------------------------------------------------

INITIAL_STATE = WorkerState.STARTING
"""The state a new ``Worker`` is in (``worker.state`` starts there)."""


def worker_transitions() -> tuple[tuple[WorkerState, WorkerState, str], ...]:
    """The code's own table: :data:`trio_supervise.WORKER_TRANSITIONS`."""
    return tuple(_worker.WORKER_TRANSITIONS)


def check_transitions(table: tuple[tuple[WorkerState, WorkerState, str], ...]) -> None:
    """Raise ValueError unless ``table`` is well-formed and covers every ``WorkerState``."""
    seen: set[tuple[WorkerState, WorkerState]] = set()
    for row in table:
        if not (
            isinstance(row, tuple)
            and len(row) == 3
            and isinstance(row[0], WorkerState)
            and isinstance(row[1], WorkerState)
            and isinstance(row[2], str)
            and row[2].strip()
        ):
            raise ValueError(f"a transition must be (WorkerState, WorkerState, str), got {row!r}")
        if row[:2] in seen:
            raise ValueError(f"{row[0].name} -> {row[1].name} appears twice")
        seen.add(row[:2])
    named = {state for pair in seen for state in pair} | {INITIAL_STATE}
    missing = [state.name for state in WorkerState if state not in named]
    if missing:
        raise ValueError(f"states without a transition: {', '.join(missing)}")


def terminal_states(table: tuple[tuple[WorkerState, WorkerState, str], ...]) -> list[WorkerState]:
    """States that no transition leaves, in the enum's order."""
    leaving = {source for source, _, _ in table}
    return [state for state in WorkerState if state not in leaving]


def _mermaid_text(text: str) -> str:
    # A state diagram's transition label cannot hold ":", ";" or "#" (mermaid 11 refuses the
    # diagram): write them as mermaid entity codes, which the browser shows as the characters.
    text = " ".join(text.split())
    return re.sub(r"[:;#]", lambda match: f"#{ord(match.group())};", text)


def _markdown_text(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def worker_state_diagram(table: tuple[tuple[WorkerState, WorkerState, str], ...]) -> str:
    """A mermaid ``stateDiagram-v2`` of ``table``."""
    check_transitions(table)
    lines = ["stateDiagram-v2", "    direction LR", f"    [*] --> {INITIAL_STATE.name}"]
    lines += [
        f"    {source.name} --> {target.name}: {_mermaid_text(trigger)}"
        for source, target, trigger in table
    ]
    lines += [f"    {state.name} --> [*]" for state in terminal_states(table)]
    return "\n".join(lines) + "\n"


def worker_transitions_table(table: tuple[tuple[WorkerState, WorkerState, str], ...]) -> str:
    """The same transitions as a Markdown table."""
    check_transitions(table)
    rows = ["| From | To | When |", "|---|---|---|"]
    rows += [f"| `{s.name}` | `{t.name}` | {_markdown_text(trigger)} |" for s, t, trigger in table]
    return "\n".join(rows) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged file keeps its mtime, so an incremental build does not reread every page.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_generated(app: Any = None) -> None:
    """Write ``_generated/``: the worker state diagram and table (a ``builder-inited`` hook)."""
    GENERATED.mkdir(exist_ok=True)
    table = worker_transitions()
    _write_if_changed(GENERATED / "worker_states.mmd", worker_state_diagram(table))
    _write_if_changed(GENERATED / "worker_transitions.md", worker_transitions_table(table))


# --- references to private module paths ---------------------------------------------------------


def public_names() -> dict[str, str]:
    """``{"module.Name" where it is defined: "public.module.Name" where it is documented}``."""
    names: dict[str, str] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            defined_in = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if isinstance(defined_in, str) and isinstance(qualname, str):
                names.setdefault(f"{defined_in}.{qualname}", f"{module_name}.{name}")
    return names


_PUBLIC_NAMES: dict[str, str] = {}


def _resolve(app: Any, env: Any, node: Any, contnode: Any, target: str) -> Any:
    original = node["reftarget"]
    node["reftarget"] = target
    try:
        return env.domains["py"].resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
        )
    finally:
        node["reftarget"] = original


def _is_type_variable(target: str) -> bool:
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    return isinstance(getattr(module, name, None), TypeVar)


def resolve_private_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """A ``missing-reference`` hook for references into the package that Sphinx cannot place.

    - ``trio_supervise.supervision._policy.Policy`` (and its members): the entry of the public name.
    - A bare name in a docstring (``:class:`Worker``` in ``serve/pool.py``): the one public
      name it can mean, from any public module.
    - A type variable (``T`` in ``run_sync(fn: Callable[..., T]) -> T``): plain text, since type
      variables have no entry of their own.
    """
    if node.get("refdomain") != "py" or not _PUBLIC_NAMES:
        return None
    target = node["reftarget"]
    head, rest = target, ""
    while head and head not in _PUBLIC_NAMES:
        head, _, last = head.rpartition(".")
        rest = f".{last}{rest}"
    if head:
        return _resolve(app, env, node, contnode, _PUBLIC_NAMES[head] + rest)
    if "." not in target:
        candidates = {name for name in _PUBLIC_NAMES.values() if name.endswith(f".{target}")}
        if len(candidates) == 1:
            return _resolve(app, env, node, contnode, candidates.pop())
    if target.startswith("trio_supervise.") and _is_type_variable(target):
        return contnode
    return None


# --- docstrings ----------------------------------------------------------------------------------


def google_sections(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Napoleon's Google-style sections, for everything but one-line field docstrings."""
    if what in ("attribute", "data", "property"):
        return
    lines[:] = GoogleDocstring(lines, app.config, app, what, name, obj, options).lines()


def _factory_call(factory: Any) -> str:
    name = getattr(factory, "__qualname__", "")
    return f"{name}()" if re.fullmatch(r"[A-Za-z_][\w.]*", name) else "..."


def attrs_factory_defaults(
    app: Any,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Show an attrs ``Factory`` default as the call it makes (``list()``), not ``NOTHING``."""
    if what not in ("class", "exception") or not signature or not attrs.has(obj):
        return None
    # attrs puts keyword-only fields after the others; each Factory default reads NOTHING.
    fields = [f for f in attrs.fields(obj) if f.init]
    fields = [f for f in fields if not f.kw_only] + [f for f in fields if f.kw_only]
    calls = iter(
        _factory_call(field.default.factory)  # type: ignore[union-attr]
        for field in fields
        if isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
    )
    signature = re.sub(r"(?<== )NOTHING\b", lambda _: next(calls, "..."), signature)
    return signature, return_annotation


def setup(app: Any) -> dict[str, Any]:
    _PUBLIC_NAMES.update(public_names())
    app.connect("builder-inited", write_generated)
    app.connect("autodoc-process-docstring", google_sections)
    app.connect("autodoc-process-signature", attrs_factory_defaults)
    app.connect("missing-reference", resolve_private_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
