//! Property tests of the request decoder and the engine: random, truncated and arbitrarily split input never
//! panics, and splitting input into chunks never changes what is decoded. proptest prints the failing input and
//! the seed to replay it (`PROPTEST_RNG_SEED`) on failure.

use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use trestle_breaker::ManualClock;
use trestle_cache::{Decoder, DecoderConfig, Engine, Frame, NodeMetrics, ReplyDecoder, Store, StoreConfig};

fn config() -> DecoderConfig {
    DecoderConfig::default()
        .with_max_item_size(64)
        .with_max_line_len(300)
}

fn decode_all(chunks: &[&[u8]]) -> Vec<Frame> {
    let mut decoder = Decoder::new(config());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = decoder.decode(&mut buf) {
            frames.push(frame);
        }
    }
    frames
}

/// Fragments that look like the protocol, so random input reaches deep into the parser.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"get ".to_vec()),
        Just(b"gets a b\r\n".to_vec()),
        Just(b"set k 0 0 3\r\nabc\r\n".to_vec()),
        Just(b"set k 0 0 ".to_vec()),
        Just(b"cas k 1 2 3 4 noreply\r\n".to_vec()),
        Just(b"incr k 18446744073709551616\r\n".to_vec()),
        Just(b"ms k 2 T0 c\r\nhi\r\n".to_vec()),
        Just(b"ms k 99999999999999999999\r\n".to_vec()),
        Just(b"mg k v c t N30 R5 q k Oab b\r\n".to_vec()),
        Just(b"md k I T-1 q\r\n".to_vec()),
        Just(b"ma k N0 J5 D3 MD v\r\n".to_vec()),
        Just(b"mn\r\nme k\r\n".to_vec()),
        Just(b"gat -5 k\r\n".to_vec()),
        Just(b"flush_all -3 noreply\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(vec![b' '; 5]),
        prop::collection::vec(any::<u8>(), 0..40),
        "[a-z0-9 ]{0,20}".prop_map(String::into_bytes),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..12).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&[&bytes]);
    }

    #[test]
    fn chunking_does_not_change_the_frames(bytes in input(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let whole = decode_all(&[&bytes]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for p in points {
            chunks.push(&bytes[start..p]);
            start = p;
        }
        chunks.push(&bytes[start..]);
        prop_assert_eq!(decode_all(&chunks), whole);
    }

    #[test]
    fn truncated_input_yields_a_prefix_of_the_frames(bytes in input(), cut in any::<prop::sample::Index>()) {
        let whole = decode_all(&[&bytes]);
        let cut = cut.index(bytes.len() + 1);
        let part = decode_all(&[&bytes[..cut]]);
        prop_assert!(part.len() <= whole.len());
        // A line too long is decided by how much has arrived; the frames before it must agree.
        let agree = part.iter().zip(&whole).take_while(|(a, b)| a == b).count();
        prop_assert!(agree + 1 >= part.len(), "truncation changed an earlier frame");
    }

    #[test]
    fn the_engine_answers_anything_without_panicking(bytes in input()) {
        let store = Arc::new(Store::new(StoreConfig::with_memory(1 << 20).with_shards(2).with_max_item_size(64), Arc::new(ManualClock::new())).expect("config"));
        let engine = Engine::new(store, Arc::new(NodeMetrics::new()));
        let mut decoder = Decoder::new(config());
        let mut buf = BytesMut::from(&bytes[..]);
        let mut out = BytesMut::new();
        while let Some(frame) = decoder.decode(&mut buf) {
            engine.execute(frame, &mut out);
        }
    }

    #[test]
    fn the_reply_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::from(&bytes[..]);
        while decoder.decode(&mut buf).is_some() {}
    }
}
