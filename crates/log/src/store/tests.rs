use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::*;

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; 10].into(),
        ..Default::default()
    }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn snap(index: u64, term: u64) -> Snapshot {
    let mut s = Snapshot {
        data: b"state".to_vec().into(),
        ..Default::default()
    };
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().set_conf_state(ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    });
    s
}

/// Behaviour every LogStore must have, run against both implementations.
fn basic_contract(s: &mut dyn LogStore) {
    assert_eq!((s.first_index(), s.last_index()), (1, 0));
    s.append(&[ent(1, 1), ent(2, 1), ent(3, 2)], Some(&hs(2, 1, 2)), true)
        .unwrap();
    assert_eq!((s.first_index(), s.last_index()), (1, 3));
    assert_eq!(s.term(3).unwrap(), 2);
    assert_eq!(s.term(0).unwrap(), 0);
    assert!(matches!(s.term(4), Err(StoreError::Unavailable { .. })));
    // Overwriting a suffix truncates what followed.
    s.append(&[ent(2, 3)], None, true).unwrap();
    assert_eq!(s.last_index(), 2);
    assert_eq!(s.term(2).unwrap(), 3);
    assert!(matches!(
        s.append(&[ent(9, 3)], None, true),
        Err(StoreError::Invalid(_))
    ));
    s.append(&[ent(3, 3), ent(4, 3), ent(5, 3)], None, true)
        .unwrap();
    let all = s.entries(1, 6, None).unwrap();
    assert_eq!(
        all.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        s.entries(1, 6, Some(1)).unwrap().len(),
        1,
        "max_size keeps at least one"
    );
    // Compaction needs a snapshot covering it.
    assert!(matches!(s.compact(3, true), Err(StoreError::Invalid(_))));
    s.save_snapshot(&snap(3, 3), true).unwrap();
    s.compact(3, true).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (4, 5));
    assert_eq!(s.term(3).unwrap(), 3);
    assert!(matches!(
        s.entries(2, 5, None),
        Err(StoreError::Compacted { truncated: 3 })
    ));
    assert!(matches!(
        s.append(&[ent(3, 4)], None, true),
        Err(StoreError::Invalid(_))
    ));
    s.put_meta("k", b"v", true).unwrap();
    assert_eq!(s.get_meta("k").as_deref(), Some(&b"v"[..]));
    assert_eq!(s.hard_state(), hs(2, 1, 2));
}

fn install_contract(s: &mut dyn LogStore) {
    s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)], Some(&hs(1, 1, 3)), true)
        .unwrap();
    s.put_meta("k", b"v", true).unwrap();
    s.install_snapshot(&snap(10, 4), &hs(4, 2, 10), true)
        .unwrap();
    assert_eq!((s.first_index(), s.last_index()), (11, 10));
    assert_eq!(s.term(10).unwrap(), 4);
    assert_eq!(s.hard_state(), hs(4, 2, 10));
    assert_eq!(s.snapshot().unwrap().get_metadata().index, 10);
    assert_eq!(
        s.get_meta("k").as_deref(),
        Some(&b"v"[..]),
        "metadata survives an install"
    );
    s.append(&[ent(11, 4)], None, true).unwrap();
    assert_eq!(s.last_index(), 11);
}

#[test]
fn mem_store_contract() {
    basic_contract(&mut MemStore::new());
    install_contract(&mut MemStore::new());
}

#[test]
fn raft_engine_store_contract() {
    let d = tempfile::tempdir().unwrap();
    basic_contract(&mut RaftEngineStore::open(&d.path().join("a")).unwrap());
    install_contract(&mut RaftEngineStore::open(&d.path().join("b")).unwrap());
}

#[test]
fn mem_store_crash_loses_exactly_the_unsynced_suffix() {
    let mut s = MemStore::new();
    s.append(&[ent(1, 1), ent(2, 1)], Some(&hs(1, 0, 0)), true)
        .unwrap();
    s.append(&[], Some(&hs(1, 0, 2)), false).unwrap();
    s.append(&[ent(3, 1)], None, false).unwrap();
    assert_eq!(
        s.last_index(),
        3,
        "unsynced writes are readable before a crash"
    );
    assert_eq!(s.unsynced_writes(), 2);
    let s = s.crash();
    assert_eq!(s.last_index(), 2);
    assert_eq!(s.hard_state(), hs(1, 0, 0));
    // A later synced write makes the earlier unsynced ones durable too (write order is kept).
    let mut s = s;
    s.append(&[], Some(&hs(1, 0, 1)), false).unwrap();
    s.put_meta("m", b"1", true).unwrap();
    let s = s.crash();
    assert_eq!(s.hard_state(), hs(1, 0, 1));
    assert_eq!(s.get_meta("m").as_deref(), Some(&b"1"[..]));
}

#[test]
fn raft_engine_store_reopen_restores_what_was_synced() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut s = RaftEngineStore::open(d.path()).unwrap();
        s.append(
            &[ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2)],
            Some(&hs(2, 3, 3)),
            true,
        )
        .unwrap();
        s.save_snapshot(&snap(2, 1), true).unwrap();
        s.compact(2, true).unwrap();
        s.put_meta("applied", &7u64.to_le_bytes(), true).unwrap();
    }
    let s = RaftEngineStore::open(d.path()).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (3, 4));
    assert_eq!(s.truncated(), (2, 1));
    assert_eq!(s.term(4).unwrap(), 2);
    assert_eq!(s.hard_state(), hs(2, 3, 3));
    assert_eq!(s.snapshot().unwrap().get_metadata().index, 2);
    assert_eq!(s.entries(3, 5, None).unwrap()[1], ent(4, 2));
    assert_eq!(
        s.get_meta("applied").as_deref(),
        Some(&7u64.to_le_bytes()[..])
    );

    // A snapshot install survives a reopen as well, with no stale entries behind it.
    let d2 = tempfile::tempdir().unwrap();
    {
        let mut s = RaftEngineStore::open(d2.path()).unwrap();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)], Some(&hs(1, 1, 3)), true)
            .unwrap();
        s.install_snapshot(&snap(10, 4), &hs(4, 2, 10), true)
            .unwrap();
        s.append(&[ent(11, 4)], None, true).unwrap();
    }
    let s = RaftEngineStore::open(d2.path()).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (11, 11));
    assert_eq!(s.hard_state(), hs(4, 2, 10));
    assert_eq!(s.term(10).unwrap(), 4);
}
