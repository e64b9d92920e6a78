"""One choice's output as a client gets it (``ChoiceOutput``): text that may begin a stop
sequence held back, the stop sequence that ended the choice cut, the log probabilities with
their text; and log probabilities as each endpoint writes them."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import trio_supervise as ts
from trio_supervise import openai

STOP, LENGTH = ts.FinishReason.STOP, ts.FinishReason.LENGTH


def lp(*tokens: str) -> tuple[ts.TokenLogprob, ...]:
    """A log probability for each token, told apart by its value."""
    return tuple(ts.TokenLogprob(t, -float(i + 1)) for i, t in enumerate(tokens))


def chunk(text: str, finish: ts.FinishReason | None = None, **kwargs: Any) -> ts.Chunk:
    return ts.Chunk("r", tuple(range(len(text))), text, finish, **kwargs)


def feed(output: openai.ChoiceOutput, *chunks: ts.Chunk) -> list[openai.Piece]:
    return [output.feed(c) for c in chunks]


def texts(pieces: list[openai.Piece]) -> list[str]:
    return [p.text for p in pieces]


# --- examples ---------------------------------------------------------------------------------


def test_a_stop_split_across_chunks_is_held_then_cut_and_never_sent() -> None:
    output = openai.ChoiceOutput(("\n\n",))
    pieces = feed(output, chunk("Hello\n"), chunk("\n", STOP, usage=ts.Usage(1, 2)))
    assert texts(pieces) == ["Hello", ""]
    assert [p.offset for p in pieces] == [0, 5]
    assert pieces[1].finish_reason is STOP and pieces[1].usage == ts.Usage(1, 2)
    assert pieces[1].token_ids == (0,)  # the ids go as they came: the text alone is cut


def test_a_stop_within_one_final_chunk_is_cut() -> None:
    assert texts(feed(openai.ChoiceOutput(("END",)), chunk("abcEND", STOP))) == ["abc"]
    output = openai.ChoiceOutput(("x", "END"))
    assert texts(feed(output, chunk("ab"), chunk("cE"), chunk("ND", STOP))) == ["ab", "c", ""]


def test_text_that_looked_like_a_stop_but_was_not_is_sent_with_the_next_chunk() -> None:
    output = openai.ChoiceOutput(("END",))
    pieces = feed(output, chunk("aE"), chunk("N"), chunk("d and"), chunk("!", LENGTH))
    assert texts(pieces) == ["a", "", "ENd and", "!"]
    assert [p.offset for p in pieces] == [0, 1, 1, 8]
    assert output.held == ""


def test_a_stop_of_the_final_chunk_is_cut_but_one_earlier_in_the_text_is_not() -> None:
    output = openai.ChoiceOutput(("ab",))
    assert texts(feed(output, chunk("xab"), chunk("yab", STOP))) == ["xab", "y"]


def test_the_choice_is_cut_at_its_first_stop_sequence_whatever_the_order_given() -> None:
    assert texts(feed(openai.ChoiceOutput(("b", "ab")), chunk("xab", STOP))) == ["x"]
    assert texts(feed(openai.ChoiceOutput(("ab", "b")), chunk("xab", STOP))) == ["x"]
    assert texts(feed(openai.ChoiceOutput(("ba", "a")), chunk("xaba", STOP))) == ["x"]


def test_what_the_last_token_wrote_after_the_stop_is_dropped() -> None:
    assert texts(feed(openai.ChoiceOutput(("\n",)), chunk("ab"), chunk("c\nxyz", STOP))) == [
        "ab",
        "c",
    ]
    kept = openai.ChoiceOutput(("\n",), keep_stop=True)
    assert texts(feed(kept, chunk("ab"), chunk("c\nxyz", STOP))) == ["ab", "c\n"]


def test_keep_stop_holds_a_stop_prefix_too_then_sends_the_stop() -> None:
    output = openai.ChoiceOutput(("\n\n",), keep_stop=True)
    pieces = feed(output, chunk("Hello\n"), chunk("\n", STOP))
    assert texts(pieces) == ["Hello", "\n\n"]
    assert [p.offset for p in pieces] == [0, 5] and output.offset == 7
    no_stop = openai.ChoiceOutput(("\n\n",), keep_stop=True)
    assert texts(feed(no_stop, chunk("Hello\n"), chunk("!", LENGTH))) == ["Hello", "\n!"]


def test_a_finish_by_length_sends_the_held_text() -> None:
    output = openai.ChoiceOutput(("END",))
    pieces = feed(output, chunk("xEN"), chunk("", LENGTH))
    assert texts(pieces) == ["x", "EN"]
    assert [p.finish_reason for p in pieces] == [None, LENGTH]


def test_a_finish_by_stop_without_a_stop_sequence_sends_the_held_text() -> None:
    output = openai.ChoiceOutput(("END",))
    assert texts(feed(output, chunk("xEN"), chunk("", STOP))) == ["x", "EN"]  # the end of text


def test_offsets_begin_after_an_echoed_prompt() -> None:
    output = openai.ChoiceOutput(("!",), offset=4)
    pieces = feed(output, chunk("ab"), chunk("c!", STOP))
    assert [(p.text, p.offset) for p in pieces] == [("ab", 4), ("c", 6)]
    assert output.offset == 7


def test_logprobs_are_held_back_and_cut_with_their_text() -> None:
    output = openai.ChoiceOutput(("\n\n",))
    pieces = [
        output.feed(ts.Chunk("r", (1, 2), "Hi\n", logprobs=lp("Hi", "\n"))),
        output.feed(ts.Chunk("r", (3,), "\n", STOP, logprobs=lp("\n"))),
    ]
    assert texts(pieces) == ["Hi", ""]
    assert pieces[0].logprobs == lp("Hi")
    assert pieces[1].logprobs == ()  # the held "\n" and the last "\n": the stop, cut


def test_held_logprobs_go_with_their_text_when_it_was_no_stop() -> None:
    output = openai.ChoiceOutput(("END",))
    first = output.feed(ts.Chunk("r", (1, 2), "aE", logprobs=lp("a", "E")))
    second = output.feed(ts.Chunk("r", (3,), "x", LENGTH, logprobs=(ts.TokenLogprob("x", -9.0),)))
    assert (first.text, first.logprobs) == ("a", lp("a"))
    assert (second.text, second.logprobs) == ("Ex", (lp("a", "E")[1], ts.TokenLogprob("x", -9.0)))
    assert openai.completion_logprobs(second.logprobs, second.offset)["text_offset"] == [1, 2]


def test_a_token_that_begins_before_the_cut_keeps_its_logprob() -> None:
    output = openai.ChoiceOutput(("\n",))
    (piece,) = feed(output, ts.Chunk("r", (1, 2), "ab\n", STOP, logprobs=lp("a", "b\n")))
    assert (piece.text, piece.logprobs) == ("ab", lp("a", "b\n"))


def test_no_logprobs_asked_none_sent() -> None:
    pieces = feed(openai.ChoiceOutput(("END",)), chunk("aE"), chunk("ND", STOP))
    assert [p.logprobs for p in pieces] == [None, None]


def test_a_token_that_straddles_the_held_text_keeps_the_later_logprobs_aligned() -> None:
    output = openai.ChoiceOutput(("ab",))
    tokens = lp("xa", "c", "d")
    pieces = [
        output.feed(ts.Chunk("r", (1,), "xa", logprobs=tokens[:1])),
        output.feed(ts.Chunk("r", (2,), "c", logprobs=tokens[1:2])),
        output.feed(ts.Chunk("r", (3,), "d", LENGTH, logprobs=tokens[2:])),
    ]
    assert "".join(texts(pieces)) == "xacd"
    sent = [one for p in pieces for one in p.logprobs or ()]
    assert sent == list(tokens)  # every token's, once: "d"'s is dropped, "c"'s sent late
    written = [openai.completion_logprobs(p.logprobs, p.logprobs_offset) for p in pieces]
    offsets = [o for w in written for o in w["text_offset"]]
    assert offsets == [0, 2, 3]


# --- the property -----------------------------------------------------------------------------

ALPHABET = "ab\n"


@st.composite
def runs(draw: st.DrawFn) -> tuple[tuple[str, ...], list[list[str]], ts.FinishReason]:
    """A choice's stop sequences, its tokens in chunks, and how it finished, as a runner makes
    them: tokens until one completes a stop sequence (that one ends it, with ``STOP``, and is
    in the last chunk; it may write more after the stop), or until the tokens run out (it ends
    with ``LENGTH``, or ``STOP`` at the end of text, maybe in a last chunk of no tokens)."""
    stops = tuple(draw(st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=4)))
    drawn = draw(st.lists(st.text(ALPHABET, min_size=1, max_size=3), max_size=16))
    tokens: list[str] = []
    stopped = False
    for token in drawn:
        tokens.append(token)
        if any(stop in "".join(tokens) for stop in stops):
            stopped = True
            break
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(tokens) - 1, 1)), max_size=6))))
    bounds = [0, *(c for c in cuts if c < len(tokens)), len(tokens)]
    chunks = [tokens[a:b] for a, b in itertools.pairwise(bounds)] or [[]]
    if stopped:
        return stops, chunks, STOP
    if draw(st.booleans()):
        chunks.append([])  # the end alone, as a remote backend's stream gives it
    return stops, chunks, draw(st.sampled_from([STOP, LENGTH]))


@settings(max_examples=200)
@given(runs(), st.booleans(), st.integers(0, 3))
def test_what_is_sent_is_the_text_cut_at_the_stop_that_ended_it(
    run: tuple[tuple[str, ...], list[list[str]], ts.FinishReason], keep_stop: bool, offset: int
) -> None:
    stops, chunks, finish = run
    text = "".join(t for c in chunks for t in c)
    single = all(len(t) == 1 for c in chunks for t in c)
    output = openai.ChoiceOutput(stops, keep_stop=keep_stop, offset=offset)
    pieces = []
    for i, tokens in enumerate(chunks):
        last = i == len(chunks) - 1
        ids = tuple(range(len(tokens)))
        one = ts.Chunk("r", ids, "".join(tokens), finish if last else None, logprobs=lp(*tokens))
        piece = output.feed(one)
        pieces.append(piece)
        assert piece.token_ids == ids and piece.finish_reason is one.finish_reason
        if not last:
            assert len(output.held) < max((len(s) for s in stops), default=1)
        assert piece.logprobs is not None
        if single:  # one character a token: a piece's log probabilities are its text's
            assert "".join(t.token for t in piece.logprobs) == piece.text
    keep = len(text)
    found = [(text.find(s), len(s)) for s in stops if s in text]
    if finish is STOP and found:
        at, size = min(found)
        keep = at + size if keep_stop else at
    sent = "".join(p.text for p in pieces)
    assert sent == text[:keep]
    assert [p.offset for p in pieces] == [
        offset + sum(len(p.text) for p in pieces[:i]) for i in range(len(pieces))
    ]
    assert output.offset == offset + len(sent)


# --- log probabilities as each endpoint writes them ------------------------------------------


def test_a_completions_logprobs_are_lists_by_token_with_their_offsets() -> None:
    tokens = (
        ts.TokenLogprob("Hel", -0.5, (("Hel", -0.5), ("He", -1.25))),
        ts.TokenLogprob("lo", -0.75, (("lo", -0.75),)),
        ts.TokenLogprob("é", -2.0),
    )
    assert openai.completion_logprobs(tokens, 3) == {
        "tokens": ["Hel", "lo", "é"],
        "token_logprobs": [-0.5, -0.75, -2.0],
        "top_logprobs": [{"Hel": -0.5, "He": -1.25}, {"lo": -0.75}, {}],
        "text_offset": [3, 6, 8],
    }
    assert openai.completion_logprobs((), 5) == {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    assert openai.completion_logprobs(None, 0) is None


def test_a_chats_logprobs_are_content_entries_with_utf8_bytes() -> None:
    tokens = (ts.TokenLogprob("é", -0.5, (("é", -0.5), ("e", -1.5))), ts.TokenLogprob("!", -1.0))
    assert openai.chat_logprobs(tokens) == {
        "content": [
            {
                "token": "é",
                "logprob": -0.5,
                "bytes": [0xC3, 0xA9],
                "top_logprobs": [
                    {"token": "é", "logprob": -0.5, "bytes": [0xC3, 0xA9]},
                    {"token": "e", "logprob": -1.5, "bytes": [0x65]},
                ],
            },
            {"token": "!", "logprob": -1.0, "bytes": [0x21], "top_logprobs": []},
        ]
    }
    assert openai.chat_logprobs(()) == {"content": []}
    assert openai.chat_logprobs(None) is None


def test_a_streamed_pieces_logprobs_are_written_from_its_offset() -> None:
    piece = openai.Piece("cd", (3, 4), lp("c", "d"), 2, logprobs_offset=2)
    choice = openai.COMPLETION.piece_choice(0, piece, None)
    assert choice["logprobs"]["text_offset"] == [2, 3] and choice["token_ids"] == [3, 4]
    assert openai.CHAT.piece_choice(0, piece, None)["logprobs"] == openai.chat_logprobs(
        piece.logprobs
    )
