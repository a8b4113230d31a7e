#!/usr/bin/env python3
"""(Re)generate test/corpus/: seed and hostile pickles for the C decoder.

ok-*.pkl must decode; bad-*.pkl must be refused with a reason.  The files
are the fuzzer's seed corpus too, and test_codec.py runs all of them through
codec_tool.  Output is deterministic for a given Python (sets hold only ints,
whose hash does not depend on PYTHONHASHSEED).  Files of other names in the
directory are left alone.

    python3 test/make_corpus.py [DIR]
"""
import os
import pickle
import struct
import sys

P2, P4, P5 = b"\x80\x02", b"\x80\x04", b"\x80\x05"


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def nested_lists(depth):
    v = []
    for _ in range(depth - 1):
        v = [v]
    return v


def recursive_list():
    v = []
    v.append(v)
    return v


def recursive_dict():
    v = {}
    v["self"] = v
    return v


def recursive_tuple():
    inner = []
    t = (inner,)
    inner.append(t)
    return t


def seed_value(protocol):
    """A bit of everything that protocol can say without globals."""
    shared = [1, "shared"]
    v = {
        "none": None,
        "bools": (True, False),
        "ints": [0, 1, -1, 255, 256, 65535, 65536, -(2**31), 2**31 - 1, 2**31, 2**63 - 1,
                 -(2**63), 2**64, -(2**200), 2**3000],
        "floats": [0.0, -0.0, 1.5, -2.25e-308, 1e308, float("inf"), float("-inf"), float("nan")],
        "str": ["", "ascii", "caf\u00e9", "\u20ac", "\U0001f600", "lone \ud800 \udfff", "x" * 300],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((1, 2), (3, (4,)))],
        "dict": {1: "one", (2, 3): [], "nested": {"k": {"k2": []}}},
        "shared": [shared, shared, (shared,)],
    }
    if protocol >= 3:
        v["bytes"] = [b"", b"\x00\xff", b"y" * 300]
    if protocol >= 4:
        v["sets"] = [set(), {1, 2, 3}, frozenset(), frozenset({(1, 2), 3})]
    if protocol >= 5:
        v["bytearray"] = [bytearray(), bytearray(b"\x01\x02")]
    return v


def corpus():
    files = {}

    # ---------------------------------------------------------------- valid
    for p in (2, 3, 4, 5):
        files[f"ok-p{p}-mixed.pkl"] = pickle.dumps(seed_value(p), protocol=p)
    files["ok-p0-text.pkl"] = pickle.dumps(
        [1, -3, 2**70, -(2**70), 1.5, float("inf"), "a\u20ac\\u \ud800", True, False, None,
         {"k": (1, 2)}, [[1], [1]]], protocol=0)
    files["ok-p1.pkl"] = pickle.dumps([1, 2**40, 1.5, "s", (1, 2, 3, 4), {"a": [None]}], protocol=1)
    files["ok-p4-scalar.pkl"] = pickle.dumps(42, protocol=4)
    files["ok-p4-empty-str.pkl"] = pickle.dumps("", protocol=4)
    files["ok-deep-200.pkl"] = pickle.dumps(nested_lists(200), protocol=4)
    # [1, 3, 3]: DUP then POP, a MARK dropped by POP_MARK, DUP inside APPENDS.
    files["ok-pop-dup-popmark.pkl"] = P4 + b"](K\x0120(K\x021K\x032e."
    files["ok-dict-dup-keys.pkl"] = P4 + b"}(K\x01K\x02K\x01K\x03u."
    files["ok-set-dup-items.pkl"] = P4 + b"\x8f(K\x01K\x01K\x02\x90."
    files["ok-memo-text.pkl"] = b"(lp0\nVabc\np1\nag1\na."
    files["ok-long1-noncanonical.pkl"] = P4 + b"\x8a\x09\x01\x00\x00\x00\x00\x00\x00\x00\x00."
    files["ok-shared-memo.pkl"] = pickle.dumps([["x"]] * 3, protocol=4)

    # ------------------------------------------------------ memo and frames
    files["bad-memo-long-binget-4g.pkl"] = P4 + b"j" + u32(2**32 - 1) + b"."
    files["bad-memo-long-binput-4g.pkl"] = P4 + b"Nr" + u32(2**32 - 1) + b"."
    files["bad-memo-put-text-huge.pkl"] = b"Np99999999999\n."
    files["bad-memo-get-missing.pkl"] = P4 + b"h\x05."
    files["bad-frame-bomb.pkl"] = P4 + b"\x95" + u64(2**62) + b"N."
    files["bad-frame-bomb-max.pkl"] = P4 + b"\x95" + u64(2**64 - 1) + b"N."

    # ---------------------------------------------------------- length bombs
    for op, name, width in ((b"X", "binunicode", 4), (b"B", "binbytes", 4),
                            (b"\x8d", "binunicode8", 8), (b"\x8e", "binbytes8", 8),
                            (b"\x96", "bytearray8", 8)):
        sizes = {"2g": 2**31} if width == 4 else {"2g": 2**31, "1t": 2**40}
        for tag, n in sizes.items():
            files[f"bad-{name}-{tag}.pkl"] = P4 + op + (u32(n) if width == 4 else u64(n)) + b"abc."
    files["bad-long4-2g.pkl"] = P4 + b"\x8b" + u32(2**31 - 1) + b"\x01."
    files["bad-long4-negative.pkl"] = P4 + b"\x8b" + u32(2**32 - 1) + b"."

    # ------------------------------------------------------------- nesting
    files["bad-marks-1e6.pkl"] = P4 + b"(" * 10**6 + b"."
    files["bad-nested-lists-1e6.pkl"] = P4 + b"]" * 10**6 + b"a" * (10**6 - 1) + b"."
    files["bad-nested-tuples-1e5.pkl"] = P4 + b")" + b"\x85" * 10**5 + b"."
    files["bad-deep-201.pkl"] = pickle.dumps(nested_lists(201), protocol=4)
    files["bad-recursive-list.pkl"] = pickle.dumps(recursive_list(), protocol=4)
    files["bad-recursive-dict.pkl"] = pickle.dumps(recursive_dict(), protocol=4)
    files["bad-recursive-tuple.pkl"] = pickle.dumps(recursive_tuple(), protocol=4)
    files["bad-self-append-dup.pkl"] = P4 + b"]2a."

    # -------------------------------------------------------- code opcodes
    files["bad-eval-global.pkl"] = P2 + b"cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R."
    files["bad-eval-stack-global.pkl"] = (P4 + b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93"
                                          b"\x8c\x031+1\x85R.")
    files["bad-bytes-2g-reduce.pkl"] = (P4 + b"\x8c\x08builtins\x8c\x05bytes\x93"
                                        b"\x8a\x05\x00\x00\x00\x80\x00\x85R.")
    files["bad-list-bytes-reduce.pkl"] = (P4 + b"\x8c\x08builtins\x8c\x04list\x93"
                                          b"\x8c\x08builtins\x8c\x05bytes\x93"
                                          b"J\x00\x00\x00\x10\x85R\x85R.")
    files["bad-class-complex.pkl"] = b"cbuiltins\ncomplex\n."
    files["bad-reduce.pkl"] = P4 + b"N)R."
    files["bad-build.pkl"] = P4 + b"}}b."
    files["bad-inst.pkl"] = P2 + b"(ibuiltins\ndict\n."
    files["bad-obj.pkl"] = P2 + b"(N)o."
    files["bad-newobj.pkl"] = P2 + b"N)\x81."
    files["bad-newobj-ex.pkl"] = P4 + b"N)}\x92."
    files["bad-ext1.pkl"] = P2 + b"\x82\x01."
    files["bad-ext2.pkl"] = P2 + b"\x83\x01\x00."
    files["bad-ext4.pkl"] = P2 + b"\x84\x01\x00\x00\x00."
    files["bad-persid.pkl"] = P2 + b"P1\n."
    files["bad-binpersid.pkl"] = P2 + b"K\x01Q."
    files["bad-next-buffer.pkl"] = P5 + b"\x97."
    files["bad-readonly-buffer.pkl"] = P5 + b"C\x01x\x98."
    files["bad-unknown-opcode.pkl"] = P4 + b"\xff."
    # What protocols 2-4 need globals for.
    files["bad-p2-bytes.pkl"] = pickle.dumps(b"abc", protocol=2)
    files["bad-p3-set.pkl"] = pickle.dumps({1, 2}, protocol=3)
    files["bad-p4-bytearray.pkl"] = pickle.dumps(bytearray(b"x"), protocol=4)

    # ------------------------------------------------------ malformed data
    files["bad-empty.pkl"] = b""
    full = pickle.dumps(list(range(50)), protocol=4)
    files["bad-truncated-frame.pkl"] = full[: len(full) // 2]
    files["bad-truncated-frame-header.pkl"] = P4 + b"\x95\x10\x00"
    files["bad-truncated-no-stop.pkl"] = full[:-1]
    files["bad-no-stop.pkl"] = P4 + b"N"
    files["bad-trailing-data.pkl"] = P4 + b"N.N"
    files["bad-stack-left-over.pkl"] = P4 + b"NN."
    files["bad-mark-left-open.pkl"] = P4 + b"(N."
    files["bad-stop-empty-stack.pkl"] = P4 + b"."
    files["bad-proto-6.pkl"] = b"\x80\x06N."
    files["bad-py2-short-binstring.pkl"] = P2 + b"U\x03abc."
    files["bad-py2-string.pkl"] = b"S'abc'\n."
    files["bad-invalid-utf8.pkl"] = P4 + b"\x8c\x02\xc3\x28."
    files["bad-overlong-utf8.pkl"] = P4 + b"\x8c\x02\xc0\x80."
    files["bad-utf8-above-max.pkl"] = P4 + b"\x8c\x04\xf4\x90\x80\x80."
    files["bad-unhashable-key.pkl"] = P4 + b"}]Ns."
    files["bad-unhashable-tuple-key.pkl"] = P4 + b"}]\x85Ns."
    files["bad-unhashable-set-item.pkl"] = P4 + b"\x8f(]\x90."
    files["bad-unhashable-frozenset-item.pkl"] = P4 + b"(}\x91."
    files["bad-odd-setitems.pkl"] = P4 + b"}(K\x01u."
    files["bad-append-to-tuple.pkl"] = P4 + b")Na."
    files["bad-appends-no-target.pkl"] = P4 + b"(K\x01e."
    files["bad-text-int-octal.pkl"] = b"I010\n."
    files["bad-text-int-digits.pkl"] = b"L" + b"9" * 4301 + b"L\n."
    files["bad-text-float-hex.pkl"] = b"F0x1p3\n."
    files["bad-unicode-escape.pkl"] = b"V\\u12\n."
    return files


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    files = corpus()
    for name, data in sorted(files.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(files)} files to {out}")


if __name__ == "__main__":
    main()
