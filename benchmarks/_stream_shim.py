"""TEMPORARY stand-in for ``StreamEngine`` until branch ``stream`` is merged (deleted then)."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping, Sequence

from rank1_batch import rank1
from rank1_batch.engines.base import Generation, JudgeRequest, Rank1Engine, _answered


class StreamEngine(Rank1Engine):
    max_in_flight: int

    @abc.abstractmethod
    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation: ...

    @abc.abstractmethod
    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None: ...

    async def judge_one(self, request: JudgeRequest) -> rank1.Judgement:
        opts = self.options
        fp = rank1.fit_prompt(
            request.query,
            request.passage,
            encode=self.encode_prompt,
            decode=self.decode,
            encode_text=self.encode,
            max_prompt_tokens=opts.max_model_len - opts.min_reserve,
        )
        budget = rank1.reasoning_budget(
            len(fp.token_ids), max_tokens=opts.max_tokens, max_model_len=opts.max_model_len
        )
        gen = await self.generate_one(fp.token_ids, budget)
        verdict = rank1.complete_or_none(
            gen.last_top,
            true_id=self.true_id,
            false_id=self.false_id,
            stopped=gen.stopped,
            require_stop=opts.require_stop,
        )
        if verdict is not None:
            return _answered(verdict, rank1.COMPLETE, fp, gen)
        forced = self.encode_prompt(
            rank1.fit_forced_prompt(
                fp.text, gen.text, encode=self.encode_prompt, max_tokens=opts.max_model_len - 1
            )
        )
        top = await self.answer_one(forced)
        verdict = rank1.answer_from_top_logprobs(top, self.true_id, self.false_id)
        if verdict is None:
            return rank1.fallback(
                len(fp.token_ids), gen.token_count, fp.truncated, gen.text, gen.finish_reason
            )
        return _answered(verdict, rank1.FORCED, fp, gen)

    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        async def all_() -> list[Generation]:
            return list(
                await asyncio.gather(
                    *(self.generate_one(p, b) for p, b in zip(prompts, budgets, strict=True))
                )
            )

        return asyncio.run(all_())

    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        async def all_() -> list[Mapping[int, float] | None]:
            return list(await asyncio.gather(*(self.answer_one(p) for p in prompts)))

        return asyncio.run(all_())
