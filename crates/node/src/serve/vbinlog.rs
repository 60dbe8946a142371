//! The virtual binlog serve streams: its own file names and contiguous offsets, independent of
//! the origin servers' files. Every re-served event gets `log_pos` = its end offset in the current
//! virtual file (CRC recomputed); metadata events carry serve's own server_id. A file is closed
//! with a real ROTATE before its offsets could overflow the u32 `log_pos`, or when the origin's
//! FORMAT_DESCRIPTION changes (mariadb-replication §5.6).

use bytes::Bytes;
use quorumsql_wire::event::{
    build_fake_rotate, build_gtid_list, build_heartbeat, build_rotate, with_log_pos, Checksum,
    FormatDescription,
};
use quorumsql_wire::{Gtid, GtidState, WireError};

/// Base name of serve's virtual binlog files (`quorumsql-bin.000001`, ...).
pub const VIRTUAL_FILE_PREFIX: &str = "quorumsql-bin";

/// Offsets must stay below this so that every `log_pos` fits its u32 field.
pub const MAX_VIRTUAL_FILE_SIZE: u64 = u32::MAX as u64;

/// FORMAT_DESCRIPTION body of MariaDB 10.11.19 with CRC32 (captured, `created` = 0), used when the
/// source does not supply the origin's. 2 version + 50 server version + 4 created + 1 header
/// length + 171 post-header lengths + 1 checksum algorithm.
// TODO(wire): a built-in 10.11 FORMAT_DESCRIPTION belongs in quorumsql_wire::event.
pub fn builtin_fd_body() -> Vec<u8> {
    const POST_HEADER: &str = "380d000800120004040404120000e400041a08000000080808020000000a0a0a0000000000000a0a0a0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000041304000d0808080a0a0a";
    let mut body = Vec::with_capacity(2 + 50 + 4 + 1 + 171 + 1);
    body.extend_from_slice(&4u16.to_le_bytes());
    let mut version = [0u8; 50];
    let v = b"10.11.19-MariaDB-quorumsql-serve-log";
    version[..v.len()].copy_from_slice(v);
    body.extend_from_slice(&version);
    body.extend_from_slice(&0u32.to_le_bytes());
    body.push(19);
    for i in (0..POST_HEADER.len()).step_by(2) {
        // The constant is valid hex; a bad digit would be a build-time typo caught by the tests.
        body.push(u8::from_str_radix(&POST_HEADER[i..i + 2], 16).unwrap_or(0));
    }
    body.push(1);
    body
}

/// The FD serve sends for an origin FD body: `created` zeroed (so the replica does not think the
/// master restarted and drop its temporary tables); BINLOG_IN_USE lives in the header serve builds.
pub fn normalize_fd(origin: Option<&[u8]>) -> Result<FormatDescription, WireError> {
    let mut fd = match origin {
        Some(b) => FormatDescription::from_body(b)?,
        None => FormatDescription::from_body(&builtin_fd_body())?,
    };
    if fd.checksum() != Checksum::Crc32 {
        return Err(WireError::Unsupported {
            what: "origin FORMAT_DESCRIPTION",
            detail: "binlog_checksum is not CRC32 (QuorumSQL requires binlog_checksum=CRC32)"
                .into(),
        });
    }
    fd.set_created(0);
    Ok(fd)
}

/// Position bookkeeping of the virtual binlog of one dump connection.
#[derive(Debug)]
pub struct VirtualBinlog {
    server_id: u32,
    index: u32,
    /// Offset where the next event starts in the current file.
    offset: u64,
    rotate_at: u64,
    fd: FormatDescription,
    /// No transaction event placed in the current file yet.
    fresh: bool,
}

impl VirtualBinlog {
    /// A binlog whose first file will be `quorumsql-bin.000001`; files are rotated once they reach
    /// `rotate_at` bytes (capped below 4 GiB).
    pub fn new(server_id: u32, rotate_at: u64, fd: FormatDescription) -> Self {
        VirtualBinlog {
            server_id,
            index: 1,
            offset: 4,
            rotate_at: rotate_at.clamp(4096, MAX_VIRTUAL_FILE_SIZE),
            fd,
            fresh: true,
        }
    }

    pub fn file_name(&self) -> String {
        format!("{VIRTUAL_FILE_PREFIX}.{:06}", self.index)
    }

    /// Where the next event starts in the current file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn fd(&self) -> &FormatDescription {
        &self.fd
    }

    /// The events that open the current file: fake ROTATE (not part of the file), FD and the
    /// GTID_LIST of `state` (the position of the replica when the file starts).
    pub fn open_file(&mut self, state: &GtidState) -> Vec<Bytes> {
        self.offset = 4;
        self.fresh = true;
        let name = self.file_name();
        let rotate = build_fake_rotate(self.server_id, &name, 4, Checksum::Crc32);
        let fd_len = 19 + self.fd.raw.len() as u64 + 4;
        let fd = self
            .fd
            .build_event(self.server_id, unix_now(), (self.offset + fd_len) as u32, 0);
        self.offset += fd_len;
        let gtids: Vec<Gtid> = state.iter().collect();
        let gl_len = 19 + 4 + 16 * gtids.len() as u64 + 4;
        let gl = build_gtid_list(self.server_id, 0, (self.offset + gl_len) as u32, 0, &gtids);
        self.offset += gl_len;
        vec![rotate, fd, gl]
    }

    /// Whether a transaction of `bytes` bytes (`None`: not known yet, it is streamed in pieces)
    /// from an origin with FD `fd` must start a new file.
    pub fn needs_rotation(&self, bytes: Option<u64>, fd: &FormatDescription) -> bool {
        if fd.raw != self.fd.raw {
            return true;
        }
        // A transaction larger than a whole file still goes into a file of its own; one of
        // unknown size too, so that the whole u32 `log_pos` range is left for it.
        !self.fresh && bytes.is_none_or(|b| self.offset + b + ROTATE_RESERVE > self.rotate_at)
    }

    /// Closes the current file with a real ROTATE and opens the next one (with `fd`, at `state`).
    pub fn rotate(&mut self, state: &GtidState, fd: FormatDescription) -> Vec<Bytes> {
        let next = format!("{VIRTUAL_FILE_PREFIX}.{:06}", self.index + 1);
        let len = 19 + 8 + next.len() as u64 + 4;
        let real = build_rotate(
            self.server_id,
            unix_now(),
            (self.offset + len) as u32,
            &next,
            Checksum::Crc32,
        );
        self.index += 1;
        self.fd = fd;
        let mut out = vec![real];
        out.extend(self.open_file(state));
        out
    }

    /// Places one re-served event at the current offset: returns it with `log_pos` rewritten to
    /// its end offset and the CRC recomputed.
    pub fn place(&mut self, event: &[u8]) -> Result<Bytes, PlaceError> {
        let end = self.offset + event.len() as u64;
        let log_pos = u32::try_from(end).map_err(|_| PlaceError::FileFull {
            file: self.file_name(),
            end,
        })?;
        let ev = with_log_pos(event, log_pos, None, Checksum::Crc32)?;
        self.offset = end;
        self.fresh = false;
        Ok(ev)
    }

    /// A HEARTBEAT at the current offset (never behind the last event sent).
    pub fn heartbeat(&self) -> Bytes {
        build_heartbeat(
            self.server_id,
            &self.file_name(),
            self.offset,
            Checksum::Crc32,
        )
    }
}

/// Room kept at the end of every file for the closing ROTATE.
const ROTATE_RESERVE: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(
        "virtual binlog file {file} would end at offset {end}, beyond the 4 GiB log_pos limit"
    )]
    FileFull { file: String, end: u64 },
    #[error(transparent)]
    Wire(#[from] WireError),
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_wire::event::{check_event, verify_checksum, EventHeader, EventType};

    fn vb(rotate_at: u64) -> VirtualBinlog {
        VirtualBinlog::new(100, rotate_at, normalize_fd(None).unwrap())
    }

    #[test]
    fn builtin_fd_has_the_10_11_layout() {
        let fd = normalize_fd(None).unwrap();
        assert_eq!(fd.raw.len(), 2 + 50 + 4 + 1 + 171 + 1);
        assert_eq!(fd.post_header_lens().len(), 171);
        // GTID (0xA2) post-header length is 19, GTID_LIST (0xA3) 4.
        assert_eq!(fd.post_header_lens()[0xA2 - 1], 0x13);
        assert_eq!(fd.post_header_lens()[0xA3 - 1], 0x04);
        assert_eq!(fd.checksum(), Checksum::Crc32);
    }

    #[test]
    fn file_start_positions_are_contiguous_and_checksummed() {
        let mut v = vb(1 << 20);
        let state: GtidState = "0-1-10".parse().unwrap();
        let evs = v.open_file(&state);
        let hs: Vec<EventHeader> = evs.iter().map(|e| check_event(e).unwrap()).collect();
        for e in &evs {
            verify_checksum(e).unwrap();
        }
        assert_eq!(hs[0].event_type, EventType::Rotate);
        assert_eq!(hs[0].log_pos, 0);
        assert_eq!(hs[1].event_type, EventType::FormatDescription);
        assert_eq!(u64::from(hs[1].log_pos), 4 + evs[1].len() as u64);
        assert_eq!(
            u64::from(hs[2].log_pos),
            u64::from(hs[1].log_pos) + evs[2].len() as u64
        );
        assert_eq!(v.offset(), u64::from(hs[2].log_pos));
        let hb = v.heartbeat();
        assert_eq!(u64::from(check_event(&hb).unwrap().log_pos), v.offset());
    }

    #[test]
    fn placed_events_get_their_end_offset_and_a_valid_crc() {
        let mut v = vb(1 << 20);
        v.open_file(&GtidState::new());
        let start = v.offset();
        let ev = quorumsql_wire::event::build_event(
            EventType::Xid,
            7,
            1,
            999_999,
            0,
            &9u64.to_le_bytes(),
            Checksum::Crc32,
        );
        let placed = v.place(&ev).unwrap();
        verify_checksum(&placed).unwrap();
        let h = check_event(&placed).unwrap();
        assert_eq!(u64::from(h.log_pos), start + ev.len() as u64);
        assert_eq!(h.server_id, 7, "original server_id is kept");
    }

    #[test]
    fn rotation_before_the_limit_and_on_fd_change() {
        let mut v = vb(8192);
        let state = GtidState::new();
        v.open_file(&state);
        let fd = v.fd().clone();
        assert!(
            !v.needs_rotation(Some(100_000), &fd),
            "a fresh file takes any transaction"
        );
        assert!(!v.needs_rotation(None, &fd));
        let ev = vec![0u8; 5000];
        let mut ev = ev;
        ev[9..13].copy_from_slice(&5000u32.to_le_bytes());
        v.place(&ev).unwrap();
        assert!(v.needs_rotation(Some(5000), &fd));
        assert!(!v.needs_rotation(Some(100), &fd));
        let mut other = fd.clone();
        other.raw[2] = b'X';
        assert!(v.needs_rotation(Some(100), &other));
        // A transaction of unknown size (streamed in pieces) gets a file of its own.
        assert!(v.needs_rotation(None, &fd));
        let evs = v.rotate(&state, fd);
        let h = check_event(&evs[0]).unwrap();
        assert_eq!(h.event_type, EventType::Rotate);
        assert_eq!(h.flags, 0, "the closing ROTATE is a real one");
        assert_eq!(check_event(&evs[1]).unwrap().flags, 0x20);
        assert_eq!(v.file_name(), "quorumsql-bin.000002");
    }
}
