"""A sequence's output (handler.engine.output) without llama.cpp: tokens are given as their pieces."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from handler.core.types import FinishReason, TokenLogprob
from handler.engine.output import SequenceOutput


def feed(output: SequenceOutput, pieces: list[bytes]) -> list[FinishReason | None]:
    return [output.add(piece) for piece in pieces]


def entry(value: float) -> Callable[[bytes], TokenLogprob]:
    """A log-probability entry maker: the entry carries the piece it is given, as the answer has it."""
    return lambda piece: TokenLogprob(piece, value, ((piece, value),))


def test_a_stop_string_across_tokens_ends_the_answer_before_it() -> None:
    streamed: list[str] = []
    output = SequenceOutput([b"END"], 100, streamed.append)
    assert feed(output, [b"Hello E", b"N"]) == [None, None]
    assert streamed == ["Hello "]  # "E", then "EN", may begin the stop: held back
    assert output.add(b"D and more") == FinishReason.STOP
    assert output.text() == "Hello "
    output.flush(output.text())
    assert "".join(streamed) == "Hello "  # the stop's first characters were never sent
    assert output.n_tokens == 3


def test_the_earliest_of_several_stops_cuts() -> None:
    output = SequenceOutput([b"zz", b"b"], 100)
    assert output.add(b"abzz") == FinishReason.STOP
    assert output.text() == "a"
    assert output.stop == "b"  # the one that cut, for Anthropic's stop_sequence
    assert SequenceOutput([b"zz"], 100).stop is None


def test_a_stop_prefix_that_does_not_complete_is_streamed_once_it_cannot() -> None:
    streamed: list[str] = []
    output = SequenceOutput([b"END"], 100, streamed.append)
    assert feed(output, [b"x E", b"N"]) == [None, None]
    assert streamed == ["x "]
    assert output.add(b"ough") is None  # "ENough": no stop after all
    assert streamed == ["x ", "ENough"]
    output.flush(output.text())
    assert streamed == ["x ", "ENough"]  # nothing sent twice


def test_a_held_prefix_at_the_end_of_the_answer_is_sent_by_flush() -> None:
    streamed: list[str] = []
    output = SequenceOutput([b"END"], 2, streamed.append)
    assert output.add(b"ok") is None
    assert output.add(b" EN") == FinishReason.LENGTH
    assert streamed == ["ok"]
    output.flush(output.text())
    assert streamed == ["ok", " EN"]
    assert "".join(streamed) == output.text() == "ok EN"


def test_a_character_split_across_tokens_is_streamed_whole() -> None:
    streamed: list[str] = []
    output = SequenceOutput([], 100, streamed.append)
    e_acute, check = "é".encode(), "✓".encode()  # two and three bytes
    assert feed(output, [b"caf" + e_acute[:1], e_acute[1:], check[:1], check[1:2]]) == [None] * 4
    assert streamed == ["caf", "é"]  # no half character, and no empty piece
    assert output.add(check[2:] + b"!") is None
    assert streamed == ["caf", "é", "✓!"]
    assert output.text() == "café✓!"


def test_a_stop_inside_a_split_character_keeps_the_bytes_before_it() -> None:
    stop = "✓".encode()
    output = SequenceOutput([stop], 100)
    assert feed(output, [b"a" + stop[:2], stop[2:]]) == [None, FinishReason.STOP]
    assert output.text() == "a"


def test_logprobs_are_trimmed_to_the_returned_text() -> None:
    output = SequenceOutput([b"STOP"], 100)
    reasons = [output.add(p, logprob=entry(-float(i))) for i, p in enumerate([b"ab", b"cS", b"TO", b"Px"])]
    assert reasons == [None, None, None, FinishReason.STOP]
    assert output.text() == "abc"
    entries = output.logprobs()
    assert [e.token for e in entries] == [b"ab", b"c"]  # the stop's token trimmed, the ones after it gone
    assert [e.logprob for e in entries] == [0.0, -1.0]
    assert entries[1].top == ((b"cS", -1.0),)  # only the token's own bytes are cut
    assert b"".join(e.token for e in entries).decode() == output.text()


def test_a_stop_on_a_token_boundary_drops_its_tokens_entries() -> None:
    output = SequenceOutput([b"STOP"], 100)
    for piece in (b"ab", b"ST", b"OP"):
        output.add(piece, logprob=entry(-0.5))
    assert [e.token for e in output.logprobs()] == [b"ab"]


def test_logprobs_without_a_stop_are_every_token() -> None:
    output = SequenceOutput([], 3)
    reasons = [output.add(p, logprob=entry(-1.0)) for p in (b"a", b"b", b"c")]
    assert reasons == [None, None, FinishReason.LENGTH]
    assert [e.token for e in output.logprobs()] == [b"a", b"b", b"c"]


def test_max_tokens_finishes_with_length_and_counts_every_token() -> None:
    streamed: list[str] = []
    output = SequenceOutput([], 3, streamed.append)
    assert feed(output, [b"a", b"", b"c"]) == [None, None, FinishReason.LENGTH]
    assert output.n_tokens == 3  # an empty piece is a token too
    assert streamed == ["a"]  # the last token's piece is the flush's
    output.flush(output.text())
    assert streamed == ["a", "c"]
    assert output.text() == "ac"


def test_a_stop_wins_over_length_on_the_last_token() -> None:
    output = SequenceOutput([b"c"], 2)
    assert feed(output, [b"a", b"bc"]) == [None, FinishReason.STOP]
    assert output.text() == "ab"


def test_a_leading_space_goes_after_a_generated_bos_only() -> None:
    after_bos = SequenceOutput([], 10)
    after_bos.add(b"", is_bos=True)
    after_bos.add(b" Hi")
    after_bos.add(b" there")
    assert after_bos.text() == "Hi there"
    plain = SequenceOutput([], 10)
    plain.add(b" Hi", is_bos=False)
    assert plain.text() == " Hi"


def test_the_output_module_does_not_import_llama_cpp() -> None:
    code = "import sys, handler.engine.output; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
