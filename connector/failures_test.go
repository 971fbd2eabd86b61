package connector

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/splitzip/splitzip/connector/transport"
	szn "github.com/splitzip/splitzip/nats"
	"github.com/stretchr/testify/require"
)

func TestKindOf(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("handoff abc: %w", err) }
	cases := map[error]FailureKind{
		wrap(transport.ErrChecksum):                 FailCorrupt,
		wrap(ErrFrame):                              FailCorrupt,
		wrap(fmt.Errorf("%w: layout", ErrMismatch)): FailMismatch,
		wrap(szn.ErrHandoffExpired):                 FailExpired,
		wrap(transport.ErrExpired):                  FailExpired,
		wrap(szn.ErrHandoffReleased):                FailReleased,
		wrap(fmt.Errorf("%w: %w", szn.ErrServerRestarted, szn.ErrUnknownHandoff)): FailControlPlane,
		wrap(szn.ErrTimeout):           FailControlPlane,
		wrap(szn.ErrUnknownHandoff):    FailUnknown,
		wrap(transport.ErrUnreachable): FailProducer,
		wrap(transport.ErrPeerClosed):  FailProducer,
		wrap(context.DeadlineExceeded): FailTimeout,
		wrap(ErrClosed):                FailClosed,
		wrap(ErrAccess):                FailAccess,
		errors.New("something else"):   FailOther,
	}
	for err, want := range cases {
		require.Equal(t, want, KindOf(err), "%v", err)
	}
	var counts FailureCounts
	counts[FailCorrupt] += 2
	require.Equal(t, map[string]int64{"corrupt": 2}, counts.Map())
}
