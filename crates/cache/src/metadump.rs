//! `lru_crawler metadump all`: memcached's way to list a node's keys, which a client warming a joining node uses
//! to enumerate a peer's items.
//!
//! One line per live item, as memcached 1.6 writes it: `key=<URL-encoded key> exp=<Unix time or -1>
//! la=<Unix time of last access> cas=<n> fetch=<yes|no> cls=1 size=<bytes>`, each ended by a bare `\n`, then
//! `END\r\n`. The store is copied one shard at a time, so the list is not a snapshot of one instant: items
//! written during the dump may or may not appear. The reply is built in memory (about 100 bytes per item).

use bytes::{BufMut, BytesMut};

use crate::store::Store;

/// Appends the metadump of `store` to `out`.
pub(crate) fn write(store: &Store, out: &mut BytesMut) {
    let now = store.unix_now();
    for (key, info) in store.dump() {
        out.put_slice(b"key=");
        url_encode(&key, out);
        let exp = if info.ttl < 0 { -1 } else { now as i64 + info.ttl };
        let fetch = if info.fetched { "yes" } else { "no" };
        let rest = format!(
            " exp={exp} la={} cas={} fetch={fetch} cls=1 size={}\n",
            now.saturating_sub(info.last_access),
            info.cas,
            info.size
        );
        out.put_slice(rest.as_bytes());
    }
    out.put_slice(b"END\r\n");
}

/// memcached's URI encoding of keys: letters, digits and `-._~` as they are, every other byte as `%XX`.
pub(crate) fn url_encode(key: &[u8], out: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.put_u8(b);
        } else {
            out.put_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Decodes a URL-encoded key; `None` for a malformed escape.
pub(crate) fn url_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let hex = std::str::from_utf8(text.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use trestle_breaker::ManualClock;

    use super::*;
    use crate::protocol::StoreMode;
    use crate::store::StoreConfig;

    #[test]
    fn every_live_item_is_listed_then_end() {
        let clock = Arc::new(ManualClock::new());
        let store = Store::new(StoreConfig::with_memory(32 << 20), clock.clone()).expect("store");
        store.store(
            StoreMode::Set,
            Bytes::from_static(b"plain"),
            0,
            0,
            Bytes::from_static(b"v"),
        );
        store.store(
            StoreMode::Set,
            Bytes::from_static(b"odd key"),
            0,
            100,
            Bytes::from_static(b"vv"),
        );
        store.store(
            StoreMode::Set,
            Bytes::from_static(b"short"),
            0,
            1,
            Bytes::from_static(b"x"),
        );
        clock.advance(std::time::Duration::from_secs(2));
        let mut out = BytesMut::new();
        write(&store, &mut out);
        let text = String::from_utf8(out.to_vec()).expect("ASCII");
        assert!(text.ends_with("END\r\n"), "{text}");
        let mut lines: Vec<&str> = text.trim_end_matches("END\r\n").split_terminator('\n').collect();
        lines.sort_unstable();
        assert_eq!(lines.len(), 2, "the expired item is left out: {text}");
        assert!(lines[0].starts_with("key=odd%20key exp="), "{}", lines[0]);
        assert!(lines[1].starts_with("key=plain exp=-1 la="), "{}", lines[1]);
        assert!(lines[1].ends_with(" fetch=no cls=1 size=86"), "{}", lines[1]);
    }

    #[test]
    fn keys_round_trip_through_url_encoding() {
        for key in [&b"user:42"[..], b"a b\x00\xff%", b"plain-key_1.2~"] {
            let mut out = BytesMut::new();
            url_encode(key, &mut out);
            assert!(out.iter().all(|&b| b > b' ' && b < 0x7f), "{out:?}");
            assert_eq!(url_decode(&out).as_deref(), Some(key));
        }
        assert_eq!(url_decode(b"bad%z"), None);
    }
}
