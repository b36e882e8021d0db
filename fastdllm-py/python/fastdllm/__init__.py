"""fastdllm: Fast-dLLM inference for diffusion LLMs (LLaDA, Dream) from Python.

The engine is the Rust one of the ``fastdllm`` CLI: the same model loading, the same settings
resolver (a knob not given comes from the model directory's ``generation_config.json``, then
the paper's accelerated setting: gen_length 256, block_length 32, dual cache, threshold 0.9),
the same caches and unmasking rules (arXiv 2505.22618, sections 3.2-3.3), so ``generate`` gives
the CLI's token ids for the same prompt and knobs.

>>> import fastdllm
>>> model = fastdllm.Model("fixtures/llada-tiny")
>>> r = model.generate("4+9=", cache="dual", threshold=0.9)
>>> r.text, r.ids, r.nfe  # doctest: +SKIP
>>> for chunk in model.stream("copy ab......=", gen_length=16, block_length=8):
...     print(chunk.block, chunk.text)  # doctest: +SKIP
>>> model.forward([51, 12, 24]).shape
(3, 53)
>>> fastdllm.judge("conformance/goldens/llada-tiny.jsonl", "outputs.jsonl")  # doctest: +SKIP

Knobs (keyword arguments of ``generate`` and ``stream``; the CLI's flags): ``gen_length``,
``block_length``, ``steps``, ``cache`` (``"none"``, ``"prefix"``, ``"dual"``), ``refresh_every``,
``threshold``, ``factor``, ``unmask`` (a rule label such as ``"threshold=0.9"``),
``temperature``, ``top_p``, ``top_k``, ``remasking`` (``"low_confidence"``, ``"random"``), ``alg``
(Dream: ``"entropy"``, ``"maskgit_plus"``, ``"topk_margin"``), ``dream_original``, ``seed``,
``stop`` (a string or a list), ``max_tokens``, ``finish`` (``"answer"`` or ``"canvas"``, the
reference's full canvas and NFE). An invalid value raises ``ValueError`` with the CLI's message
(the keyword in place of the flag), an unknown keyword ``TypeError``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence, Union

from . import _fastdllm
from ._fastdllm import GenerationResult, Judgement, Stream, StreamChunk, Verdict

__all__ = [
    "Model",
    "GenerationResult",
    "Stream",
    "StreamChunk",
    "Verdict",
    "Judgement",
    "judge",
    "__version__",
]

__version__: str = _fastdllm.__version__


class Model(_fastdllm.Model):
    """A loaded LLaDA / Dream model: ``Model(path, device="cpu", dtype=None, quantize=None)``.

    ``path``: a Hugging Face model directory (config.json, safetensors, tokenizer.json) or a
    llama.cpp GGUF file. ``device``: ``"cpu"`` or ``"cuda"``. ``dtype``: ``"f32"`` (default),
    ``"bf16"``, ``"f16"``. ``quantize``: ``"q8_0"``, ``"q4_k"``, ``"q5_k"``, ``"q6_k"``.
    Raises ``FileNotFoundError`` (missing directory or file) or ``ValueError`` (bad config or
    argument).

    ``generate(prompt, *, raw=False, **knobs)``: ``prompt`` is a str (chat template applied
    unless ``raw``), a list of token ids, or a list of either (a batch, decoded together);
    returns a ``GenerationResult`` (``.text``, ``.ids``, ``.nfe``, ``.finish_reason``,
    ``.wall_s``, ``.tokens_per_s``, ...) or a list of them.

    ``stream(prompt, *, raw=False, **knobs)``: an iterator of ``StreamChunk`` (``.block``,
    ``.text``), one per committed block; the last has ``.result``.
    """

    def forward(self, ids: Sequence[int]) -> "numpy.ndarray":  # noqa: F821
        """Logits of the exact (no-cache) forward over ``ids`` (one row, positions 0..n).

        Returns a float32 numpy array of shape ``(len(ids), vocab_size)``: row i scores the
        token at position i (Dream's one-position shift already applied). Raises ValueError for
        an empty list, an id outside the vocabulary, or more ids than ``max_seq_len``.
        """
        import numpy

        buf, shape = self._forward(list(ids))
        return numpy.frombuffer(buf, dtype=numpy.float32).reshape(shape)


Outputs = Union[str, "os.PathLike[str]", Iterable[Mapping[str, Any]]]


def judge(
    cases: Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]],
    outputs: Outputs,
    *,
    filter: Union[str, None] = None,
) -> Judgement:
    """Judges another implementation's outputs against golden cases (FORMAT.md section 10).

    ``cases``: a golden case file (JSON Lines) or a list of them. ``outputs``: the path of an
    outputs file, or an iterable of dicts, one per case, ``{"id": str, "generated_ids":
    [int], "nfe": int}`` with optional ``"unmask_step"`` and ``"tokens_per_step"``
    (docs/JUDGE.md). ``filter``: judge only the cases whose id contains it.

    Returns a ``Judgement`` (``.verdicts``, ``.passed``, ``.failed``, ``.fragile``, ``.ok``,
    ``.summary``), the same verdicts as ``fastdllm conform --cases ... --judge ...``. Raises
    ValueError for a malformed line, an unknown or repeated id, or cases without an output;
    FileNotFoundError / OSError for files.
    """
    paths = [cases] if isinstance(cases, (str, os.PathLike)) else list(cases)
    paths = [os.fspath(p) for p in paths]
    if isinstance(outputs, (str, os.PathLike)):
        return _fastdllm._judge(paths, path=os.fspath(outputs), filter=filter)
    text = "".join(json.dumps(dict(o)) + "\n" for o in outputs)
    return _fastdllm._judge(paths, text=text, filter=filter)
