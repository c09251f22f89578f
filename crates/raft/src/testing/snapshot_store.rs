//! The conformance suite every [`SnapshotStore`] runs: what the state machine relies on when it builds, sends,
//! receives and restores snapshots.

use std::io::{Read, Write};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::storage::{ReceivedData, SharedSnapshotStore, SnapshotData, Temporary};
use crate::types::GroupId;

/// Checks a snapshot store. `open` opens the store under test, each call on the same underlying storage (a
/// fresh handle on the same directory, say), so that what one handle committed another must read: that is
/// the restart of a node. Panics with what broke.
///
/// 1. A group has no snapshot until one is committed; a finished temporary is readable but not current.
/// 2. A commit makes the temporary current, whole, for every later handle; the next commit replaces it.
/// 3. Groups do not see each other's snapshots or temporaries.
/// 4. `discard` forgets a temporary; `clean` removes a group's temporaries, finished or not, and nothing else.
/// 5. What openraft writes into `receive`'s data becomes, through `received`, a temporary with those bytes;
///    so does snapshot data the store did not create.
pub async fn check_snapshot_store(open: impl Fn() -> SharedSnapshotStore) {
    let store = open();
    let (a, b): (GroupId, GroupId) = (3, 4);
    store.clean(a).expect("clean on an empty store");
    store.clean(b).expect("clean on an empty store");

    // 1.
    assert!(
        read(&store, a).is_none(),
        "a new store has a snapshot of group {a}"
    );
    assert!(
        store.data(a).expect("data").is_none(),
        "a new store has snapshot data"
    );
    let first = write(&store, a, b"first snapshot");
    assert_eq!(read_temporary(&store, &first), b"first snapshot");
    assert!(
        read(&store, a).is_none(),
        "a temporary became current before its commit"
    );

    // 2.
    store.commit(a, &first).expect("commit");
    assert_eq!(read(&store, a).as_deref(), Some(&b"first snapshot"[..]));
    assert_eq!(
        data_bytes(store.data(a).expect("data").expect("current data")).await,
        b"first snapshot"
    );
    let reopened = open();
    assert_eq!(
        read(&reopened, a).as_deref(),
        Some(&b"first snapshot"[..]),
        "a committed snapshot is not there for the next handle"
    );
    let long: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let second = write(&store, a, &long);
    store.commit(a, &second).expect("second commit");
    assert_eq!(
        read(&open(), a).as_deref(),
        Some(&long[..]),
        "the second commit did not replace the first"
    );

    // 3.
    assert!(read(&store, b).is_none(), "group {b} sees group {a}'s snapshot");
    let other = write(&store, b, b"group b");
    store.commit(b, &other).expect("commit of group b");
    assert_eq!(
        read(&store, a).as_deref(),
        Some(&long[..]),
        "group {b}'s commit changed group {a}"
    );

    // 4.
    let dropped = write(&store, a, b"dropped");
    store.discard(&dropped).expect("discard");
    assert!(
        store.read_temporary(&dropped).is_err(),
        "a discarded temporary is still readable"
    );
    let finished = write(&store, a, b"finished, never committed");
    let mut unfinished = store.create(a).expect("create");
    unfinished.write_all(b"cut short").expect("write");
    let unfinished_name = unfinished.name().clone();
    drop(unfinished);
    let theirs = write(&store, b, b"group b's temporary");
    open().clean(a).expect("clean");
    assert!(
        store.read_temporary(&finished).is_err(),
        "clean left a finished temporary"
    );
    assert!(
        store.read_temporary(&unfinished_name).is_err(),
        "clean left an unfinished temporary"
    );
    assert_eq!(
        read_temporary(&store, &theirs),
        b"group b's temporary",
        "clean of {a} removed {b}'s"
    );
    assert_eq!(
        read(&store, a).as_deref(),
        Some(&long[..]),
        "clean removed the current snapshot"
    );

    // 5.
    let mut receiving = store.receive(a).expect("receive");
    for chunk in long.chunks(1 << 20) {
        receiving.write_all(chunk).await.expect("write a received chunk");
    }
    receiving.shutdown().await.expect("shutdown");
    let received = store
        .received(a, receiving.into_received().await)
        .expect("received");
    assert_eq!(
        read_temporary(&store, &received),
        long,
        "received data differs from what was written"
    );
    store.commit(a, &received).expect("commit a received snapshot");
    assert_eq!(read(&open(), a).as_deref(), Some(&long[..]));
    let foreign = ReceivedData::Memory {
        bytes: b"from elsewhere".to_vec(),
        name: None,
    };
    let foreign = store.received(a, foreign).expect("received foreign data");
    assert_eq!(read_temporary(&store, &foreign), b"from elsewhere");
    store.discard(&foreign).expect("discard");
}

fn write(store: &SharedSnapshotStore, group: GroupId, bytes: &[u8]) -> Temporary {
    let mut out = store.create(group).expect("create");
    out.write_all(bytes).expect("write");
    out.finish().expect("finish")
}

fn read(store: &SharedSnapshotStore, group: GroupId) -> Option<Vec<u8>> {
    let mut input = store.read(group).expect("read")?;
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).expect("read to the end");
    Some(bytes)
}

fn read_temporary(store: &SharedSnapshotStore, temporary: &Temporary) -> Vec<u8> {
    let mut input = store.read_temporary(temporary).expect("read a temporary");
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).expect("read to the end");
    bytes
}

async fn data_bytes(mut data: SnapshotData) -> Vec<u8> {
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.expect("read snapshot data");
    bytes
}
