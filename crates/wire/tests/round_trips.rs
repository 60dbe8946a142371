//! Encode → decode round trips for every codec (proptest).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use quorumsql_wire::auth::AuthSwitchRequest;
use quorumsql_wire::command::{BinlogDump, Command, RegisterSlave};
use quorumsql_wire::event::{
    build_event, build_fake_rotate, build_gtid_list, build_heartbeat, gtid_flags, parse_event,
    verify_checksum, with_log_pos, Checksum, EventBody, EventHeader, EventType, GtidEvent,
    Heartbeat, QueryEvent, Rotate, XaXid,
};
use quorumsql_wire::handshake::{caps, Greeting, HandshakeResponse};
use quorumsql_wire::packet::encode_packet;
use quorumsql_wire::proxy_protocol::ProxyHeader;
use quorumsql_wire::response::{
    encode_text_result_set, ColumnDef, EofPacket, ErrPacket, OkPacket, QueryResult,
    TextResultParser,
};
use quorumsql_wire::semisync::{SemiSyncAck, SemiSyncEvent};
use quorumsql_wire::txn::{Assembled, TxnAssembler};
use quorumsql_wire::{Gtid, PacketCodec};

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.+-]{0,40}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn packets(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..5), seq in any::<u8>()) {
        let mut wire = BytesMut::new();
        let mut s = seq;
        for p in &payloads {
            s = encode_packet(s, p, &mut wire);
        }
        let mut codec = PacketCodec::new(1 << 20);
        codec.set_sequence(seq);
        for p in &payloads {
            let got = codec.decode(&mut wire).expect("valid").expect("complete");
            prop_assert_eq!(&got.payload[..], &p[..]);
        }
        prop_assert!(wire.is_empty());
        prop_assert_eq!(codec.sequence(), s);
    }

    #[test]
    fn greetings(version in "[a-zA-Z0-9.-]{1,40}", id in any::<u32>(), scramble in prop::collection::vec(1u8..=255, 20),
                 capabilities in any::<u32>(), charset in any::<u8>(), status in any::<u16>(), ext in any::<u32>(),
                 plugin in "[a-z_]{1,30}") {
        let capabilities = capabilities | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH;
        let g = Greeting { server_version: version, connection_id: id, scramble, capabilities, charset, status,
            mariadb_ext_caps: if capabilities & caps::CLIENT_MYSQL == 0 { ext } else { 0 }, auth_plugin: plugin };
        prop_assert_eq!(Greeting::decode(&g.to_bytes()).expect("decodes"), g);
    }

    #[test]
    fn handshake_responses(capabilities in any::<u32>(), max_packet in any::<u32>(), charset in any::<u8>(), ext in any::<u32>(),
                           user in name(), auth in prop::collection::vec(any::<u8>(), 0..=40), db in prop::option::of(name()),
                           plugin in prop::option::of("[a-z_]{1,30}"),
                           attrs in prop::option::of(prop::collection::vec((name(), name()), 0..5))) {
        let capabilities = (capabilities | caps::PROTOCOL_41) & !caps::SSL;
        let r = HandshakeResponse { capabilities, max_packet, charset,
            mariadb_ext_caps: if capabilities & caps::CLIENT_MYSQL == 0 { ext } else { 0 },
            user, auth_response: auth, database: db, auth_plugin: plugin, connect_attrs: attrs };
        let wire = r.to_bytes();
        let back = HandshakeResponse::decode(&wire).expect("decodes");
        prop_assert_eq!(&back.user, &r.user);
        prop_assert_eq!(&back.auth_response, &r.auth_response);
        prop_assert_eq!(&back.database, &r.database);
        prop_assert_eq!(&back.auth_plugin, &r.auth_plugin);
        prop_assert_eq!(&back.connect_attrs, &r.connect_attrs);
        prop_assert_eq!(back.to_bytes(), wire);
    }

    #[test]
    fn auth_switch(plugin in "[a-z_]{1,30}", data in prop::collection::vec(any::<u8>(), 0..40)) {
        let a = AuthSwitchRequest { plugin, data };
        prop_assert_eq!(AuthSwitchRequest::decode(&a.to_bytes()).expect("decodes"), a);
    }

    #[test]
    fn ok_err_eof(affected in any::<u64>(), id in any::<u64>(), status in any::<u16>(), warnings in any::<u16>(),
                  info in ".{0,20}", code in any::<u16>(), state in prop::array::uniform5(any::<u8>())) {
        let ok = OkPacket { affected_rows: affected, last_insert_id: id, status, warnings, info: info.clone() };
        prop_assert_eq!(OkPacket::decode(&ok.to_bytes()).expect("ok"), ok);
        let err = ErrPacket { code, state, message: info };
        prop_assert_eq!(ErrPacket::decode(&err.to_bytes()).expect("err"), err);
        let eof = EofPacket { warnings, status };
        prop_assert_eq!(EofPacket::decode(&eof.to_bytes()).expect("eof"), eof);
    }

    #[test]
    fn result_sets(ncols in 1usize..5, rows in prop::collection::vec(prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..300)), 5), 0..6),
                   col_name in name(), length in any::<u32>(), column_type in any::<u8>(), flags in any::<u16>()) {
        let columns: Vec<ColumnDef> = (0..ncols).map(|i| ColumnDef { length, column_type, flags,
            name: format!("{col_name}{i}"), ..ColumnDef::text("x") }).collect();
        let rows: Vec<Vec<Option<Vec<u8>>>> = rows.into_iter().map(|r| r[..ncols].to_vec()).collect();
        let packets = encode_text_result_set(&columns, &rows, 2);
        let mut p = TextResultParser::new(1 << 20);
        let mut result = None;
        for pkt in &packets {
            prop_assert!(result.is_none());
            result = p.push(pkt).expect("parses");
        }
        let Some(QueryResult::ResultSet(rs)) = result else { panic!("no result set") };
        prop_assert_eq!(rs.columns, columns);
        let got: Vec<Vec<Option<Vec<u8>>>> = rs.rows.iter().map(|r| r.iter().map(|v| v.as_ref().map(|b| b.to_vec())).collect()).collect();
        prop_assert_eq!(got, rows);
    }

    #[test]
    fn commands(sql in prop::collection::vec(any::<u8>(), 0..100), id in any::<u32>(), port in any::<u16>(),
                host in prop::collection::vec(any::<u8>(), 0..50), file in name(), flags in any::<u16>(), level in any::<u8>()) {
        let cmds = vec![
            Command::Quit, Command::Ping, Command::Statistics, Command::ResetConnection,
            Command::Query(Bytes::from(sql.clone())), Command::InitDb(Bytes::from(sql.clone())),
            Command::StmtPrepare(Bytes::from(sql.clone())), Command::BinlogDumpGtid(Bytes::from(sql.clone())),
            Command::ProcessKill(id), Command::Shutdown(None), Command::Shutdown(Some(level)),
            Command::RegisterSlave(RegisterSlave { server_id: id, report_host: Bytes::from(host.clone()),
                report_user: Bytes::from(host.clone()), report_password: Bytes::new(), report_port: port,
                recovery_rank: id, master_id: 0 }),
            Command::BinlogDump(BinlogDump { position: id, flags, server_id: id, file }),
            Command::Other { code: 0x17, body: Bytes::from(sql) },
        ];
        for c in cmds {
            prop_assert_eq!(Command::decode(&c.to_bytes()).expect("decodes"), c);
        }
    }

    #[test]
    fn semisync(ack in any::<bool>(), event in prop::collection::vec(any::<u8>(), 0..100), pos in any::<u64>(), file in name()) {
        let e = SemiSyncEvent { ack_requested: ack, event: &event };
        let mut b = BytesMut::new();
        e.encode(&mut b);
        prop_assert_eq!(SemiSyncEvent::decode(&b).expect("decodes"), e);
        let a = SemiSyncAck { position: pos, file };
        prop_assert_eq!(SemiSyncAck::decode(&a.to_bytes()).expect("decodes"), a);
    }

    #[test]
    fn gtid_events(seq in any::<u64>(), domain in any::<u32>(), flags2 in any::<u8>(), commit_id in any::<u64>(),
                   format_id in any::<u32>(), gtrid in prop::collection::vec(any::<u8>(), 0..=64), bqual in prop::collection::vec(any::<u8>(), 0..=64),
                   flags_extra in prop::option::of(any::<u8>()), engines in any::<u8>(), sa in any::<u64>(),
                   server in any::<u32>(), log_pos in any::<u32>()) {
        let xa = flags2 & (gtid_flags::PREPARED_XA | gtid_flags::COMPLETED_XA) != 0;
        let fe = flags_extra.unwrap_or(0);
        let g = GtidEvent {
            seq, domain, flags2,
            commit_id: (flags2 & gtid_flags::GROUP_COMMIT_ID != 0).then_some(commit_id),
            xa: xa.then_some(XaXid { format_id, gtrid, bqual }),
            flags_extra,
            extra_engines: (fe & 1 != 0).then_some(engines),
            sa_seq_no: (fe & 0x0C != 0).then_some(sa),
        };
        let ev = g.build_event(server, 7, log_pos, 8);
        verify_checksum(&ev).expect("valid CRC");
        let p = parse_event(&ev, Checksum::Crc32).expect("parses");
        prop_assert_eq!(p.body, EventBody::Gtid(g.clone()));
        prop_assert_eq!(g.gtid(p.header.server_id), Gtid::new(domain, server, seq));
    }

    #[test]
    fn metadata_events(server in any::<u32>(), file in "[a-z.0-9-]{1,60}", pos in any::<u64>(), log_pos in any::<u32>(),
                       gtids in prop::collection::vec((any::<u32>(), any::<u32>(), any::<u64>()), 0..10)) {
        let r = build_fake_rotate(server, &file, pos, Checksum::Crc32);
        verify_checksum(&r).expect("crc");
        prop_assert_eq!(parse_event(&r, Checksum::Crc32).expect("rotate").body, EventBody::Rotate(Rotate { position: pos, file: file.clone() }));
        let h = build_heartbeat(server, &file, pos, Checksum::None);
        prop_assert_eq!(parse_event(&h, Checksum::None).expect("hb").body, EventBody::Heartbeat(Heartbeat { file: file.clone(), position: pos }));
        let list: Vec<Gtid> = gtids.into_iter().map(|(d, s, q)| Gtid::new(d, s, q)).collect();
        let gl = build_gtid_list(server, 0, log_pos, 0x20, &list);
        let EventBody::GtidList(back) = parse_event(&gl, Checksum::Crc32).expect("list").body else { panic!("not a list") };
        prop_assert_eq!(back.gtids, list);
        let moved = with_log_pos(&gl, log_pos ^ 0x55, Some(0), Checksum::Crc32).expect("rewrite");
        verify_checksum(&moved).expect("crc after rewrite");
        let hdr = EventHeader::decode(&moved).expect("header");
        prop_assert_eq!((hdr.log_pos, hdr.flags), (log_pos ^ 0x55, 0));
    }

    #[test]
    fn query_events(thread_id in any::<u32>(), exec_time in any::<u32>(), error_code in any::<u16>(),
                    sv in prop::collection::vec(any::<u8>(), 0..60), db in "[a-z]{0,20}", query in prop::collection::vec(any::<u8>(), 0..200)) {
        let q = QueryEvent { thread_id, exec_time, error_code, status_vars: &sv, db: db.as_bytes(), query: &query };
        let mut body = BytesMut::new();
        q.encode_body(&mut body);
        let ev = build_event(EventType::Query, 1, 2, 3, 0, &body, Checksum::Crc32);
        prop_assert_eq!(parse_event(&ev, Checksum::Crc32).expect("query").body, EventBody::Query(q));
    }

    #[test]
    fn proxy_headers(src in any::<std::net::SocketAddr>(), dst in any::<std::net::SocketAddr>()) {
        let same_family = src.is_ipv4() == dst.is_ipv4();
        let h = ProxyHeader::Proxy { source: src, destination: dst };
        let (back, n) = ProxyHeader::decode(&h.to_bytes()).expect("ok").expect("complete");
        prop_assert_eq!(n, h.to_bytes().len());
        let ProxyHeader::Proxy { source, destination } = back else { panic!("local") };
        prop_assert_eq!((source.port(), destination.port()), (src.port(), dst.port()));
        // IPv6 scope ids and flow labels are not part of the header.
        if same_family {
            prop_assert_eq!((source.ip(), destination.ip()), (src.ip(), dst.ip()));
        }
    }

    /// Random well-formed streams of groups come back as the same transactions.
    #[test]
    fn transactions(groups in prop::collection::vec((0u8..3, 0usize..4), 1..8)) {
        let mut a = TxnAssembler::new(Checksum::Crc32, 1 << 20);
        let mut out = Vec::new();
        let mut seq = 0;
        let mut pushed = Vec::new();
        for (kind, nrows) in groups {
            seq += 1;
            let standalone = kind == 2;
            let flags2 = if standalone { gtid_flags::STANDALONE | gtid_flags::DDL } else { 0x0c };
            let mut evs = vec![GtidEvent::new(0, seq, flags2).build_event(3, 1, 0, 8)];
            if !standalone {
                for i in 0..nrows {
                    evs.push(build_event(EventType::WriteRowsV1, 3, 1, 0, 0, &[i as u8, 0, 0, 0, 0, 0, 1, 0], Checksum::Crc32));
                }
            }
            let end = if kind == 0 {
                build_event(EventType::Xid, 3, 1, seq as u32 * 100, 0, &seq.to_le_bytes(), Checksum::Crc32)
            } else {
                let mut b = BytesMut::new();
                QueryEvent { thread_id: 1, exec_time: 0, error_code: 0, status_vars: &[], db: b"",
                    query: if standalone { b"CREATE TABLE t (i INT)" } else { b"COMMIT" } }.encode_body(&mut b);
                build_event(EventType::Query, 3, 1, seq as u32 * 100, 0, &b, Checksum::Crc32)
            };
            evs.push(end);
            for e in &evs {
                if let Assembled::Transaction(t) = a.push(e.clone()).expect("valid stream") {
                    out.push(t);
                }
            }
            pushed.push(evs);
        }
        prop_assert_eq!(out.len(), pushed.len());
        for (t, evs) in out.iter().zip(&pushed) {
            prop_assert_eq!(&t.events, evs);
            prop_assert_eq!(t.end_log_pos as u64, t.gtid.seq * 100);
        }
    }
}
