//! GPU discovery, context, streams, events and typed device buffers (cudarc). OWNER: kernels helper.
