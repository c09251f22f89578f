//! etcd `Watch`: one bidirectional stream carries any number of watchers.
//!
//! Each stream runs one task. Watchers read their events from the store's retained history, starting at the
//! next revision each has not seen; the store's feed of applied revisions only says "look again". So a watcher
//! that starts in the past, one that falls behind, and one whose node just installed a snapshot all take the
//! same path, and every watcher sees every revision in order, without gaps or repeats — across leader changes
//! too, because it follows this node's own applied state. History that compaction removed ends the watcher
//! with etcd's compacted response.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::proto::{PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService};
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdServer, convert};
use crate::mvcc::{EventKind, MvccError, Revision, in_range};

/// etcd's filter numbers.
const FILTER_NO_PUT: i32 = 0;
const FILTER_NO_DELETE: i32 = 1;

/// How many responses may wait for a slow client before the stream task waits for it.
const STREAM_BUFFER: usize = 256;

#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The first revision this watcher has not been sent yet.
    next_revision: Revision,
}

type Outbox = mpsc::Sender<Result<PbWatchResponse, Status>>;

#[tonic::async_trait]
impl PbWatchService for EtcdServer {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let server = self.clone();
        let inbound = request.into_inner();
        tokio::spawn(async move { server.run_watch_stream(inbound, tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl EtcdServer {
    async fn run_watch_stream(self, mut inbound: Streaming<PbWatchRequest>, tx: Outbox) {
        let mut feed = self.store.read(|app| app.subscribe());
        let mut watchers: BTreeMap<i64, Watcher> = BTreeMap::new();
        let mut next_id: i64 = 0;
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.watch_progress_interval,
            self.settings
                .watch_progress_interval
                .max(Duration::from_millis(10)),
        );
        metrics::gauge!("trestle_watch_streams").increment(1.0);
        loop {
            let responses = tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => self.handle_watch_request(request, &mut watchers, &mut next_id),
                    // The client went away or broke the stream: drop its watchers.
                    Some(Err(_)) | None => break,
                },
                notice = feed.recv() => match notice {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(&mut watchers),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = progress.tick() => {
                    let revision = self.store.read(|app| app.store().revision());
                    watchers
                        .iter()
                        .filter(|(_, w)| w.progress_notify)
                        .map(|(id, _)| PbWatchResponse { header: Some(self.header(revision)), watch_id: *id, ..Default::default() })
                        .collect()
                }
                () = tx.closed() => break,
                () = self.stopping.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("etcdserver: server stopped"))).await;
                    break;
                }
            };
            for response in responses {
                if tx.send(Ok(response)).await.is_err() {
                    metrics::gauge!("trestle_watch_streams").decrement(1.0);
                    return;
                }
            }
        }
        metrics::gauge!("trestle_watch_streams").decrement(1.0);
    }

    fn handle_watch_request(
        &self,
        request: PbWatchRequest,
        watchers: &mut BTreeMap<i64, Watcher>,
        next_id: &mut i64,
    ) -> Vec<PbWatchResponse> {
        match request.request_union {
            Some(PbWatchRequestUnion::CreateRequest(create)) => {
                let (current, compact) = self
                    .store
                    .read(|app| (app.store().revision(), app.store().compact_revision()));
                let header = Some(self.header(current));
                let id = if create.watch_id != 0 {
                    if watchers.contains_key(&create.watch_id) {
                        return vec![PbWatchResponse {
                            header,
                            watch_id: create.watch_id,
                            created: true,
                            canceled: true,
                            cancel_reason: "etcdserver: duplicate watch ID".into(),
                            ..Default::default()
                        }];
                    }
                    create.watch_id
                } else {
                    while watchers.contains_key(next_id) {
                        *next_id += 1;
                    }
                    *next_id
                };
                let created = PbWatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                if create.start_revision > 0 && create.start_revision < compact {
                    return vec![
                        created,
                        self.compacted(id, create.start_revision, compact, current),
                    ];
                }
                let key = if create.key.is_empty() {
                    vec![0]
                } else {
                    create.key
                };
                watchers.insert(
                    id,
                    Watcher {
                        key,
                        range_end: create.range_end,
                        prev_kv: create.prev_kv,
                        no_put: create.filters.contains(&FILTER_NO_PUT),
                        no_delete: create.filters.contains(&FILTER_NO_DELETE),
                        progress_notify: create.progress_notify,
                        next_revision: if create.start_revision > 0 {
                            create.start_revision
                        } else {
                            current + 1
                        },
                    },
                );
                metrics::gauge!("trestle_watchers").increment(1.0);
                let mut responses = vec![created];
                responses.extend(self.catch_up(watchers));
                responses
            }
            Some(PbWatchRequestUnion::CancelRequest(cancel)) => match watchers.remove(&cancel.watch_id) {
                Some(_) => {
                    metrics::gauge!("trestle_watchers").decrement(1.0);
                    let revision = self.store.read(|app| app.store().revision());
                    vec![PbWatchResponse {
                        header: Some(self.header(revision)),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    }]
                }
                None => Vec::new(),
            },
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // Every watcher is caught up after each catch_up, so the current revision is a valid progress mark.
                let revision = self.store.read(|app| app.store().revision());
                vec![PbWatchResponse {
                    header: Some(self.header(revision)),
                    watch_id: -1,
                    ..Default::default()
                }]
            }
            None => Vec::new(),
        }
    }

    fn compacted(
        &self,
        id: i64,
        requested: Revision,
        compact: Revision,
        current: Revision,
    ) -> PbWatchResponse {
        PbWatchResponse {
            header: Some(self.header(current)),
            watch_id: id,
            canceled: true,
            compact_revision: compact,
            cancel_reason: MvccError::Compacted {
                requested,
                compact_revision: compact,
            }
            .to_string(),
            ..Default::default()
        }
    }

    /// Sends every watcher the events it has not seen, from the store's history.
    fn catch_up(&self, watchers: &mut BTreeMap<i64, Watcher>) -> Vec<PbWatchResponse> {
        let app = self.store.inner_app();
        let app = app.read();
        let store = app.store();
        let current = store.revision();
        let mut responses = Vec::new();
        let mut gone = Vec::new();
        for (id, watcher) in watchers.iter_mut() {
            if watcher.next_revision > current {
                continue;
            }
            let mut matching = Vec::new();
            let scanned = store.scan_events(
                watcher.next_revision,
                watcher.prev_kv,
                |key| in_range(key, &watcher.key, &watcher.range_end),
                |_, event| {
                    let wanted = match event.kind {
                        EventKind::Put => !watcher.no_put,
                        EventKind::Delete => !watcher.no_delete,
                    };
                    if wanted {
                        matching.push(convert::event(event));
                    }
                },
            );
            match scanned {
                Ok(()) => {}
                Err(MvccError::Compacted {
                    requested,
                    compact_revision,
                }) => {
                    responses.push(self.compacted(*id, requested, compact_revision, current));
                    gone.push(*id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(watch_id = *id, error = %e, "reading the history for a watcher failed");
                    continue;
                }
            }
            watcher.next_revision = current + 1;
            if !matching.is_empty() {
                responses.push(PbWatchResponse {
                    header: Some(self.header(current)),
                    watch_id: *id,
                    events: matching,
                    ..Default::default()
                });
            }
        }
        for id in gone {
            watchers.remove(&id);
            metrics::gauge!("trestle_watchers").decrement(1.0);
        }
        responses
    }
}
