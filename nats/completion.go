package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	natsgo "github.com/nats-io/nats.go"
)

// AllRanks subscribes to the completions of every rank of an engine.
const AllRanks = -1

// Completion is the notice a consumer sends its producer when it finished
// (or gave up) fetching one rank's payload of a handoff, so the producer can
// free it.
type Completion struct {
	// V is the protocol version; NotifyDone sets it.
	V int `json:"v"`
	// HandoffID is the handoff the notice is about.
	HandoffID string `json:"handoff_id"`
	// ConsumerEngineID identifies the sender. Optional.
	ConsumerEngineID string `json:"consumer,omitempty"`
	// Rank is the tensor-parallel rank whose payload was fetched.
	Rank int `json:"rank"`
	// OK is true if the payload arrived and verified.
	OK bool `json:"ok"`
	// Err explains a failure when OK is false.
	Err string `json:"error,omitempty"`
}

// Ack codes of a completion reply.
const (
	ackRejected            = "rejected"
	ackIncompatibleVersion = "incompatible_version"
	ackInvalid             = "invalid"
)

// completionAck is the producer's reply to a Completion.
type completionAck struct {
	V    int    `json:"v"`
	OK   bool   `json:"ok"`
	Code string `json:"code,omitempty"`
	Err  string `json:"error,omitempty"`
}

// completionSubject is where completions for rank of engine go:
// splitzip.<namespace>.engine.<engine id>.done.<rank>. The protocol version is
// in the payload, not the subject, so that a peer speaking another version
// gets a clear ErrIncompatibleVersion instead of "no responders".
func (p *Plane) completionSubject(engineID string, rank int) string {
	r := "*"
	if rank != AllRanks {
		r = fmt.Sprint(rank)
	}
	return "splitzip." + p.opts.Namespace + ".engine." + engineID + ".done." + r
}

func (c *Completion) validate() error {
	if err := ValidHandoffID(c.HandoffID); err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	if c.Rank < 0 {
		return fmt.Errorf("%w: completion for %s: negative rank %d", ErrInvalidRecord, c.HandoffID, c.Rank)
	}
	if c.ConsumerEngineID != "" {
		if err := ValidEngineID(c.ConsumerEngineID); err != nil {
			return fmt.Errorf("completion: consumer: %w", err)
		}
	}
	return nil
}

// NotifyDone sends c to the producer engine and waits for its
// acknowledgement, so a nil error means the producer's handler accepted it.
// Errors wrap ErrUnknownEngine (no subscriber for that engine and rank),
// ErrCompletionRejected (the handler returned an error),
// ErrIncompatibleVersion (the producer speaks another protocol version),
// ErrInvalidRecord, or a connection sentinel (ErrTimeout, ErrDisconnected,
// ErrClosed).
func (p *Plane) NotifyDone(ctx context.Context, producerEngineID string, c Completion) error {
	if err := p.checkOpen(); err != nil {
		return err
	}
	if err := ValidEngineID(producerEngineID); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownEngine, err)
	}
	c.V = ProtocolVersion
	if err := c.validate(); err != nil {
		return err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("%w: encoding completion: %v", ErrInvalidRecord, err)
	}
	ctx, cancel := p.opCtx(ctx)
	defer cancel()
	subj := p.completionSubject(producerEngineID, c.Rank)
	msg, err := p.nc.RequestWithContext(ctx, subj, data)
	if err != nil {
		if errors.Is(err, natsgo.ErrNoResponders) {
			return fmt.Errorf("%w: no completion subscriber for engine %s rank %d: %w",
				ErrUnknownEngine, producerEngineID, c.Rank, err)
		}
		return p.wrap(fmt.Sprintf("notifying engine %s of handoff %s", producerEngineID, c.HandoffID), err)
	}
	var ack completionAck
	if err := decode("completion ack from "+producerEngineID, msg.Data, &ack); err != nil {
		return err
	}
	if ack.OK {
		return nil
	}
	switch ack.Code {
	case ackIncompatibleVersion:
		return fmt.Errorf("%w: engine %s refused the completion: %s", ErrIncompatibleVersion, producerEngineID, ack.Err)
	case ackInvalid:
		return fmt.Errorf("%w: engine %s refused the completion: %s", ErrInvalidRecord, producerEngineID, ack.Err)
	}
	return fmt.Errorf("%w: engine %s, handoff %s: %s", ErrCompletionRejected, producerEngineID, c.HandoffID, ack.Err)
}

// SubscribeCompletions calls handler for each completion sent to engineID
// for rank (AllRanks for every rank) and replies with an acknowledgement:
// accepted if handler returns nil, rejected with its message otherwise.
// Notices of an incompatible protocol version or malformed ones are answered
// with a refusal and not passed to handler. Handlers run one at a time on a
// goroutine of the subscription. unsubscribe stops delivery (the server knows
// when it returns); Close does too.
func (p *Plane) SubscribeCompletions(engineID string, rank int, handler func(Completion) error) (unsubscribe func() error, err error) {
	if err := p.checkOpen(); err != nil {
		return nil, err
	}
	if err := ValidEngineID(engineID); err != nil {
		return nil, err
	}
	if rank < AllRanks {
		return nil, fmt.Errorf("%w: rank %d", ErrInvalidOption, rank)
	}
	if handler == nil {
		return nil, fmt.Errorf("%w: nil completion handler", ErrInvalidOption)
	}
	sub, err := p.nc.Subscribe(p.completionSubject(engineID, rank), func(m *natsgo.Msg) {
		ack := completionAck{V: ProtocolVersion, OK: true}
		var c Completion
		if err := decode("completion", m.Data, &c); err != nil {
			ack.OK, ack.Err = false, err.Error()
			ack.Code = ackInvalid
			if errors.Is(err, ErrIncompatibleVersion) {
				ack.Code = ackIncompatibleVersion
			}
		} else if err := c.validate(); err != nil {
			ack.OK, ack.Code, ack.Err = false, ackInvalid, err.Error()
		} else if err := handler(c); err != nil {
			ack.OK, ack.Code, ack.Err = false, ackRejected, err.Error()
		}
		if m.Reply == "" {
			return
		}
		data, _ := json.Marshal(ack)
		_ = m.Respond(data)
	})
	if err != nil {
		return nil, p.wrap("subscribing to completions of "+engineID, err)
	}
	// Make sure the server knows the subscription before returning, so a
	// notice sent right after is delivered.
	if err := p.nc.FlushTimeout(p.opts.Timeout); err != nil {
		_ = sub.Unsubscribe()
		return nil, p.wrap("subscribing to completions of "+engineID, err)
	}
	return func() error {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, natsgo.ErrBadSubscription) &&
			!errors.Is(err, natsgo.ErrConnectionClosed) {
			return p.wrap("unsubscribing completions of "+engineID, err)
		}
		// Once the server processed the UNSUB, senders get "no responders"
		// (ErrUnknownEngine) instead of a timeout.
		if p.checkOpen() == nil && p.nc.IsConnected() {
			_ = p.nc.FlushTimeout(p.opts.Timeout)
		}
		return nil
	}, nil
}
