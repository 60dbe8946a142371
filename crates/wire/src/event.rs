//! MariaDB binlog events: the 19-byte common header, the CRC32 trailer, typed bodies of the
//! events QuorumSQL reads or writes, builders for the events a fake master makes up, and the
//! `log_pos` rewrite of re-served events (mariadb-replication §5).
//!
//! QuorumSQL runs `binlog_checksum=CRC32`; [`Checksum`] says whether a stream's events carry it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{utf8, Reader};
use crate::error::WireError;
use crate::gtid::Gtid;

pub const HEADER_LEN: usize = 19;
pub const CRC_LEN: usize = 4;
/// Largest event accepted by the decoders (MariaDB's `max_allowed_packet` ceiling).
pub const MAX_EVENT_SIZE: usize = 1 << 30;

/// Whether events carry a CRC32 trailer (`binlog_checksum`). FORMAT_DESCRIPTION always does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    None,
    Crc32,
}

impl Checksum {
    fn len(self) -> usize {
        match self {
            Checksum::None => 0,
            Checksum::Crc32 => CRC_LEN,
        }
    }
}

/// Event type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Query,
    Stop,
    Rotate,
    Intvar,
    Rand,
    UserVar,
    FormatDescription,
    Xid,
    TableMap,
    WriteRowsV1,
    UpdateRowsV1,
    DeleteRowsV1,
    Incident,
    Heartbeat,
    WriteRowsV2,
    UpdateRowsV2,
    DeleteRowsV2,
    XaPrepare,
    AnnotateRows,
    BinlogCheckpoint,
    Gtid,
    GtidList,
    StartEncryption,
    QueryCompressed,
    WriteRowsCompressedV1,
    UpdateRowsCompressedV1,
    DeleteRowsCompressedV1,
    WriteRowsCompressed,
    UpdateRowsCompressed,
    DeleteRowsCompressed,
    Other(u8),
}

impl EventType {
    pub fn from_u8(b: u8) -> Self {
        use EventType::*;
        match b {
            0x02 => Query,
            0x03 => Stop,
            0x04 => Rotate,
            0x05 => Intvar,
            0x0D => Rand,
            0x0E => UserVar,
            0x0F => FormatDescription,
            0x10 => Xid,
            0x13 => TableMap,
            0x17 => WriteRowsV1,
            0x18 => UpdateRowsV1,
            0x19 => DeleteRowsV1,
            0x1A => Incident,
            0x1B => Heartbeat,
            0x1E => WriteRowsV2,
            0x1F => UpdateRowsV2,
            0x20 => DeleteRowsV2,
            0x26 => XaPrepare,
            0xA0 => AnnotateRows,
            0xA1 => BinlogCheckpoint,
            0xA2 => Gtid,
            0xA3 => GtidList,
            0xA4 => StartEncryption,
            0xA5 => QueryCompressed,
            0xA6 => WriteRowsCompressedV1,
            0xA7 => UpdateRowsCompressedV1,
            0xA8 => DeleteRowsCompressedV1,
            0xA9 => WriteRowsCompressed,
            0xAA => UpdateRowsCompressed,
            0xAB => DeleteRowsCompressed,
            other => Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        use EventType::*;
        match self {
            Query => 0x02,
            Stop => 0x03,
            Rotate => 0x04,
            Intvar => 0x05,
            Rand => 0x0D,
            UserVar => 0x0E,
            FormatDescription => 0x0F,
            Xid => 0x10,
            TableMap => 0x13,
            WriteRowsV1 => 0x17,
            UpdateRowsV1 => 0x18,
            DeleteRowsV1 => 0x19,
            Incident => 0x1A,
            Heartbeat => 0x1B,
            WriteRowsV2 => 0x1E,
            UpdateRowsV2 => 0x1F,
            DeleteRowsV2 => 0x20,
            XaPrepare => 0x26,
            AnnotateRows => 0xA0,
            BinlogCheckpoint => 0xA1,
            Gtid => 0xA2,
            GtidList => 0xA3,
            StartEncryption => 0xA4,
            QueryCompressed => 0xA5,
            WriteRowsCompressedV1 => 0xA6,
            UpdateRowsCompressedV1 => 0xA7,
            DeleteRowsCompressedV1 => 0xA8,
            WriteRowsCompressed => 0xA9,
            UpdateRowsCompressed => 0xAA,
            DeleteRowsCompressed => 0xAB,
            Other(b) => b,
        }
    }

    /// Rows events (their body starts with a server-local 6-byte table id and 2-byte flags).
    pub fn is_rows(self) -> bool {
        use EventType::*;
        matches!(
            self,
            WriteRowsV1
                | UpdateRowsV1
                | DeleteRowsV1
                | WriteRowsV2
                | UpdateRowsV2
                | DeleteRowsV2
                | WriteRowsCompressedV1
                | UpdateRowsCompressedV1
                | DeleteRowsCompressedV1
                | WriteRowsCompressed
                | UpdateRowsCompressed
                | DeleteRowsCompressed
        )
    }

    /// Events that describe the stream rather than belong to a transaction.
    pub fn is_metadata(self) -> bool {
        use EventType::*;
        matches!(
            self,
            FormatDescription
                | Rotate
                | GtidList
                | BinlogCheckpoint
                | Heartbeat
                | Stop
                | StartEncryption
        )
    }
}

/// Header flag bits (`flags` of [`EventHeader`]).
pub mod flags {
    /// FORMAT_DESCRIPTION only: the binlog was not closed cleanly.
    pub const BINLOG_IN_USE: u16 = 0x0001;
    pub const THREAD_SPECIFIC: u16 = 0x0004;
    pub const SUPPRESS_USE: u16 = 0x0008;
    pub const ARTIFICIAL: u16 = 0x0020;
    pub const RELAY_LOG: u16 = 0x0040;
    pub const IGNORABLE: u16 = 0x0080;
    pub const ACCEPT_OWN: u16 = 0x4000;
    pub const SKIP_REPLICATION: u16 = 0x8000;
}

/// The 19-byte common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHeader {
    pub timestamp: u32,
    pub event_type: EventType,
    /// The server that originally wrote the event (the GTID's server for a GTID event).
    pub server_id: u32,
    /// Whole event size: header, body and CRC.
    pub event_size: u32,
    /// End offset of the event in the binlog file it was read from; 0 for artificial events.
    pub log_pos: u32,
    pub flags: u16,
}

impl EventHeader {
    pub fn decode(event: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(event, "binlog event header");
        let h = EventHeader {
            timestamp: r.u32()?,
            event_type: EventType::from_u8(r.u8()?),
            server_id: r.u32()?,
            event_size: r.u32()?,
            log_pos: r.u32()?,
            flags: r.u16()?,
        };
        Ok(h)
    }

    /// A FORMAT_DESCRIPTION whose file was not closed cleanly (the server crashed or is still
    /// writing it): what crash recovery, and `--init-rpl-role=SLAVE` truncation, key on.
    pub fn binlog_in_use(&self) -> bool {
        self.event_type == EventType::FormatDescription && self.flags & flags::BINLOG_IN_USE != 0
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.timestamp);
        out.put_u8(self.event_type.as_u8());
        out.put_u32_le(self.server_id);
        out.put_u32_le(self.event_size);
        out.put_u32_le(self.log_pos);
        out.put_u16_le(self.flags);
    }
}

/// CRC32 (zlib/IEEE) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Checks that `event` is at least a header long and that its size field equals its length, and
/// returns the header. Every typed accessor starts here.
pub fn check_event(event: &[u8]) -> Result<EventHeader, WireError> {
    let h = EventHeader::decode(event)?;
    if h.event_size as usize != event.len() {
        return Err(WireError::malformed(
            "binlog event",
            format!(
                "{:#04x} event: size field {} but {} bytes",
                h.event_type.as_u8(),
                h.event_size,
                event.len()
            ),
        ));
    }
    if event.len() > MAX_EVENT_SIZE {
        return Err(WireError::TooLarge {
            what: "binlog event",
            len: event.len(),
            max: MAX_EVENT_SIZE,
        });
    }
    Ok(h)
}

/// Verifies the CRC32 trailer of `event`.
pub fn verify_checksum(event: &[u8]) -> Result<(), WireError> {
    let h = check_event(event)?;
    if event.len() < HEADER_LEN + CRC_LEN {
        return Err(WireError::Truncated {
            what: "binlog event checksum",
            offset: event.len(),
            needed: HEADER_LEN + CRC_LEN,
            available: event.len(),
        });
    }
    let (data, tail) = event.split_at(event.len() - CRC_LEN);
    let mut t = [0u8; 4];
    t.copy_from_slice(tail);
    let stored = u32::from_le_bytes(t);
    let computed = crc32(data);
    if stored != computed {
        return Err(WireError::BadChecksum {
            event_type: h.event_type.as_u8(),
            stored,
            computed,
        });
    }
    Ok(())
}

/// The body of `event`: after the header, without the CRC.
pub fn event_body(event: &[u8], checksum: Checksum) -> Result<&[u8], WireError> {
    let h = check_event(event)?;
    // FORMAT_DESCRIPTION always carries the algorithm byte and a CRC.
    let crc = if h.event_type == EventType::FormatDescription {
        CRC_LEN
    } else {
        checksum.len()
    };
    if event.len() < HEADER_LEN + crc {
        return Err(WireError::Truncated {
            what: "binlog event body",
            offset: HEADER_LEN,
            needed: crc,
            available: event.len() - HEADER_LEN.min(event.len()),
        });
    }
    Ok(&event[HEADER_LEN..event.len() - crc])
}

/// Builds a complete event (header, body, and a CRC if `checksum` says so).
pub fn build_event(
    event_type: EventType,
    server_id: u32,
    timestamp: u32,
    log_pos: u32,
    flags: u16,
    body: &[u8],
    checksum: Checksum,
) -> Bytes {
    let crc_len = if event_type == EventType::FormatDescription {
        CRC_LEN
    } else {
        checksum.len()
    };
    let size = HEADER_LEN + body.len() + crc_len;
    let mut out = BytesMut::with_capacity(size);
    EventHeader {
        timestamp,
        event_type,
        server_id,
        event_size: size as u32,
        log_pos,
        flags,
    }
    .encode(&mut out);
    out.put_slice(body);
    if crc_len > 0 {
        let c = crc32(&out);
        out.put_u32_le(c);
    }
    out.freeze()
}

/// Rewrites the `log_pos` (and optionally the flags) of an event in place and recomputes its CRC,
/// as a fake master does when it re-serves events in its own virtual binlog file.
pub fn rewrite_header(
    event: &mut [u8],
    log_pos: u32,
    new_flags: Option<u16>,
    checksum: Checksum,
) -> Result<(), WireError> {
    let h = check_event(event)?;
    event[13..17].copy_from_slice(&log_pos.to_le_bytes());
    if let Some(f) = new_flags {
        event[17..19].copy_from_slice(&f.to_le_bytes());
    }
    let has_crc = h.event_type == EventType::FormatDescription || checksum == Checksum::Crc32;
    if has_crc {
        if event.len() < HEADER_LEN + CRC_LEN {
            return Err(WireError::Truncated {
                what: "binlog event checksum",
                offset: event.len(),
                needed: HEADER_LEN + CRC_LEN,
                available: event.len(),
            });
        }
        let split = event.len() - CRC_LEN;
        let c = crc32(&event[..split]);
        event[split..].copy_from_slice(&c.to_le_bytes());
    }
    Ok(())
}

/// Copying form of [`rewrite_header`].
pub fn with_log_pos(
    event: &[u8],
    log_pos: u32,
    new_flags: Option<u16>,
    checksum: Checksum,
) -> Result<Bytes, WireError> {
    let mut b = BytesMut::from(event);
    rewrite_header(&mut b, log_pos, new_flags, checksum)?;
    Ok(b.freeze())
}

// ---------------------------------------------------------------- FORMAT_DESCRIPTION

/// FORMAT_DESCRIPTION (0x0F). The body is kept raw (a fake master copies the upstream server's
/// post-header lengths verbatim); accessors read the fields QuorumSQL needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatDescription {
    /// Body without the CRC: version, server version, created, header length, post-header
    /// lengths, checksum algorithm byte.
    pub raw: Vec<u8>,
}

/// Post-header lengths of MariaDB 10.11.19 (captured FORMAT_DESCRIPTION, 171 event types).
pub const MARIADB_10_11_POST_HEADER_LENS: [u8; 171] = [
    0x38, 0x0d, 0x00, 0x08, 0x00, 0x12, 0x00, 0x04, 0x04, 0x04, 0x04, 0x12, 0x00, 0x00, 0xe4, 0x00,
    0x04, 0x1a, 0x08, 0x00, 0x00, 0x00, 0x08, 0x08, 0x08, 0x02, 0x00, 0x00, 0x00, 0x0a, 0x0a, 0x0a,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x04, 0x13, 0x04, 0x00, 0x0d, 0x08, 0x08, 0x08, 0x0a, 0x0a, 0x0a,
];

const FD_CREATED_AT: usize = 2 + 50;
const FD_MIN_BODY: usize = 2 + 50 + 4 + 1 + 1;

impl FormatDescription {
    /// A FORMAT_DESCRIPTION body like MariaDB 10.11.19 writes (CRC32, `created` 0), for a fake
    /// master that has no upstream FD to copy. `server_version` is cut to 49 bytes.
    pub fn mariadb_10_11(server_version: &str) -> Self {
        let mut raw = Vec::with_capacity(FD_MIN_BODY + 171);
        raw.extend_from_slice(&4u16.to_le_bytes());
        let mut v = [0u8; 50];
        let s = server_version.as_bytes();
        let n = s.len().min(49);
        v[..n].copy_from_slice(&s[..n]);
        raw.extend_from_slice(&v);
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.push(HEADER_LEN as u8);
        raw.extend_from_slice(&MARIADB_10_11_POST_HEADER_LENS);
        raw.push(1);
        FormatDescription { raw }
    }

    pub fn decode(event: &[u8]) -> Result<Self, WireError> {
        let body = event_body(event, Checksum::Crc32)?;
        Self::from_body(body)
    }

    pub fn from_body(body: &[u8]) -> Result<Self, WireError> {
        if body.len() < FD_MIN_BODY {
            return Err(WireError::Truncated {
                what: "FORMAT_DESCRIPTION body",
                offset: 0,
                needed: FD_MIN_BODY,
                available: body.len(),
            });
        }
        let fd = FormatDescription { raw: body.to_vec() };
        if fd.header_len() as usize != HEADER_LEN {
            return Err(WireError::Unsupported {
                what: "FORMAT_DESCRIPTION",
                detail: format!(
                    "common header length {} (only 19 is spoken)",
                    fd.header_len()
                ),
            });
        }
        Ok(fd)
    }

    // `raw` is public (serve compares and copies it), so the accessors tolerate a body shorter
    // than `from_body` guarantees instead of indexing blindly.

    pub fn binlog_version(&self) -> u16 {
        match self.raw.get(..2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    /// e.g. `10.11.19-MariaDB-0+deb12u1-log`.
    pub fn server_version(&self) -> String {
        let v = self
            .raw
            .get(2..FD_CREATED_AT.min(self.raw.len()))
            .unwrap_or(&[]);
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        String::from_utf8_lossy(&v[..end]).into_owned()
    }

    /// Non-zero only in the first binlog after a server start ("the master restarted").
    pub fn created(&self) -> u32 {
        match self.raw.get(FD_CREATED_AT..FD_CREATED_AT + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    pub fn set_created(&mut self, created: u32) {
        if let Some(b) = self.raw.get_mut(FD_CREATED_AT..FD_CREATED_AT + 4) {
            b.copy_from_slice(&created.to_le_bytes());
        }
    }

    pub fn header_len(&self) -> u8 {
        self.raw.get(FD_CREATED_AT + 4).copied().unwrap_or(0)
    }

    /// Post-header length per event type, indexed by type − 1.
    pub fn post_header_lens(&self) -> &[u8] {
        let end = self.raw.len().saturating_sub(1);
        self.raw.get(FD_CREATED_AT + 5..end).unwrap_or(&[])
    }

    pub fn checksum(&self) -> Checksum {
        match self.checksum_alg() {
            0 => Checksum::None,
            _ => Checksum::Crc32,
        }
    }

    /// The algorithm byte: 0 none, 1 CRC32.
    pub fn checksum_alg(&self) -> u8 {
        self.raw.last().copied().unwrap_or(0)
    }

    /// A FORMAT_DESCRIPTION event with this body, as a fake master sends it.
    pub fn build_event(&self, server_id: u32, timestamp: u32, log_pos: u32, flags: u16) -> Bytes {
        build_event(
            EventType::FormatDescription,
            server_id,
            timestamp,
            log_pos,
            flags,
            &self.raw,
            Checksum::Crc32,
        )
    }
}

// ---------------------------------------------------------------- ROTATE

/// ROTATE (0x04): the next events come from `file` starting at `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotate {
    pub position: u64,
    pub file: String,
}

/// The longest binlog file name accepted (MariaDB's FN_REFLEN).
pub const MAX_FILE_NAME: usize = 512;

fn file_name(what: &'static str, b: &[u8]) -> Result<String, WireError> {
    if b.len() > MAX_FILE_NAME {
        return Err(WireError::TooLarge {
            what,
            len: b.len(),
            max: MAX_FILE_NAME,
        });
    }
    utf8(what, b)
}

impl Rotate {
    pub fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "ROTATE body");
        let position = r.u64()?;
        let file = file_name("ROTATE file name", r.rest())?;
        Ok(Rotate { position, file })
    }

    pub fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64_le(self.position);
        out.put_slice(self.file.as_bytes());
    }
}

/// The artificial ROTATE that opens every dump: ts 0, log_pos 0, flag ARTIFICIAL.
pub fn build_fake_rotate(server_id: u32, file: &str, position: u64, checksum: Checksum) -> Bytes {
    let mut body = BytesMut::new();
    Rotate {
        position,
        file: file.into(),
    }
    .encode_body(&mut body);
    build_event(
        EventType::Rotate,
        server_id,
        0,
        0,
        flags::ARTIFICIAL,
        &body,
        checksum,
    )
}

/// A real ROTATE at the end of a (virtual) file.
pub fn build_rotate(
    server_id: u32,
    timestamp: u32,
    log_pos: u32,
    next_file: &str,
    checksum: Checksum,
) -> Bytes {
    let mut body = BytesMut::new();
    Rotate {
        position: 4,
        file: next_file.into(),
    }
    .encode_body(&mut body);
    build_event(
        EventType::Rotate,
        server_id,
        timestamp,
        log_pos,
        0,
        &body,
        checksum,
    )
}

// ---------------------------------------------------------------- GTID

/// GTID event flags2 bits.
pub mod gtid_flags {
    /// No COMMIT/XID follows: the group is the GTID and one statement (DDL).
    pub const STANDALONE: u8 = 0x01;
    pub const GROUP_COMMIT_ID: u8 = 0x02;
    pub const TRANSACTIONAL: u8 = 0x04;
    pub const ALLOW_PARALLEL: u8 = 0x08;
    pub const WAITED: u8 = 0x10;
    pub const DDL: u8 = 0x20;
    pub const PREPARED_XA: u8 = 0x40;
    pub const COMPLETED_XA: u8 = 0x80;
}

/// GTID event flags_extra bits.
pub mod gtid_extra_flags {
    pub const MULTI_ENGINE: u8 = 0x01;
    pub const START_ALTER: u8 = 0x02;
    pub const COMMIT_ALTER: u8 = 0x04;
    pub const ROLLBACK_ALTER: u8 = 0x08;
}

/// The XID of an XA transaction carried by a GTID event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XaXid {
    pub format_id: u32,
    pub gtrid: Vec<u8>,
    pub bqual: Vec<u8>,
}

/// GTID (0xA2), the first event of every group. The GTID's server is the header's server_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidEvent {
    pub seq: u64,
    pub domain: u32,
    pub flags2: u8,
    /// Present iff flags2 has GROUP_COMMIT_ID.
    pub commit_id: Option<u64>,
    /// Present iff flags2 has PREPARED_XA or COMPLETED_XA.
    pub xa: Option<XaXid>,
    pub flags_extra: Option<u8>,
    /// Present iff flags_extra has MULTI_ENGINE.
    pub extra_engines: Option<u8>,
    /// Start-ALTER sequence number, present iff flags_extra has COMMIT_ALTER or ROLLBACK_ALTER.
    pub sa_seq_no: Option<u64>,
}

impl GtidEvent {
    pub fn new(domain: u32, seq: u64, flags2: u8) -> Self {
        GtidEvent {
            seq,
            domain,
            flags2: flags2 & !gtid_flags::GROUP_COMMIT_ID & !0xC0,
            commit_id: None,
            xa: None,
            flags_extra: None,
            extra_engines: None,
            sa_seq_no: None,
        }
    }

    pub fn gtid(&self, server_id: u32) -> Gtid {
        Gtid::new(self.domain, server_id, self.seq)
    }

    pub fn is_standalone(&self) -> bool {
        self.flags2 & gtid_flags::STANDALONE != 0
    }

    pub fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "GTID body");
        let seq = r.u64()?;
        let domain = r.u32()?;
        let flags2 = r.u8()?;
        let commit_id = if flags2 & gtid_flags::GROUP_COMMIT_ID != 0 {
            Some(r.u64()?)
        } else {
            r.take(6)?;
            None
        };
        let xa = if flags2 & (gtid_flags::PREPARED_XA | gtid_flags::COMPLETED_XA) != 0 {
            let format_id = r.u32()?;
            let gl = usize::from(r.u8()?);
            let bl = usize::from(r.u8()?);
            if gl > 64 || bl > 64 {
                return Err(WireError::malformed(
                    "GTID XA xid",
                    format!("gtrid {gl} / bqual {bl} bytes (at most 64 each)"),
                ));
            }
            Some(XaXid {
                format_id,
                gtrid: r.take(gl)?.to_vec(),
                bqual: r.take(bl)?.to_vec(),
            })
        } else {
            None
        };
        let mut ev = GtidEvent {
            seq,
            domain,
            flags2,
            commit_id,
            xa,
            flags_extra: None,
            extra_engines: None,
            sa_seq_no: None,
        };
        if !r.is_empty() {
            let fe = r.u8()?;
            ev.flags_extra = Some(fe);
            if fe & gtid_extra_flags::MULTI_ENGINE != 0 {
                ev.extra_engines = Some(r.u8()?);
            }
            if fe & (gtid_extra_flags::COMMIT_ALTER | gtid_extra_flags::ROLLBACK_ALTER) != 0 {
                ev.sa_seq_no = Some(r.u64()?);
            }
            // Later servers may append fields we do not know; they are ignored, not an error.
        }
        Ok(ev)
    }

    /// Encodes the body; the optional fields are written iff their flags are set (a missing
    /// value for a set flag is written as 0, so flags and layout never disagree).
    pub fn encode_body(&self, out: &mut BytesMut) {
        out.put_u64_le(self.seq);
        out.put_u32_le(self.domain);
        out.put_u8(self.flags2);
        if self.flags2 & gtid_flags::GROUP_COMMIT_ID != 0 {
            out.put_u64_le(self.commit_id.unwrap_or(0));
        } else {
            out.put_slice(&[0u8; 6]);
        }
        if self.flags2 & (gtid_flags::PREPARED_XA | gtid_flags::COMPLETED_XA) != 0 {
            let empty = XaXid {
                format_id: 0,
                gtrid: vec![],
                bqual: vec![],
            };
            let xa = self.xa.as_ref().unwrap_or(&empty);
            let g = &xa.gtrid[..xa.gtrid.len().min(64)];
            let b = &xa.bqual[..xa.bqual.len().min(64)];
            out.put_u32_le(xa.format_id);
            out.put_u8(g.len() as u8);
            out.put_u8(b.len() as u8);
            out.put_slice(g);
            out.put_slice(b);
        }
        if let Some(fe) = self.flags_extra {
            out.put_u8(fe);
            if fe & gtid_extra_flags::MULTI_ENGINE != 0 {
                out.put_u8(self.extra_engines.unwrap_or(0));
            }
            if fe & (gtid_extra_flags::COMMIT_ALTER | gtid_extra_flags::ROLLBACK_ALTER) != 0 {
                out.put_u64_le(self.sa_seq_no.unwrap_or(0));
            }
        }
    }

    pub fn build_event(&self, server_id: u32, timestamp: u32, log_pos: u32, flags: u16) -> Bytes {
        let mut body = BytesMut::new();
        self.encode_body(&mut body);
        build_event(
            EventType::Gtid,
            server_id,
            timestamp,
            log_pos,
            flags,
            &body,
            Checksum::Crc32,
        )
    }
}

// ---------------------------------------------------------------- GTID_LIST

/// GTID_LIST (0xA3): the GTID state at the start of a file, or (artificial) after skipped groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidList {
    /// The top 4 bits of the count word (UNTIL_REACHED 0x1, IGN_GTIDS 0x2).
    pub list_flags: u8,
    pub gtids: Vec<Gtid>,
}

impl GtidList {
    pub fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "GTID_LIST body");
        let word = r.u32()?;
        let count = (word & 0x0FFF_FFFF) as usize;
        if count.saturating_mul(16) > r.remaining() {
            return Err(WireError::Truncated {
                what: "GTID_LIST body",
                offset: 4,
                needed: count.saturating_mul(16),
                available: r.remaining(),
            });
        }
        let mut gtids = Vec::with_capacity(count);
        for _ in 0..count {
            let domain = r.u32()?;
            let server = r.u32()?;
            let seq = r.u64()?;
            gtids.push(Gtid::new(domain, server, seq));
        }
        Ok(GtidList {
            list_flags: (word >> 28) as u8,
            gtids,
        })
    }

    pub fn encode_body(&self, out: &mut BytesMut) {
        let count = self.gtids.len().min(0x0FFF_FFFF) as u32;
        out.put_u32_le(count | u32::from(self.list_flags & 0x0F) << 28);
        for g in self.gtids.iter().take(count as usize) {
            out.put_u32_le(g.domain);
            out.put_u32_le(g.server);
            out.put_u64_le(g.seq);
        }
    }
}

/// A GTID_LIST event. An artificial one (ts 0, flags ARTIFICIAL) moves the replica's read
/// position over groups the master skipped.
pub fn build_gtid_list(
    server_id: u32,
    timestamp: u32,
    log_pos: u32,
    flags: u16,
    gtids: &[Gtid],
) -> Bytes {
    let mut body = BytesMut::new();
    GtidList {
        list_flags: 0,
        gtids: gtids.to_vec(),
    }
    .encode_body(&mut body);
    build_event(
        EventType::GtidList,
        server_id,
        timestamp,
        log_pos,
        flags,
        &body,
        Checksum::Crc32,
    )
}

// ---------------------------------------------------------------- HEARTBEAT

/// HEARTBEAT (0x1B): the master's current (file, offset). Offsets ≥ 4 GiB travel as header
/// log_pos 0 and an 8-byte offset before the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub file: String,
    pub position: u64,
}

impl Heartbeat {
    pub fn decode(header: &EventHeader, body: &[u8]) -> Result<Self, WireError> {
        if header.log_pos == 0 && body.len() >= 8 {
            let mut r = Reader::new(body, "HEARTBEAT body");
            let position = r.u64()?;
            return Ok(Heartbeat {
                file: file_name("HEARTBEAT file name", r.rest())?,
                position,
            });
        }
        Ok(Heartbeat {
            file: file_name("HEARTBEAT file name", body)?,
            position: u64::from(header.log_pos),
        })
    }
}

/// A HEARTBEAT event (ts 0, flags 0) for `position` in `file`.
pub fn build_heartbeat(server_id: u32, file: &str, position: u64, checksum: Checksum) -> Bytes {
    let mut body = BytesMut::new();
    // Position 0 also takes the long form, so that decoding is unambiguous.
    let log_pos = match u32::try_from(position) {
        Ok(p) if p > 0 => p,
        _ => {
            body.put_u64_le(position);
            0
        }
    };
    body.put_slice(file.as_bytes());
    build_event(
        EventType::Heartbeat,
        server_id,
        0,
        log_pos,
        0,
        &body,
        checksum,
    )
}

// ---------------------------------------------------------------- QUERY

/// QUERY (0x02): a statement (DDL, BEGIN, COMMIT, statement-format DML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEvent<'a> {
    pub thread_id: u32,
    pub exec_time: u32,
    pub error_code: u16,
    /// Raw status variables (sql_mode, charset, ...).
    pub status_vars: &'a [u8],
    pub db: &'a [u8],
    pub query: &'a [u8],
}

impl<'a> QueryEvent<'a> {
    pub fn decode_body(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "QUERY body");
        let thread_id = r.u32()?;
        let exec_time = r.u32()?;
        let db_len = usize::from(r.u8()?);
        let error_code = r.u16()?;
        let sv_len = usize::from(r.u16()?);
        let status_vars = r.take(sv_len)?;
        let db = r.take(db_len)?;
        let nul = r.u8()?;
        if nul != 0 {
            return Err(WireError::malformed(
                "QUERY body",
                format!("database name not NUL-terminated ({nul:#04x})"),
            ));
        }
        Ok(QueryEvent {
            thread_id,
            exec_time,
            error_code,
            status_vars,
            db,
            query: r.rest(),
        })
    }

    pub fn encode_body(&self, out: &mut BytesMut) {
        let db = &self.db[..self.db.len().min(255)];
        let sv = &self.status_vars[..self.status_vars.len().min(u16::MAX as usize)];
        out.put_u32_le(self.thread_id);
        out.put_u32_le(self.exec_time);
        out.put_u8(db.len() as u8);
        out.put_u16_le(self.error_code);
        out.put_u16_le(sv.len() as u16);
        out.put_slice(sv);
        out.put_slice(db);
        out.put_u8(0);
        out.put_slice(self.query);
    }

    /// Whether the statement is `COMMIT` (possibly with a trailing `;` or more words).
    pub fn is_commit(&self) -> bool {
        let q = String::from_utf8_lossy(self.query);
        q.split_ascii_whitespace()
            .next()
            .is_some_and(|w| w.trim_end_matches(';').eq_ignore_ascii_case("COMMIT"))
    }

    /// Whether the statement ends a transaction group (`COMMIT`, `ROLLBACK`, `XA COMMIT|ROLLBACK`).
    pub fn ends_group(&self) -> bool {
        let q = String::from_utf8_lossy(self.query);
        let words: Vec<String> = q
            .split_ascii_whitespace()
            .take(2)
            .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
            .collect();
        match words.first().map(String::as_str) {
            Some("COMMIT") | Some("ROLLBACK") => true,
            Some("XA") => matches!(
                words.get(1).map(String::as_str),
                Some("COMMIT") | Some("ROLLBACK")
            ),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------- typed view

/// A decoded event body. Large bodies (statements, unknown events) borrow from the event bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody<'a> {
    FormatDescription(FormatDescription),
    Rotate(Rotate),
    Gtid(GtidEvent),
    GtidList(GtidList),
    BinlogCheckpoint {
        file: String,
    },
    AnnotateRows {
        query: &'a [u8],
    },
    Query(QueryEvent<'a>),
    Xid {
        xid: u64,
    },
    Heartbeat(Heartbeat),
    /// Any other type, raw (rows events, table maps, ...).
    Other(&'a [u8]),
}

/// An event split into header and typed body, after the size check (CRC not verified: call
/// [`verify_checksum`] where it matters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent<'a> {
    pub header: EventHeader,
    pub body: EventBody<'a>,
}

pub fn parse_event(event: &[u8], checksum: Checksum) -> Result<ParsedEvent<'_>, WireError> {
    let header = check_event(event)?;
    let body = event_body(event, checksum)?;
    let typed = match header.event_type {
        EventType::FormatDescription => {
            EventBody::FormatDescription(FormatDescription::from_body(body)?)
        }
        EventType::Rotate => EventBody::Rotate(Rotate::decode_body(body)?),
        EventType::Gtid => EventBody::Gtid(GtidEvent::decode_body(body)?),
        EventType::GtidList => EventBody::GtidList(GtidList::decode_body(body)?),
        EventType::BinlogCheckpoint => {
            let mut r = Reader::new(body, "BINLOG_CHECKPOINT body");
            let n = r.u32()? as usize;
            EventBody::BinlogCheckpoint {
                file: file_name("BINLOG_CHECKPOINT file name", r.take(n)?)?,
            }
        }
        EventType::AnnotateRows => EventBody::AnnotateRows { query: body },
        EventType::Query => EventBody::Query(QueryEvent::decode_body(body)?),
        EventType::Xid => EventBody::Xid {
            xid: Reader::new(body, "XID body").u64()?,
        },
        EventType::Heartbeat => EventBody::Heartbeat(Heartbeat::decode(&header, body)?),
        _ => EventBody::Other(body),
    };
    Ok(ParsedEvent {
        header,
        body: typed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '|'], "")).expect("hex")
    }

    #[test]
    fn captured_xid_event() {
        let ev = h("a1 5f 07 6b 10 01 00 00 00 1f 00 00 00 04 07 00 00 00 00 | 37 00 00 00 00 00 00 00 | d8 81 53 0c");
        verify_checksum(&ev).expect("CRC of the captured event");
        let p = parse_event(&ev, Checksum::Crc32).expect("parses");
        assert_eq!(p.header.event_type, EventType::Xid);
        assert_eq!(p.header.server_id, 1);
        assert_eq!(p.header.log_pos, 1796);
        assert_eq!(p.body, EventBody::Xid { xid: 55 });
        let mut bad = ev.clone();
        bad[20] ^= 1;
        assert!(matches!(
            verify_checksum(&bad),
            Err(WireError::BadChecksum {
                event_type: 0x10,
                ..
            })
        ));
    }

    #[test]
    fn fake_rotate_matches_capture() {
        let captured = h("00000000 04 01000000 2f000000 00000000 2000 | 0400000000000000 6d7973716c2d62696e2e303030303032 | a55fa5f1");
        let built = build_fake_rotate(1, "mysql-bin.000002", 4, Checksum::Crc32);
        assert_eq!(&built[..], &captured[..]);
        let p = parse_event(&captured, Checksum::Crc32).expect("parses");
        assert_eq!(
            p.body,
            EventBody::Rotate(Rotate {
                position: 4,
                file: "mysql-bin.000002".into()
            })
        );
    }

    #[test]
    fn heartbeat_matches_capture() {
        let captured = h("00000000 1b 01000000 27000000 2e060000 0000 | 6d7973716c2d62696e2e303030303032 | 8e625595");
        let built = build_heartbeat(1, "mysql-bin.000002", 1582, Checksum::Crc32);
        assert_eq!(&built[..], &captured[..]);
        let p = parse_event(&captured, Checksum::Crc32).expect("parses");
        assert_eq!(
            p.body,
            EventBody::Heartbeat(Heartbeat {
                file: "mysql-bin.000002".into(),
                position: 1582
            })
        );
        let big = build_heartbeat(1, "f.000001", 5 << 30, Checksum::Crc32);
        let p = parse_event(&big, Checksum::Crc32).expect("parses");
        assert_eq!(
            p.body,
            EventBody::Heartbeat(Heartbeat {
                file: "f.000001".into(),
                position: 5 << 30
            })
        );
        assert_eq!(p.header.log_pos, 0);
    }

    #[test]
    fn gtid_event_layout_matches_capture() {
        // Capture: GTID 0-1-1, flags2 0x29 (DDL), 42 bytes with CRC, header flags 0x0008.
        let ev = GtidEvent::new(0, 1, 0x29).build_event(1, 1795645297, 370, 0x0008);
        assert_eq!(ev.len(), 42);
        let p = parse_event(&ev, Checksum::Crc32).expect("parses");
        let EventBody::Gtid(g) = p.body else {
            panic!("{:?}", p.body)
        };
        assert_eq!(g.gtid(p.header.server_id), Gtid::new(0, 1, 1));
        assert!(g.is_standalone());
    }

    #[test]
    fn builtin_fd_has_the_captured_size() {
        let fd = FormatDescription::mariadb_10_11("10.11.19-MariaDB-0+deb12u1-log");
        let ev = fd.build_event(1, 1795645307, 256, 0);
        assert_eq!(ev.len(), 252);
        let back = FormatDescription::decode(&ev).expect("parses");
        assert_eq!(back.server_version(), "10.11.19-MariaDB-0+deb12u1-log");
        assert_eq!(back.checksum(), Checksum::Crc32);
        assert_eq!(back.post_header_lens()[0xA2 - 1], 0x13);
        assert_eq!(back.created(), 0);
        let in_use = fd.build_event(1, 1, 256, flags::BINLOG_IN_USE);
        assert!(EventHeader::decode(&in_use)
            .expect("header")
            .binlog_in_use());
        assert!(!EventHeader::decode(&ev).expect("header").binlog_in_use());
        let short = FormatDescription { raw: vec![4] };
        assert_eq!(
            (
                short.server_version(),
                short.created(),
                short.post_header_lens()
            ),
            (String::new(), 0, &[][..])
        );
    }

    #[test]
    fn rewrite_log_pos_recomputes_crc() {
        let ev = h("a1 5f 07 6b 10 01 00 00 00 1f 00 00 00 04 07 00 00 00 00 | 37 00 00 00 00 00 00 00 | d8 81 53 0c");
        let moved = with_log_pos(&ev, 99, Some(0), Checksum::Crc32).expect("rewrites");
        verify_checksum(&moved).expect("valid CRC");
        assert_eq!(EventHeader::decode(&moved).expect("header").log_pos, 99);
        assert_eq!(&moved[19..27], &ev[19..27]);
    }

    #[test]
    fn gtid_list_round_trip() {
        let gl = build_gtid_list(100, 0, 1582, flags::ARTIFICIAL, &[Gtid::new(0, 1, 10)]);
        assert_eq!(gl.len(), 43);
        let p = parse_event(&gl, Checksum::Crc32).expect("parses");
        assert_eq!(
            p.body,
            EventBody::GtidList(GtidList {
                list_flags: 0,
                gtids: vec![Gtid::new(0, 1, 10)]
            })
        );
        // A count that cannot fit must not allocate.
        let mut lie = BytesMut::new();
        lie.put_u32_le(0x0FFF_FFFF);
        assert!(GtidList::decode_body(&lie).is_err());
    }

    #[test]
    fn query_commit_ends_a_group() {
        let mut b = BytesMut::new();
        QueryEvent {
            thread_id: 8,
            exec_time: 0,
            error_code: 0,
            status_vars: &[0u8; 26],
            db: b"",
            query: b"COMMIT",
        }
        .encode_body(&mut b);
        let q = QueryEvent::decode_body(&b).expect("parses");
        assert!(q.ends_group());
        assert_eq!(q.query, b"COMMIT");
        let ddl = QueryEvent {
            query: b"CREATE TABLE t (id INT)",
            ..q
        };
        assert!(!ddl.ends_group());
    }
}
