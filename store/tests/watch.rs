//! Watches under concurrent writes: from a past revision into live events with no gap and no
//! duplicate, and a consumer too slow for the live fan-out catching up from disk.

mod common;

use common::{Kind, Server};
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use miniorch_store::pb::etcdserverpb::watch_client::WatchClient;
use miniorch_store::pb::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    watch_request,
};
use miniorch_store::pb::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

const WRITES: usize = 3000;

fn create(start: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                start_revision: start,
                prev_kv: true,
                ..Default::default()
            },
        )),
    }
}

async fn open(ch: Channel, start: i64) -> (mpsc::Sender<WatchRequest>, Streaming<WatchResponse>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(create(start)).await.unwrap();
    let mut stream = WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");
    (tx, stream)
}

/// Reads events until revision `last`, checking each is the next revision, once.
async fn collect(stream: &mut Streaming<WatchResponse>, first: i64, last: i64) {
    let mut want = first;
    while want <= last {
        let resp = stream.message().await.unwrap().expect("stream open");
        assert!(!resp.canceled, "{resp:?}");
        for e in resp.events {
            let kv = e.kv.unwrap();
            assert_eq!(kv.mod_revision, want, "gap or duplicate");
            assert_eq!(e.r#type, EventType::Put as i32);
            // Every write overwrites w/<i % 10>: from the 11th write on there is a previous value.
            let i = (want - 2) as usize;
            assert_eq!(kv.key, format!("w/{}", i % 10).into_bytes());
            assert_eq!(kv.value, format!("v{i}").into_bytes());
            if i >= 10 {
                let prev = e.prev_kv.expect("prev_kv");
                assert_eq!(prev.value, format!("v{}", i - 10).into_bytes());
            } else {
                assert!(e.prev_kv.is_none());
            }
            want += 1;
        }
    }
}

#[test]
fn past_into_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Kind::Miniorch, &dir.path().join("data"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = s.channel().await;
        // The first write is revision 2, so write i lands at revision i + 2.
        let mut kv = KvClient::new(ch.clone());
        let (started_tx, mut started) = mpsc::channel::<()>(1);
        let writer = tokio::spawn(async move {
            for i in 0..WRITES {
                kv.put(PutRequest {
                    key: format!("w/{}", i % 10).into_bytes(),
                    value: format!("v{i}").into_bytes(),
                    ..Default::default()
                })
                .await
                .unwrap();
                if i == WRITES / 4 {
                    let _ = started_tx.send(()).await;
                }
            }
        });
        started.recv().await;
        let last = WRITES as i64 + 1;
        // From the first revision while writes go on: history, then live.
        let (_keep, mut from_past) = open(ch.clone(), 2).await;
        // A consumer that reads nothing until every write is done: it falls behind the live
        // fan-out and must catch up from disk.
        let (_keep2, mut slow) = open(ch.clone(), 2).await;
        collect(&mut from_past, 2, last).await;
        writer.await.unwrap();
        collect(&mut slow, 2, last).await;

        // A progress request reports a revision every event of which was delivered.
        let (tx, mut live) = open(ch.clone(), 0).await;
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                WatchProgressRequest {},
            )),
        })
        .await
        .unwrap();
        let progress = live.message().await.unwrap().unwrap();
        assert_eq!(progress.watch_id, -1);
        assert!(progress.events.is_empty());
        assert_eq!(progress.header.unwrap().revision, last);
    });
}
