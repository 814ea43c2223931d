"""Scripted answers: make a runtime "write" given Gemma 4 text, for flows a random-weight model cannot drive.

Tool calls, thinking, structured output and agent loops need a model that writes them. With
:class:`ScriptedAnswers` only the model's token choices are replaced: each request is still rendered by
the real chat template, and the scripted text is tokenized and delivered in rounds through the real
request machinery (incremental detokenization, stop handling, the Gemma 4 parser, statistics, round
listeners, worker threads for async calls, cancellation). The adapters' tests use it, and so can users'
own tests of agents built on gemma-mtp.

```python
with ScriptedAnswers(rt).add('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>') as script:
    result = rt.chat(messages, tools=tools)
script.requests[0]["prompt"]        # what the model was shown
```
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from gemma_mtp.backends import DecodeRequest, ForwardCounter, Round
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Runtime

__all__ = ["ScriptedAnswers"]

_CALL_OPENER = "<|tool_call>"


class ScriptedAnswers:
    """Replaces a runtime's decoding with scripted answers, one per request, in order.

    ``piece_tokens`` tokens are delivered per round (reported as ``piece_tokens`` drafted, all but one
    accepted), so markers, names and arguments arrive split wherever the cuts fall. An answer that does
    not end in an end-of-generation token gets one: ``<|tool_response>`` after a tool call, else
    ``<turn|>``. Text the prompt already ends with (a forced tool-call opener) is not repeated.
    ``requests`` records, per request, the ``prompt`` text and ``params``, and for chat requests the
    ``messages``, ``tools`` and ``tool_choice`` as the runtime received them.
    """

    def __init__(self, runtime: Runtime, piece_tokens: int = 3):
        self.runtime = runtime
        self.piece_tokens = piece_tokens
        self.answers: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._chat_fields: dict[str, Any] | None = None
        self._saved: dict[str, Any] = {}

    def add(self, *answers: str) -> ScriptedAnswers:
        self.answers.extend(answers)
        return self

    def install(self) -> ScriptedAnswers:
        """Start answering from the script (undone by :meth:`uninstall` or leaving the ``with`` block)."""
        for name, replacement in (("_rounds", self._rounds), ("_prepare_chat", self._prepare_chat)):
            self._saved[name] = self.runtime.__dict__.get(name)
            setattr(self.runtime, name, replacement)
        return self

    def uninstall(self) -> None:
        for name, saved in self._saved.items():
            if saved is None:
                delattr(self.runtime, name)
            else:
                setattr(self.runtime, name, saved)
        self._saved.clear()

    def __enter__(self) -> ScriptedAnswers:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _prepare_chat(
        self,
        messages: Any,
        params: SamplingParams | None,
        tools: Any,
        tool_choice: Any,
        chat_template_kwargs: Any,
    ) -> Any:
        prepared = Runtime._prepare_chat(
            self.runtime, messages, params, tools, tool_choice, chat_template_kwargs
        )
        self._chat_fields = {
            "messages": messages,
            "tools": tools,
            "tool_choice": tool_choice,
            "params": params,
        }
        return prepared

    def _rounds(self, decode: DecodeRequest) -> Generator[Round, None, None]:
        tokenizer = self.runtime.tokenizer
        prompt = tokenizer.decode(decode.prompt_ids, skip_special_tokens=False)
        request: dict[str, Any] = {"prompt": prompt, "params": decode.params}
        request.update(self._chat_fields or {})
        self._chat_fields = None
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"request {len(self.requests)} has no scripted answer left")
        token_ids = tokenizer.encode(self._unforced(self.answers.pop(0), prompt), add_special_tokens=False)
        if not token_ids or token_ids[-1] not in self.runtime.eos_token_ids:
            terminator = "<|tool_response>" if "<tool_call|>" in tokenizer.decode(token_ids) else "<turn|>"
            token_ids.append(tokenizer.convert_tokens_to_ids(terminator))
        return self._deliver(token_ids[: decode.budget], decode.count_forward, decode.use_assistant)

    def _deliver(
        self, token_ids: list[int], count_forward: ForwardCounter, use_assistant: bool
    ) -> Generator[Round, None, None]:
        size = self.piece_tokens if use_assistant else 1
        for start in range(0, len(token_ids), size):
            piece = token_ids[start : start + size]
            count_forward("target")
            drafted = size if use_assistant and start else 0
            yield Round(
                tokens=piece,
                drafted=drafted,
                accepted=min(drafted, len(piece) - 1),
                draft_length=drafted,
                draft_method="argmax" if drafted else "none",
            )

    @staticmethod
    def _unforced(answer: str, prompt: str) -> str:
        """Drop the start of ``answer`` that the prompt already forced (a tool-call opener)."""
        for cut in range(len(answer), 0, -1):
            head = answer[:cut]
            if head.startswith(_CALL_OPENER) and prompt.endswith(head):
                return answer[cut:]
        return answer
