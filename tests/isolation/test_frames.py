"""The wire protocol of the process and Ray tiers: frames round-trip, split anywhere (on a
socket) or whole (through Ray), and refuse garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_supervise as ts
from trio_supervise.isolation import _codec as codec
from trio_supervise.isolation import _frames as f

REPLIES = [
    f.Ready(pid=123, max_concurrency=2),
    f.ChunkFrame(3, "r1", [1, 2, 3], "a b c", "length", (4, 3)),
    f.ChunkFrame(3, "r2", [], "", None, None, f.ErrorData("OutOfMemory", "full", True, 0.5, "tb")),
    f.BatchEnd(3),
    f.BatchFailed(3, f.ErrorData("ContextPoisoned", "700", True), sticky=True),
    f.RebuildDone(7),
    f.Fatal(f.ErrorData("ConfigError", "cannot import 'nope'")),
    f.Heartbeat(progress=42, busy=1),
]
MESSAGES = [
    f.Init("pkg.mod:factory", {"delay": 0.5, "nested": {"a": [1, 2]}}, "cpu", ["/x"], 2),
    f.Execute(5, [f.RequestData("r1", "hi", 4, 1.0, 1.0, 3, ["\n"], True, None)]),
    f.Cancel(5, "r1"),
    f.Rebuild(1, "manual"),
    f.Stop(),
]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_frames_survive_any_split_of_the_stream(cuts: list[int]) -> None:
    stream = b"".join(codec.encode(m) for m in REPLIES)
    reader = codec.FrameReader(from_child=True)
    got, position = [], 0
    for cut in cuts:
        got += reader.feed(stream[position : position + cut])
        position += cut
    got += reader.feed(stream[position:])
    assert got == REPLIES
    assert reader.pending == 0


def test_each_direction_decodes_only_its_own_messages() -> None:
    to_child = codec.FrameReader(from_child=False)
    assert to_child.feed(b"".join(codec.encode(m) for m in MESSAGES)) == MESSAGES
    with pytest.raises(codec.MalformedFrame, match=r"^undecodable frame"):
        to_child.feed(codec.encode(f.BatchEnd(1)))


def test_garbage_and_oversized_frames_are_malformed() -> None:
    reader = codec.FrameReader(from_child=True)
    with pytest.raises(codec.MalformedFrame, match=r"^frame length \d+ exceeds 16777216"):
        reader.feed(b"\xff\xff\xff\xffgarbage")
    reader = codec.FrameReader(from_child=True)
    with pytest.raises(codec.MalformedFrame, match=r"^undecodable frame .*: b'hello'"):
        reader.feed(b"\x00\x00\x00\x05hello")


def test_ray_payloads_carry_whole_frames_with_no_length_prefix() -> None:
    assert codec.unpack_all(codec.pack_all(REPLIES)) == REPLIES
    for message in MESSAGES:
        assert codec.unpack(codec.pack(message), from_child=False) == message
    with pytest.raises(codec.MalformedFrame, match=r"^undecodable frame"):
        codec.unpack(codec.pack(f.BatchEnd(1)), from_child=False)
    with pytest.raises(codec.MalformedFrame, match=r"^undecodable frame .*: b'hello'"):
        codec.unpack_all(b"hello")


def test_a_frame_over_the_limit_is_refused_before_it_is_sent() -> None:
    huge = f.Execute(1, [f.RequestData("r", "x" * f.MAX_FRAME, 1, 1.0, 1.0, None, [], True, None)])
    assert codec.encoding_problem(huge) == (
        f"MalformedFrame: a frame of {f.MAX_FRAME + 46} bytes exceeds the 16777216-byte limit"
    )
    with pytest.raises(codec.MalformedFrame, match=r"^a frame of \d+ bytes exceeds"):
        codec.pack(huge)


def test_errors_cross_as_data() -> None:
    original = ts.OutOfMemory("no room", retry_after=1.5)
    back = f.error_from_data(f.error_to_data(original))
    assert type(back) is ts.OutOfMemory
    assert (back.message, back.retryable, back.retry_after) == ("no room", True, 1.5)
    poisoned = f.error_from_data(f.error_to_data(ts.HungWorker("stuck")))
    assert type(poisoned) is ts.HungWorker
    config = f.error_from_data(f.error_to_data(ts.ConfigError("bad path")))
    assert type(config) is ts.ConfigError and str(config) == "bad path"
    try:
        raise KeyError("their own")
    except KeyError as exc:
        foreign = f.error_from_data(f.error_to_data(exc))
    assert type(foreign) is ts.RunnerError
    assert str(foreign) == "KeyError: 'their own'"
    assert "in the child process:" in foreign.__notes__[0]
    assert "KeyError" in foreign.__notes__[0]


def test_requests_and_chunks_round_trip() -> None:
    request = ts.Request("r", (1, 2), ts.SamplingParams(5, 0.5, 0.9, 7, ("x",)), False, 12.5)
    assert f.request_from_data(f.request_to_data(request)) == request
    chunk = ts.Chunk("r", (4, 5), "ab", ts.FinishReason.STOP, ts.Usage(2, 2))
    assert f.chunk_from_frame(f.chunk_to_frame(0, chunk)) == chunk
    failed = f.chunk_from_frame(f.chunk_to_frame(0, ts.Chunk("r", error=ts.BadRequest("long"))))
    assert type(failed.error) is ts.BadRequest and failed.final
    # the sampling extras, a chat's messages, log probabilities: all cross
    params = ts.SamplingParams(5, top_k=3, min_p=0.1, presence_penalty=-1.5, repetition_penalty=1.2,
                               min_tokens=2, ignore_eos=True, logit_bias=((3, -100.0), (7, 2.5)),
                               logprobs=4)  # fmt: skip
    chat = ts.Request("c", "user: a\nassistant: b", params,
                      messages=[ts.ChatMessage("user", "a"), ts.ChatMessage("assistant", "b")],
                      continue_final=True, max_tokens_asked=False)  # fmt: skip
    assert f.request_from_data(f.request_to_data(chat)) == chat
    lps = (ts.TokenLogprob("a", -0.5, (("a", -0.5), ("b", -1.5))), ts.TokenLogprob("b", -2.0))
    with_logprobs = ts.Chunk("r", (4, 5), "ab", logprobs=lps)
    assert f.chunk_from_frame(f.chunk_to_frame(0, with_logprobs)) == with_logprobs


def test_policies_cross_as_data_when_they_name_only_known_classes() -> None:
    policy = ts.Policy(
        ts.rules(
            ts.on(ts.ContextPoisoned, ValueError, ts.Directive.RESTART),
            default=ts.Directive.STOP,
        ),
        ts.RestartIntensity(4, 30.0),
        ts.Backoff(0.5, 8.0, 3.0, 0.25, 2.0),
    )
    assert f.policy_from_data(f.policy_to_data(policy)) == policy
    assert f.policy_from_data(f.policy_to_data(ts.DEVICE_POLICY)) == ts.DEVICE_POLICY

    class Mine(Exception):
        pass

    with pytest.raises(ts.ConfigError, match=r"names .*Mine, which the parent cannot import"):
        f.policy_to_data(ts.Policy(ts.rules(ts.on(Mine, ts.Directive.RESUME))))
    with pytest.raises(ts.ConfigError, match=r"must use rules\(\.\.\.\)"):
        f.policy_to_data(ts.Policy(lambda exc: ts.Directive.RESUME))
