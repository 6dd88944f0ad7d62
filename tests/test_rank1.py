"""Every Rank1 rule, pinned as a pure function (no model)."""

from __future__ import annotations

import math

import pytest

from rank1_batch.core import rank1

HEAD = (
    "Determine if the following passage is relevant to the query. "
    "Answer only with 'true' or 'false'.\nQuery: "
)


def test_prompt_is_the_reference_string():
    got = rank1.build_prompt("what is a cat", "Cats are small mammals.")
    assert got == (
        "Determine if the following passage is relevant to the query. Answer only with "
        "'true' or 'false'.\nQuery: what is a cat\nPassage: Cats are small mammals.\n<think>"
    )
    assert got.endswith("<think>") and not got.endswith("<think>\n")


def test_passage_with_title_is_title_space_text_stripped():
    assert rank1.build_prompt("q", " body ", title="Title").endswith(
        "\nPassage: Title  body\n<think>"
    )
    assert rank1.compose_passage("  text  ", title=None) == "text"
    assert rank1.compose_passage("text", title="") == "text"
    assert rank1.compose_passage("", title=" T ") == "T"


def test_instruction_is_appended_after_one_space():
    assert rank1.compose_query("find cats", instruction="only pets") == "find cats only pets"


def test_instruction_equal_to_query_is_skipped_and_query_stripped():
    assert rank1.compose_query(" find cats ", instruction="find cats") == "find cats"
    assert rank1.compose_query("find cats", instruction=" find cats  ") == "find cats"


def test_no_instruction_keeps_query_verbatim():
    assert rank1.compose_query(" q ") == " q "


def test_template_wraps_query_after_instruction_rule():
    template = "Claim: FILL_QUERY_HERE\nIs it supported?"
    got = rank1.compose_query("the sky is green", instruction="use physics", template=template)
    assert got == "Claim: the sky is green use physics\nIs it supported?"
    prompt = rank1.build_prompt("x", "p", template="<<FILL_QUERY_HERE>>")
    assert prompt == HEAD + "<<x>>\nPassage: p\n<think>"


def test_template_without_placeholder_is_refused():
    with pytest.raises(ValueError, match="FILL_QUERY_HERE"):
        rank1.compose_query("q", template="no placeholder")


def test_score_is_two_way_softmax_and_logit_is_difference():
    score, logit = rank1.score_from_logprobs(-0.1, -2.5)
    expected = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.5))
    assert score == pytest.approx(expected, rel=1e-12)
    assert logit == pytest.approx(2.4)
    assert rank1.score_from_logprobs(-1.0, -1.0) == (0.5, 0.0)
    low, _ = rank1.score_from_logprobs(-50.0, -0.01)
    assert 0.0 <= low < 1e-20


def test_score_survives_extreme_logprobs():
    assert rank1.score_from_logprobs(0.0, -1e6)[0] == 1.0
    assert rank1.score_from_logprobs(-1e6, 0.0)[0] == 0.0


def test_answer_needs_both_ids_in_top_logprobs():
    top = {5: -0.2, 7: -1.9, 9: -3.0}
    assert rank1.answer_from_top_logprobs(top, 5, 7) == rank1.score_from_logprobs(-0.2, -1.9)
    assert rank1.answer_from_top_logprobs(top, 5, 8) is None
    assert rank1.answer_from_top_logprobs({}, 5, 7) is None
    assert rank1.answer_from_top_logprobs(None, 5, 7) is None
    assert rank1.answer_from_top_logprobs({5: math.nan, 7: -1.0}, 5, 7) is None


def test_complete_rule_reference_vs_require_stop():
    top = {1: -0.5, 2: -1.0}
    ref = rank1.complete_or_none(top, true_id=1, false_id=2, stopped=False, require_stop=False)
    assert ref is not None  # the reference accepts a length-capped output with both ids
    strict = rank1.complete_or_none(top, true_id=1, false_id=2, stopped=False, require_stop=True)
    assert strict is None


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("I think it is relevant. Because the", "I think it is relevant."),
        ("Is it? Maybe! Then more words", "Is it? Maybe!"),
        ("ends cleanly.  \n", "ends cleanly."),
        ("no sentence end at all", "no sentence end at all"),
        ("", ""),
        ("   ", ""),
        ("  leading. trailing", "leading."),
    ],
)
def test_clean_reasoning_cuts_after_last_sentence_end(text, cleaned):
    assert rank1.clean_reasoning(text) == cleaned


def test_forced_prompt_format():
    prompt = rank1.build_prompt("q", "p")
    assert rank1.forced_prompt(prompt, "It matches. And so") == prompt + "\nIt matches.\n</think>"


def test_forced_prompt_with_empty_reasoning():
    prompt = rank1.build_prompt("q", "p")
    assert rank1.forced_prompt(prompt, "") == prompt + "\n\n</think>"


def test_forced_prompt_keeps_think_close_already_in_reasoning():
    prompt = rank1.build_prompt("q", "p")
    got = rank1.forced_prompt(prompt, "Done. </think>\ntrue")
    # The reference does not strip an earlier </think>: cut after the last '.', then append.
    assert got == prompt + "\nDone.\n</think>"
    got = rank1.forced_prompt(prompt, "Done </think>")
    assert got == prompt + "\nDone </think>\n</think>"


def words(text):
    return text.split(" ") if text else []


def encode_words(text):
    """A whitespace 'tokenizer': one token per space-separated piece."""
    return [hash(w) % 1000 for w in words(text)]


def test_fit_forced_prompt_drops_sentences_from_the_end():
    prompt = "P <think>"
    reasoning = "one two. three four. five six."
    full = rank1.fit_forced_prompt(prompt, reasoning, encode=encode_words, max_tokens=100)
    assert full == "P <think>\none two. three four. five six.\n</think>"
    n = len(words(full))
    short = rank1.fit_forced_prompt(prompt, reasoning, encode=encode_words, max_tokens=n - 2)
    assert short == "P <think>\none two. three four.\n</think>"
    # With no sentence left to drop, whole words go from the end, then everything.
    words_cut = rank1.fit_forced_prompt(prompt, reasoning, encode=encode_words, max_tokens=2)
    assert words_cut == "P <think>\none\n</think>"
    tiny = rank1.fit_forced_prompt(prompt, reasoning, encode=encode_words, max_tokens=1)
    assert tiny == "P <think>\n\n</think>"


def linear_fit_forced(prompt, reasoning, *, encode, max_tokens):
    """The rule as first written: drop one sentence at a time, re-encoding each time."""
    cleaned = rank1.clean_reasoning(reasoning)
    while True:
        candidate = f"{prompt}\n{cleaned}\n{rank1.THINK_CLOSE}"
        if len(encode(candidate)) <= max_tokens or not cleaned:
            return candidate
        cleaned = rank1._shorten_at_sentence(cleaned)


def test_fit_forced_prompt_bisects_to_the_one_sentence_at_a_time_answer():
    prompt = "P <think>"
    reasoning = " ".join(f"s{i} a b{'.' if i % 3 else ''}" for i in range(200)) + " tail"
    calls = []

    def counting(text):
        calls.append(text)
        return encode_words(text)

    full = len(words(f"{prompt}\n{rank1.clean_reasoning(reasoning)}\n</think>"))
    for limit in [*range(0, 40), *range(40, full + 2, 37)]:
        calls.clear()
        got = rank1.fit_forced_prompt(prompt, reasoning, encode=counting, max_tokens=limit)
        assert got == linear_fit_forced(prompt, reasoning, encode=encode_words, max_tokens=limit)
        # ~330 successive cuts: a bisection's handful of encodes, not one per dropped sentence.
        assert len(calls) <= 11, (limit, len(calls))


class CharTok:
    """A character tokenizer: exact, easy to reason about token counts."""

    @staticmethod
    def encode(text):
        return [ord(c) for c in text]

    @staticmethod
    def decode(ids):
        return "".join(chr(i) for i in ids)


def test_fit_prompt_untouched_when_it_fits():
    fp = rank1.fit_prompt(
        "q", "short passage", encode=CharTok.encode, decode=CharTok.decode, max_prompt_tokens=500
    )
    assert fp.text == rank1.build_prompt("q", "short passage")
    assert not fp.truncated
    assert list(fp.token_ids) == CharTok.encode(fp.text)


def test_fit_prompt_cuts_only_the_passage():
    template_query = rank1.compose_query("q", template="Find: FILL_QUERY_HERE (tail)")
    passage = "word " * 200
    bare = len(rank1.prompt_from_parts(template_query, ""))
    limit = bare + 30
    fp = rank1.fit_prompt(
        template_query,
        passage,
        encode=CharTok.encode,
        decode=CharTok.decode,
        max_prompt_tokens=limit,
    )
    assert fp.truncated
    assert len(fp.token_ids) <= limit
    assert fp.text.startswith(HEAD + "Find: q (tail)\nPassage: word word")
    assert fp.text.endswith("\n<think>")
    # The kept passage is a prefix of the original.
    kept = fp.text[len(HEAD + "Find: q (tail)\nPassage: ") : -len("\n<think>")]
    assert passage.startswith(kept) and len(kept) >= 25


def test_fit_prompt_too_long_without_passage_raises():
    with pytest.raises(rank1.PromptTooLong):
        rank1.fit_prompt(
            "a very long query " * 20,
            "p",
            encode=CharTok.encode,
            decode=CharTok.decode,
            max_prompt_tokens=50,
        )


def test_fit_prompt_handles_merges_across_boundary():
    # A tokenizer where the prompt's token count is not additive over its parts.
    def enc(text):
        return [1] * (len(text) // 2 + text.count("x"))

    def dec(ids):
        return "x" * len(ids)

    fp = rank1.fit_prompt("q", "x" * 400, encode=enc, decode=dec, max_prompt_tokens=120)
    assert fp.truncated and len(fp.token_ids) <= 120
    assert fp.text.endswith("\n<think>")


def test_reasoning_budget_is_min_of_cap_and_room():
    assert rank1.reasoning_budget(100, max_tokens=8192, max_model_len=16000) == 8192
    assert rank1.reasoning_budget(10000, max_tokens=8192, max_model_len=16000) == 6000
    assert rank1.reasoning_budget(17000, max_tokens=8192, max_model_len=16000) == 0


def test_fallback_is_flagged_never_silent():
    j = rank1.fallback(10, 3, False, "reason", "length")
    assert j.score == 0.5 and j.status == rank1.FALLBACK and j.logit == 0.0


def test_error_judgement_has_code_and_nan_score():
    j = rank1.error_judgement(rank1.PROMPT_TOO_LONG)
    assert j.status == rank1.ERROR and j.error == "prompt_too_long" and math.isnan(j.score)
