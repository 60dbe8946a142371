//! Refusing a connection before any backend greeted it (no master, too many connections, RO
//! unavailable, mariadbd unreachable, a bad forwarding header).
//!
//! An ERR packet in place of the greeting is legal, but libmariadb (the `mariadb` CLI, Connector/C
//! and the drivers built on it) reports it as its own error 2002 "Received error packet before
//! completion of TLS handshake" and only quotes our code inside the message, so pools and scripts
//! never see 1053 or 1040. The proxy therefore greets the client itself, reads its handshake
//! response (bounded by the handshake timeout) and answers that with the ERR, sequence id 2, as a
//! server refusing a login does: every client then reports the proxy's own code and message.
//! An ERR that mariadbd sends in place of its greeting (its own connection limit) is passed on
//! the same way.

use std::time::Duration;

use bytes::BytesMut;
use quorumsql_wire::handshake::Greeting;
use quorumsql_wire::packet::encode_packet;
use quorumsql_wire::response::ErrPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::mysql::{self, parse_header, SqlError, HEADER_LEN};

/// The version the proxy's own greeting announces; the `5.5.5-` prefix is what MariaDB sends to
/// keep MySQL-era clients happy. Nobody logs in under it: the next packet is an ERR.
const SERVER_VERSION: &str = "5.5.5-10.11.0-MariaDB-QuorumSQL-proxy";
/// A client's handshake response larger than this is not read; it is answered at once.
const MAX_RESPONSE: usize = 64 * 1024;
/// Bound on writing the greeting and the ERR to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After the ERR, how long unread client bytes are drained before the socket closes: closing
/// with unread input sends a RST, which can make the client drop the ERR it has not read yet.
const LINGER: Duration = Duration::from_millis(500);

/// The greeting packet (sequence id 0) every refusal starts with; built once per proxy.
pub(crate) fn greeting_packet() -> Vec<u8> {
    // Nobody authenticates against this greeting, so the scramble need not be secret; it only
    // has to be well formed.
    let payload = Greeting::for_fake_server(SERVER_VERSION, 0, *b"QuorumSQL-proxy-says").to_bytes();
    let mut out = BytesMut::with_capacity(payload.len() + HEADER_LEN);
    encode_packet(0, &payload, &mut out);
    out.to_vec()
}

/// What the client sent in answer to the refusal greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A packet with this sequence id (normally 1: the handshake response or an SSL request).
    Packet(u8),
    /// Nothing usable: timeout, EOF, an oversized or garbled packet.
    Nothing,
}

/// Reads (and discards) the client's first packet, within `within`.
async fn read_answer(sock: &mut TcpStream, within: Duration) -> Answer {
    let read = async {
        let mut hdr = [0u8; HEADER_LEN];
        sock.read_exact(&mut hdr).await.ok()?;
        let (len, seq) = parse_header(&hdr);
        if len > MAX_RESPONSE {
            return None;
        }
        let mut left = len;
        let mut scratch = [0u8; 1024];
        while left > 0 {
            let n = scratch.len().min(left);
            sock.read_exact(&mut scratch[..n]).await.ok()?;
            left -= n;
        }
        Some(seq)
    };
    match timeout(within, read).await {
        Ok(Some(seq)) => Answer::Packet(seq),
        _ => Answer::Nothing,
    }
}

/// Largest ERR packet accepted from mariadbd in place of its greeting.
const MAX_BACKEND_ERR: usize = 1024;

/// Whether the backend's first packet is an ERR (mariadbd's own connection limit, a blocked
/// host) instead of a greeting. A greeting is left unread for the relay; an ERR is consumed and
/// returned, so the client can be refused like any other pre-greeting refusal. `Err` says why
/// the backend is unusable (closed, silent for `within`, garbled).
pub(crate) async fn backend_refusal(
    backend: &TcpStream,
    within: Duration,
) -> Result<Option<(SqlError, String)>, String> {
    let deadline = Instant::now() + within;
    let mut head = [0u8; HEADER_LEN + 1];
    loop {
        let n = match tokio::time::timeout_at(deadline, backend.peek(&mut head)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("reading its greeting: {e}")),
            Err(_) => return Err("no greeting within the connect timeout".into()),
        };
        if n == 0 {
            return Err("it closed the connection before its greeting".into());
        }
        if n == head.len() {
            break;
        }
        // Part of a packet header: peek returns at once while those bytes wait, so pause.
        tokio::time::sleep(Duration::from_millis(1)).await;
        if Instant::now() >= deadline {
            return Err("no complete greeting within the connect timeout".into());
        }
    }
    if head[HEADER_LEN] != 0xFF {
        return Ok(None);
    }
    let mut hdr = [0u8; HEADER_LEN];
    hdr.copy_from_slice(&head[..HEADER_LEN]);
    let (len, _) = parse_header(&hdr);
    if len > MAX_BACKEND_ERR {
        return Err(format!("its first packet is an ERR of {len} bytes"));
    }
    let mut pkt = vec![0u8; HEADER_LEN + len];
    let read = async {
        let mut at = 0;
        while at < pkt.len() {
            backend.readable().await?;
            match backend.try_read(&mut pkt[at..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("reading its error packet: {e}")),
        Err(_) => return Err("its error packet did not arrive within the connect timeout".into()),
    }
    let err = ErrPacket::decode(&pkt[HEADER_LEN..])
        .map_err(|e| format!("its first packet is a garbled ERR: {e}"))?;
    Ok(Some((SqlError::new(err.code, err.state), err.message)))
}

/// Greets the client, waits up to `handshake_timeout` for its handshake response, answers it
/// with `err`/`message`, and closes. Never fails: a client that went away just goes away.
pub(crate) async fn refuse(
    mut sock: TcpStream,
    greeting: &[u8],
    handshake_timeout: Duration,
    err: SqlError,
    message: &str,
) {
    if timeout(WRITE_TIMEOUT, sock.write_all(greeting))
        .await
        .map_or(true, |r| r.is_err())
    {
        return;
    }
    let seq = match read_answer(&mut sock, handshake_timeout).await {
        Answer::Packet(seq) => seq.wrapping_add(1),
        // A client that never answered is not reading either; a raw client that sent garbage
        // still gets the reason, numbered as the answer to a handshake response.
        Answer::Nothing => 2,
    };
    let pkt = mysql::err_packet(seq, err, message);
    let _ = timeout(WRITE_TIMEOUT, async {
        sock.write_all(&pkt).await?;
        sock.shutdown().await
    })
    .await;
    drain(&mut sock).await;
}

/// Reads and discards until EOF or [`LINGER`] passes.
async fn drain(sock: &mut TcpStream) {
    let until = Instant::now() + LINGER;
    let mut scratch = [0u8; 512];
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, sock.read(&mut scratch)).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumsql_wire::handshake::caps;
    use tokio::net::TcpListener;

    #[test]
    fn greeting_offers_neither_tls_nor_compression() {
        let pkt = greeting_packet();
        let (len, seq) = parse_header(pkt[..HEADER_LEN].try_into().unwrap());
        assert_eq!((len + HEADER_LEN, seq), (pkt.len(), 0));
        let g = Greeting::decode(&pkt[HEADER_LEN..]).unwrap();
        assert_eq!(g.server_version, SERVER_VERSION);
        assert_eq!(g.capabilities & (caps::SSL | caps::COMPRESS), 0);
        assert_ne!(g.capabilities & caps::PROTOCOL_41, 0);
        assert_eq!(g.scramble.len(), 20);
    }

    async fn refused_with(client_sends: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            refuse(
                s,
                &greeting_packet(),
                Duration::from_millis(300),
                mysql::ER_CON_COUNT,
                "too many",
            )
            .await;
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut hdr = [0u8; HEADER_LEN];
        c.read_exact(&mut hdr).await.unwrap();
        let mut greeting = vec![0u8; parse_header(&hdr).0];
        c.read_exact(&mut greeting).await.unwrap();
        c.write_all(client_sends).await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        server.await.unwrap();
        (greeting, rest)
    }

    #[tokio::test]
    async fn the_err_answers_the_handshake_response_with_sequence_id_2() {
        let mut resp = vec![40, 0, 0, 1];
        resp.extend_from_slice(&[0x55; 40]);
        let (greeting, rest) = refused_with(&resp).await;
        assert_eq!(greeting[0], 10);
        assert_eq!(rest, mysql::err_packet(2, mysql::ER_CON_COUNT, "too many"));
    }

    #[tokio::test]
    async fn silence_or_garbage_still_gets_the_err() {
        for sent in [&b""[..], &b"\xff\xff\xff\x07garbage"[..], &b"\x05\x00"[..]] {
            let (_, rest) = refused_with(sent).await;
            assert_eq!(
                rest,
                mysql::err_packet(2, mysql::ER_CON_COUNT, "too many"),
                "{sent:?}"
            );
        }
    }
}
