#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and converts a checkpoint to a bf16 GGUF, for bench/compare.py's
# side-by-side run (--llama-bench, --gguf). Needs a C++ compiler, cmake and the test extra (torch,
# transformers); fetches only from PyPI: llama.cpp's source as vendored by the llama-cpp-python sdist,
# and sentencepiece for the converter (into the build directory, not the environment).
#
#   bench/llama_cpp.sh [MODEL_DIR]     (default: the random-weight demo checkpoint; the converter
#                                       needs its tokenizer files)
#
#   LLAMA_CPP_PYTHON  llama-cpp-python version whose llama.cpp is built  (default 0.3.36)
#   DIR               build directory                                     (default ~/.cache/qwen3_mpi/llama.cpp)
#
# Prints the two paths to pass to compare.py: the llama-bench binary and the GGUF file.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${LLAMA_CPP_PYTHON:-0.3.36}
DIR=${DIR:-$HOME/.cache/qwen3_mpi/llama.cpp}
MODEL=${1:-$(python -c 'from qwen3_mpi.demo import ensure_demo; print(ensure_demo())')}
SRC=$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp
GGUF=$DIR/$(basename "$MODEL")-bf16.gguf
mkdir -p "$DIR"

if [ ! -x "$SRC/build/bin/llama-bench" ]; then
  if [ ! -d "$SRC" ]; then
    pip download --quiet --no-deps --no-binary :all: -d "$DIR" "llama-cpp-python==$VERSION"
    tar xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
  fi
  # GGML_NATIVE: compiled for this CPU (AVX-512, AVX512-BF16 where present), as a user would build it
  { cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF &&
    cmake --build "$SRC/build" --target llama-bench -j "$(nproc)"; } > "$DIR/build.log" 2>&1 ||
    { echo "llama_cpp.sh: building llama-bench failed; see $DIR/build.log" >&2; exit 1; }
fi

if [ ! -f "$GGUF" ]; then
  [ -d "$DIR/pydeps/sentencepiece" ] || pip install --quiet --target "$DIR/pydeps" sentencepiece
  # The converter identifies the pre-tokenizer by hashing a test string's tokens, a hash that
  # transformers 5 does not reproduce; Qwen3's pre-tokenizer is llama.cpp's "qwen2".
  (cd "$SRC" && PYTHONPATH="$DIR/pydeps" python - "$MODEL" --outtype bf16 --outfile "$GGUF.partial" <<'EOF'
import runpy, sys
sys.path[:0] = [".", "gguf-py"]
import conversion.base as base
for cls in vars(base).values():
    if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls):
        cls.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv[0] = "convert_hf_to_gguf.py"
runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
EOF
  ) > "$DIR/convert.log" 2>&1 || { echo "llama_cpp.sh: converting $MODEL failed; see $DIR/convert.log" >&2; exit 1; }
  mv "$GGUF.partial" "$GGUF"  # only a whole file under the name that says it is done
fi
echo "--llama-bench $SRC/build/bin/llama-bench --gguf $GGUF"
