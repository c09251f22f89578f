//! Compile-time checks that the public handles and futures can cross threads: these functions are never
//! called, they only have to compile.

use std::time::Duration;

use bytes::Bytes;
use trestle_cache::{Client, Engine, RunningNode, Store};

fn send_sync<T: Send + Sync>(_: &T) {}
fn send<T: Send>(_: T) {}

#[allow(dead_code)]
fn client_and_its_futures(client: &Client) {
    send_sync(client);
    send(client.get(b"k"));
    send(client.get_many(&[b"k"]));
    send(client.set(b"k", Bytes::new(), Duration::ZERO));
    send(client.delete(b"k"));
    send(client.invalidate(b"k"));
    send(client.get_or_load(b"k", Duration::ZERO, || async {
        Ok::<_, std::io::Error>(Bytes::new())
    }));
}

#[allow(dead_code)]
fn node_parts(node: RunningNode, engine: &Engine, store: &Store) {
    send_sync(&node);
    send_sync(engine);
    send_sync(store);
    send(node.shutdown());
}

#[test]
fn compiles() {}
