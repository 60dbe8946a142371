//! Server responses: OK, ERR and EOF packets, and text-protocol result sets (column definitions
//! and rows, NULL as 0xFB) — encoded by fake servers, decoded by clients.
//!
//! This crate never negotiates `DEPRECATE_EOF`: result sets always end their column list and
//! their rows with an EOF packet.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::{put_lenenc_bytes, put_lenenc_int, Reader};
use crate::error::WireError;

/// Status flag: another result set follows this one (multi-statements, CALL).
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// `0x00` OK packet (protocol 4.1; session-state tracking is not negotiated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: String,
}

impl OkPacket {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(0x00);
        put_lenenc_int(out, self.affected_rows);
        put_lenenc_int(out, self.last_insert_id);
        out.put_u16_le(self.status);
        out.put_u16_le(self.warnings);
        out.put_slice(self.info.as_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "OK packet");
        let tag = r.u8()?;
        if tag != 0x00 {
            return Err(WireError::malformed(
                "OK packet",
                format!("starts with {tag:#04x}, not 0x00"),
            ));
        }
        let affected_rows = r.lenenc_int()?;
        let last_insert_id = r.lenenc_int()?;
        let status = r.u16()?;
        let warnings = r.u16()?;
        let info = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(OkPacket {
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info,
        })
    }
}

/// `0xFF` ERR packet: error code, 5-character SQL state, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub state: [u8; 5],
    pub message: String,
}

impl ErrPacket {
    /// An error with SQL state `HY000` (general error).
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ErrPacket {
            code,
            state: *b"HY000",
            message: message.into(),
        }
    }

    pub fn state_str(&self) -> String {
        String::from_utf8_lossy(&self.state).into_owned()
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(0xFF);
        out.put_u16_le(self.code);
        out.put_u8(b'#');
        out.put_slice(&self.state);
        out.put_slice(self.message.as_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "ERR packet");
        let tag = r.u8()?;
        if tag != 0xFF {
            return Err(WireError::malformed(
                "ERR packet",
                format!("starts with {tag:#04x}, not 0xFF"),
            ));
        }
        let code = r.u16()?;
        let mut state = *b"HY000";
        if r.peek() == Some(b'#') {
            r.u8()?;
            state.copy_from_slice(r.take(5)?);
        }
        let message = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(ErrPacket {
            code,
            state,
            message,
        })
    }
}

impl std::fmt::Display for ErrPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code,
            self.state_str(),
            self.message
        )
    }
}

/// `0xFE` EOF packet (payload shorter than 9 bytes; a longer 0xFE payload is something else).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

impl EofPacket {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(0xFE);
        out.put_u16_le(self.warnings);
        out.put_u16_le(self.status);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        if !is_eof(payload) {
            return Err(WireError::malformed(
                "EOF packet",
                format!(
                    "{} byte(s) starting with {:?}",
                    payload.len(),
                    payload.first()
                ),
            ));
        }
        let mut r = Reader::new(payload, "EOF packet");
        r.u8()?;
        // Old servers may send a bare 0xFE.
        if r.is_empty() {
            return Ok(EofPacket::default());
        }
        Ok(EofPacket {
            warnings: r.u16()?,
            status: r.u16()?,
        })
    }
}

/// An EOF packet: 0xFE and fewer than 9 bytes (0xFE also starts length-encoded 8-byte ints).
pub fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < 9
}

pub fn is_ok(payload: &[u8]) -> bool {
    payload.first() == Some(&0x00)
}

pub fn is_err(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFF)
}

/// MySQL column types used by the text columns fake servers describe.
pub mod column_type {
    pub const LONGLONG: u8 = 0x08;
    pub const VAR_STRING: u8 = 0xFD;
}

/// One column definition (protocol 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub catalog: String,
    pub schema: String,
    pub table: String,
    pub org_table: String,
    pub name: String,
    pub org_name: String,
    pub charset: u16,
    pub length: u32,
    pub column_type: u8,
    pub flags: u16,
    pub decimals: u8,
}

impl ColumnDef {
    /// A VARCHAR column named `name` (utf8mb4), as a fake server describes any text value.
    pub fn text(name: &str) -> Self {
        ColumnDef {
            catalog: "def".into(),
            schema: String::new(),
            table: String::new(),
            org_table: String::new(),
            name: name.into(),
            org_name: name.into(),
            charset: 45,
            length: 1024,
            column_type: column_type::VAR_STRING,
            flags: 0,
            decimals: 0,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        for s in [
            &self.catalog,
            &self.schema,
            &self.table,
            &self.org_table,
            &self.name,
            &self.org_name,
        ] {
            put_lenenc_bytes(out, s.as_bytes());
        }
        out.put_u8(0x0C);
        out.put_u16_le(self.charset);
        out.put_u32_le(self.length);
        out.put_u8(self.column_type);
        out.put_u16_le(self.flags);
        out.put_u8(self.decimals);
        out.put_u16_le(0);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "column definition");
        let mut s = || -> Result<String, WireError> {
            Ok(String::from_utf8_lossy(r.lenenc_bytes()?).into_owned())
        };
        let (catalog, schema, table, org_table, name, org_name) =
            (s()?, s()?, s()?, s()?, s()?, s()?);
        let fixed_len = r.lenenc_int()?;
        if fixed_len < 0x0A {
            return Err(WireError::malformed(
                "column definition",
                format!("fixed-length block of {fixed_len} bytes (expected 12)"),
            ));
        }
        Ok(ColumnDef {
            catalog,
            schema,
            table,
            org_table,
            name,
            org_name,
            charset: r.u16()?,
            length: r.u32()?,
            column_type: r.u8()?,
            flags: r.u16()?,
            decimals: r.u8()?,
        })
    }
}

/// Encodes one text-protocol row: each value length-encoded, NULL as 0xFB.
pub fn encode_text_row<V: AsRef<[u8]>>(values: &[Option<V>], out: &mut BytesMut) {
    for v in values {
        match v {
            None => out.put_u8(0xFB),
            Some(v) => put_lenenc_bytes(out, v.as_ref()),
        }
    }
}

/// Decodes one text-protocol row of `columns` values.
pub fn decode_text_row(payload: &[u8], columns: usize) -> Result<Vec<Option<Bytes>>, WireError> {
    let mut r = Reader::new(payload, "text row");
    // Each value takes at least one byte, which bounds the allocation by the payload.
    if columns > payload.len() {
        return Err(WireError::malformed(
            "text row",
            format!("{columns} columns cannot fit in {} bytes", payload.len()),
        ));
    }
    let mut row = Vec::with_capacity(columns);
    for _ in 0..columns {
        row.push(r.lenenc_bytes_or_null()?.map(Bytes::copy_from_slice));
    }
    if !r.is_empty() {
        return Err(WireError::malformed(
            "text row",
            format!(
                "{} byte(s) after the last of {columns} columns",
                r.remaining()
            ),
        ));
    }
    Ok(row)
}

/// The payloads of a whole text result set (column count, definitions, EOF, rows, EOF) in order;
/// the caller frames them with consecutive sequence ids.
pub fn encode_text_result_set<V: AsRef<[u8]>>(
    columns: &[ColumnDef],
    rows: &[Vec<Option<V>>],
    status: u16,
) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(columns.len() + rows.len() + 3);
    let mut b = BytesMut::new();
    put_lenenc_int(&mut b, columns.len() as u64);
    out.push(b.split().freeze());
    for c in columns {
        c.encode(&mut b);
        out.push(b.split().freeze());
    }
    let eof = EofPacket {
        warnings: 0,
        status,
    };
    out.push(eof.to_bytes());
    for r in rows {
        encode_text_row(r, &mut b);
        out.push(b.split().freeze());
    }
    out.push(eof.to_bytes());
    out
}

/// The outcome of a COM_QUERY, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    Ok(OkPacket),
    Err(ErrPacket),
    ResultSet(ResultSet),
}

/// A complete text result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<ColumnDef>,
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// Status of the final EOF (tells whether more results follow).
    pub status: u16,
}

impl QueryResult {
    /// Whether the server announced another result after this one.
    pub fn more_results(&self) -> bool {
        let status = match self {
            QueryResult::Ok(ok) => ok.status,
            QueryResult::Err(_) => 0,
            QueryResult::ResultSet(rs) => rs.status,
        };
        status & SERVER_MORE_RESULTS_EXISTS != 0
    }
}

#[derive(Debug)]
enum ParseState {
    First,
    Columns { remaining: u64 },
    ColumnsEof,
    Rows,
    Done,
}

/// Client-side state machine over the packets answering one COM_QUERY: push each payload until it
/// returns the complete [`QueryResult`]. Memory is bounded by `max_bytes` of row data.
#[derive(Debug)]
pub struct TextResultParser {
    state: ParseState,
    max_bytes: usize,
    bytes: usize,
    columns: Vec<ColumnDef>,
    rows: Vec<Vec<Option<Bytes>>>,
}

/// The most columns a result set may announce (MariaDB's table limit is 4096).
pub const MAX_COLUMNS: u64 = 4096;

impl TextResultParser {
    pub fn new(max_bytes: usize) -> Self {
        TextResultParser {
            state: ParseState::First,
            max_bytes,
            bytes: 0,
            columns: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Feeds the next payload; `Ok(Some(..))` once the result is complete.
    pub fn push(&mut self, payload: &[u8]) -> Result<Option<QueryResult>, WireError> {
        self.bytes += payload.len();
        if self.bytes > self.max_bytes {
            return Err(WireError::TooLarge {
                what: "query result",
                len: self.bytes,
                max: self.max_bytes,
            });
        }
        match self.state {
            ParseState::First => {
                if is_err(payload) {
                    self.state = ParseState::Done;
                    return Ok(Some(QueryResult::Err(ErrPacket::decode(payload)?)));
                }
                if is_ok(payload) {
                    self.state = ParseState::Done;
                    return Ok(Some(QueryResult::Ok(OkPacket::decode(payload)?)));
                }
                if payload.first() == Some(&0xFB) {
                    return Err(WireError::Unsupported {
                        what: "query result",
                        detail: "LOAD DATA LOCAL INFILE request".into(),
                    });
                }
                let mut r = Reader::new(payload, "result set column count");
                let n = r.lenenc_int()?;
                if n == 0 || n > MAX_COLUMNS || !r.is_empty() {
                    return Err(WireError::malformed(
                        "result set column count",
                        format!("{n} columns in a {}-byte packet", payload.len()),
                    ));
                }
                self.state = ParseState::Columns { remaining: n };
                Ok(None)
            }
            ParseState::Columns { remaining } => {
                self.columns.push(ColumnDef::decode(payload)?);
                self.state = if remaining > 1 {
                    ParseState::Columns {
                        remaining: remaining - 1,
                    }
                } else {
                    ParseState::ColumnsEof
                };
                Ok(None)
            }
            ParseState::ColumnsEof => {
                EofPacket::decode(payload)?;
                self.state = ParseState::Rows;
                Ok(None)
            }
            ParseState::Rows => {
                if is_eof(payload) {
                    let eof = EofPacket::decode(payload)?;
                    self.state = ParseState::Done;
                    return Ok(Some(QueryResult::ResultSet(ResultSet {
                        columns: std::mem::take(&mut self.columns),
                        rows: std::mem::take(&mut self.rows),
                        status: eof.status,
                    })));
                }
                if is_err(payload) {
                    // An error in mid-result (e.g. the query was killed) ends it.
                    self.state = ParseState::Done;
                    return Ok(Some(QueryResult::Err(ErrPacket::decode(payload)?)));
                }
                self.rows
                    .push(decode_text_row(payload, self.columns.len())?);
                Ok(None)
            }
            ParseState::Done => Err(WireError::malformed(
                "query result",
                "packet after the result was complete",
            )),
        }
    }
}

/// Decodes a lone length-encoded integer payload (e.g. a result set's column count).
pub fn decode_lenenc_int(payload: &[u8]) -> Result<u64, WireError> {
    Reader::new(payload, "length-encoded integer").lenenc_int()
}

/// Text rows as UTF-8 strings (lossy), for admin queries.
pub fn row_strings(row: &[Option<Bytes>]) -> Vec<Option<String>> {
    row.iter()
        .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_captured_show_variables_result() {
        // capture-replica-to-master.txt: SHOW VARIABLES LIKE 'SERVER_ID'
        let packets: Vec<&[u8]> = vec![
            b"\x02",
            b"\x03def\x12information_schema\x11SESSION_VARIABLES\x11SESSION_VARIABLES\rVariable_name\rVARIABLE_NAME\x0c\x08\x00@\x00\x00\x00\xfd\x01\x10\x00\x00\x00",
            b"\x03def\x12information_schema\x11SESSION_VARIABLES\x11SESSION_VARIABLES\x05Value\x0eVARIABLE_VALUE\x0c\x08\x00\x00\x10\x00\x00\xfd\x01\x10\x00\x00\x00",
            b"\xfe\x00\x00\x22\x00",
            b"\tserver_id\x011",
            b"\xfe\x00\x00\x22\x00",
        ];
        let mut p = TextResultParser::new(1 << 20);
        let mut result = None;
        for (i, pkt) in packets.iter().enumerate() {
            let r = p.push(pkt).expect("parses");
            assert_eq!(r.is_some(), i == packets.len() - 1);
            result = r;
        }
        let Some(QueryResult::ResultSet(rs)) = result else {
            panic!("not a result set: {result:?}")
        };
        assert_eq!(rs.columns[0].name, "Variable_name");
        assert_eq!(rs.columns[1].org_name, "VARIABLE_VALUE");
        assert_eq!(rs.columns[1].column_type, column_type::VAR_STRING);
        assert_eq!(
            row_strings(&rs.rows[0]),
            vec![Some("server_id".into()), Some("1".into())]
        );
    }

    #[test]
    fn captured_ok_and_eof_and_err() {
        let ok = OkPacket::decode(&[0, 0, 0, 2, 0, 0, 0]).expect("ok");
        assert_eq!(ok.status, 2);
        assert_eq!(&ok.to_bytes()[..], &[0, 0, 0, 2, 0, 0, 0]);
        let eof = EofPacket::decode(&[0xfe, 0, 0, 0x22, 0]).expect("eof");
        assert_eq!(eof.status, 0x22);
        let err = ErrPacket::new(1236, "fatal");
        let back = ErrPacket::decode(&err.to_bytes()).expect("err");
        assert_eq!(back, err);
        assert_eq!(back.to_string(), "ERROR 1236 (HY000): fatal");
    }

    #[test]
    fn null_is_0xfb_in_rows() {
        let mut b = BytesMut::new();
        encode_text_row(&[None, Some(b"x".as_ref()), Some(b"".as_ref())], &mut b);
        assert_eq!(&b[..], &[0xFB, 1, b'x', 0]);
        let row = decode_text_row(&b, 3).expect("row");
        assert_eq!(
            row,
            vec![None, Some(Bytes::from_static(b"x")), Some(Bytes::new())]
        );
    }
}
