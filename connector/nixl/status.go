package nixl

import "fmt"

// Status is a nixl_capi_status_t returned by the C API. It implements error; its names come from a built-in
// table, so they work before (or without) the library.
type Status int32

// The statuses of NIXL's C API (wrapper.h). 1.x libraries report most failures as StatusBackend; newer ones
// name the cause.
const (
	StatusSuccess          Status = 0
	StatusInProgress       Status = 1
	StatusInvalidParam     Status = -1
	StatusBackend          Status = -2
	StatusInvalidState     Status = -3
	StatusException        Status = -4
	StatusNoTelemetry      Status = -5
	StatusNotFound         Status = -6
	StatusNotPosted        Status = -7
	StatusMismatch         Status = -8
	StatusNotAllowed       Status = -9
	StatusRepostActive     Status = -10
	StatusUnknown          Status = -11
	StatusNotSupported     Status = -12
	StatusRemoteDisconnect Status = -13
	StatusCanceled         Status = -14
)

var statusNames = map[Status]string{
	StatusSuccess:          "NIXL_CAPI_SUCCESS",
	StatusInProgress:       "NIXL_CAPI_IN_PROG",
	StatusInvalidParam:     "NIXL_CAPI_ERROR_INVALID_PARAM",
	StatusBackend:          "NIXL_CAPI_ERROR_BACKEND",
	StatusInvalidState:     "NIXL_CAPI_ERROR_INVALID_STATE",
	StatusException:        "NIXL_CAPI_ERROR_EXCEPTION",
	StatusNoTelemetry:      "NIXL_CAPI_ERROR_NO_TELEMETRY",
	StatusNotFound:         "NIXL_CAPI_ERROR_NOT_FOUND",
	StatusNotPosted:        "NIXL_CAPI_ERROR_NOT_POSTED",
	StatusMismatch:         "NIXL_CAPI_ERROR_MISMATCH",
	StatusNotAllowed:       "NIXL_CAPI_ERROR_NOT_ALLOWED",
	StatusRepostActive:     "NIXL_CAPI_ERROR_REPOST_ACTIVE",
	StatusUnknown:          "NIXL_CAPI_ERROR_UNKNOWN",
	StatusNotSupported:     "NIXL_CAPI_ERROR_NOT_SUPPORTED",
	StatusRemoteDisconnect: "NIXL_CAPI_ERROR_REMOTE_DISCONNECT",
	StatusCanceled:         "NIXL_CAPI_ERROR_CANCELED",
}

// String names the status, e.g. "NIXL_CAPI_ERROR_BACKEND".
func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("nixl_capi_status(%d)", int32(s))
}

// Error implements error.
func (s Status) Error() string { return "nixl: " + s.String() }
