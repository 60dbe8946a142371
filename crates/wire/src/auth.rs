//! Authentication: mysql_native_password (SHA-1 scramble) for both sides, and the
//! AuthSwitchRequest (0xFE) a server sends to move a client to another plugin.

use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

use crate::buf::{put_nul_terminated, utf8, Reader};
use crate::error::WireError;

pub const MYSQL_NATIVE_PASSWORD: &str = "mysql_native_password";
/// Authenticates by the peer's unix socket credentials; the client answers with nothing.
pub const UNIX_SOCKET: &str = "unix_socket";

/// Length of a mysql_native_password scramble (the server's random challenge).
pub const SCRAMBLE_LEN: usize = 20;

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What mysql.global_priv stores for a native password: SHA1(SHA1(password)).
pub fn native_password_hash(password: &[u8]) -> [u8; 20] {
    sha1(&[&sha1(&[password])])
}

/// The client's proof: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))). An empty
/// password answers with an empty response. Only the first 20 scramble bytes count.
pub fn native_password_response(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let scramble = &scramble[..scramble.len().min(SCRAMBLE_LEN)];
    let stage1 = sha1(&[password]);
    let stage2 = sha1(&[&stage1]);
    let mask = sha1(&[scramble, &stage2]);
    stage1.iter().zip(mask).map(|(a, b)| a ^ b).collect()
}

/// Server side: does `response` prove knowledge of the password whose
/// [`native_password_hash`] is `stored_hash`? `None` means the account has no password, which only
/// an empty response matches.
pub fn verify_native_password(
    scramble: &[u8],
    response: &[u8],
    stored_hash: Option<&[u8; 20]>,
) -> bool {
    let Some(stored) = stored_hash else {
        return response.is_empty();
    };
    if response.len() != 20 {
        return false;
    }
    let scramble = &scramble[..scramble.len().min(SCRAMBLE_LEN)];
    let mask = sha1(&[scramble, stored]);
    let stage1: Vec<u8> = response.iter().zip(mask).map(|(a, b)| a ^ b).collect();
    // Not constant-time: the scramble is single-use, so timing reveals nothing reusable.
    sha1(&[&stage1]) == *stored
}

/// `0xFE plugin-name NUL plugin-data`: the server asks the client to authenticate again with
/// another plugin. For mysql_native_password the data is a fresh 20-byte scramble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    pub plugin: String,
    /// The plugin data without the trailing NUL servers append.
    pub data: Vec<u8>,
}

impl AuthSwitchRequest {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(0xFE);
        put_nul_terminated(out, self.plugin.as_bytes());
        out.put_slice(&self.data);
        out.put_u8(0);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload, "auth switch request");
        let tag = r.u8()?;
        if tag != 0xFE {
            return Err(WireError::malformed(
                "auth switch request",
                format!("starts with {tag:#04x}, not 0xFE"),
            ));
        }
        let plugin = utf8("auth switch request plugin", r.nul_terminated()?)?;
        let rest = r.rest();
        let data = rest.strip_suffix(&[0]).unwrap_or(rest).to_vec();
        Ok(AuthSwitchRequest { plugin, data })
    }
}

/// The client's answer to an auth challenge of `plugin` with `data`: mysql_native_password proves
/// the password, unix_socket sends nothing (the server checks the socket's peer credentials).
pub fn client_auth_response(
    plugin: &str,
    data: &[u8],
    password: &[u8],
) -> Result<Vec<u8>, WireError> {
    match plugin {
        MYSQL_NATIVE_PASSWORD => Ok(native_password_response(password, data)),
        UNIX_SOCKET => Ok(Vec::new()),
        other => Err(WireError::Unsupported {
            what: "authentication",
            detail: format!("auth plugin {other:?} (only mysql_native_password and unix_socket)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_round_trip_and_rejection() {
        let scramble = b"dgW\\LFZsR}DvF=>\\6:_Q";
        let resp = native_password_response(b"secret", scramble);
        let stored = native_password_hash(b"secret");
        assert!(verify_native_password(scramble, &resp, Some(&stored)));
        assert!(!verify_native_password(
            scramble,
            &resp,
            Some(&native_password_hash(b"other"))
        ));
        assert!(!verify_native_password(
            b"01234567890123456789",
            &resp,
            Some(&stored)
        ));
        assert!(verify_native_password(scramble, &[], None));
        assert!(!verify_native_password(scramble, &resp, None));
        assert!(native_password_response(b"", scramble).is_empty());
    }

    #[test]
    fn known_hash_matches_mariadb_password_function() {
        // SELECT PASSWORD('secret') = *14E65567ABDB5135D0CFD9A70B3032C179A49EE7
        assert_eq!(
            hex::encode_upper(native_password_hash(b"secret")),
            "14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
        );
    }

    #[test]
    fn auth_switch_round_trip() {
        let req = AuthSwitchRequest {
            plugin: UNIX_SOCKET.into(),
            data: vec![],
        };
        assert_eq!(
            AuthSwitchRequest::decode(&req.to_bytes()).expect("decodes"),
            req
        );
        assert_eq!(
            client_auth_response(UNIX_SOCKET, &[], b"pw").expect("supported"),
            Vec::<u8>::new()
        );
        assert!(client_auth_response("ed25519", &[], b"pw").is_err());
    }
}
