package pybind

import (
	"context"
	"encoding/json"

	szn "github.com/splitzip/splitzip/nats"
)

// The engine registry of the control plane (nats.Plane.RegisterEngine, Engines), for engines that announce
// themselves at start-up and check their peers (python/splitzip_connector/handoff.py: ControlPlane.register_engine
// and engines). Records are nats.Engine as JSON.

var registrations = newHandles[func(context.Context) error]("engine registration")

// PlaneRegisterEngine puts engineJSON (a nats.Engine: id, role, addr, tp_size, layout, dtype, meta) in the
// registry of plane h and keeps it alive with heartbeats until PlaneDeregisterEngine or PlaneClose; it returns
// the registration's handle.
func PlaneRegisterEngine(h int, engineJSON string) (r int, err error) {
	defer recoverInto(&err)
	p, err := planes.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	var e szn.Engine
	if err := decodeJSON(engineJSON, &e); err != nil {
		return 0, wrap(err)
	}
	dereg, err := p.RegisterEngine(context.Background(), e)
	if err != nil {
		return 0, wrap(err)
	}
	return registrations.put(dereg), nil
}

// PlaneDeregisterEngine removes the registration r from the registry.
func PlaneDeregisterEngine(r int) (n int, err error) {
	defer recoverInto(&err)
	dereg, err := registrations.get(r)
	if err != nil {
		return 0, wrap(err)
	}
	if err := registrations.release(r); err != nil {
		return 0, wrap(err)
	}
	return 0, wrap(dereg(context.Background()))
}

// PlaneEngines lists the engines registered on plane h (live heartbeats only) as a JSON array of nats.Engine,
// sorted by id.
func PlaneEngines(h int) (js string, err error) {
	defer recoverInto(&err)
	p, err := planes.get(h)
	if err != nil {
		return "", wrap(err)
	}
	es, err := p.Engines(context.Background())
	if err != nil {
		return "", wrap(err)
	}
	if es == nil {
		es = []szn.Engine{}
	}
	b, err := json.Marshal(es)
	if err != nil {
		return "", wrap(err)
	}
	return string(b), nil
}
