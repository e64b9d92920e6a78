"""The ``trio-supervise`` command line."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from ._errors import ConfigError, ContextPoisoned, OutOfMemory, Unrecoverable
from .supervision import Directive, Policy
from .tier._runner import DEVICE_POLICY

# A scripted run: (time in seconds, the failure at that time).
_DEMO_SCRIPT: tuple[tuple[float, Exception], ...] = (
    (1.0, OutOfMemory("batch of 64 did not fit", retry_after=0.25)),
    (4.0, ContextPoisoned("illegal memory access (CUDA error 700)")),
    (9.0, ContextPoisoned("illegal memory access (CUDA error 700)")),
    (70.0, ContextPoisoned("launch failure (CUDA error 719)")),
    (71.0, OutOfMemory("batch of 64 did not fit")),
    (72.0, ContextPoisoned("launch failure (CUDA error 719)")),
    (73.0, ContextPoisoned("launch failure (CUDA error 719)")),
    (74.0, ContextPoisoned("launch failure (CUDA error 719)")),
)


def demo_policy(policy: Policy = DEVICE_POLICY, *, out: TextIO | None = None) -> list[Directive]:
    """Print ``policy`` deciding the scripted run of failures; return the directives."""
    write = (out or sys.stdout).write
    write(f"policy: {policy!r}\n\n")
    write("what the decider says, error by error:\n")
    examples: tuple[Exception, ...] = (
        ContextPoisoned("x"),
        OutOfMemory("x"),
        Unrecoverable("x"),
        ValueError("x"),
    )
    for exc in examples:
        write(f"  {type(exc).__name__:<16} -> {policy.decide(exc).name}\n")
    write("\na scripted run (times in seconds; only time empties the restart window):\n")
    write(f"  {'time':>6}  {'directive':<9}  {'delay':>6}  reason\n")
    state = policy.on_started(policy.initial_state(seed=0), 0.0)
    directives = []
    for now, exc in _DEMO_SCRIPT:
        decision, state = policy.on_failure(state, exc, now)
        directives.append(decision.directive)
        write(
            f"  {now:>6.1f}  {decision.directive.name:<9}  {decision.delay:>6.2f}  "
            f"{decision.reason}\n"
        )
        if decision.directive in (Directive.STOP, Directive.ESCALATE):
            break
        state = policy.on_started(state, now + decision.delay)
    return directives


def serve_command(
    path: str | None,
    *,
    host: str | None,
    port: int | None,
    model: str | None = None,
    api_key_file: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
    log_json: bool = False,
) -> int:
    """``serve``: 0 after a drain, 1 when the pool gave up, 2 for a bad config; a second
    SIGTERM/SIGINT exits at once with 128 + the signal number. It logs supervision events and
    an access line per request to standard error (``serve/_logs.py``)."""
    import attrs
    import trio
    from rich.console import Console

    from ._errors import RestartIntensityExceeded, Unrecoverable
    from .serve import ServeConfig
    from .serve._keys import load_api_keys
    from .serve._logs import configure_logging
    from .serve.server import serve

    console = Console(stderr=True, soft_wrap=True)  # one line per message, as a log reads
    configure_logging(log_level, access_log=access_log, json_lines=log_json)
    try:
        if path and model:
            raise ConfigError("serve takes a config file or --model, not both")
        config = ServeConfig.from_toml(path) if path else default_config(model)
        overrides = (("host", host), ("port", port), ("api_key_file", api_key_file))
        server = attrs.evolve(config.server, **{k: v for k, v in overrides if v is not None})
        config = attrs.evolve(config, server=server)
        config.validate()
        config.check_runners()
        load_api_keys(config.server)  # a key file that cannot be read: exit 2, before anything
    except ConfigError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        return 2

    def listening(handle: Any) -> None:
        replicas = sum(w.replica_count for w in config.workers)
        line = f"listening on {handle.url}; loading {replicas} replica(s)"
        console.print(line, markup=False, highlight=False)

    class Ready:
        """serve's task status: says when every replica is ready (a drain may come first)."""

        def started(self, handle: Any = None) -> None:
            console.print(
                f"serving {handle.pool.models} on {handle.url}", markup=False, highlight=False
            )

    async def main() -> None:
        await serve(config, handle_signals=True, on_listening=listening, task_status=Ready())

    try:
        trio.run(main)
    except BaseException as exc:  # one line and an exit code, whatever the nesting
        if _leaves(exc, KeyboardInterrupt):  # before serve handled the signals
            return 130
        exits = _leaves(exc, SystemExit)
        if exits:
            code = exits[0].code if isinstance(exits[0].code, int) else 1
            console.print(f"a second signal during the drain: exit {code}", highlight=False)
            return code
        fatal = _leaves(exc, RestartIntensityExceeded | Unrecoverable)
        if fatal:
            console.print(f"gave up: {fatal[0]}", style="red", markup=False, highlight=False)
            return 1
        unbound = [  # the host does not resolve, the port is taken, the address not ours
            e
            for e in _leaves(exc, OSError)
            if e.errno in _BIND_ERRNOS or isinstance(e, socket.gaierror)
        ]
        if unbound:
            where = f"{config.server.host}:{config.server.port}"
            message = f"cannot serve on {where}: {unbound[0]}"
            console.print(message, style="red", markup=False, highlight=False)
            return 1
        raise
    console.print("drained", highlight=False)
    return 0


_BIND_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _leaves(exc: BaseException, kind: Any) -> list[Any]:
    """The exceptions of ``kind`` in ``exc``, however deep in exception groups."""
    from .supervision import leaves

    return [leaf for leaf in leaves(exc) if isinstance(leaf, kind)]


def default_config(model: str | None = None) -> Any:
    """The built-in config: the shipped character model as worker ``charlm``, device auto; with
    ``model`` (a directory or a Hugging Face name), that model by ``TransformersRunner``
    instead, named as its directory is."""
    from .serve import ServeConfig

    if model is None:
        worker: dict[str, Any] = {
            "name": "charlm",
            "runner": "trio_supervise.runners.charlm:CharLM",
        }
    else:
        worker = {"name": Path(model.rstrip("/")).name or "model", "runner": TRANSFORMERS,
                  "runner_args": {"model": model}}  # fmt: skip
    return ServeConfig.from_dict({"workers": [{**worker, "device": "auto"}]})


TRANSFORMERS = "trio_supervise.runners.transformers:TransformersRunner"


def check_config(path: str) -> int:
    """``config check FILE``: 0 and the effective config, or 2 and every problem."""
    import json

    from rich.console import Console

    from .serve import ServeConfig

    console = Console(soft_wrap=True)  # a problem a line, however long
    try:
        config = ServeConfig.from_toml(path)
        config.check_runners()
    except ConfigError as exc:
        console.print(f"{path}: invalid config", style="red", markup=False, highlight=False)
        for problem in exc.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
        return 2
    console.print(f"{path}: valid; the effective config:", markup=False, highlight=False)
    console.print_json(json.dumps(config.to_dict()))
    return 0


def find_checkout(package_dir: Path | None = None) -> Path | None:
    """The source checkout this package runs from, or None for an installed wheel.

    A checkout is the directory above the ``trio_supervise`` package (``package_dir``, by
    default this one) when it holds ``benchmarks/__main__.py``; a wheel ships no benchmarks.
    """
    package = package_dir if package_dir is not None else Path(__file__).resolve().parent
    root = package.parent
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def bench_command(
    args: Sequence[str], *, package_dir: Path | None = None, err: TextIO | None = None
) -> int:
    """``bench [ARGS]``: ``python -m benchmarks ARGS`` from the checkout, and its exit status;
    2 and a message saying where the benchmarks are when this package is an installed wheel."""
    root = find_checkout(package_dir)
    if root is None:
        package = package_dir if package_dir is not None else Path(__file__).resolve().parent
        (err or sys.stderr).write(
            f"trio-supervise bench: the benchmarks live in the source checkout, not in the "
            f"installed package ({package}).\n"
            f"Get them with the source: clone the trio-supervise repository, run "
            f"`pip install -e '.[dev]'` in it, then `trio-supervise bench` (or "
            f"`python -m benchmarks`) from there.\n"
        )
        return 2
    import os
    import subprocess

    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *([path] if path else [])])}
    # -P: the working directory does not go first on sys.path, so the ``benchmarks`` run is the
    # checkout's, while relative paths in ARGS (--json, --markdown) stay the caller's.
    try:
        return subprocess.call([sys.executable, "-P", "-m", "benchmarks", *args], env=env)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trio-supervise`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every later argument is for ``python -m benchmarks``, --help too
        return bench_command(argv[1:])
    parser = argparse.ArgumentParser(
        prog="trio-supervise",
        description="Erlang-grade supervision for GPU inference workers on Trio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="serve a model over HTTP and keep answering while its workers are poisoned"
    )
    demo.add_argument(
        "--isolation", choices=("inline", "process"), default="inline",
        help="where each replica's runner lives: this process, or a child process of its own",
    )  # fmt: skip
    demo.add_argument(
        "--model", help="serve this transformers model (a directory, or a Hugging Face name) "
        "instead of the shipped character model: pip install 'trio-supervise[transformers]'",
    )  # fmt: skip
    demo.add_argument("--seconds", type=float, default=8.0, help="how long the load runs (8)")
    demo.add_argument(
        "--policy", action="store_true", help="instead: the default policy deciding a script"
    )
    from ._top import add_top_parser, run_top
    from .serve._logs import LEVELS
    from .testing._cli import add_chaos_parser, run_chaos_command

    add_chaos_parser(commands)
    add_top_parser(commands)
    serve_parser = commands.add_parser(
        "serve", help="serve a worker pool over HTTP",
        description="Serve the models of a TOML config (default: the shipped character model) "
        "behind an OpenAI-compatible HTTP API, until SIGTERM or SIGINT drains it.",
    )  # fmt: skip
    serve_parser.add_argument("config", nargs="?", help="a TOML config (default: built in)")
    serve_parser.add_argument("--host", help="override [server] host")
    serve_parser.add_argument("--port", type=int, help="override [server] port")
    serve_parser.add_argument(
        "--api-key-file", help="ask every model route for one of the keys in this file (one "
        "per line), as [server] api_key_file; or set TRIO_SUPERVISE_API_KEY",
    )  # fmt: skip
    serve_parser.add_argument(
        "--log-level", choices=LEVELS, default="info",
        help="log this and above to standard error (info: supervision events too)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=True,
        help="one line per request on the trio_supervise.access logger (default: on)",
    )  # fmt: skip
    serve_parser.add_argument(
        "--log-json", action="store_true", help="log JSON lines instead of text"
    )
    serve_parser.add_argument(
        "--model", help="without a config: serve this transformers model (a directory, or a "
        "Hugging Face name) instead of the character model",
    )  # fmt: skip
    config = commands.add_parser("config", help="work with a serve config file")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = config_commands.add_parser(
        "check", help="validate a TOML config; print the effective config, or every problem"
    )
    check.add_argument("file", help="the TOML file")
    commands.add_parser(
        "bench",
        add_help=False,
        help="run the CPU benchmarks (from a source checkout); "
        "`trio-supervise bench --help` lists their options",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.policy:
            demo_policy()
            return 0
        import trio

        from ._demo import run_demo

        result = trio.run(
            lambda: run_demo(isolation=args.isolation, seconds=args.seconds, model=args.model)
        )
        return 0 if result["finished"] > 0 else 1
    if args.command == "chaos":
        return run_chaos_command(args)
    if args.command == "top":
        return run_top(args)
    if args.command == "config" and args.config_command == "check":
        return check_config(args.file)
    if args.command == "config":
        config.print_help(sys.stderr)
        return 2
    if args.command == "serve":
        return serve_command(
            args.config, host=args.host, port=args.port, model=args.model,
            api_key_file=args.api_key_file, log_level=args.log_level,
            access_log=args.access_log, log_json=args.log_json,
        )  # fmt: skip
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
