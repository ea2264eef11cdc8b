#!/usr/bin/env python3
"""llama.cpp reference for lastmile's Llama model (issue 14): logits, greedy
continuations and decoding speed of SmolLM2-135M-Instruct (Q4_1 GGUF).

Pinned versions (the fixture records the ones that wrote it):
    llama-cpp-python == 0.3.36   (builds llama.cpp from source: pip install llama-cpp-python==0.3.36)
        On a machine whose CPU reports AMX, llama.cpp's AMX kernels may die:
        of SIGILL on a virtual machine that does not let programs use AMX, of
        SIGSEGV in the first decode on others (llama.cpp issue 20824; seen
        on a KVM Xeon with a 480 MB L3). Build without them:
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
        -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" pip install ...
    numpy            >= 2         (2.4.6 when the committed fixture was written)
    gguf             == 0.19.0    (the exact f64 reference below reads the weights with it)
    python           >= 3.10      (3.11.7)
    jinja2 (installed with llama-cpp-python; renders the model's chat template)
Model: SmolLM2-135M-Instruct.Q4_1.gguf, sha256 b179c952...db53, fetched by
scripts/fetch-smollm2.sh into
    ${LASTMILE_MODELS:-${CARGO_TARGET_DIR:-<repo>/target}/lastmile-models}/smollm2-135m-instruct/

Modes:
    python3 benches/llama_cpp_reference.py fixture [OUT.json]
        Writes the reference fixture (default
        crates/models/tests/fixtures/llama_cpp_reference.json): for each of 8
        prompts (chat-formatted with the model's own template, plain text,
        code, numbers, non-ASCII text), llama.cpp's token ids, and at every
        position (prompt and continuation) the argmax and the ids and logits
        of llama.cpp's 16 largest logits; then the greedy continuation of 64
        tokens (argmax at each step, one token per decode call, EOS not
        treated specially). One thread, so the run is reproducible.
        It also stores, for the same entries, the logits of an exact
        reference: the same model evaluated in float64 by numpy (weights
        dequantised by the `gguf` package; RMSNorm, RoPE on adjacent pairs
        as llama.cpp's `llama` architecture, grouped-query attention,
        SwiGLU, tied head) over llama.cpp's token path (prompt, then the
        continuation). llama.cpp rounds activations (Q8 for its quantised
        products, f16 KV cache); the exact reference does not, so it pins
        down the function itself while llama.cpp pins down what the file
        means.
        Finally it repeats the llama.cpp run on an F32 copy of the same
        file (every tensor dequantised by the `gguf` package and written
        back as F32 with the same metadata, in a temporary directory) with
        an f32 KV cache: the same weights, but llama.cpp then multiplies in
        f32 without rounding activations, so its logits and greedy
        continuations should match an f32 implementation closely
        ("f32_reference" in the fixture, same layout as the main entries).
    python3 benches/llama_cpp_reference.py kquant [--ftype Q4_K_M|IQ4_XS] [OUT.json]
        The same model in llama.cpp's most common layouts: the F32 copy
        above quantised by llama.cpp itself (`llama_model_quantize`; ftype
        Q4_K_M, the default: Q4_K matrices, Q6_K for half the attention
        values and feed-forward outputs and for the embedding; IQ4_XS: the
        non-linear 4-bit levels; where a row of 576 is not whole 256-value
        super-blocks llama.cpp falls back to Q5_0 / Q8_0, or IQ4_NL) into
        SmolLM2-135M-Instruct.<FTYPE>.gguf beside the Q4_1 file (a 4-bit
        requantisation of 4-bit weights: a check of the formats, not of the
        model's quality). Then llama.cpp's token ids, top-16 logits at
        every position and 64-token greedy continuations on it, as for the
        main entries, and the float64 reference's logits on this file
        (default output
        crates/models/tests/fixtures/llama_cpp_<ftype>.json, with the
        file's sha256 and tensor types).
    python3 benches/llama_cpp_reference.py bench [--threads 1 2] [--tokens 128] [--model PATH]
        Decode tokens/s at batch 1 (one token per llama_decode after a
        prompt) and the time of one pass over k = 1, 2, 4, 8, 16 tokens
        relative to k = 1, per thread count.
    python3 benches/llama_cpp_reference.py tokenize --text PATH --vocab GGUF [GGUF ...]
        Tokenising speed: the seconds llama_tokenize takes over the whole
        text (no special tokens added or parsed; best of 5) with each
        vocabulary (vocab_only; e.g. scripts/fetch-vocabs.sh's files).

Evaluation settings (both modes): n_ctx 512, n_batch 512, the library's
defaults otherwise (KV cache in f16, except the F32-copy run), flash
attention off; the fixture records the values used.
Exits 0 with a message when llama-cpp-python or the model file is missing.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_CTX = 512
TOP = 16
CONTINUATION = 64
FIXTURE = REPO / "crates/models/tests/fixtures/llama_cpp_reference.json"
KQUANT_FTYPES = ["Q4_K_M", "IQ4_XS"]

# (kind, text): chat prompts are a user message rendered with the model's chat template.
PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("chat", "Write a haiku about autumn leaves."),
    ("chat", "What is 17 * 23? Show your steps."),
    ("plain", "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village,"),
    ("plain", "Photosynthesis is the process by which green plants"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("code", "fn main() {\n    let squares: Vec<u64> = (1..=10).map(|x| x * x).collect();\n"),
    ("numbers", "Prices: café 3.50 €, thé 2,80 €; 1, 1, 2, 3, 5, 8, 13, 21, 34,"),
]


def model_path() -> Path:
    models = os.environ.get("LASTMILE_MODELS")
    if models:
        base = Path(models)
    else:
        target = os.environ.get("CARGO_TARGET_DIR")
        base = (Path(target).resolve() if target else REPO / "target") / "lastmile-models"
    return base / "smollm2-135m-instruct" / GGUF_NAME


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(path: Path, threads: int, logits_all: bool, kv_f32: bool = False):
    from llama_cpp import Llama

    kv = {"type_k": 0, "type_v": 0} if kv_f32 else {}  # GGML_TYPE_F32
    return Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        flash_attn=False,
        seed=0,
        verbose=False,
        **kv,
    )


def render_chat(llm, message: str) -> str:
    import jinja2

    template = llm.metadata["tokenizer.chat_template"]
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    return env.from_string(template).render(
        messages=[{"role": "user", "content": message}], add_generation_prompt=True
    )


def top_entries(row):
    import numpy as np

    ids = np.argpartition(-row, TOP)[:TOP]
    ids = ids[np.argsort(-row[ids], kind="stable")]
    return [int(i) for i in ids], [round(float(row[i]), 5) for i in ids]


def exact_reference(path: Path):
    """A float64 forward pass of the GGUF model over a token list: returns
    logits [n, vocab]. Independent of lastmile (numpy + the gguf package)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    field = lambda k: reader.fields[k].contents()
    d = int(field("llama.embedding_length"))
    n_layers = int(field("llama.block_count"))
    n_head = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv"))
    eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    base = float(field("llama.rope.freq_base"))
    dh = d // n_head
    w = {}
    for t in reader.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        w[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)
    head = w.get("output.weight", w["token_embd.weight"])

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def forward(tokens):
        n = len(tokens)
        x = w["token_embd.weight"][tokens]
        angle = np.arange(n)[:, None] * base ** (-np.arange(0, dh, 2) / dh)[None, :]
        cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]

        def rope(t):  # [n, heads, dh], pairs (2i, 2i+1)
            a, b = t[..., 0::2], t[..., 1::2]
            out = np.empty_like(t)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
            return out

        causal = np.triu(np.full((n, n), -np.inf), 1)
        for layer in range(n_layers):
            p = lambda name: w[f"blk.{layer}.{name}.weight"]
            h = rms(x, p("attn_norm"))
            q = rope((h @ p("attn_q").T).reshape(n, n_head, dh))
            k = rope((h @ p("attn_k").T).reshape(n, n_kv, dh))
            v = (h @ p("attn_v").T).reshape(n, n_kv, dh)
            att = np.empty((n, n_head, dh))
            for j in range(n_head):
                kv = j // (n_head // n_kv)
                s = q[:, j] @ k[:, kv].T / np.sqrt(dh) + causal
                s = np.exp(s - s.max(-1, keepdims=True))
                att[:, j] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
            x = x + att.reshape(n, d) @ p("attn_output").T
            h = rms(x, p("ffn_norm"))
            gate = h @ p("ffn_gate").T
            x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ p("ffn_up").T)) @ p("ffn_down").T
        return rms(x, w["output_norm.weight"]) @ head.T

    return forward


def write_f32_copy(src: Path, dst: Path) -> None:
    """The GGUF at `src` with every tensor dequantised to F32, same metadata."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(str(src))
    writer = GGUFWriter(str(dst), arch=str(reader.fields["general.architecture"].contents()))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == "general.file_type":
            value = 0  # LLAMA_FTYPE_ALL_F32
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub)
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, values.reshape([int(x) for x in reversed(t.shape)]),
                          raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def run_prompts(llm, prompts, continuation):
    """llama.cpp's token ids, per-position top entries and greedy continuation
    for each (kind, text) in prompts; chat text is already rendered."""
    import numpy as np

    records = []
    for kind, prompt in prompts:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(tokens)
        positions = []
        for row in np.asarray(llm.scores[: len(tokens)], dtype=np.float32):
            ids, values = top_entries(row)
            positions.append({"argmax": int(np.argmax(row)), "top_ids": ids, "top_logits": values})
        generated, gen_positions = [], []
        row = np.asarray(llm.scores[len(tokens) - 1], dtype=np.float32)
        for step in range(continuation):
            token = int(np.argmax(row))
            generated.append(token)
            if step + 1 == continuation:
                break
            llm.eval([token])
            row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            ids, values = top_entries(row)
            gen_positions.append({"argmax": int(np.argmax(row)), "top_ids": ids, "top_logits": values})
        records.append(
            {
                "kind": kind,
                "text": prompt,
                "prompt_ids": [int(t) for t in tokens],
                "prompt_positions": positions,
                "continuation": generated,
                "continuation_positions": gen_positions,
                "continuation_text": llm.detokenize(generated, special=True).decode("utf-8", "replace"),
            }
        )
        print(f"{kind:8} {len(tokens):3} prompt tokens -> {records[-1]['continuation_text'][:60]!r}")
    return records


def fixture(out: Path, path: Path) -> None:
    import llama_cpp
    import numpy as np

    llm = load(path, threads=1, logits_all=True)
    prompts = [(kind, render_chat(llm, text) if kind == "chat" else text) for kind, text in PROMPTS]
    records = run_prompts(llm, prompts, CONTINUATION)
    del llm
    exact_forward = exact_reference(path)
    for record in records:
        exact = exact_forward(record["prompt_ids"] + record["continuation"][:-1])
        for i, entry in enumerate(record["prompt_positions"] + record["continuation_positions"]):
            entry["exact_logits"] = [round(float(exact[i, j]), 5) for j in entry["top_ids"]]
    print("llama.cpp on an F32 copy of the file, f32 KV cache:")
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = Path(tmp) / "f32.gguf"
        write_f32_copy(path, f32_path)
        llm = load(f32_path, threads=1, logits_all=True, kv_f32=True)
        f32_records = run_prompts(llm, prompts, CONTINUATION)
        del llm
    for r in f32_records:
        del r["text"]  # the same as in the main entries
    doc = {
        "generator": "benches/llama_cpp_reference.py fixture",
        "llama_cpp_python": llama_cpp.__version__,
        "numpy": np.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "python": sys.version.split()[0],
        "model": GGUF_NAME,
        "model_sha256": GGUF_SHA256,
        "n_threads": 1,
        "n_ctx": N_CTX,
        "n_batch": N_CTX,
        "flash_attn": False,
        "kv_cache_type": "f16 (library default)",
        "top": TOP,
        "continuation_length": CONTINUATION,
        "notes": "prompt_positions[i] are llama.cpp's logits after prompt_ids[..=i] (one batched eval); "
        "continuation_positions[j] are its logits after feeding continuation[j] (one token per eval), "
        "so the last continuation token has no entry. exact_logits: the float64 numpy reference at the same "
        "ids along the same token path. Logits rounded to 5 decimals.",
        "prompts": records,
        "f32_reference": {
            "notes": "llama.cpp on an F32 copy of the same file (tensors dequantised by the gguf package), "
            "KV cache f32; entries as in prompts (same order).",
            "prompts": f32_records,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def kquant(out: Path, path: Path, ftype: str) -> None:
    import ctypes
    from collections import Counter

    import llama_cpp
    from gguf import GGUFReader

    kpath = path.with_name(f"SmolLM2-135M-Instruct.{ftype}.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        f32_path = Path(tmp) / "f32.gguf"
        write_f32_copy(path, f32_path)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
        params.nthread = 2
        status = llama_cpp.llama_model_quantize(
            str(f32_path).encode(), str(kpath).encode(), ctypes.byref(params)
        )
        if status != 0:
            sys.exit(f"error: llama_model_quantize returned {status}")
    types = Counter(t.tensor_type.name for t in GGUFReader(str(kpath)).tensors)
    print(f"wrote {kpath} ({kpath.stat().st_size} bytes): {dict(types)}")
    llm = load(kpath, threads=1, logits_all=True)
    prompts = [(kind, render_chat(llm, text) if kind == "chat" else text) for kind, text in PROMPTS]
    records = run_prompts(llm, prompts, CONTINUATION)
    del llm
    exact_forward = exact_reference(kpath)
    for record in records:
        exact = exact_forward(record["prompt_ids"] + record["continuation"][:-1])
        for i, entry in enumerate(record["prompt_positions"] + record["continuation_positions"]):
            entry["exact_logits"] = [round(float(exact[i, j]), 5) for j in entry["top_ids"]]
    doc = {
        "generator": "benches/llama_cpp_reference.py kquant",
        "llama_cpp_python": llama_cpp.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "python": sys.version.split()[0],
        "model": kpath.name,
        "model_sha256": sha256(kpath),
        "source": f"{GGUF_NAME} (sha256 {GGUF_SHA256}), dequantised to F32 by the gguf package, "
        f"quantised by llama_model_quantize with ftype {ftype}",
        "tensor_types": dict(types),
        "n_threads": 1,
        "n_ctx": N_CTX,
        "n_batch": N_CTX,
        "flash_attn": False,
        "kv_cache_type": "f16 (library default)",
        "top": TOP,
        "continuation_length": CONTINUATION,
        "notes": "entries as in llama_cpp_reference.json's prompts, exact_logits from the float64 "
        "reference evaluated on this file (weights dequantised by the gguf package).",
        "prompts": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def bench(path: Path, threads_list, n_tokens: int) -> None:
    import llama_cpp
    import numpy as np

    print(f"llama-cpp-python {llama_cpp.__version__}, {path.name}")
    prompt_text = "The quick brown fox jumps over the lazy dog. " * 4
    for threads in threads_list:
        llm = load(path, threads=threads, logits_all=False)
        prompt = llm.tokenize(prompt_text.encode(), add_bos=False)
        # Decode: one token per call after the prompt, greedy on the last logits.
        best = None
        for _ in range(3):
            llm.reset()
            llm.eval(prompt)
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            t0 = time.perf_counter()
            for _ in range(n_tokens):
                llm.eval([token])
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        print(f"threads {threads}: decode {n_tokens / best:.1f} tokens/s (best of 3 runs of {n_tokens})")
        # The prompt's pass from an empty cache (logits of its last token only).
        samples = []
        for _ in range(20):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            samples.append(time.perf_counter() - t0)
        print(f"threads {threads}: prompt pass over {len(prompt)} tokens, last logits only "
              f"(median of 20): {float(np.median(samples)) * 1e3:.2f} ms")
        # One pass over k tokens after the same prompt, relative to k = 1.
        times = {}
        for k in (1, 2, 4, 8, 16):
            samples = []
            for _ in range(20):
                llm.reset()
                llm.eval(prompt)
                t0 = time.perf_counter()
                llm.eval(prompt[:k])
                samples.append(time.perf_counter() - t0)
            times[k] = float(np.median(samples))
        rel = ", ".join(f"k={k}: {times[k] * 1e3:.2f} ms ({times[k] / times[1]:.2f}x)" for k in times)
        print(f"threads {threads}: pass over k tokens (median of 20): {rel}")


def tokenize_bench(text_path: Path, vocabs) -> None:
    import llama_cpp

    raw = text_path.read_bytes()
    print(f"llama-cpp-python {llama_cpp.__version__}, {text_path.name} ({len(raw)} bytes)")
    for path in map(Path, vocabs):
        if not path.is_file():
            print(f"{path.name}: missing")
            continue
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        n_max = len(raw) + 8
        buf = (llama_cpp.llama_token * n_max)()
        best, n = None, 0
        for _ in range(5):
            t0 = time.perf_counter()
            n = llama_cpp.llama_tokenize(llm._model.vocab, raw, len(raw), buf, n_max, False, False)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        print(f"{path.name}: {n} ids in {best:.3f} s (best of 5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("out", nargs="?", default=str(FIXTURE))
    k = sub.add_parser("kquant")
    k.add_argument("--ftype", choices=KQUANT_FTYPES, default="Q4_K_M")
    k.add_argument("out", nargs="?")
    b = sub.add_parser("bench")
    b.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    b.add_argument("--tokens", type=int, default=128)
    b.add_argument("--model", help="another GGUF file (e.g. the kquant mode's), unchecked")
    t = sub.add_parser("tokenize")
    t.add_argument("--text", required=True)
    t.add_argument("--vocab", nargs="+", required=True)
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36): skipping")
        sys.exit(0)
    if args.mode == "tokenize":
        tokenize_bench(Path(args.text), args.vocab)
        return
    if args.mode == "bench" and args.model:
        bench(Path(args.model), args.threads, args.tokens)
        return
    path = model_path()
    if not path.is_file():
        print(f"model file missing: {path}; run scripts/fetch-smollm2.sh")
        sys.exit(0)
    if sha256(path) != GGUF_SHA256:
        sys.exit(f"error: {path} does not have the expected sha256 {GGUF_SHA256}")
    if args.mode == "fixture":
        fixture(Path(args.out), path)
    elif args.mode == "kquant":
        fixture_dir = REPO / "crates/models/tests/fixtures"
        out = Path(args.out) if args.out else fixture_dir / f"llama_cpp_{args.ftype.lower()}.json"
        kquant(out, path, args.ftype)
    else:
        bench(path, args.threads, args.tokens)


if __name__ == "__main__":
    main()
