"""The tokenizer keys of an existing GGUF file, copied into a new one by llama.cpp's gguf-py,
with the vocabulary padded to a model's size: shared by the scripts that write random-weight GGUF
files of real shapes (scripts/llada-random.py, scripts/llada-moe-random-gguf.py).

Import it from a script in this folder (`from gguf_tokenizer import copy_tokenizer_keys`); the
caller has put gguf-py on `sys.path` and passes the imported `gguf` module.
"""


def copy_tokenizer_keys(gguf, writer, source, vocab_size, pad_name, pad_type):
    """Adds every `tokenizer.*` key of the GGUF file `source` to `writer` (a `gguf.GGUFWriter`),
    in the file's order, with `tokenizer.ggml.tokens` padded to `vocab_size` entries named
    `pad_name.format(i)` (`i` the token id) and `tokenizer.ggml.token_type` padded with
    `pad_type` (a `gguf.TokenType`)."""
    src = gguf.GGUFReader(str(source))
    for key, field in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        value = field.contents()
        if key == "tokenizer.ggml.tokens":
            value = value + [pad_name.format(i) for i in range(len(value), vocab_size)]
        elif key == "tokenizer.ggml.token_type":
            value = value + [int(pad_type)] * (vocab_size - len(value))
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
