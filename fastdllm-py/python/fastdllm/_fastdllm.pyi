"""Type stubs of the native module fastdllm._fastdllm (see the fastdllm package docstring)."""

from os import PathLike
from typing import Any, Iterator, Optional, Sequence, Union

__version__: str

Prompt = Union[str, Sequence[int]]

class GenerationResult:
    """One prompt's answer."""

    text: str
    """The answer text (end token and stop string removed)."""
    ids: list[int]
    """The answer's token ids (without the end-of-sequence id)."""
    prompt_ids: list[int]
    """The prompt's ids (chat template applied unless raw)."""
    generated_ids: list[int]
    """The whole canvas after the prompt (gen_length ids)."""
    nfe: int
    """Forward calls this prompt took part in."""
    tokens_per_step: list[int]
    """Tokens committed by each of those forwards."""
    finish_reason: str
    """``"stop"`` or ``"length"``."""
    completion_tokens: int
    """Answer tokens (OpenAI's count)."""
    wall_s: float
    """Wall time of the whole call, seconds."""
    tokens_per_s: float
    """Answer tokens of the whole call per wall second."""

class StreamChunk:
    """Answer text committed since the previous chunk."""

    block: Optional[int]
    """The block now fully committed; None on the last chunk."""
    text: str
    """New final text."""
    result: Optional[GenerationResult]
    """The whole result, on the last chunk only."""

class Stream(Iterator[StreamChunk]):
    """Iterator of ``Model.stream``; dropping it cancels the generation."""

    def __iter__(self) -> "Stream": ...
    def __next__(self) -> StreamChunk: ...

class Model:
    """A loaded LLaDA / Dream model: ``path`` is a model directory, a GGUF file, or a Hugging
    Face Hub id (``"owner/name"``, resolved through the Hugging Face cache; ``HF_HUB_OFFLINE=1``
    uses the cache only)."""

    def __init__(
        self,
        path: Union[str, "PathLike[str]"],
        device: str = "cpu",
        dtype: Optional[str] = None,
        quantize: Optional[str] = None,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def family(self) -> str:
        """``"llada"`` or ``"dream"``."""
    @property
    def vocab_size(self) -> int: ...
    @property
    def mask_token_id(self) -> int: ...
    @property
    def max_seq_len(self) -> int: ...
    def encode(self, text: str, raw: bool = False) -> list[int]:
        """Prompt ids as ``generate`` encodes ``text``."""
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens skipped."""
    def settings_for(self, **knobs: Any) -> dict[str, Any]:
        """The resolved settings ``generate`` would run with these knobs."""
    def generate(
        self, prompt: Union[Prompt, Sequence[Prompt]], *, raw: bool = False, **knobs: Any
    ) -> Any:
        """A ``GenerationResult`` for one prompt, a list of them for a list of prompts."""
    def stream(self, prompt: Prompt, *, raw: bool = False, **knobs: Any) -> Stream:
        """Chunks of one answer, one per committed block."""
    def _forward(self, ids: Sequence[int]) -> tuple[bytes, tuple[int, int]]: ...

class Verdict:
    """One golden case's verdict."""

    id: str
    status: str
    """``"pass"``, ``"fail"`` or ``"fragile"``."""
    first_difference: Optional[int]
    problems: list[str]
    notes: list[str]
    agreement: float

class Judgement:
    """Verdicts and their tally."""

    verdicts: list[Verdict]
    passed: int
    failed: int
    fragile: int
    ok: bool
    """No case failed."""
    summary: str
    """``N passed, M failed[, K fragile]``."""

def _judge(
    cases: Sequence[str],
    path: Optional[str] = None,
    text: Optional[str] = None,
    source: str = "<outputs>",
    filter: Optional[str] = None,
) -> Judgement: ...
