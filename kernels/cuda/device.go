package cuda

/*
#include "driver.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Device is a CUDA device ordinal.
type Device int

// DeviceAttribute is a CUdevice_attribute.
type DeviceAttribute int32

// Device attributes (values from cuda.h).
const (
	AttrMaxThreadsPerBlock           DeviceAttribute = 1
	AttrWarpSize                     DeviceAttribute = 10
	AttrClockRate                    DeviceAttribute = 13
	AttrMultiprocessorCount          DeviceAttribute = 16
	AttrPCIBusID                     DeviceAttribute = 33
	AttrMemoryClockRate              DeviceAttribute = 36
	AttrGlobalMemoryBusWidth         DeviceAttribute = 37
	AttrL2CacheSize                  DeviceAttribute = 38
	AttrMaxThreadsPerMultiprocessor  DeviceAttribute = 39
	AttrUnifiedAddressing            DeviceAttribute = 41
	AttrComputeCapabilityMajor       DeviceAttribute = 75
	AttrComputeCapabilityMinor       DeviceAttribute = 76
	AttrMaxSharedMemoryPerMultiproc  DeviceAttribute = 81
	AttrMaxSharedMemoryPerBlockOptin DeviceAttribute = 97
)

// DeviceCount returns the number of CUDA devices.
func DeviceCount() (int, error) {
	if err := Init(); err != nil {
		return 0, err
	}
	var n C.int
	if err := check(Result(C.sz_int_out(drv.cuDeviceGetCount, &n))); err != nil {
		return 0, err
	}
	return int(n), nil
}

// GetDevice returns the device with the given ordinal.
func GetDevice(ordinal int) (Device, error) {
	if err := Init(); err != nil {
		return 0, err
	}
	var d C.CUdevice
	if err := check(Result(C.sz_cuDeviceGet(drv.cuDeviceGet, &d, C.int(ordinal)))); err != nil {
		return 0, fmt.Errorf("cuda: device %d: %w", ordinal, err)
	}
	return Device(d), nil
}

// Name returns the device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
func (d Device) Name() (string, error) {
	if err := Init(); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	if err := check(Result(C.sz_cuDeviceGetName(drv.cuDeviceGetName, (*C.char)(unsafe.Pointer(&buf[0])), C.int(len(buf)), C.CUdevice(d)))); err != nil {
		return "", err
	}
	return trimNUL(buf), nil
}

// Attribute returns one device attribute.
func (d Device) Attribute(a DeviceAttribute) (int, error) {
	if err := Init(); err != nil {
		return 0, err
	}
	var v C.int
	if err := check(Result(C.sz_cuDeviceGetAttribute(drv.cuDeviceGetAttribute, &v, C.int(a), C.CUdevice(d)))); err != nil {
		return 0, err
	}
	return int(v), nil
}

// ComputeCapability returns the device's major and minor compute capability.
func (d Device) ComputeCapability() (major, minor int, err error) {
	if major, err = d.Attribute(AttrComputeCapabilityMajor); err != nil {
		return 0, 0, err
	}
	minor, err = d.Attribute(AttrComputeCapabilityMinor)
	return major, minor, err
}

// TotalMem returns the device's memory in bytes.
func (d Device) TotalMem() (uint64, error) {
	if err := Init(); err != nil {
		return 0, err
	}
	var v C.size_t
	if err := check(Result(C.sz_cuDeviceTotalMem(drv.cuDeviceTotalMem, &v, C.CUdevice(d)))); err != nil {
		return 0, err
	}
	return uint64(v), nil
}
