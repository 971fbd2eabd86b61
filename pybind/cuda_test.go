package pybind

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/splitzip/splitzip/codec"
	"github.com/splitzip/splitzip/kernels"
)

// gpuHighRatioDTypes are the dtypes the GPU high-ratio kernels code.
var gpuHighRatioDTypes = []codec.DType{codec.BF16, codec.FP8E4M3, codec.FP8E5M2}

// TestCUDAHighRatioDTypeRefusesOtherDTypes: the dtype-taking GPU functions refuse every dtype the high-ratio
// kernels do not code, and unknown dtype codes, with a dtype error, before loading anything (so the same on a
// machine with or without a GPU).
func TestCUDAHighRatioDTypeRefusesOtherDTypes(t *testing.T) {
	bad := []int{0, -1, 99, 256}
	for dt := codec.DType(1); dt.Valid(); dt++ {
		if dt != codec.BF16 && dt != codec.FP8E4M3 && dt != codec.FP8E5M2 {
			bad = append(bad, int(dt))
		}
	}
	require.Contains(t, bad, int(codec.FP16))
	for _, code := range bad {
		_, err := CUDAHighRatioDTypeWorkspaceSize(code, 1<<20)
		assert.ErrorIs(t, err, codec.ErrDType, code)
		assert.Equal(t, KindDType, kindPrefix(t, err), code)
		_, err = CUDAEncodeHighRatioDType(0, 0, code, 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000)
		assert.ErrorIs(t, err, codec.ErrDType, code)
		assert.Equal(t, KindDType, kindPrefix(t, err), code)
		_, err = CUDADecodeHighRatioDType(0, 0, code, 0x1000, 100, 0x2000, 16, 0x3000)
		assert.ErrorIs(t, err, codec.ErrDType, code)
		assert.Equal(t, KindDType, kindPrefix(t, err), code)
	}
	_, err := CUDAEncodeHighRatioDType(0, 0, int(codec.FP16), 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000)
	assert.ErrorContains(t, err, "bf16, fp8_e4m3 and fp8_e5m2, not fp16")
}

// TestCUDAHighRatioDTypeWorkspaceSize: the workspace is the kernels' for the dtype (bf16's is what
// CUDAHighRatioWorkspaceSize gives), and a byte of fp8 is an element: twice bf16's chunks for the same bytes.
func TestCUDAHighRatioDTypeWorkspaceSize(t *testing.T) {
	for _, dt := range gpuHighRatioDTypes {
		for _, n := range []int{0, 1, 16, 1 << 14, 1<<14 + 1, 1 << 20, 1 << 26} {
			got, err := CUDAHighRatioDTypeWorkspaceSize(int(dt), n)
			require.NoError(t, err)
			assert.Equal(t, kernels.HighRatioDTypeWorkspaceSize(dt, n), got, "%s %d", dt, n)
			assert.Positive(t, got)
		}
	}
	bf16, err := CUDAHighRatioDTypeWorkspaceSize(int(codec.BF16), 1<<26)
	require.NoError(t, err)
	assert.Equal(t, CUDAHighRatioWorkspaceSize(1<<26), bf16)
	e4m3, err := CUDAHighRatioDTypeWorkspaceSize(int(codec.FP8E4M3), 1<<26)
	require.NoError(t, err)
	assert.Greater(t, e4m3, bf16)
}

// TestCUDAHighRatioDTypeWithoutDriver: dtypes the kernels code get past the dtype check and fail on the
// missing driver.
func TestCUDAHighRatioDTypeWithoutDriver(t *testing.T) {
	if n, err := CUDADeviceCount(); err == nil && n > 0 {
		t.Skip("a GPU is present; the GPU paths are tested from Python (tests/python, -m cuda)")
	}
	for _, dt := range gpuHighRatioDTypes {
		_, err := CUDAEncodeHighRatioDType(0, 0, int(dt), 0x1000, 16, 0x5000, 3, 0x2000, 0x3000, 0x4000)
		assert.Contains(t, []string{KindNoDriver, KindCUDA}, kindPrefix(t, err), dt)
		_, err = CUDADecodeHighRatioDType(0, 0, int(dt), 0x1000, 100, 0x2000, 16, 0x3000)
		assert.Contains(t, []string{KindNoDriver, KindCUDA}, kindPrefix(t, err), dt)
	}
}
