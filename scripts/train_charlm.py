"""Train the small character-level language model that ships with ``trio_supervise.runners.charlm``.

Training text (source and license)
    Text that comes with CPython itself, read from the interpreter that runs this script:

    * the docstrings of a fixed list of standard-library modules (``MODULES`` below), collected
      with :func:`inspect.getdoc`: each module's docstring, then those of its public classes,
      functions and methods, in sorted order;
    * the texts of ``help()``'s topics (``pydoc_data.topics``: sections of the Python Language
      Reference, generated from the Python documentation), in sorted order.

    Both are part of CPython and distributed under the Python Software Foundation License
    Version 2 (PSF-2.0; https://docs.python.org/3/license.html), which grants a licence to
    reproduce, analyze, prepare derivative works and distribute them, provided the PSF's
    copyright notice is retained ("Copyright (c) 2001 Python Software Foundation; All Rights
    Reserved"). The weights are a derivative work of that text. The shipped weights were
    trained on CPython 3.11.7: another version has slightly different docstrings, so the
    corpus's SHA-256 is printed and stored in the weights file.

    Normalization: typographic quotes and dashes become ASCII, lines are stripped and runs of
    three or more spaces collapsed, paragraphs that are mostly code (doctests, grammar rules,
    tables: under 85% letters and spaces) are left out, and a repeated paragraph is kept once,
    so the model learns English prose about Python. Every 10th paragraph goes to the
    validation set.

Vocabulary
    ``"\\n"`` and the 95 printable ASCII characters (96 in all); any other character becomes
    ``"?"`` (the fallback). A token id is an index into it.

Model (a Bengio-style MLP over a window of characters)
    The previous ``CONTEXT`` characters (padded on the left with ``"\\n"``) are embedded
    (``EMBED`` numbers each) and concatenated, then two tanh layers of ``HIDDEN`` units, the
    second with a residual connection, then a softmax over the vocabulary::

        x  = concat(emb[c_{t-K}], ..., emb[c_{t-1}])
        h1 = tanh(x @ w1 + b1)
        h2 = h1 + tanh(h1 @ w2 + b2)
        p(c_t) = softmax(h2 @ w3 + b3)

    Trained here with plain NumPy: manual backpropagation, Adam, warm-up then a cosine
    learning-rate schedule, gradient-norm clipping, a little dropout (on ``x`` and ``h1``),
    random windows drawn by a fixed seed. The weights are saved as float16 with
    ``numpy.savez_compressed`` together with the vocabulary (code points), the
    hyperparameters and the final losses; at the end the runner's own forward pass
    (``trio_supervise.runners.charlm.forward``) must reproduce the validation loss from the
    saved weights, and a few samples are printed.

Usage::

    python scripts/train_charlm.py [--steps N] [--out PATH]

It prints the train and validation loss in bits per character as it goes; the default run
takes about four minutes on two CPU cores and writes
``trio_supervise/runners/charlm_weights.npz`` (about 1.3 MB).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_MODULE_NAMES = """
abc argparse ast asyncio asyncio.events asyncio.locks asyncio.queues asyncio.streams
asyncio.tasks base64 bdb binascii bisect builtins bz2 calendar cmd code codecs collections
collections.abc colorsys concurrent.futures configparser contextlib contextvars copy copyreg
csv dataclasses datetime decimal difflib dis doctest email email.message email.parser
email.utils enum filecmp fileinput fnmatch fractions ftplib functools gc getopt gettext glob
graphlib gzip hashlib heapq hmac html html.parser http http.client http.cookiejar http.cookies
http.server imaplib importlib importlib.abc importlib.metadata importlib.resources inspect io
ipaddress itertools json json.decoder json.encoder keyword linecache locale logging
logging.handlers lzma mailbox marshal math mimetypes modulefinder multiprocessing
multiprocessing.connection multiprocessing.pool netrc numbers operator optparse os os.path
pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath pprint profile
pstats pydoc queue quopri random re reprlib rlcompleter runpy sched secrets selectors shelve
shlex shutil signal smtplib socket socketserver statistics string stringprep struct
subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit
tokenize trace traceback tracemalloc types typing unittest unittest.case unittest.mock
urllib.parse urllib.request urllib.robotparser uuid warnings wave weakref webbrowser
xml.dom.minidom xml.etree.ElementTree xml.sax zipapp zipfile zipimport zlib zoneinfo
"""
MODULES = _MODULE_NAMES.split()

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
ASCII = str.maketrans(
    {
        "\t": " ",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
FALLBACK = "?"
PAD = "\n"

CONTEXT = 16
EMBED = 32
HIDDEN = 576

SEED = 20240601
BATCH = 256
STEPS = 24_000
LR = 2e-3
LR_MIN = 5e-5
WARMUP = 200
CLIP = 1.0
DROPOUT = 0.05
EVAL_EVERY = 1000


def collect_docstrings(modules: list[str]) -> tuple[list[str], list[str]]:
    """Docstrings of the modules (and their public members), in a fixed order, and the
    modules that could not be imported here (left out)."""
    seen: set[str] = set()
    docs: list[str] = []
    missing: list[str] = []

    def add(obj: Any) -> None:
        doc = inspect.getdoc(obj)
        if doc and doc not in seen:
            seen.add(doc)
            docs.append(doc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError:
                missing.append(name)
                continue
            add(module)
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                if inspect.isclass(obj):
                    add(obj)
                    for member_name, member in sorted(vars(obj).items()):
                        if not member_name.startswith("_") and inspect.isroutine(member):
                            add(member)
                elif inspect.isroutine(obj):
                    add(obj)
    return docs, missing


def help_topics() -> list[str]:
    """The texts of ``help()``'s topics (``pydoc_data.topics``: sections of the Python
    Language Reference), in sorted order."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def prose_paragraphs(docs: list[str]) -> list[str]:
    """Paragraphs that are mostly prose, each once, normalized to the vocabulary."""
    allowed = set(VOCAB)
    seen: set[str] = set()
    paragraphs: list[str] = []
    for doc in docs:
        for paragraph in doc.split("\n\n"):
            lines = paragraph.translate(ASCII).strip("\n").split("\n")
            paragraph = "\n".join(re.sub(" {3,}", " ", line.strip()) for line in lines)
            if not paragraph.strip() or paragraph.lstrip().startswith((">>>", "...")):
                continue
            prose = sum(c.isalpha() or c == " " for c in paragraph)
            if prose < 0.85 * len(paragraph):
                continue
            paragraph = "".join(c if c in allowed else FALLBACK for c in paragraph)
            if paragraph not in seen:
                seen.add(paragraph)
                paragraphs.append(paragraph)
    return paragraphs


def encode(text: str) -> np.ndarray:
    """Vocabulary indices of ``text`` (already normalized)."""
    index = {c: i for i, c in enumerate(VOCAB)}
    return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))


def windows_for(data: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The ``CONTEXT`` characters before each position of ``data`` (which starts with padding
    of ``CONTEXT`` pad characters)."""
    return data[positions[:, None] + np.arange(-CONTEXT, 0)[None, :]]


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    vocab = len(VOCAB)
    fan_in = CONTEXT * EMBED

    def dense(n_in: int, n_out: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((n_in, n_out)) * gain / math.sqrt(n_in)).astype(np.float32)

    return {
        "emb": (rng.standard_normal((vocab, EMBED)) * 0.5).astype(np.float32),
        "w1": dense(fan_in, HIDDEN, 5 / 3),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": dense(HIDDEN, HIDDEN, 0.5),
        "b2": np.zeros(HIDDEN, np.float32),
        "w3": dense(HIDDEN, vocab, 0.5),
        "b3": np.zeros(vocab, np.float32),
    }


def loss_and_grads(
    params: dict[str, np.ndarray],
    windows: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy (nats) of the batch and its gradients (manual backpropagation), with
    inverted dropout on the input and on the first hidden layer."""
    n = windows.shape[0]
    keep = 1.0 - DROPOUT
    mask_x = (rng.random((n, CONTEXT * EMBED), np.float32) < keep) / np.float32(keep)
    mask_h = (rng.random((n, HIDDEN), np.float32) < keep) / np.float32(keep)
    x = params["emb"][windows].reshape(n, CONTEXT * EMBED) * mask_x
    h1_full = np.tanh(x @ params["w1"] + params["b1"])
    h1 = h1_full * mask_h
    t2 = np.tanh(h1 @ params["w2"] + params["b2"])
    h2 = h1 + t2
    logits = h2 @ params["w3"] + params["b3"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(total[:, 0]) - logits[rows, targets]))

    d_logits = exp / total
    d_logits[rows, targets] -= 1.0
    d_logits /= n
    grads = {"w3": h2.T @ d_logits, "b3": d_logits.sum(axis=0)}
    d_h2 = d_logits @ params["w3"].T
    d_a2 = d_h2 * (1.0 - t2 * t2)
    grads["w2"] = h1.T @ d_a2
    grads["b2"] = d_a2.sum(axis=0)
    d_h1 = (d_h2 + d_a2 @ params["w2"].T) * mask_h
    d_a1 = d_h1 * (1.0 - h1_full * h1_full)
    grads["w1"] = x.T @ d_a1
    grads["b1"] = d_a1.sum(axis=0)
    d_x = ((d_a1 @ params["w1"].T) * mask_x).reshape(n * CONTEXT, EMBED)
    one_hot = np.zeros((n * CONTEXT, len(VOCAB)), np.float32)
    one_hot[np.arange(n * CONTEXT), windows.reshape(-1)] = 1.0
    grads["emb"] = one_hot.T @ d_x
    return loss, grads


def mean_loss(params: dict[str, np.ndarray], data: np.ndarray, chunk: int = 8192) -> float:
    """Mean cross-entropy (nats) over every position of ``data`` (after the padding)."""
    positions = np.arange(CONTEXT, len(data))
    total = 0.0
    for start in range(0, len(positions), chunk):
        part = positions[start : start + chunk]
        windows = windows_for(data, part)
        loss, _ = _forward_loss(params, windows, data[part])
        total += loss * len(part)
    return total / len(positions)


def _forward_loss(
    params: dict[str, np.ndarray], windows: np.ndarray, targets: np.ndarray
) -> tuple[float, np.ndarray]:
    n = windows.shape[0]
    x = params["emb"][windows].reshape(n, CONTEXT * EMBED)
    h1 = np.tanh(x @ params["w1"] + params["b1"])
    h2 = h1 + np.tanh(h1 @ params["w2"] + params["b2"])
    logits = (h2 @ params["w3"] + params["b3"]).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(logits).sum(axis=1))
    return float(np.mean(log_total - logits[np.arange(n), targets])), logits


def bits(nats: float) -> float:
    return nats / math.log(2)


def learning_rate(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR_MIN + 0.5 * (LR - LR_MIN) * (1.0 + math.cos(math.pi * progress))


def train(steps: int, out: Path) -> None:
    started = time.perf_counter()
    docs, missing = collect_docstrings(MODULES)
    topics = help_topics()
    paragraphs = prose_paragraphs(docs + topics)
    train_text = "\n\n".join(p for i, p in enumerate(paragraphs) if i % 10 != 9)
    valid_text = "\n\n".join(p for i, p in enumerate(paragraphs) if i % 10 == 9)
    corpus_sha = hashlib.sha256((train_text + "\x00" + valid_text).encode()).hexdigest()
    pad = np.full(CONTEXT, VOCAB.index(PAD), np.int32)
    train_data = np.concatenate([pad, encode(train_text)])
    valid_data = np.concatenate([pad, encode(valid_text)])
    print(
        f"python {sys.version.split()[0]}: {len(MODULES) - len(missing)} modules"
        f"{f' (not importable here, left out: {missing})' if missing else ''}, "
        f"{len(docs)} docstrings, {len(topics)} help topics, {len(paragraphs)} prose paragraphs, "
        f"{len(train_text):,} train / {len(valid_text):,} validation characters, "
        f"corpus sha256 {corpus_sha[:16]}"
    )

    rng = np.random.default_rng(SEED)
    params = init_params(rng)
    n_params = sum(p.size for p in params.values())
    print(
        f"model: context {CONTEXT}, embed {EMBED}, hidden {HIDDEN}x2, vocab {len(VOCAB)}: "
        f"{n_params:,} parameters; {steps} steps of batch {BATCH}"
    )
    moment1 = {k: np.zeros_like(v) for k, v in params.items()}
    moment2 = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.99, 1e-8
    running = None
    for step in range(steps):
        positions = rng.integers(CONTEXT, len(train_data), size=BATCH)
        loss, grads = loss_and_grads(
            params, windows_for(train_data, positions), train_data[positions], rng
        )
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        scale = min(1.0, CLIP / (norm + 1e-12))
        lr = learning_rate(step, steps)
        t = step + 1
        for key, grad in grads.items():
            grad = grad * scale
            moment1[key] = beta1 * moment1[key] + (1 - beta1) * grad
            moment2[key] = beta2 * moment2[key] + (1 - beta2) * grad * grad
            m_hat = moment1[key] / (1 - beta1**t)
            v_hat = moment2[key] / (1 - beta2**t)
            params[key] -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if t % EVAL_EVERY == 0 or t == steps:
            valid = mean_loss(params, valid_data)
            print(
                f"step {t:6d}  lr {lr:.2e}  train (running) {bits(running):.3f} bpc  "
                f"validation {bits(valid):.3f} bpc  {time.perf_counter() - started:6.1f} s",
                flush=True,
            )

    shipped = {k: v.astype(np.float16) for k, v in params.items()}
    as_trained = {k: v.astype(np.float32) for k, v in shipped.items()}
    train_bpc = bits(mean_loss(as_trained, train_data))
    valid_bpc = bits(mean_loss(as_trained, valid_data))
    out.parent.mkdir(parents=True, exist_ok=True)
    contents: dict[str, Any] = dict(
        shipped,
        vocab=np.array([ord(c) for c in VOCAB], np.int32),
        fallback=np.array(VOCAB.index(FALLBACK), np.int32),
        pad=np.array(VOCAB.index(PAD), np.int32),
        context=np.array(CONTEXT, np.int32),
        train_bpc=np.array(train_bpc, np.float32),
        valid_bpc=np.array(valid_bpc, np.float32),
        hyperparameters=np.array(
            json.dumps(
                {
                    "context": CONTEXT,
                    "embed": EMBED,
                    "hidden": HIDDEN,
                    "vocab": len(VOCAB),
                    "parameters": n_params,
                    "steps": steps,
                    "batch": BATCH,
                    "seed": SEED,
                    "lr": LR,
                    "lr_min": LR_MIN,
                    "warmup": WARMUP,
                    "clip": CLIP,
                    "dropout": DROPOUT,
                }
            )
        ),
        corpus_sha256=np.array(corpus_sha),
        python=np.array(sys.version.split()[0]),
    )
    np.savez_compressed(out, **contents)
    elapsed = time.perf_counter() - started
    print(
        f"final (float16 weights): train {train_bpc:.3f} bpc, validation {valid_bpc:.3f} bpc; "
        f"wrote {out} ({out.stat().st_size:,} bytes) in {elapsed:.1f} s"
    )
    check_runner(out, valid_data, valid_bpc)


def check_runner(path: Path, valid_data: np.ndarray, valid_bpc: float) -> None:
    """The runner's forward pass on the saved weights gives the validation loss measured here;
    print a few samples."""
    try:
        from trio_supervise.runners import charlm
    except ImportError as exc:  # the package is not installed: nothing to compare with
        print(f"runner check skipped: {exc}")
        return
    model = charlm.load_weights(np, str(path))
    positions = np.arange(CONTEXT, len(valid_data))
    total = 0.0
    for start in range(0, len(positions), 8192):
        part = positions[start : start + 8192]
        logits = np.asarray(charlm.forward(np, model, windows_for(valid_data, part)), np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_total = np.log(np.exp(logits).sum(axis=1))
        total += float(np.sum(log_total - logits[np.arange(len(part)), valid_data[part]]))
    runner_bpc = bits(total / len(positions))
    print(f"runner check: charlm.forward gives {runner_bpc:.4f} bpc on the validation set")
    if abs(runner_bpc - valid_bpc) > 1e-3:
        raise SystemExit(f"the runner disagrees with the training script ({valid_bpc:.4f} bpc)")
    for prompt, temperature in [("The ", 0.0), ("The ", 0.5), ("Return the ", 0.8)]:
        text = charlm.complete(model, prompt, 200, temperature=temperature, seed=1)
        print(f"sample (temperature {temperature}, seed 1): {prompt + text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    default_out = Path(__file__).resolve().parents[1] / "trio_supervise/runners/charlm_weights.npz"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    train(args.steps, args.out)


if __name__ == "__main__":
    main()
