"""The gateway: the interceptor pipeline on `tools/call`, upstreams, and the transports."""
