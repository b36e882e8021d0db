#!/usr/bin/env python3
"""Expected chat-template renderings, produced by Hugging Face transformers.

Renders every template of conformance/tests/data/chat_templates/*.jinja over a set of
conversations with `PreTrainedTokenizerFast.apply_chat_template(..., tokenize=False)` (the
tokenizer is the bundled fixtures/llada-tiny/tokenizer.json; the template and the special tokens
are set on it) and writes the results to conformance/tests/data/chat_templates/expected.json.
A rendering that raises (a template's `raise_exception`) is recorded as the error message.
fastdllm-models/tests/chat_template.rs renders the same cases with minijinja and compares.

Usage (from the repository root):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install transformers jinja2
    /tmp/venv/bin/python scripts/chat_template_expected.py
"""

import json
import pathlib

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "conformance" / "tests" / "data" / "chat_templates"

# (template file, bos_token, eos_token): the special tokens of the checkpoints the templates
# come from (LLaDA-8B-Instruct, Dream-v0-Instruct-7B) or made up for the test templates.
TEMPLATES = [
    ("llada-8b-instruct.jinja", "<|startoftext|>", "<|eot_id|>"),
    ("qwen2.5-chatml.jinja", "<|endoftext|>", "<|im_end|>"),
    ("alternating-inst.jinja", "<s>", "</s>"),
    ("pycompat-folded-system.jinja", "<|startoftext|>", "<|endoftext|>"),
]

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is 2+2?"}],
    "untrimmed_user": [{"role": "user", "content": "  Say hi.\n\n"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime."},
    ],
    "multi_turn": [
        {"role": "system", "content": " Answer with one number. "},
        {"role": "user", "content": "Question: 3*4?\nAnswer:"},
        {"role": "assistant", "content": " 12\n"},
        {"role": "user", "content": "Question: 5+6?\nAnswer:"},
    ],
    "few_shot_no_system": [
        {"role": "user", "content": "copy abc="},
        {"role": "assistant", "content": "abc"},
        {"role": "user", "content": "copy x y="},
        {"role": "assistant", "content": "x y"},
        {"role": "user", "content": "copy héllo 你好 ✓="},
    ],
    "bad_order": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}


def main() -> None:
    tokenizer_file = ROOT / "fixtures" / "llada-tiny" / "tokenizer.json"
    cases = []
    for name, bos, eos in TEMPLATES:
        template = (DATA / name).read_text(encoding="utf-8")
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(tokenizer_file), bos_token=bos, eos_token=eos
        )
        tok.chat_template = template
        for conv_name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                case = {
                    "template": name,
                    "bos_token": bos,
                    "eos_token": eos,
                    "conversation": conv_name,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                }
                try:
                    case["expected"] = tok.apply_chat_template(
                        messages,
                        tokenize=False,
                        add_generation_prompt=add_generation_prompt,
                    )
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                cases.append(case)
    out = {
        "generator": "scripts/chat_template_expected.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "cases": cases,
    }
    path = DATA / "expected.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
