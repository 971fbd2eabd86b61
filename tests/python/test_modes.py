"""The two modes on the CPU: "fast" (the default) and "high-ratio" (entropy-coded exponents, format version 2),
code tables (CodeTable), payload checksums, and what frames report about them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import splitzip_connector as sz
from conftest import bf16_randn

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

MODES = ("fast", "high-ratio")


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of an array, for bit-exact comparison (NaNs included)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def test_the_modes_are_gos():
    from splitzip_connector._binding import MODE_FAST, MODE_HIGH_RATIO, _pybind, ext

    assert sz.MODES == ("fast", "high-ratio")
    assert (MODE_FAST, MODE_HIGH_RATIO) == (_pybind.ModeFast, _pybind.ModeHighRatio) == (0, 1)
    assert [ext.pybind_ModeName(m) for m in (MODE_FAST, MODE_HIGH_RATIO)] == list(sz.MODES)


def _arrays():
    """(name, array, dtype=) of every float type the modes code, from one normal sample."""
    f = (np.random.default_rng(11).standard_normal(50_000) * 3).astype(np.float32)
    out = [("bf16 uint16 view", bf16_randn(50_000, seed=11), "bf16"), ("fp16", f.astype(np.float16), None),
           ("fp32", f, None)]
    if ml_dtypes is not None:
        out += [("bf16 ml_dtypes", f.astype(ml_dtypes.bfloat16), None),
                ("fp8_e4m3 ml_dtypes", f.astype(ml_dtypes.float8_e4m3fn), None),
                ("fp8_e5m2 ml_dtypes", f.astype(ml_dtypes.float8_e5m2), None)]
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("name,x,dtype", _arrays(), ids=[a[0] for a in _arrays()])
def test_round_trip_every_float_type(name, x, dtype, mode, checksum):
    f = sz.compress(x, dtype=dtype, mode=mode, checksum=checksum)
    y = sz.decompress(f)
    assert y.shape == x.shape and (y.dtype == x.dtype or dtype == "bf16"), name  # a uint16 view comes back bf16
    assert np.array_equal(bits(y), bits(x)), name
    assert np.array_equal(bits(sz.decompress(bytes(f))), bits(x).reshape(-1)), name  # no metadata
    fp8_e4m3 = "e4m3" in name
    # fp8_e4m3 is coded in the high-ratio mode only; the others compress in both.
    assert f.is_raw == (fp8_e4m3 and mode == "fast"), name
    assert f.mode == ("high-ratio" if mode == "high-ratio" else "fast")
    assert f.checksum == checksum and f.header.checksum == checksum
    assert f.header.version == (2 if mode == "high-ratio" or checksum else 1)
    assert f.ratio == pytest.approx(x.nbytes / f.nbytes) and (f.is_raw or f.ratio > 1.05), name


@pytest.mark.parametrize("n", [0, 1, 7, 1023, 16_384, 16_385, 100_000])
def test_high_ratio_sizes(n):
    x = bf16_randn(n, seed=n)
    for book in (None, "adaptive", "default", sz.CodeTable.default()):
        f = sz.compress(x, book, dtype="bf16", mode="high-ratio")
        assert f.nbytes <= sz.max_compressed_size(x.nbytes)
        assert np.array_equal(sz.decompress(f).view(np.uint16), x), (n, book)


def test_high_ratio_on_real_kv(kv_calibration, kv_evaluation):
    """A frame per tensor of the evaluation fixture (24,576 elements each): each frame's own table beats the
    fast mode by a wide margin, and a table calibrated on the other fixture, pinned, comes close."""
    table = sz.CodeTable.calibrate(kv_calibration.values(), dtype="bf16")
    raw = 0
    sizes = {"fast": 0, "own": 0, "pinned": 0, "default": 0}
    for name, x in kv_evaluation.items():
        frames = {
            "fast": sz.compress(x, dtype="bf16"),
            "own": sz.compress(x, dtype="bf16", mode="high-ratio"),
            "pinned": sz.compress(x, table, dtype="bf16", mode="high-ratio"),
            "default": sz.compress(x, "default", dtype="bf16", mode="high-ratio"),
        }
        for k, f in frames.items():
            assert np.array_equal(sz.decompress(f).view(np.uint16), x), (name, k)
            assert k == "fast" or (f.mode == "high-ratio" and not f.is_raw), (name, k)
            sizes[k] += f.nbytes
        raw += x.nbytes
    ratio = {k: raw / v for k, v in sizes.items()}
    assert ratio["own"] >= 1.46, ratio
    assert ratio["pinned"] >= 1.44 and ratio["default"] >= 1.44, ratio
    assert ratio["fast"] < 1.36, ratio  # the gap is the high-ratio mode's reason to exist
    # The built-in table is the one learned on the calibration fixture.
    assert sz.CodeTable.default("bf16") == table


def test_none_is_each_frames_own_table_on_the_cpu():
    x = bf16_randn(40_000, seed=3)
    own = sz.compress(x, dtype="bf16", mode="high-ratio")
    assert own == sz.compress(x, "adaptive", dtype="bf16", mode="high-ratio")
    assert own == sz.compress(x, dtype="bf16", mode="high_ratio")  # Go's spellings of the mode
    pinned = sz.compress(x, sz.CodeTable.default(), dtype="bf16", mode="high-ratio")
    assert pinned == sz.compress(x, "default", dtype="bf16", mode="high-ratio")
    assert pinned == sz.compress(x, dtype="bf16", mode="high-ratio", table=sz.CodeTable.default())
    assert pinned.info().code_table == sz.CodeTable.default().lengths
    assert own.info().code_table != pinned.info().code_table


@pytest.mark.parametrize("mode", MODES)
def test_flipped_payload_byte_with_checksum(mode):
    x = bf16_randn(30_000, seed=5)
    f = sz.compress(x, dtype="bf16", mode=mode, checksum=True)
    for off in (sz.HEADER_SIZE, f.nbytes // 2, f.nbytes - 1):  # first, middle and last payload byte
        bad = bytearray(f.tobytes())
        bad[off] ^= 0x04
        with pytest.raises(sz.ChecksumError, match="checksum") as ei:
            sz.decompress(bytes(bad))
        assert ei.value.kind == "checksum"
        assert isinstance(ei.value, sz.CorruptFrameError) and isinstance(ei.value, ValueError)
        with pytest.raises(sz.ChecksumError):
            sz.inspect(bytes(bad))
        with pytest.raises(sz.ChecksumError):
            sz.decompress(bytes(bad), out=np.empty_like(x))
    assert np.array_equal(sz.decompress(f).view(np.uint16), x)
    # Without the checksum the same damage is not detected by a checksum.
    plain = bytearray(sz.compress(x, dtype="bf16", mode=mode).tobytes())
    plain[-1] ^= 0x04
    try:
        sz.decompress(bytes(plain))
    except sz.ChecksumError:  # pragma: no cover - the assertion below says what went wrong
        pytest.fail("a frame without a checksum raised ChecksumError")
    except sz.FrameError:
        pass


def test_frame_info_and_header_report_the_mode():
    x = bf16_randn(20_000, seed=6)
    fast, hr = sz.compress(x, dtype="bf16"), sz.compress(x, dtype="bf16", mode="high-ratio", checksum=True)
    fi, hi = fast.info(), hr.info()
    assert (fi.mode, fi.version, fi.checksum) == ("fast", 1, False)
    assert (hi.mode, hi.version, hi.checksum) == ("high-ratio", 2, True)
    assert len(fi.codebook) == 16 and fi.code_table == ()
    assert hi.codebook == () and len(hi.code_table) == 257 and hi.code_table[-1] > 0  # ESC has a code
    assert 2 < hi.exponent_bits < 4 and fi.exponent_bits == 4
    assert 0 < hi.chunk_stream_min <= hi.chunk_stream_max
    assert hi.ratio == pytest.approx(hr.ratio) and hi.frame_len == hr.nbytes
    assert hr.header.mode == "high-ratio" and hr.header.flags == 0b110 and not hr.header.raw
    assert "high-ratio" in repr(hr) and "checksum" in repr(hr) and "fast" in repr(fast)
    raw = sz.compress(np.arange(100, dtype=np.int32), mode="high-ratio")
    assert raw.is_raw and raw.header.raw and raw.mode == "fast"  # raw frames read "fast", as Go's Header.Mode


# code tables

# A code table as Go's codec.CodeTable.MarshalJSON writes it (lengths of exponents 0..255, then ESC's).
_LENGTHS = [0] * 256 + [5]
_LENGTHS[120:128] = [5, 5, 4, 3, 2, 2, 3, 4]
_GO_JSON = json.dumps(
    {"format": "splitzip-codetable", "version": 1, "dtype": "bf16", "lengths": _LENGTHS, "samples": 1234},
    separators=(",", ":"),
)


def test_code_table_json_is_gos(tmp_path):
    t = sz.CodeTable.from_json(_GO_JSON)
    assert t.to_json() == _GO_JSON  # byte for byte what Go writes
    assert (t.dtype, t.lengths, t.samples) == ("bf16", tuple(_LENGTHS), 1234)
    p = tmp_path / "t.json"
    t.save(p)
    assert p.read_text() == _GO_JSON + "\n"  # codec.CodeTable.Save
    assert sz.CodeTable.load(p) == t
    assert sz.CodeTable.from_json(_GO_JSON.encode()) == t
    # Frames carry the table's bytes (FORMAT.md's compact code table), as the GPU encoder copies them.
    x = bf16_randn(30_000, seed=7)
    f = sz.compress(x, t, dtype="bf16", mode="high-ratio")
    tb = t.to_bytes()
    assert tb[:2] == bytes([120, 127])  # the first and last exponent with a code
    assert f.tobytes()[sz.HEADER_SIZE : sz.HEADER_SIZE + len(tb)] == tb
    assert f.info().code_table == tuple(_LENGTHS)
    assert np.array_equal(sz.decompress(f).view(np.uint16), x)


def test_code_table_calibration(kv_calibration, tmp_path):
    xs = list(kv_calibration.values())[:6]
    t = sz.CodeTable.calibrate(xs, dtype="bf16")
    assert t.dtype == "bf16" and t.samples == sum(x.size for x in xs) and len(t.lengths) == 257
    assert t.lengths[-1] > 0 and max(t.lengths) <= 8  # ESC coded: exponents never seen still encode
    cal = sz.Calibrator("bf16")
    for x in xs:
        cal.add(x)
    assert cal.code_table() == t
    t.save(tmp_path / "kv.json")
    assert sz.CodeTable.load(tmp_path / "kv.json") == t
    # Exponents the samples never had go through ESC.
    odd = bf16_randn(10_000, seed=8, scale=1e-30)
    assert np.array_equal(sz.decompress(sz.compress(odd, t, dtype="bf16", mode="high-ratio")).view(np.uint16), odd)
    if ml_dtypes is not None:
        q = (np.random.default_rng(2).standard_normal(20_000) * 5).astype(ml_dtypes.float8_e4m3fn)
        tq = sz.CodeTable.calibrate(q)
        assert tq.dtype == "fp8_e4m3" and len(tq.lengths) == 17
        f = sz.compress(q, tq, mode="high-ratio")
        assert not f.is_raw and np.array_equal(bits(sz.decompress(f)), bits(q))
    assert "CodeTable(dtype=bf16" in repr(t)


def test_code_table_errors(tmp_path):
    x = bf16_randn(1000, seed=9)
    t = sz.CodeTable.default()
    with pytest.raises(ValueError, match="mode='high-ratio'"):
        sz.compress(x, t, dtype="bf16")
    with pytest.raises(ValueError, match="takes a CodeTable"):
        sz.compress(x, sz.Codebook.default(), dtype="bf16", mode="high-ratio")
    with pytest.raises(TypeError, match="not both"):
        sz.compress(x, t, dtype="bf16", mode="high-ratio", table=t)
    with pytest.raises(TypeError, match="table must be a CodeTable"):
        sz.compress(x, dtype="bf16", mode="high-ratio", table=sz.Codebook.default())
    with pytest.raises(ValueError, match="'fast', 'high-ratio'"):
        sz.compress(x, dtype="bf16", mode="slow")
    with pytest.raises(TypeError, match="mode must be"):
        sz.compress(x, dtype="bf16", mode=None)
    with pytest.raises(TypeError, match="CodeTable, 'default', 'adaptive' or None"):
        sz.compress(x, "table.json", dtype="bf16", mode="high-ratio")
    with pytest.raises(sz.CodebookError, match="fp32"):
        sz.compress(x, sz.CodeTable.default("fp32"), dtype="bf16", mode="high-ratio")
    with pytest.raises(sz.CodebookError, match="no built-in code table for fp16"):
        sz.CodeTable.default("fp16")
    with pytest.raises(sz.CodebookError, match="no built-in code table for fp16"):
        sz.compress(np.zeros(100, np.float16), "default", mode="high-ratio")
    with pytest.raises(sz.CodebookError):
        sz.CodeTable.default("int8")
    with pytest.raises(sz.CodebookError, match="not a splitzip code table"):
        sz.CodeTable.from_json('{"format": "splitzip-codebook", "version": 1}')
    no_esc = json.loads(_GO_JSON)
    no_esc["lengths"][-1] = 0  # valid lengths, but exponents outside 120..127 could not be coded
    with pytest.raises(sz.CodebookError, match="ESC"):
        sz.CodeTable.from_json(json.dumps(no_esc))
    with pytest.raises(sz.SplitZipIOError):
        sz.CodeTable.load(tmp_path / "missing.json")
    with pytest.raises(sz.CodebookError, match="no calibration data"):
        sz.Calibrator().code_table()
    # A table's dtype must be the data's; raw dtypes ignore it.
    ints = np.arange(1000, dtype=np.int16)
    assert np.array_equal(sz.decompress(sz.compress(ints, t, mode="high-ratio")), ints)


def test_threads_compress_both_modes_concurrently():
    from concurrent.futures import ThreadPoolExecutor

    xs = [bf16_randn(200_000, seed=s) for s in range(6)]

    def rt(i):
        x = xs[i]
        f = sz.compress(x, dtype="bf16", mode=MODES[i % 2], checksum=bool(i & 2))
        return np.array_equal(sz.decompress(f).view(np.uint16), x)

    with ThreadPoolExecutor(3) as ex:
        assert all(ex.map(rt, range(len(xs))))


def test_coding_is_the_one_reader_of_coding_arguments():
    from splitzip_connector._binding import CODEBOOK_ADAPTIVE, MODE_FAST, MODE_HIGH_RATIO
    from splitzip_connector.codebook import coding

    t, cb = sz.CodeTable.default(), sz.Codebook.default()
    assert coding(None, None, "fast") == (MODE_FAST, 0, None, False, False)
    assert coding(cb, None, "fast") == (MODE_FAST, cb.handle, None, False, False)
    assert coding("adaptive", None, "fast") == (MODE_FAST, CODEBOOK_ADAPTIVE, None, True, False)
    assert coding("adaptive", None, "fast", gpu=True) == (MODE_FAST, CODEBOOK_ADAPTIVE, None, True, False)
    assert coding(None, None, "high-ratio") == (MODE_HIGH_RATIO, CODEBOOK_ADAPTIVE, None, True, False)
    # On a GPU no table named is the built-in one (implicit: fp8, which has none, takes the tensor's own).
    assert coding(None, None, "high-ratio", gpu=True) == (MODE_HIGH_RATIO, 0, None, False, True)
    assert coding("adaptive", None, "high-ratio", gpu=True) == (MODE_HIGH_RATIO, CODEBOOK_ADAPTIVE, None, True, False)
    assert coding(None, t, "high-ratio") == coding(t, None, "high-ratio") == (MODE_HIGH_RATIO, t.handle, t, False, False)


def test_table_from_counts_is_the_calibrated_table(kv_evaluation):
    """The GPU path's "adaptive" table: exponents counted elsewhere (here numpy, as torch.bincount does on a
    GPU) give the table CodeTable.calibrate learns from the tensor itself."""
    for name, x in list(kv_evaluation.items())[:4]:
        counts = np.bincount(((x.reshape(-1) >> 7) & 0xFF).astype(np.uint8), minlength=256)
        assert sz.CodeTable.bytes_from_counts(counts) == sz.CodeTable.calibrate(x, dtype="bf16").to_bytes(), name
    with pytest.raises(sz.CodebookError, match="empty"):
        sz.CodeTable.bytes_from_counts(np.zeros(256, np.int64))
    with pytest.raises(sz.SplitZipError, match="256"):
        sz.CodeTable.bytes_from_counts(np.ones(16, np.int64))


def test_codebook_from_counts_is_the_adaptive_codebook(kv_evaluation):
    """The GPU path's fast-mode "adaptive" codebook: exponents counted elsewhere give the codebook the adaptive
    CPU encoder calibrates, so the frames are the same bytes."""
    for name, x in list(kv_evaluation.items())[:4]:
        counts = np.bincount(((x.reshape(-1) >> 7) & 0xFF).astype(np.uint8), minlength=256)
        cb = sz.Codebook.from_counts(counts)
        assert cb == sz.Codebook.calibrate(x, dtype="bf16"), name
        assert sz.compress(x, cb, dtype="bf16") == sz.compress(x, "adaptive", dtype="bf16"), name
    with pytest.raises(sz.CodebookError, match="empty"):
        sz.Codebook.from_counts(np.zeros(256, np.int64))


def test_gpu_entry_points_without_a_gpu():
    """The binding's high-ratio GPU functions exist with the arguments cuda.py passes; here they fail cleanly."""
    from splitzip_connector._binding import ext

    if sz.cuda_available():
        pytest.skip("GPU present: test_cuda.py runs them")
    assert ext.pybind_CUDAHighRatioWorkspaceSize(1 << 20) > 0
    with pytest.raises(RuntimeError, match=r"^\[(no_driver|cuda)\]"):
        ext.pybind_CUDAEncodeHighRatio(0, 0, 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000)
    with pytest.raises(RuntimeError, match=r"^\[(no_driver|cuda)\]"):
        ext.pybind_CUDADecodeHighRatio(0, 0, 0x1000, 100, 0x2000, 16, 0x3000)
