"""The fastdllm Python package on the bundled tiny models (fixtures/): loading, generate equal
to the CLI and to the reference's golden cases, streaming, errors with the CLI's messages, the
forward's logits against the reference's, and the golden judge.

The CLI comparisons run the `fastdllm` binary: $FASTDLLM_BIN, else target/debug/fastdllm
(`.ci/run` builds it with `cargo test --workspace` before this suite runs).
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fastdllm

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "fixtures" / "llada-tiny"
GOLDENS = REPO / "conformance" / "goldens"


def cli_binary():
    path = Path(os.environ.get("FASTDLLM_BIN", REPO / "target" / "debug" / "fastdllm"))
    if not path.exists():
        if "FASTDLLM_BIN" in os.environ:
            pytest.fail(f"FASTDLLM_BIN={path} does not exist")
        pytest.skip(f"no fastdllm binary at {path} (cargo build -p fastdllm-cli)")
    return path


def cli(*args):
    return subprocess.run(
        [str(cli_binary()), *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def model():
    return fastdllm.Model(TINY)


def cases(name, n=None):
    with open(GOLDENS / name) as f:
        out = [json.loads(line) for line in f if line.strip()]
    return out[:n] if n else out


def knobs_of(case):
    """The knobs that reproduce a LLaDA golden case (the reference's full canvas)."""
    p = case["params"]
    k = dict(
        gen_length=p["gen_length"],
        block_length=p["block_length"],
        cache=case["cache"],
        finish="canvas",
    )
    if case["rule"] == "threshold":
        k["threshold"] = p["threshold"]
    elif case["rule"] == "factor":
        k["factor"] = p["factor"]
    else:
        k["steps"] = p["steps"]
    return k


def test_load_and_properties(model):
    assert model.family == "llada"
    assert model.vocab_size == 64
    assert model.mask_token_id == 52
    assert "llada-tiny" in repr(model)
    assert model.decode(model.encode("4+9=", raw=True)).endswith("4+9=")


@pytest.mark.parametrize(
    "prompt,knobs",
    [
        ("4+9=", {}),
        ("copy ysp8......=", {"cache": "dual", "threshold": 0.9, "gen_length": 16, "block_length": 8}),
        ("inc 32772.....=", {"cache": "prefix", "factor": 1.0}),
        ("rot cmdbqxuwa.=", {"cache": "none", "steps": 32, "max_tokens": 5}),
    ],
)
def test_generate_equals_the_cli(model, prompt, knobs):
    flags = []
    for k, v in knobs.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    out = cli("generate", "--json", "--prompt", prompt, *flags)
    assert out.returncode == 0, out.stderr
    want = json.loads(out.stdout)
    r = model.generate(prompt, **knobs)
    assert r.ids == want["answer_ids"]
    assert r.generated_ids == want["generated_ids"]
    assert r.prompt_ids == want["prompt_ids"]
    assert r.nfe == want["nfe"]
    assert r.text == want["text"]
    assert r.finish_reason == want["finish_reason"]
    assert r.wall_s > 0


def test_golden_prompts_give_the_references_ids(model):
    picked = {}
    for c in cases("llada-tiny.jsonl"):
        picked.setdefault((c["cache"], c["rule"]), c)
    assert len(picked) == 9  # none/prefix/dual x fixed/threshold/factor
    for c in picked.values():
        r = model.generate(c["prompt_ids"], **knobs_of(c))
        assert (r.generated_ids, r.nfe) == (c["generated_ids"], c["nfe"]), c["id"]


def test_a_batch_gives_each_prompts_solo_answer(model):
    prompts = ["4+9=", "copy xq7......=", "7+5="]
    batch = model.generate(prompts, cache="dual", threshold=0.9)
    assert [r.ids for r in batch] == [model.generate(p, cache="dual", threshold=0.9).ids for p in prompts]


def test_stream_yields_committed_blocks_and_the_result(model):
    knobs = dict(gen_length=32, block_length=8, cache="dual", threshold=0.9)
    chunks = list(model.stream("copy ysp8......=", **knobs))
    blocks = [c.block for c in chunks[:-1]]
    assert blocks == sorted(blocks) and len(set(blocks)) == len(blocks) and blocks[0] == 0
    last = chunks[-1]
    assert last.block is None and last.result is not None
    assert all(c.result is None for c in chunks[:-1])
    whole = model.generate("copy ysp8......=", **knobs)
    assert "".join(c.text for c in chunks) == whole.text
    assert (last.result.ids, last.result.nfe) == (whole.ids, whole.nfe)


def test_a_stop_string_ends_the_answer(model):
    r = model.generate("copy ysp8......=", gen_length=16, block_length=8, stop="s")
    assert "s" not in r.text and r.finish_reason == "stop"


def test_bad_settings_raise_value_error_with_the_cli_message(model):
    out = cli("generate", "--prompt", "4+9=", "--gen-length", "30", "--block-length", "8")
    assert out.returncode != 0
    cli_msg = out.stderr.strip().removeprefix("error: ").replace("--gen-length", "gen_length")
    with pytest.raises(ValueError) as e:
        model.generate("4+9=", gen_length=30, block_length=8)
    assert str(e.value) == cli_msg
    with pytest.raises(ValueError, match="cache"):
        model.generate("4+9=", cache="bogus")
    with pytest.raises(ValueError, match="threshold"):
        model.generate("4+9=", threshold=1.5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("4+9=", temperature="hot")
    with pytest.raises(ValueError, match="empty"):
        model.generate("   ")
    with pytest.raises(TypeError, match="no_such_knob"):
        model.generate("4+9=", no_such_knob=1)
    with pytest.raises(TypeError):
        model.generate(3.5)


def test_bad_model_arguments_raise_file_and_value_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        fastdllm.Model(tmp_path / "nope")
    with pytest.raises(ValueError, match="dtype 'f64'"):
        fastdllm.Model(TINY, dtype="f64")
    with pytest.raises(ValueError, match="device 'tpu'"):
        fastdllm.Model(TINY, device="tpu")
    with pytest.raises(ValueError, match="quantize 'q3'"):
        fastdllm.Model(TINY, quantize="q3")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json"):
        fastdllm.Model(tmp_path)


def hub_cache(root, repo_id, source):
    """A Hugging Face cache holding `repo_id` at revision main, laid out as huggingface_hub
    writes it: files in blobs/, relative symlinks to them in snapshots/<commit>/, refs/main."""
    folder = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for i, f in enumerate(sorted(p for p in source.iterdir() if p.is_file())):
        blob = folder / "blobs" / f"blob{i:02d}"
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


def test_a_hub_id_loads_from_the_hugging_face_cache(tmp_path, monkeypatch, model):
    snapshot = hub_cache(tmp_path / "hub", "some-org/llada-tiny", TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_model = fastdllm.Model("some-org/llada-tiny")
    assert Path(hub_model.path) == snapshot
    prompt = "copy 3dbk......="
    assert hub_model.generate(prompt, cache="dual").ids == model.generate(prompt, cache="dual").ids
    # Offline, a model the cache lacks is an OSError naming the id, the cache folder and the switch.
    with pytest.raises(OSError, match="some-org/other") as err:
        fastdllm.Model("some-org/other")
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and str(tmp_path / "hub") in message
    assert "\n" not in message


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (F32 and I64 only)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def test_forward_logits_equal_the_references(model):
    t = read_safetensors(GOLDENS / "forward" / "llada-tiny.safetensors")
    for i in range(3):
        ids = t[f"input_ids.{i}"][0].tolist()
        want = t[f"logits.{i}"][0]
        got = model.forward(ids)
        assert got.dtype == np.float32 and got.shape == (len(ids), model.vocab_size)
        assert np.all(np.abs(got - want) <= 1e-4 * np.maximum(1.0, np.abs(want)))
    with pytest.raises(ValueError, match="out of the vocabulary"):
        model.forward([1, 64])
    with pytest.raises(ValueError, match="empty"):
        model.forward([])


def golden_outputs(cs):
    return [{"id": c["id"], "generated_ids": c["generated_ids"], "nfe": c["nfe"]} for c in cs]


def test_judge_passes_the_goldens_and_fails_a_changed_token(tmp_path):
    path = GOLDENS / "llada-tiny.jsonl"
    cs = cases("llada-tiny.jsonl")
    outs = golden_outputs(cs)
    j = fastdllm.judge(path, outs)
    assert j.ok and j.passed == len(cs) and j.summary == f"{len(cs)} passed, 0 failed"
    outs[7]["generated_ids"][2] ^= 1
    f = tmp_path / "outputs.jsonl"
    f.write_text("".join(json.dumps(o) + "\n" for o in outs))
    j = fastdllm.judge(str(path), f)
    assert not j.ok and j.failed == 1
    bad = [v for v in j.verdicts if v.status == "fail"]
    assert [v.id for v in bad] == [cs[7]["id"]] and bad[0].first_difference == 2
    # The CLI's verdict on the same file.
    out = cli("conform", "--cases", str(path), "--judge", str(f))
    assert out.returncode == 1 and out.stdout.strip().endswith(j.summary)


def test_judge_of_the_packages_own_outputs(model):
    cs = [c for c in cases("llada-tiny.jsonl") if c["prompt_id"] == "s01"]
    outs = []
    for c in cs:
        r = model.generate(c["prompt_ids"], **knobs_of(c))
        outs.append({"id": c["id"], "generated_ids": r.generated_ids, "nfe": r.nfe,
                     "tokens_per_step": r.tokens_per_step})
    # tokens_per_step without unmask_step: the order is not judged, and a note says so.
    j = fastdllm.judge(GOLDENS / "llada-tiny.jsonl", outs, filter="/s01")
    assert j.ok, [v.problems for v in j.verdicts if v.status != "pass"]
    assert all("not reported" in v.notes[0] for v in j.verdicts)


def test_judge_errors():
    path = GOLDENS / "llada-tiny-choice.jsonl"
    outs = golden_outputs(cases("llada-tiny-choice.jsonl"))
    with pytest.raises(ValueError, match="cases have no output"):
        fastdllm.judge(path, outs[1:])
    with pytest.raises(ValueError, match="not a case"):
        fastdllm.judge(path, outs + [{"id": "x/y", "generated_ids": [], "nfe": 0}])
    with pytest.raises(ValueError, match="<outputs>:1: not an output line"):
        fastdllm.judge(path, [{"id": "x", "nfe": 1}])
    with pytest.raises(FileNotFoundError):
        fastdllm.judge(path, "/nonexistent/outputs.jsonl")
