"""Round trips and errors on numpy arrays: the real KV fixture and random data."""

from __future__ import annotations

import numpy as np
import pytest

import splitzip_connector as sz
from conftest import bf16_randn

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None


def test_real_kv_round_trip_bit_exact(kv_evaluation):
    raw = comp = 0
    for name, x in kv_evaluation.items():
        f = sz.compress(x, dtype="bf16")
        assert f.dtype == "bf16" and f.elements == x.size
        y = sz.decompress(f)
        assert y.shape == x.shape, name
        assert np.array_equal(y.view(np.uint16), x), name
        raw, comp = raw + x.nbytes, comp + f.nbytes
    assert raw / comp > 1.30  # real KV compresses by about a third with the built-in codebook


def test_calibrated_codebook_on_real_kv(kv_calibration, kv_evaluation):
    cb = sz.Codebook.calibrate(kv_calibration.values(), dtype="bf16")
    assert cb.dtype == "bf16" and cb.bits == 4 and len(cb.exponents) == 16
    assert cb.coverage > 0.99 and cb.samples == sum(x.size for x in kv_calibration.values())
    raw = comp = 0
    for x in kv_evaluation.values():
        f = sz.compress(x, cb, dtype="bf16")
        assert tuple(f.info().codebook) == cb.exponents
        assert np.array_equal(sz.decompress(f, out=np.empty_like(x)), x)
        raw, comp = raw + x.nbytes, comp + f.nbytes
    assert raw / comp > 1.30


@pytest.mark.parametrize("n", [0, 1, 2, 7, 4095, 4096, 4097, 100_000, 1 << 20])
def test_bf16_sizes(n):
    x = bf16_randn(n, seed=n)
    f = sz.compress(x, dtype="bf16")
    assert f.nbytes <= sz.max_compressed_size(x.nbytes)
    y = sz.decompress(f)
    assert y.shape == (n,)
    assert np.array_equal(y.view(np.uint16), x)
    assert np.array_equal(sz.decompress(bytes(f)).view(np.uint16), x)  # from plain bytes, no metadata


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes not installed")
def test_ml_dtypes_bfloat16():
    x = bf16_randn(10_000, seed=1).view(ml_dtypes.bfloat16).reshape(100, 100)
    f = sz.compress(x)
    y = sz.decompress(f)
    assert y.dtype == ml_dtypes.bfloat16 and y.shape == (100, 100)
    assert np.array_equal(y.view(np.uint16), x.view(np.uint16))
    assert f == sz.compress(x.view(np.uint16), dtype="bf16")  # same bytes either way


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64]
)
def test_every_numpy_dtype(dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((33, 17)) * 100).astype(dtype)
    f = sz.compress(x)
    y = sz.decompress(f)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.array_equal(y.view(np.uint8), x.view(np.uint8))


def test_special_values_survive():
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-45, 3.4e38], np.float32)
    x = np.concatenate([specials, np.random.default_rng(0).standard_normal(5000).astype(np.float32)])
    y = sz.decompress(sz.compress(x))
    assert np.array_equal(y.view(np.uint32), x.view(np.uint32))


def test_adaptive_codebook_and_raw_fallback():
    x = bf16_randn(50_000, seed=4, scale=1e-20)  # exponents far from the default codebook's
    default, adaptive = sz.compress(x, dtype="bf16"), sz.compress(x, "adaptive", dtype="bf16")
    assert default.is_raw and not adaptive.is_raw
    assert adaptive.nbytes < default.nbytes
    for f in (default, adaptive):
        assert np.array_equal(sz.decompress(f).view(np.uint16), x)


def test_out_buffers_are_used_in_place():
    x = bf16_randn(8192, seed=5)
    buf = np.zeros(sz.max_compressed_size(x.nbytes), np.uint8)
    f = sz.compress(x, dtype="bf16", out=buf)
    assert np.shares_memory(f.data, buf)
    ba = bytearray(sz.max_compressed_size(x.nbytes))
    f2 = sz.compress(x, dtype="bf16", out=ba)
    assert bytes(f2) == bytes(f)
    out = np.empty(8192, np.uint16)
    assert sz.decompress(f, out=out) is out and np.array_equal(out, x)


def test_frames_back_to_back_and_inspect():
    xs = [bf16_randn(n, seed=n) for n in (100, 5000, 1)]
    blob = b"".join(bytes(sz.compress(x, dtype="bf16")) for x in xs)
    frames = list(sz.split_frames(blob))
    assert len(frames) == 3
    for f, x in zip(frames, xs):
        assert np.array_equal(sz.decompress(f).view(np.uint16), x)
    info = sz.inspect(frames[1])
    assert info.dtype == "bf16" and info.elements == 5000 and info.frame_len == frames[1].nbytes
    assert info.raw_len == 10_000 and info.ratio == pytest.approx(10_000 / info.frame_len)
    with pytest.raises(sz.TruncatedFrameError):
        list(sz.split_frames(blob[:-1]))


def test_frame_object():
    x = bf16_randn(3000, seed=6)
    f = sz.compress(x, dtype="bf16")
    assert len(f) == f.nbytes == len(bytes(f)) and f.raw_len == 6000
    assert "bf16" in repr(f) and f.validate() is f
    g = sz.Frame(bytes(f))
    assert g == f and g.shape is None
    assert memoryview(f.data).nbytes == f.nbytes


# errors: each says what to fix


def test_uint16_without_dtype_says_how():
    with pytest.raises(sz.DTypeError, match="dtype='bf16'"):
        sz.compress(np.zeros(4, np.uint16))


def test_wrong_size_dtype():
    with pytest.raises(sz.DTypeError, match="same element size"):
        sz.compress(np.zeros(4, np.float32), dtype="bf16")
    with pytest.raises(TypeError):  # DTypeError is a TypeError
        sz.compress(np.zeros(4, np.complex64))


def test_non_contiguous():
    x = bf16_randn(100).reshape(10, 10)
    with pytest.raises(sz.LayoutError, match="ascontiguousarray"):
        sz.compress(x.T, dtype="bf16")


def test_big_endian():
    with pytest.raises(sz.LayoutError, match="big-endian"):
        sz.compress(np.zeros(4, ">f4"))


def test_corrupt_frames():
    x = bf16_randn(10_000, seed=7)
    good = bytearray(sz.compress(x, dtype="bf16").tobytes())
    bad = bytearray(good)
    bad[0] ^= 0xFF
    with pytest.raises(sz.NotAFrameError, match="not a SplitZip frame"):
        sz.decompress(bytes(bad))
    bad = bytearray(good)
    bad[12] ^= 0x01  # element count: the header checksum catches it
    with pytest.raises(sz.CorruptFrameError, match="checksum"):
        sz.decompress(bytes(bad))
    with pytest.raises(sz.TruncatedFrameError, match="whole frame"):
        sz.decompress(bytes(good[:-1]))
    with pytest.raises(sz.TruncatedFrameError):
        sz.decompress(bytes(good[:10]))
    with pytest.raises(sz.FrameError):  # all of them are FrameErrors, and ValueErrors
        sz.decompress(b"\0" * 100)
    with pytest.raises(ValueError):
        sz.decompress(b"\0" * 100)


def test_out_mismatch():
    x = bf16_randn(1000, seed=8)
    f = sz.compress(x, dtype="bf16")
    with pytest.raises(sz.BufferSizeError, match="decodes to 2000"):
        sz.decompress(f, out=np.empty(999, np.uint16))
    with pytest.raises(sz.DTypeError, match="uint16 for bf16"):
        sz.decompress(f, out=np.empty(500, np.float32))
    ro = np.empty(1000, np.uint16)
    ro.flags.writeable = False
    with pytest.raises(sz.LayoutError, match="read-only"):
        sz.decompress(f, out=ro)
    with pytest.raises(sz.BufferSizeError, match="max_compressed_size"):
        sz.compress(x, dtype="bf16", out=np.empty(100, np.uint8))
    with pytest.raises(sz.BufferSizeError):
        sz.decompress(f, shape=(3, 7))


def test_codebook_file_round_trip(tmp_path, kv_calibration):
    cb = sz.Codebook.calibrate(list(kv_calibration.values())[:4], dtype="bf16")
    p = tmp_path / "kv.json"
    cb.save(p)
    assert sz.Codebook.load(p) == cb
    assert sz.Codebook.from_json(cb.to_json()) == cb
    assert sz.Codebook.default("bf16").bits == 4
    with pytest.raises(sz.SplitZipIOError):
        sz.Codebook.load(tmp_path / "missing.json")
    with pytest.raises(sz.CodebookError):
        sz.Codebook.from_json('{"format": "splitzip-codebook", "version": 1, "dtype": "bf16", "bits": 4, "exponents": [999]}')
    with pytest.raises(sz.CodebookError, match="bf16"):
        sz.compress(np.zeros(10, np.float32), cb)


def test_calibrator_incremental_and_threads():
    from concurrent.futures import ThreadPoolExecutor

    cal = sz.Calibrator("bf16")
    chunks = [bf16_randn(20_000, seed=s) for s in range(8)]
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(cal.add, chunks))
    cb = cal.codebook()
    assert cal.coverage(cb) > 0.99
    with pytest.raises(sz.CodebookError, match="no calibration data"):
        sz.Calibrator().codebook()


def test_threads_compress_concurrently():
    from concurrent.futures import ThreadPoolExecutor

    xs = [bf16_randn(300_000, seed=s) for s in range(6)]

    def rt(x):
        return np.array_equal(sz.decompress(sz.compress(x, dtype="bf16")).view(np.uint16), x)

    with ThreadPoolExecutor(3) as ex:
        assert all(ex.map(rt, xs))


def test_cuda_absent_is_clean():
    if sz.cuda_available():
        pytest.skip("GPU present")
    assert sz.cuda_available() is False


def test_parse_header_reads_what_the_go_core_reports():
    from splitzip_connector._binding import FORMAT_VERSION
    from splitzip_connector.dtypes import BF16, INT16, dtype_code

    for x, dtype, book in ((bf16_randn(5000, seed=3), "bf16", None), (np.arange(300, dtype=np.int16), None, None),
                           (bf16_randn(5000, seed=4, scale=1e-30), "bf16", "adaptive")):
        f = sz.compress(x, book, dtype=dtype)
        h = sz.frame.parse_header(bytes(f))
        info = f.info()
        assert h == f.header
        # Fast-mode frames use nothing of format 2, so they are written as version 1.
        assert h.magic == bytes(f)[:4] and h.version == 1 and FORMAT_VERSION == 2
        assert h.code == dtype_code(info.dtype) == (BF16 if dtype else INT16)
        assert (h.elements, h.escapes, bool(h.flags & 1)) == (x.size, info.escapes, info.raw)
        assert f.is_raw == info.raw
        if not info.raw:
            assert h.code_bits == info.code_bits
    with pytest.raises(sz.TruncatedFrameError, match="a header alone is 64"):
        sz.frame.parse_header(b"SZ" * 10)


def test_codebook_handle_is_the_one_reader_of_codebook_arguments():
    from splitzip_connector._binding import CODEBOOK_ADAPTIVE, _pybind
    from splitzip_connector.codebook import codebook_handle

    book = sz.Codebook.default()
    assert CODEBOOK_ADAPTIVE == _pybind.CodebookAdaptive == -1
    assert codebook_handle(None) == codebook_handle("default") == 0
    assert codebook_handle(book) == book.handle > 0
    assert codebook_handle("adaptive") == CODEBOOK_ADAPTIVE
    with pytest.raises(ValueError, match="GPU compress takes a calibrated Codebook"):
        codebook_handle("adaptive", refuse_adaptive="GPU compress")
    for bad in ("book.json", 3, np.zeros(2)):
        with pytest.raises(TypeError, match="codebook must be a Codebook, 'default', 'adaptive' or None"):
            codebook_handle(bad)
        with pytest.raises(TypeError, match="codebook must be"):
            sz.compress(bf16_randn(10), bad, dtype="bf16")
    with pytest.raises(TypeError, match="'default' or None, not"):
        codebook_handle(3, refuse_adaptive="GPU compress")
