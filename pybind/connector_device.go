package pybind

import "github.com/splitzip/splitzip/connector"

// The connector's GPU path: KV caches in device memory (torch CUDA tensors), encoded by the CUDA kernels on
// the connector's own stream after the engine's stream reaches the layer (SaveLayerAfter).

// ProducerRegisterDeviceCache registers the rank's KV cache in the memory of GPU ordinal: a layout (JSON) and
// one device address per layer's K region (comma-separated; torch's data_ptr()). bf16 only. The tensors must
// stay allocated until the producer is closed or re-registered.
func ProducerRegisterDeviceCache(h int, layoutJSON string, ordinal int, bases string) (n int, err error) {
	defer recoverInto(&err)
	return register(producers, h, layoutJSON, bases, func(p *connector.Producer, l connector.Layout, b []uintptr) error {
		return p.RegisterDeviceCache(l, ordinal, b)
	})
}

// ProducerSaveLayerAfter queues layer of reqID like ProducerSaveLayer; for a GPU cache the encoding waits for
// the work queued so far on stream (torch.cuda.current_stream().cuda_stream), which itself never waits.
func ProducerSaveLayerAfter(h int, reqID string, layer int, stream uintptr) (n int, err error) {
	defer recoverInto(&err)
	p, err := producers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	return layer, wrap(p.SaveLayerAfter(reqID, layer, stream))
}

// ConsumerRegisterDeviceCache registers the consumer's KV cache in GPU memory (see ProducerRegisterDeviceCache).
func ConsumerRegisterDeviceCache(h int, layoutJSON string, ordinal int, bases string) (n int, err error) {
	defer recoverInto(&err)
	return register(consumers, h, layoutJSON, bases, func(c *connector.Consumer, l connector.Layout, b []uintptr) error {
		return c.RegisterDeviceCache(l, ordinal, b)
	})
}

// ProducerSetBypass switches the compression policy ("auto", "never" = always compress, "always" = raw) for
// handoffs begun from now on.
func ProducerSetBypass(h int, bypass string) (n int, err error) {
	defer recoverInto(&err)
	p, err := producers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	b, err := connector.ParseBypass(bypass)
	if err != nil {
		return 0, wrap(err)
	}
	return int(b), wrap(p.SetBypass(b))
}

// ProducerSetMode sets the codec mode ("auto", "fast" or "high-ratio") of handoffs begun from now on.
func ProducerSetMode(h int, mode string) (n int, err error) {
	defer recoverInto(&err)
	p, err := producers.get(h)
	if err != nil {
		return 0, wrap(err)
	}
	m, err := connector.ParseMode(mode)
	if err != nil {
		return 0, wrap(err)
	}
	return int(m), wrap(p.SetMode(m))
}
