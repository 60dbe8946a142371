//! Fuzz-style: random bytes, and random mutations of valid encodings, fed to every decoder must
//! give a value or an error, never a panic (invariant 6: bad input never crashes the node).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use quorumsql_wire::auth::AuthSwitchRequest;
use quorumsql_wire::command::Command;
use quorumsql_wire::event::{
    build_fake_rotate, build_gtid_list, build_heartbeat, event_body, parse_event, verify_checksum,
    with_log_pos, Checksum, FormatDescription, GtidEvent, GtidList, Heartbeat, QueryEvent, Rotate,
};
use quorumsql_wire::handshake::{Greeting, HandshakeResponse};
use quorumsql_wire::proxy_protocol::ProxyHeader;
use quorumsql_wire::response::{
    decode_text_row, encode_text_result_set, ColumnDef, EofPacket, ErrPacket, OkPacket,
    TextResultParser,
};
use quorumsql_wire::semisync::{decode_dump_packet, SemiSyncAck, SemiSyncEvent};
use quorumsql_wire::statement::first_keyword;
use quorumsql_wire::txn::{TxnAssembler, TxnDigester};
use quorumsql_wire::{EventHeader, Gtid, PacketCodec};

fn feed_every_decoder(b: &[u8]) {
    let bytes = Bytes::copy_from_slice(b);
    let _ = Greeting::decode(b);
    let _ = HandshakeResponse::decode(b);
    let _ = AuthSwitchRequest::decode(b);
    let _ = OkPacket::decode(b);
    let _ = ErrPacket::decode(b);
    let _ = EofPacket::decode(b);
    let _ = ColumnDef::decode(b);
    for n in [0, 1, 3, 1000, usize::MAX] {
        let _ = decode_text_row(b, n);
    }
    let mut p = TextResultParser::new(1 << 16);
    for chunk in b.chunks(7) {
        if p.push(chunk).is_err() {
            break;
        }
    }
    let _ = Command::decode(&bytes);
    let _ = SemiSyncEvent::decode(b);
    let _ = SemiSyncAck::decode(b);
    let _ = decode_dump_packet(b, true);
    let _ = decode_dump_packet(b, false);
    let _ = first_keyword(b);
    let _ = ProxyHeader::decode(b);
    let _ = EventHeader::decode(b);
    for sum in [Checksum::None, Checksum::Crc32] {
        let _ = parse_event(b, sum);
        let _ = event_body(b, sum);
        let _ = with_log_pos(b, 1, Some(2), sum);
        let mut d = TxnDigester::new(sum);
        let _ = d.update(b);
        let mut a = TxnAssembler::new(sum, 1 << 16);
        let _ = a.push(bytes.clone());
    }
    let _ = verify_checksum(b);
    let _ = FormatDescription::decode(b);
    let _ = FormatDescription::from_body(b);
    let _ = Rotate::decode_body(b);
    let _ = GtidEvent::decode_body(b);
    let _ = GtidList::decode_body(b);
    let _ = QueryEvent::decode_body(b);
    if let Ok(h) = EventHeader::decode(b) {
        let _ = Heartbeat::decode(&h, b);
    }
    for check in [true, false] {
        let mut codec = PacketCodec::new(4096);
        codec.set_check_sequence(check);
        let mut src = BytesMut::from(b);
        while let Ok(Some(_)) = codec.decode(&mut src) {}
    }
}

/// Valid encodings to mutate: every structure a peer may send us.
fn seeds() -> Vec<Vec<u8>> {
    let fd_body = {
        let mut v = vec![4u8, 0];
        let mut ver = b"10.11.19-MariaDB-log".to_vec();
        ver.resize(50, 0);
        v.extend(ver);
        v.extend([0, 0, 0, 0, 19]);
        v.extend([8u8; 171]);
        v.push(1);
        v
    };
    let fd = FormatDescription::from_body(&fd_body).expect("valid FD");
    let (packets, _) = (
        encode_text_result_set(
            &[ColumnDef::text("a")],
            &[vec![Some(b"1".to_vec()), None]],
            2,
        ),
        (),
    );
    let mut q = BytesMut::new();
    QueryEvent {
        thread_id: 1,
        exec_time: 0,
        error_code: 0,
        status_vars: &[1, 2, 3],
        db: b"db",
        query: b"COMMIT",
    }
    .encode_body(&mut q);
    let mut v: Vec<Vec<u8>> = vec![
        Greeting {
            server_version: "5.5.5-10.11.19-MariaDB".into(),
            connection_id: 1,
            scramble: vec![7; 20],
            capabilities: 0xf7fe | 0x81ff << 16,
            charset: 8,
            status: 2,
            mariadb_ext_caps: 0x1d,
            auth_plugin: "mysql_native_password".into(),
        }
        .to_bytes()
        .to_vec(),
        hex::decode("ef04070000000000006d7973716c2d62696e2e303030303032").expect("hex"),
        hex::decode("00ef01a15f076b10010000001f000000040700000000370000000000000000d881530c")
            .expect("hex"),
        hex::decode("15020000000000000b5b0000000000000000").expect("hex"),
        hex::decode("122e0600000200020000006d7973716c2d62696e2e303030303032").expect("hex"),
        build_fake_rotate(1, "mysql-bin.000002", 4, Checksum::Crc32).to_vec(),
        build_heartbeat(1, "mysql-bin.000002", 5 << 30, Checksum::Crc32).to_vec(),
        build_gtid_list(1, 0, 100, 0x20, &[Gtid::new(0, 1, 10), Gtid::new(1, 2, 3)]).to_vec(),
        GtidEvent::new(0, 5, 0x29).build_event(1, 1, 1, 8).to_vec(),
        fd.build_event(1, 1, 256, 0).to_vec(),
        q.to_vec(),
        ErrPacket::new(1236, "x").to_bytes().to_vec(),
        ProxyHeader::Proxy {
            source: "1.2.3.4:5".parse().expect("addr"),
            destination: "[::1]:6".parse().expect("addr"),
        }
        .to_bytes()
        .to_vec(),
    ];
    v.extend(packets.into_iter().map(|p| p.to_vec()));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bytes(b in prop::collection::vec(any::<u8>(), 0..300)) {
        feed_every_decoder(&b);
    }

    #[test]
    fn mutated_valid_encodings(seed in 0usize..100, edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..6)) {
        let all = seeds();
        let mut b = all[seed % all.len()].clone();
        for (at, val, op) in edits {
            match op {
                0 if !b.is_empty() => { let i = at % b.len(); b[i] = val; }
                1 if !b.is_empty() => { b.truncate(at % b.len()); }
                2 => { let i = if b.is_empty() { 0 } else { at % b.len() }; b.insert(i, val); }
                _ if !b.is_empty() => { let i = at % b.len(); b[i] ^= 1 << (val % 8); }
                _ => {}
            }
        }
        feed_every_decoder(&b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Streams of valid and corrupted events through one assembler: errors, never panics, and
    /// after an error `reset` makes it usable again.
    #[test]
    fn event_streams_through_one_assembler(picks in prop::collection::vec((0usize..100, any::<usize>(), any::<u8>(), any::<bool>()), 1..40)) {
        let all = seeds();
        let mut a = TxnAssembler::new(Checksum::Crc32, 1 << 16);
        for (seed, at, val, corrupt) in picks {
            let mut b = all[seed % all.len()].clone();
            if corrupt && !b.is_empty() {
                let i = at % b.len();
                b[i] = val;
            }
            if a.push(Bytes::from(b)).is_err() {
                a.reset();
            }
        }
    }
}

#[test]
fn huge_length_fields_do_not_allocate() {
    // A packet header announcing 16 MiB against a 4 KiB limit.
    let mut codec = PacketCodec::new(4096);
    let mut src = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0][..]);
    assert!(codec.decode(&mut src).is_err());
    // A row announcing a 2^64-byte value.
    let row = [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert!(decode_text_row(&row, 1).is_err());
    // A GTID_LIST announcing 2^28 entries.
    assert!(GtidList::decode_body(&[0xFF, 0xFF, 0xFF, 0x0F]).is_err());
}
