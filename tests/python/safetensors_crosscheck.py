"""Cross-check of doremi's safetensors reader and writer against the Python
`safetensors` package (raw-bytes API only, so neither numpy nor torch is needed).

    python3 safetensors_crosscheck.py write OUT   # the reference file, as Python writes it
    python3 safetensors_crosscheck.py check IN    # IN must hold exactly the expected tensors

tests/test_safetensors.cpp builds the same tensors (keep the two lists in step).
Exit status: 0 on success, 1 on a mismatch, 2 when safetensors is missing.
"""
import ctypes
import json
import struct
import sys

try:
    import safetensors
except ImportError:
    sys.exit(2)

# name -> (header dtype, Python-side dtype name, shape, struct format, values)
EXPECTED = {
    "emb.weight": ("F32", "float32", [3, 4], "f", [(i - 5) * 0.25 for i in range(12)]),
    "bias": ("F64", "float64", [3], "d", [-1.0, 0.5, 2.0]),
    "half": ("F16", "float16", [2, 2], "H", [0x3C00, 0xC000, 0x7BFF, 0x0001]),
    "brain": ("BF16", "bfloat16", [3], "H", [0x3F80, 0x4049, 0xBF80]),
    "ids": ("I64", "int64", [2, 2], "q", [-3, 0, 7, 1 << 40]),
    "i32": ("I32", "int32", [3], "i", [-1, 2, 2147483647]),
    "i16": ("I16", "int16", [2], "h", [-32768, 5]),
    "u16": ("U16", "uint16", [3], "H", [0, 1, 65535]),
    "i8": ("I8", "int8", [4], "b", [-128, -1, 0, 127]),
    "u8": ("U8", "uint8", [2], "B", [0, 255]),
    "mask": ("BOOL", "bool", [3], "?", [True, False, True]),
    "scalar": ("F32", "float32", [], "f", [42.5]),
    "empty": ("F32", "float32", [0, 3], "f", []),
}
# One key only: Python orders several keys by a randomly seeded hash map, so
# files with more than one would not compare byte for byte.
METADATA = {"note": "doremi cross-check"}


def packed(fmt, values):
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def write(path):
    buffers = []  # keep the ctypes buffers alive while serializing
    specs = {}
    for name, (_, pydtype, shape, fmt, values) in EXPECTED.items():
        data = packed(fmt, values)
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        buffers.append(buf)
        specs[name] = safetensors.TensorSpec(
            dtype=pydtype, shape=shape, data_ptr=ctypes.addressof(buf), data_len=len(data))
    with open(path, "wb") as f:
        f.write(safetensors.serialize(specs, metadata=METADATA))


def check(path):
    with open(path, "rb") as f:
        blob = f.read()
    found = {name: t for name, t in safetensors.deserialize(blob)}
    errors = []
    if set(found) != set(EXPECTED):
        errors.append("names differ: %s vs %s" % (sorted(found), sorted(EXPECTED)))
    for name, (dtype, _, shape, fmt, values) in EXPECTED.items():
        t = found.get(name)
        if t is None:
            continue
        if t["dtype"] != dtype or list(t["shape"]) != shape or bytes(t["data"]) != packed(fmt, values):
            errors.append("tensor %s differs: %s %s %r" % (name, t["dtype"], t["shape"], bytes(t["data"])))
    n = struct.unpack("<Q", blob[:8])[0]
    meta = json.loads(blob[8:8 + n]).get("__metadata__")
    if meta != METADATA:
        errors.append("metadata differs: %r" % (meta,))
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        print(__doc__)
        sys.exit(1)
    if sys.argv[1] == "write":
        write(sys.argv[2])
        sys.exit(0)
    sys.exit(check(sys.argv[2]))
