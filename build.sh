#!/usr/bin/env bash
# build.sh — build, test, fuzz and benchmark pytest-fast.
#
#   ./build.sh            build ./pytest-fast against the Python that can import pytest
#   ./build.sh amalgamate write pytest_fast.c from pytest_fast.h and src/
#   ./build.sh test       check that pytest_fast.c is not stale, lint (ruff, mypy),
#                         build, then the C unit tests, a smoke run on every other
#                         Python x pytest present (PF_NO_MATRIX=1 skips it) and the
#                         whole pytest suite, in an environment scrubbed of the
#                         caller's venv and pytest/Python settings
#   ./build.sh asan       the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   ./build.sh fuzz [S]   fuzz the pickle decoder for S seconds (default 600)
#   ./build.sh demo       make_app (FastAPI + SQLAlchemy + Pydantic): plain pytest,
#                         pytest-xdist, pytest-fast cold, warm, edit -> result
#   ./build.sh bench      benchmarks side by side (see bench/README.md)
#   ./build.sh matrix     every CPython 3.9-3.13 here x pytest 7.4 / 8.x / 9.x (--smoke)
#
# PYTHON=/path/to/python overrides the interpreter choice; CC the compiler.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
BUILD=$ROOT/build
CC=${CC:-cc}
WARN="-std=c11 -Wall -Wextra -Werror"
mkdir -p "$BUILD"

say() { printf 'build.sh: %s\n' "$*" >&2; }

# An interpreter we can embed: it imports pytest and has a shared libpython.
usable() {
    "$1" - <<'EOF' >/dev/null 2>&1
import sysconfig, pytest
assert sysconfig.get_config_var("Py_ENABLE_SHARED")
EOF
}

embeddable() {
    "$1" -c 'import sysconfig; assert sysconfig.get_config_var("Py_ENABLE_SHARED")' >/dev/null 2>&1
}

# Create ./.venv from a base interpreter and install what is listed in $2.
make_venv() {
    local base=$1 reqs=$2 venv=$ROOT/.venv
    local stamp="$venv/.pytest-fast-reqs"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv from $base"
        "$base" -m venv "$venv"
    fi
    if [ ! -f "$stamp" ] || ! cmp -s "$reqs" "$stamp"; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
        cp "$reqs" "$stamp"
    fi
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        command -v "$PYTHON" >/dev/null || { say "PYTHON=$PYTHON not found"; exit 1; }
        embeddable "$PYTHON" || { say "PYTHON=$PYTHON has no shared libpython (built without --enable-shared); cannot embed it"; exit 1; }
        PY=$(command -v "$PYTHON"); return
    fi
    local cands=()
    [ -n "${VIRTUAL_ENV:-}" ] && cands+=("$VIRTUAL_ENV/bin/python")
    cands+=(python3)
    for v in 13 12 11 10 9; do cands+=("python3.$v"); done
    for c in "${cands[@]}"; do
        if command -v "$c" >/dev/null 2>&1 && usable "$c"; then PY=$(command -v "$c"); return; fi
    done
    for c in "${cands[@]}"; do
        if command -v "$c" >/dev/null 2>&1 && embeddable "$c"; then
            say "no interpreter with pytest found: installing pytest into ./.venv (from $c)"
            make_venv "$(command -v "$c")" "$ROOT/test/requirements-min.txt"
            PY=$ROOT/.venv/bin/python; return
        fi
    done
    say "no Python with a shared libpython found; install python3-dev (or set PYTHON=)"; exit 1
}

# Compile and link flags from the interpreter's own sysconfig: a venv has no
# python3-config and pyenv shims may point elsewhere.
py_flags() {
    eval "$("$PY" - <<'EOF'
import shlex, sys, sysconfig
v = sysconfig.get_config_var
libdir = v("LIBDIR")
ver = v("LDVERSION") or v("VERSION")
inc = sysconfig.get_paths()["include"]
print("PY_CFLAGS=" + shlex.quote(f"-I{inc}"))
print("PY_LDFLAGS=" + shlex.quote(f"-L{libdir} -Wl,-rpath,{libdir} -lpython{ver} {v('LIBS') or ''} {v('SYSLIBS') or ''} -lm"))
print("PY_EXE=" + shlex.quote(sys.executable))
EOF
)"
}

compile() {  # compile OUT SRC EXTRA-FLAGS...
    local out=$1 src=$2; shift 2
    # shellcheck disable=SC2086
    $CC $WARN "$@" -o "$out" "$src" $PY_CFLAGS -DPF_BUILD_PYTHON="\"$PY_EXE\"" $PY_LDFLAGS
}

build() {  # build [SANITIZE-FLAGS]
    local extra=${1:-} dir=$BUILD
    pick_python
    py_flags
    if [ -n "$extra" ]; then dir=$BUILD/asan; mkdir -p "$dir"; fi
    local opt="-O2 -g"; [ -n "$extra" ] && opt="-O1 -g -fno-omit-frame-pointer $extra"
    # shellcheck disable=SC2086
    compile "$dir/pytest-fast" pytest_fast.c $opt
    for t in test/unit_*.c test/codec_tool.c; do
        # shellcheck disable=SC2086
        compile "$dir/$(basename "${t%.c}")" "$t" $opt
    done
    # a rename, not a copy over: a running daemon keeps executing the old file
    if [ -z "$extra" ]; then
        cp "$dir/pytest-fast" "$ROOT/.pytest-fast.new" && mv -f "$ROOT/.pytest-fast.new" "$ROOT/pytest-fast"
    fi
    say "built $dir/pytest-fast for $PY_EXE"
}

# The suite passes from any shell: another venv, PYTEST_ADDOPTS, CI=true or
# PYTHON* settings of the caller must not reach the binary under test nor the
# pytest that runs the suite (test/conftest.py scrubs the same names).
scrub_env() {
    local v
    for v in $(compgen -e); do
        case $v in
        VIRTUAL_ENV|CI|PYTEST_ADDOPTS|PYTEST_PLUGINS|PYTEST_DISABLE_PLUGIN_AUTOLOAD|PYTEST_FAST_*|PYTHON*)
            unset "$v" ;;
        esac
    done
}

# pytest_fast.c must be what src/amalgamate.py makes of the sources.
check_amalgamation() {
    "$1" "$ROOT/src/amalgamate.py" --check
}

lint() {  # lint PYTHON
    local py=$1
    "$py" -m ruff check --quiet "$ROOT"
    "$py" -m mypy --config-file "$ROOT/pyproject.toml" "$ROOT/plugin.py" "$ROOT/src/glue.py" "$ROOT/src/affected.py" "$ROOT/src/hotswap.py" "$ROOT/src/amalgamate.py"
    say "lint: ruff and mypy clean"
}

run_tests() {  # run_tests BUILD-DIR [pytest args]
    local dir=$1; shift
    for t in "$dir"/unit_*; do
        echo "== $(basename "$t")"
        "$t"
    done
    PF_BUILD_DIR=$dir PF_BIN=$dir/pytest-fast "$ROOT/.venv/bin/python" -m pytest "$ROOT/test" "$@"
}

test_env() {  # after scrub_env: PYTHON (given as the base) is the only choice kept
    local base=""
    if [ -n "${1:-}" ]; then base=$1; else
        for c in python3 python3.13 python3.12 python3.11 python3.10 python3.9; do
            if command -v "$c" >/dev/null 2>&1 && embeddable "$c"; then base=$(command -v "$c"); break; fi
        done
    fi
    [ -n "$base" ] || { say "no Python with a shared libpython found"; exit 1; }
    # The suite's own venv: the interpreter the binary embeds and the one the
    # test projects run under.
    make_venv "$base" "$ROOT/test/requirements.txt"
    PYTHON=$ROOT/.venv/bin/python
    export PYTHON
}

cmd=${1:-build}
case "$cmd" in
build)
    build
    ;;
amalgamate)
    command -v python3 >/dev/null || { say "amalgamate needs python3"; exit 1; }
    python3 "$ROOT/src/amalgamate.py"
    ;;
test)
    shift || true
    base=${PYTHON:-}
    scrub_env
    test_env "$base"
    check_amalgamation "$PYTHON"
    lint "$PYTHON"
    build
    # The other CPython x pytest combinations present here get a smoke run;
    # this one (./.venv) gets the whole suite, whose summary ends the output.
    [ -n "${PF_NO_MATRIX:-}" ] || "$PY" "$ROOT/test/matrix.py" --smoke --skip-main
    run_tests "$BUILD" "$@"
    ;;
asan)
    shift || true
    base=${PYTHON:-}
    scrub_env
    test_env "$base"
    build "-fsanitize=address,undefined -fno-sanitize-recover=undefined"
    PF_SANITIZED=1 ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:handle_segv=0} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
        run_tests "$BUILD/asan" "$@"
    ;;
fuzz)
    secs=${2:-600}
    command -v clang >/dev/null || { say "fuzzing needs clang (apt-get install clang)"; exit 1; }
    pick_python
    py_flags
    mkdir -p "$BUILD/fuzz-corpus"
    # shellcheck disable=SC2086
    clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
        -o "$BUILD/fuzz_decode" test/fuzz_decode.c $PY_CFLAGS $PY_LDFLAGS
    "$BUILD/fuzz_decode" -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
        "$BUILD/fuzz-corpus" test/corpus
    ;;
demo)
    base=${PYTHON:-}
    scrub_env
    test_env "$base"
    build
    exec "$PYTHON" "$ROOT/bench/demo.py" --bin "$ROOT/pytest-fast"
    ;;
bench)
    shift || true
    pick_python
    exec "$PY" "$ROOT/bench/run.py" "$@"
    ;;
matrix)
    shift || true
    pick_python
    exec "$PY" "$ROOT/test/matrix.py" "$@"
    ;;
*)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
