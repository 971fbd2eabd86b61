// Package nixl moves a handoff's payload over NIXL (github.com/ai-dynamo/nixl), the transfer library vLLM's
// NixlConnector uses, with UCX underneath: RDMA (InfiniBand, RoCE), NVLink and CUDA IPC between GPUs, shared
// memory or TCP between processes, whichever UCX finds. It is the alternative to connector/transport's TCP
// protocol, chosen by configuration (connector.WithPayloadTransport).
//
// # Loading
//
// NIXL's C API (libnixl_capi.so) is loaded at run time with dlopen, the way kernels/cuda loads the CUDA
// driver: nothing is linked against it, the build needs no NIXL headers, and a host without the library gets
// an error wrapping ErrNoLibrary from every constructor. [Load] looks in SPLITZIP_NIXL_LIB (a file or a
// directory), the loader's path, and the nixl Python wheels (nixl-cu13, nixl-cu12, nixl) of the active
// virtual environment, conda environment, user and system site directories; see libraryCandidates. The wheels
// bring UCX and NIXL's plugins with them.
//
// # Data path
//
//	producer: frames encoded into staging ── one arena registered with NIXL ◀── one-sided READ ── consumer
//	          chunk table (same arena)   ◀── READ, polled ──────────────────────────────────────────┘
//
// The producer ([Server]) registers one staging arena once (a registration made later would be unknown to
// consumers until they reloaded its metadata) and stages every chunk there. For each offered handoff it keeps
// a chunk table in the arena — a header and one row per chunk: address, length, CRC-32C, and a check word
// binding the row to the handoff's random nonce and index — and fills a row as soon as its chunk is ready.
// The consumer ([Client]) reads the table and then the chunks with one-sided NIXL reads into its own
// registered memory, a few in flight, verifies each chunk's CRC-32C and hands it to the sink while later
// chunks are still being read; it re-reads the table while chunks are still being produced. Once every chunk
// is verified and accepted it sends the producer a FIN notice (a NIXL notification), on which the producer
// releases the payload. PROTOCOL.md describes the table byte by byte.
//
// A consumer may also read chunks into memory it registers itself, such as its GPU's ([Client.UseDeviceMemory],
// [Client.FetchDevice]): the chunk is then verified there with the checksum function the caller gives (a GPU
// kernel) and handed over by address, so it is decoded where it landed without passing through host memory.
//
// # Control plane
//
// What a consumer needs to start — the producer agent's name and metadata, the table's address, chunk count
// and nonce — is a [Locator], which the connector publishes in the handoff's shard record on NATS (the
// record's "locator"), sealed under the handoff's secret so that only the consumer it is addressed to can use
// it (connector/access.go): no side channel. Metadata is loaded once per producer agent and reloaded only when
// it changes.
//
// # Failures
//
// As on TCP: a chunk whose CRC-32C differs fails the fetch (transport.ErrChecksum); every read has a
// deadline (Options.IOTimeout, transport.ErrTimeout); a producer that died fails the reads
// (transport.ErrPeerClosed); one whose encoder failed marks its table (transport.ErrProducer); an expired,
// withdrawn or already fetched handoff is reported as such (transport.ErrExpired, ErrUnknownHandoff). A fetch
// that fails may have handed chunks to the sink already; the caller discards the whole request and the engine
// recomputes it.
package nixl
