package main

import "fmt"

// runDemo is the README's main job on built-in defaults: the real-KV statistics table (compress, decompress,
// check), then real handoffs between a producer and a consumer process: raw against fast mode, high-ratio
// mode, and the auto choice between the three.
func runDemo(args []string) error {
	fs := newFlags("demo", "")
	tokens := fs.String("tokens", "4096", "request sizes for the transfer table")
	rates := fs.String("rates", "1,10,0", "link rates in Gbit/s (0: unshaped)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Println("== 1. the codec on real KV ==")
	if err := runStats(nil); err != nil {
		return err
	}
	fmt.Println("\n== 2. handoffs: producer process → consumer, embedded NATS, P2P TCP ==")
	return runBenchTransfer([]string{"-tokens", *tokens, "-rates", *rates, "-repeat", "5"})
}
