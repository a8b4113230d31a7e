"""Interop tests for the C pickle codec, driven through test/codec_tool.c.

codec_tool reads frames (4-byte big-endian length + pickle) on stdin and
answers each with b"O" + its own re-encoding of the decoded value, or b"E" +
the reason the pickle was refused.

Build it first (./build.sh); the tool is looked up in $PF_BUILD_DIR, else
<repo>/build.
"""
import io
import math
import os
import pickle
import pickletools
import random
import struct
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(os.environ.get("PF_BUILD_DIR", os.path.join(REPO, "build")), "codec_tool")
CORPUS = os.path.join(REPO, "test", "corpus")
VALUES_PER_PROTOCOL = 10_000
MAX_DEPTH = 200


def run_tool(payloads):
    """Send each payload as a frame; return the replies as (ok, body)."""
    if not os.access(TOOL, os.X_OK):
        pytest.fail(f"{TOOL} not found: run ./build.sh first (or set PF_BUILD_DIR)")
    data = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    proc = subprocess.run([TOOL], input=data, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out, replies, i = proc.stdout, [], 0
    while i < len(out):
        (n,) = struct.unpack(">I", out[i : i + 4])
        body = out[i + 4 : i + 4 + n]
        assert body[:1] in (b"O", b"E"), body[:20]
        replies.append((body[:1] == b"O", body[1:]))
        i += 4 + n
    assert i == len(out) and len(replies) == len(payloads)
    return replies


def same(a, b):
    """Equality that is exact about types (a tuple stays a tuple), treats NaN
    as equal to NaN, and tells -0.0 from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        # The codec keeps insertion order, so items can be compared in order.
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return a == b


class NoGlobals(pickle.Unpickler):
    """An unpickler that can build nothing but plain data."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


class Gen:
    """Random values that `pickle.dumps(v, protocol)` writes without globals.

    Protocol 2 writes bytes as _codecs.encode(...), and set, frozenset and
    bytearray as builtins calls; protocol 3 still needs globals for sets and
    bytearray, protocol 4 for bytearray.  The C decoder refuses globals, so
    each protocol only gets the types it can say with data opcodes.

    NaN never goes into a dict key or set: Python keeps distinct NaN objects
    apart while the codec compares floats by bit pattern.
    """

    def __init__(self, seed, protocol):
        self.r = random.Random(seed)
        self.p = protocol
        self.pool = []  # finished containers, re-used to make shared references

    def int_(self):
        r = self.r
        kind = r.randrange(6)
        if kind == 0:
            return r.randrange(-300, 300)
        if kind == 1:
            return r.choice([0, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1,
                             2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, -(2**64)])
        if kind == 2:
            return r.randrange(-(2**63), 2**63)
        bits = r.choice([65, 70, 128, 500, 2100, 3000])  # past int64; LONG4 past 2040 bits
        return r.getrandbits(bits) * r.choice([1, -1])

    def float_(self, nan=True):
        r = self.r
        kind = r.randrange(5)
        if kind == 0:
            specials = [0.0, -0.0, float("inf"), float("-inf"), 5e-324, -5e-324, 1.7976931348623157e308]
            return r.choice(specials + [float("nan")] * nan)
        if kind == 1:
            x = struct.unpack("<d", struct.pack("<Q", r.getrandbits(64)))[0]
            return x if nan or not math.isnan(x) else 0.5
        return (r.random() - 0.5) * 10 ** r.randrange(-30, 30)

    def str_(self):
        r = self.r
        n = r.choice([255, 256, 300]) if r.random() < 0.05 else r.randrange(12)
        ranges = [(0x20, 0x7F), (0, 0x20), (0x80, 0x800), (0x800, 0xD800), (0xD800, 0xE000),
                  (0xE000, 0x10000), (0x10000, 0x110000)]
        out = []
        for _ in range(n):
            lo, hi = ranges[r.getrandbits(8) % len(ranges)]
            out.append(chr(lo + r.getrandbits(21) % (hi - lo)))
        return "".join(out)

    def bytes_(self):
        r = self.r
        n = r.choice([255, 256, 300]) if r.random() < 0.05 else r.randrange(12)
        return r.getrandbits(8 * n).to_bytes(n, "little")

    def scalar(self, hashable=False):
        r = self.r
        kinds = ["none", "bool", "int", "int", "float", "str", "str"]
        if self.p >= 3:
            kinds.append("bytes")
        if self.p >= 5 and not hashable:
            kinds.append("bytearray")
        k = r.choice(kinds)
        if k == "none":
            return None
        if k == "bool":
            return r.random() < 0.5
        if k == "int":
            return self.int_()
        if k == "float":
            return self.float_(nan=not hashable)
        if k == "str":
            return self.str_()
        if k == "bytes":
            return self.bytes_()
        return bytearray(self.bytes_())

    def hashable(self, depth):
        r = self.r
        if depth <= 0 or r.random() < 0.6:
            return self.scalar(hashable=True)
        if self.p >= 4 and r.random() < 0.3:
            return frozenset(self.hashable(depth - 1) for _ in range(r.randrange(4)))
        return tuple(self.hashable(depth - 1) for _ in range(r.randrange(5)))

    def value(self, depth=4):
        r = self.r
        if self.pool and r.random() < 0.1:
            return r.choice(self.pool)  # the same object again: a memo GET
        if depth <= 0 or r.random() < 0.35:
            return self.scalar()
        kinds = ["list", "list", "tuple", "tuple", "dict", "dict"]
        if self.p >= 4:
            kinds += ["set", "frozenset"]
        k = r.choice(kinds)
        n = r.randrange(6)
        if k == "list":
            v = [self.value(depth - 1) for _ in range(n)]
        elif k == "tuple":
            v = tuple(self.value(depth - 1) for _ in range(n))
        elif k == "dict":
            v = {self.hashable(2): self.value(depth - 1) for _ in range(n)}
        elif k == "set":
            v = {self.hashable(2) for _ in range(n)}
        else:
            v = frozenset(self.hashable(2) for _ in range(n))
        if len(self.pool) < 200:
            self.pool.append(v)
        elif r.random() < 0.1:
            self.pool[r.randrange(len(self.pool))] = v
        return v

    def values(self, count):
        out = [self.value() for _ in range(count - 4)]
        shared = [self.value(2) for _ in range(3)]
        # Big ones: several FRAMEs, APPENDS/SETITEMS batches past 1000 items,
        # and memo indices past 255 (LONG_BINPUT/LONG_BINGET in protocols 2-3).
        out.append([self.value(1) for _ in range(5000)] + shared * 100)
        out.append({i: shared[i % 3] for i in range(3000)})
        out.append("x" * 70000 + self.str_())
        nested = []
        for _ in range(MAX_DEPTH - 1):
            nested = [nested, self.scalar()]
        out.append(nested)
        return out


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python_to_c_to_python(protocol):
    values = Gen(1000 + protocol, protocol).values(VALUES_PER_PROTOCOL)
    pickles = [pickle.dumps(v, protocol=protocol) for v in values]
    assert any(op.name in ("BINGET", "LONG_BINGET") for op, _, _ in pickletools.genops(pickles[-4]))
    replies = run_tool(pickles)
    for i, (v, (ok, body)) in enumerate(zip(values, replies)):
        assert ok, f"value {i} refused: {body.decode()}: {v!r:.200}"
        back = pickle.loads(body)
        assert same(v, back), f"value {i} changed: {v!r:.200} -> {back!r:.200}"
        # The C encoder never writes a global: plain data loads without any.
        assert same(v, NoGlobals(io.BytesIO(body)).load())


ENCODER_OPCODES = {
    "PROTO", "STOP", "NONE", "NEWTRUE", "NEWFALSE", "BININT1", "BININT2", "BININT", "LONG1",
    "LONG4", "BINFLOAT", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES",
    "BINBYTES", "BINBYTES8", "BYTEARRAY8", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "MARK",
    "TUPLE", "EMPTY_LIST", "APPENDS", "EMPTY_DICT", "SETITEMS", "EMPTY_SET", "ADDITEMS",
    "FROZENSET",
}


def test_c_encoder_output_is_plain_protocol_4():
    values = Gen(7, 5).values(1000)
    replies = run_tool([pickle.dumps(v, protocol=5) for v in values])
    seen = set()
    for ok, body in replies:
        assert ok
        assert body[:2] == b"\x80\x04"
        ops = [op.name for op, _, _ in pickletools.genops(body)]
        assert set(ops) <= ENCODER_OPCODES, set(ops) - ENCODER_OPCODES
        seen.update(ops)
    assert {"BYTEARRAY8", "FROZENSET", "ADDITEMS", "LONG4", "BINUNICODE"} <= seen


def test_depth_limit_matches_python_nesting():
    def nested(depth):
        v = []
        for _ in range(depth - 1):
            v = [v]
        return v

    for protocol in (2, 3, 4, 5):
        (ok, body), (bad, reason) = run_tool(
            [pickle.dumps(nested(MAX_DEPTH), protocol), pickle.dumps(nested(MAX_DEPTH + 1), protocol)]
        )
        assert ok and same(pickle.loads(body), nested(MAX_DEPTH))
        assert not bad and b"nested deeper than 200" in reason


@pytest.mark.parametrize(
    "protocol,value,name",
    [
        (2, b"abc", "_codecs.encode"),
        (2, bytearray(b"abc"), "bytearray"),
        (2, {1, 2}, "set"),
        (2, frozenset({1}), "frozenset"),
        (3, {1, 2}, "set"),
        (3, bytearray(b"abc"), "bytearray"),
        (4, bytearray(b"abc"), "bytearray"),
    ],
)
def test_types_that_need_globals_are_refused(protocol, value, name):
    """Protocol 2 has no opcode for bytes: it pickles b"abc" as a call to
    _codecs.encode, which the decoder refuses, naming the opcode and the
    global.  Likewise sets before protocol 4 and bytearray before 5."""
    [(ok, reason)] = run_tool([pickle.dumps(value, protocol=protocol)])
    assert not ok
    reason = reason.decode()
    assert "GLOBAL" in reason and "refused" in reason and name in reason, reason


# Hostile cases the corpus must hold (see make_corpus.py).
HOSTILE = [
    "bad-memo-long-binget-4g.pkl",
    "bad-memo-long-binput-4g.pkl",
    "bad-frame-bomb.pkl",
    "bad-binunicode-2g.pkl",
    "bad-binbytes-2g.pkl",
    "bad-binunicode8-2g.pkl",
    "bad-binunicode8-1t.pkl",
    "bad-binbytes8-2g.pkl",
    "bad-binbytes8-1t.pkl",
    "bad-bytearray8-2g.pkl",
    "bad-bytearray8-1t.pkl",
    "bad-marks-1e6.pkl",
    "bad-nested-lists-1e6.pkl",
    "bad-eval-global.pkl",
    "bad-eval-stack-global.pkl",
    "bad-bytes-2g-reduce.pkl",
    "bad-list-bytes-reduce.pkl",
    "bad-class-complex.pkl",
    "bad-truncated-frame.pkl",
    "bad-truncated-frame-header.pkl",
    "bad-empty.pkl",
    "bad-recursive-list.pkl",
]

# The words each of those reasons must contain.
HOSTILE_REASONS = {
    "bad-memo-long-binget-4g.pkl": "LONG_BINGET",
    "bad-memo-long-binput-4g.pkl": "LONG_BINPUT",
    "bad-frame-bomb.pkl": "FRAME",
    "bad-binunicode-2g.pkl": "BINUNICODE",
    "bad-binbytes8-1t.pkl": "BINBYTES8",
    "bad-bytearray8-1t.pkl": "BYTEARRAY8",
    "bad-marks-1e6.pkl": "MARK",
    "bad-nested-lists-1e6.pkl": "nested deeper",
    "bad-eval-global.pkl": "GLOBAL",
    "bad-eval-stack-global.pkl": "STACK_GLOBAL",
    "bad-reduce.pkl": "REDUCE",
    "bad-class-complex.pkl": "builtins.complex",
    "bad-recursive-list.pkl": "cycle",
    "bad-empty.pkl": "empty",
}


def corpus_files():
    return sorted(n for n in os.listdir(CORPUS) if n.endswith(".pkl"))


def test_corpus_holds_the_hostile_cases():
    names = set(corpus_files())
    missing = [n for n in HOSTILE if n not in names]
    assert not missing, f"missing from test/corpus (run test/make_corpus.py): {missing}"
    assert sum(n.startswith("ok-p") for n in names) >= 4


def test_corpus_verdicts():
    names = corpus_files()
    blobs = [open(os.path.join(CORPUS, n), "rb").read() for n in names]
    for name, blob, (ok, body) in zip(names, blobs, run_tool(blobs)):
        if name.startswith("bad-"):
            assert not ok, f"{name} was accepted"
            assert body.strip(), f"{name} refused without a reason"
            assert HOSTILE_REASONS.get(name, "").encode() in body, (name, body)
        else:
            assert name.startswith("ok-"), name
            assert ok, f"{name} refused: {body.decode()}"
            assert same(pickle.loads(blob), pickle.loads(body)), name


def test_make_corpus_is_deterministic(tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "test", "make_corpus.py"), str(tmp_path)],
                   check=True, capture_output=True)
    for name in os.listdir(tmp_path):
        with open(tmp_path / name, "rb") as f, open(os.path.join(CORPUS, name), "rb") as g:
            assert f.read() == g.read(), f"{name} differs: rerun test/make_corpus.py"
