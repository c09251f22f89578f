//! Errors of the node's configuration.

/// A configuration that cannot work, with the values that make it so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The shard count is zero or over 1024.
    #[error("shards must be between 1 and 1024, got {shards}")]
    Shards {
        /// The count given.
        shards: usize,
    },
    /// The largest value is zero.
    #[error("max item size must be positive, got {max_item_size}")]
    MaxItemSize {
        /// The size given.
        max_item_size: usize,
    },
    /// A shard's part of the memory cannot hold one largest item.
    #[error(
        "memory of {memory_bytes} bytes over {shards} shards cannot hold one item of {max_item_size} bytes per \
         shard (with key and overhead)"
    )]
    MemoryTooSmall {
        /// The memory limit.
        memory_bytes: u64,
        /// The shard count.
        shards: usize,
        /// The largest value.
        max_item_size: usize,
    },
    /// A server limit is zero.
    #[error("{name} must be positive")]
    ZeroLimit {
        /// Which limit.
        name: &'static str,
    },
    /// The server and the store disagree on the largest value.
    #[error("the server's largest value ({server} bytes) differs from the store's ({store} bytes)")]
    MaxItemSizeMismatch {
        /// The store's.
        store: usize,
        /// The server's.
        server: usize,
    },
    /// The gRPC listener's largest message cannot carry one largest value.
    #[error(
        "the gRPC message limit of {max_message_bytes} bytes cannot carry a value of {max_item_size} bytes (the \
         largest value, plus 1024 bytes for its key and framing)"
    )]
    GrpcMessageTooSmall {
        /// The gRPC message limit.
        max_message_bytes: usize,
        /// The largest value.
        max_item_size: usize,
    },
}
