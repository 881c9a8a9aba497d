// Package agentwire is the protocol between smartvm and its guest agent (smartvm-agent): the
// procedures, their messages, the codec that carries them over Connect RPC, and the client the
// host side uses.
//
// The transport is Connect RPC over HTTP/2 without TLS (prior knowledge), on whatever stream
// connection reaches the agent: AF_VSOCK in a guest, a Unix socket, or TCP. HTTP/2 gives every
// call its own stream with its own flow control, so many execs and copies share one connection
// and a slow reader holds back only its own call.
//
// Messages are Go structs. The codec ("smartvm") writes a message as a uvarint length, the
// message's JSON, then, for messages that carry bytes (stdin, output, tar data), the raw bytes:
// control fields stay readable and data is never base64-encoded.
package agentwire
