//! The one error type of every decoder in this crate: it says what was being decoded and where.

/// A malformed, truncated or oversized wire structure. Decoders return this instead of panicking;
/// the `what` fields name the structure and field, so a log line is enough to find the culprit.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{what}: truncated at byte {offset}: needs {needed} more byte(s), {available} left")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{what}: length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("packet sequence id {got} where {expected} was expected (packets out of order)")]
    OutOfOrder { expected: u8, got: u8 },
    #[error(
        "{event_type:#04x} event: CRC32 mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    BadChecksum {
        event_type: u8,
        stored: u32,
        computed: u32,
    },
    #[error("{what}: unsupported: {detail}")]
    Unsupported { what: &'static str, detail: String },
    #[error("I/O error while framing packets: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        WireError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
