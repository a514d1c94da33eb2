"""Writes small hostile seed files (issue 12) for the fuzz corpora into fuzz/seeds/<target>/.

Standard library only: every byte is laid out here, so the seeds break exactly one rule each
(aliased members, duplicate names, misnamed local headers, lying entry counts, non-.npy
members, trailing data, false end records, memo and name bombs, tensors in lists and under
unnameable keys). The outputs are committed; run `python3 fuzz/make_hostile_seeds.py` again
after changing it. `make_seeds.py` writes the seeds that need numpy and torch.
"""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy_u8(data):
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d,), }" % len(data)
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + bytes(data)


def fields(name, content, stored, method=0, flags=0):
    return struct.pack(
        "<HHHHHIIIHH", 20, flags, method, 0, 0x21, zlib.crc32(content),
        len(stored), len(content), len(name), 0,
    )


def local(name, content, method=0, flags=0, local_name=None):
    stored = zlib.compress(content)[2:-4] if method == 8 else content
    n = (local_name or name).encode()
    return b"PK\x03\x04" + fields(n, content, stored, method, flags) + n + stored


def central(name, content, offset, method=0, flags=0):
    stored = zlib.compress(content)[2:-4] if method == 8 else content
    n = name.encode()
    return (b"PK\x01\x02" + struct.pack("<H", 20) + fields(n, content, stored, method, flags)
            + b"\x00" * 10 + struct.pack("<I", offset) + n)


def end(count, cd, cd_at, comment=b""):
    return (b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(cd), cd_at, len(comment))
            + comment)


def archive(members, count=None, trailing=b""):
    """members: (name, content, method, flags, local_name, points_at) with points_at None for honest."""
    body, cd, at = b"", b"", []
    for name, content, method, flags, local_name, _ in members:
        at.append(len(body))
        body += local(name, content, method, flags, local_name)
    for i, (name, content, method, flags, _, points_at) in enumerate(members):
        cd += central(name, content, at[i] if points_at is None else points_at, method, flags)
    return body + cd + end(len(members) if count is None else count, cd, len(body)) + trailing


def m(name, content, method=0, flags=0, local_name=None, points_at=None):
    return (name, content, method, flags, local_name, points_at)


a, b = npy_u8(range(8)), npy_u8(range(4))

# The npz target: small archives, honest and each hostile in one way.
out("npz", "small.npz", archive([m("a.npy", a), m("b.npy", b, 8)]))
out("npz", "duplicate_names.npz", archive([m("a.npy", a), m("a.npy", b)]))
out("npz", "alias_same_header.npz", archive([m("a.npy", a), m("b.npy", a, points_at=0)]))
out("npz", "local_name_differs.npz", archive([m("a.npy", a, local_name="z.npy")]))
out("npz", "entry_count_lies.npz", archive([m("a.npy", a), m("b.npy", b)], count=1))
out("npz", "not_npy_suffix.npz", archive([m("a.npy", a), m("head/extra", b), m("x.NPY", b)]))
out("npz", "not_an_array.npz", archive([m("a.npy", a), m("README", b"hello")]))
out("npz", "encrypted.npz", archive([m("a.npy", a, flags=1)]))
out("npz", "trailing_data.npz", archive([m("a.npy", a)], trailing=b"junk"))
false_end = end(1, b"\x00" * 46, 0) * 200
out("npz", "false_end_records.npz", archive([m("a.npy", npy_u8(false_end))]))
# Member b inside member a's data: a valid array made of another's bytes.
inner = local("b.npy", b)
outer = npy_u8(inner)
outer_record = local("a.npy", outer)
b_at = len(outer_record) - len(inner)
cd = central("a.npy", outer, 0) + central("b.npy", b, b_at)
out("npz", "overlapping_members.npz", outer_record + cd + end(2, cd, len(outer_record)))

# The zip_alias target: count byte, then (name, flags) per member, then the content.
for name, spec in [
    ("honest", [0, 0, 1, 0]),
    ("alias_header", [0, 0, 1, 1]),
    ("alias_data", [0, 0, 1, 2]),
    ("duplicate", [0, 0, 2, 0]),
    ("misnamed", [0, 4]),
    ("deflated", [0, 8, 1, 8]),
    ("count_lies", [0, 16]),
]:
    n = len(spec) // 2
    out("zip_alias", name, bytes([n - 1] + spec) + (a + b)[: 64 * n])


# Pickles: a memo bomb, a name bomb in miniature, tensors in lists, unnameable keys.
def pstr(s):
    s = s.encode()
    return b"X" + struct.pack("<I", len(s)) + s


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def pint(v):
    return b"\x8a\x08" + struct.pack("<q", v)


def tensor(key, numel, shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.insert(0, acc)
        acc *= max(d, 1)
    return (glob("torch._utils", "_rebuild_tensor_v2") + b"((" + pstr("storage")
            + glob("torch", "FloatStorage") + pstr(key) + pstr("cpu") + pint(numel) + b"tQ"
            + pint(0) + b"(" + b"".join(map(pint, shape)) + b"t(" + b"".join(map(pint, strides))
            + b"t\x89" + glob("collections", "OrderedDict") + b")RtR")


memo_bomb = b"\x80\x02](" + pstr("s" * 4096) + b"q\x00" + b"h\x00" * 600 + b"e."
lists = (b"\x80\x02}(" + pstr("layers") + b"](" + tensor("0", 2, [2]) + tensor("0", 2, [1])
         + b"e" + pstr("pair") + b"(" + tensor("0", 2, [2]) + b"tu.")
none_key = b"\x80\x02}(N" + tensor("0", 2, [2]) + b"u."
dup_keys = b"\x80\x02}(" + pstr("w") + tensor("0", 2, [1]) + pstr("w") + tensor("0", 2, [2]) + b"u."
name_bomb = (b"\x80\x02}(" + pstr("k" * 2048) + b"}(" + b"".join(
    pstr("t%d" % i) + tensor("0", 1, [1]) for i in range(40)) + b"uu.")
for name, p in [("memo_bomb", memo_bomb), ("lists", lists), ("none_key", none_key),
                ("dup_keys", dup_keys), ("name_bomb", name_bomb)]:
    out("pickle", name + ".pkl", p)
    # Mode 1 of the pt target: the pickle wrapped in a generated archive.
    out("pt", name + ".wrapped", b"\x01\xff" + p)
# Mode 0 of the pt target: a whole archive with two pickles, and one with an aliased storage.
pkl = b"\x80\x02}(" + pstr("w") + tensor("0", 2, [2]) + b"u."
data = bytes(8)
out("pt", "two_pickles.pt", b"\x00" + archive([
    m("archive/data.pkl", pkl), m("other/data.pkl", pkl), m("archive/data/0", data)]))
out("pt", "aliased_storage.pt", b"\x00" + archive([
    m("archive/data.pkl", pkl), m("archive/data/0", data, 8),
    m("archive/data/1", data, 8, points_at=len(local("archive/data.pkl", pkl)))]))


# SentencePiece models (the `sentencepiece` target): a protobuf ModelProto whose field 1 is each piece
# (field 1 its text, field 3 its type: 1 normal, 2 unknown, 3 control).
def varint(v):
    b = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            b.append(byte | 0x80)
        else:
            b.append(byte)
            return bytes(b)


def ld(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def piece(text, kind=1):
    return ld(1, ld(1, text) + varint(3 << 3) + varint(kind))


spm_minimal = piece(b"<unk>", 2) + piece(b"<s>", 3) + piece(b"</s>", 3) + piece(b"\xe2\x96\x81a")
out("sentencepiece", "minimal.model", spm_minimal + ld(2, b"\x0a\x00"))
# A length that claims far more bytes than follow (2^62), at the top and inside a piece.
out("sentencepiece", "huge_length.model", spm_minimal + varint(1 << 3 | 2) + varint(1 << 62) + b"x")
out("sentencepiece", "huge_inner_length.model",
    piece(b"<unk>", 2) + ld(1, varint(1 << 3 | 2) + varint(0xFFFFFFFF) + b"</s>"))
# Varints cut off at the end, and one longer than 10 bytes.
out("sentencepiece", "truncated_varint.model", spm_minimal + b"\x0a\xff\xff\xff")
out("sentencepiece", "overlong_varint.model", spm_minimal + b"\x18" + b"\xff" * 11 + b"\x01")
# Length-delimited fields nested 2000 deep inside one piece (the parser looks two levels down only).
nested = b"</s>"
for _ in range(2000):
    nested = ld(1, nested)
out("sentencepiece", "deep_nesting.model", piece(b"<unk>", 2) + ld(1, ld(4, nested)) + piece(b"</s>"))
# 30 000 empty pieces, and no </s>.
out("sentencepiece", "many_empty_pieces.model", piece(b"<unk>", 2) + b"\x0a\x00" * 30000)
# Wire types 3, 4 (groups) and 7, which the parser refuses by offset.
out("sentencepiece", "group_wire_type.model", spm_minimal + b"\x0b\x0c")
# Piece text that is not UTF-8.
out("sentencepiece", "bad_utf8.model", spm_minimal + piece(b"\xff\xfe"))
# The unknown piece's type, but no </s>.
out("sentencepiece", "no_eos.model", piece(b"<unk>", 2) + piece(b"<s>", 3))
