"""Incremental decoding of a growing generation: :class:`IncrementalText`.

The stepped pass 1 (:func:`rank1_batch.engines.vllm_protocol.stream_pass1`) decides where a
reference stop string completes on the decoded text of everything generated so far, after
every segment (a request ending on ``</think>``, a one-token step). Decoding the whole
generation each time costs O(length) per segment; this decodes only the tokens past a mark,
with :data:`DECODE_OVERLAP` tokens before it for context, and gives exactly
``decode(tokens[:n])``.

Why not vLLM's own text (``CompletionOutput.text``, its incremental detokenizer): each
segment is its own request, and vLLM cuts a matched stop string from ``.text`` (or, with
``include_stop_str_in_output``, everything after it in the token that completed it), so the
segments' texts do not add up to the generation's when ``</think>`` is not a token of its own;
the rule here must see the text the reference's one request would. ``request_mode: single``
is that one request and uses vLLM's text as it is.

Exactness: with a byte-level BPE tokenizer (Qwen2.5, Llama 3, Mistral's Tekken: every Rank1
model) the decoded text is the UTF-8 decoding, with replacement, of the tokens' bytes, so it
splits at a token whose decoding starts with a whole character: ``decode(a + b) ==
decode(a) + decode(b)`` when ``decode(b)`` does not start with U+FFFD. The overlap window is
trusted only then (and when the text so far ends with the window's own decoding); otherwise,
as for a character split across the window's first token, the whole prefix is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]

DECODE_OVERLAP = 4
"""Tokens before the mark decoded again with the new ones: context for merges and for a
character whose bytes span tokens."""

REPLACEMENT = "\ufffd"


class IncrementalText:
    """``decode(tokens[:n])`` for a growing ``tokens`` list, decoding only what lies past the
    last :meth:`mark` (plus :data:`DECODE_OVERLAP` tokens)."""

    def __init__(self, decode: Decode) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self._mark = 0
        self._text = ""

    def upto(self, n: int) -> str:
        """The text of the first ``n`` tokens (a prefix shorter than the mark is decoded
        whole: rare, the token before an EOS when the mark is already past it)."""
        if n == self._mark:
            return self._text
        lo = self._mark - DECODE_OVERLAP
        if n < self._mark or lo <= 0:
            return self.decode(self.tokens[:n])
        head = self.decode(self.tokens[lo : self._mark])
        if head and not head.startswith(REPLACEMENT) and self._text.endswith(head):
            return self._text[: len(self._text) - len(head)] + self.decode(self.tokens[lo:n])
        return self.decode(self.tokens[:n])  # a split character at the window's start

    def mark(self, n: int, text: str | None = None) -> str:
        """Keep the text of the first ``n`` tokens (``text``, when already known): later
        prefixes decode from here."""
        self._text = self.upto(n) if text is None else text
        self._mark = n
        return self._text
