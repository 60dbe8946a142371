//! Bounded little-endian reading and MySQL length-encoded values (shared by every codec).

use bytes::{BufMut, BytesMut};

use crate::error::WireError;

/// A cursor over untrusted bytes: every read is bounds-checked and names `what` on failure.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                what: self.what,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u24(&mut self) -> Result<u32, WireError> {
        let a = self.array::<3>()?;
        Ok(u32::from_le_bytes([a[0], a[1], a[2], 0]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Bytes up to (not including) the next NUL, consuming the NUL.
    pub(crate) fn nul_terminated(&mut self) -> Result<&'a [u8], WireError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(WireError::malformed(
                self.what,
                format!("string at byte {} has no NUL terminator", self.pos),
            )),
        }
    }

    /// A length-encoded integer; `None` for the NULL marker 0xFB.
    pub(crate) fn lenenc_int_or_null(&mut self) -> Result<Option<u64>, WireError> {
        let at = self.pos;
        match self.u8()? {
            b @ 0..=0xFA => Ok(Some(u64::from(b))),
            0xFB => Ok(None),
            0xFC => Ok(Some(u64::from(self.u16()?))),
            0xFD => Ok(Some(u64::from(self.u24()?))),
            0xFE => Ok(Some(self.u64()?)),
            0xFF => Err(WireError::malformed(
                self.what,
                format!("0xFF is not a length-encoded integer (byte {at})"),
            )),
        }
    }

    pub(crate) fn lenenc_int(&mut self) -> Result<u64, WireError> {
        let at = self.pos;
        self.lenenc_int_or_null()?.ok_or_else(|| {
            WireError::malformed(self.what, format!("unexpected NULL marker at byte {at}"))
        })
    }

    /// A length-encoded string; the length is checked against what is left before use.
    pub(crate) fn lenenc_bytes_or_null(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        match self.lenenc_int_or_null()? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                self.take(n).map(Some)
            }
        }
    }

    pub(crate) fn lenenc_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let at = self.pos;
        self.lenenc_bytes_or_null()?.ok_or_else(|| {
            WireError::malformed(self.what, format!("unexpected NULL marker at byte {at}"))
        })
    }
}

pub(crate) fn utf8(what: &'static str, b: &[u8]) -> Result<String, WireError> {
    String::from_utf8(b.to_vec()).map_err(|_| WireError::malformed(what, "not valid UTF-8"))
}

pub(crate) fn put_lenenc_int(out: &mut BytesMut, v: u64) {
    if v < 251 {
        out.put_u8(v as u8);
    } else if v < 1 << 16 {
        out.put_u8(0xFC);
        out.put_u16_le(v as u16);
    } else if v < 1 << 24 {
        out.put_u8(0xFD);
        out.put_slice(&(v as u32).to_le_bytes()[..3]);
    } else {
        out.put_u8(0xFE);
        out.put_u64_le(v);
    }
}

pub(crate) fn put_lenenc_bytes(out: &mut BytesMut, b: &[u8]) {
    put_lenenc_int(out, b.len() as u64);
    out.put_slice(b);
}

/// Writes `b` followed by a NUL; a NUL inside `b` would end the string early on the reader's side,
/// so it is cut there.
pub(crate) fn put_nul_terminated(out: &mut BytesMut, b: &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    out.put_slice(&b[..end]);
    out.put_u8(0);
}
