//! The node observer (for broker bridges), on the driver `UPROAR_DRIVER` names: a topic is
//! active once whatever the number of subscribers and workers, idle when the last leaves; every
//! publish made on the node is reported once (handlers and `Publisher`s), and
//! `publish_frame_local` delivers without being reported.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use uproar::{
    Ctx, DataKind, Frame, Handler, Message, NodeObserver, Upgrade, UpgradeRequest, WebSocket,
};

#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl NodeObserver for Seen {
    fn topic_active(&self, topic: &str) {
        self.0.lock().unwrap().push(format!("active {topic}"));
    }
    fn topic_idle(&self, topic: &str) {
        self.0.lock().unwrap().push(format!("idle {topic}"));
    }
    fn published(&self, topic: &str, frame: &Frame) {
        let p = String::from_utf8_lossy(frame.payload());
        self.0
            .lock()
            .unwrap()
            .push(format!("published {topic} {:?} {p}", frame.kind()));
    }
}

/// `/ws/T` subscribes to T and publishes what it gets.
struct App;

impl Handler for App {
    type Conn = String;

    fn on_upgrade<'r>(
        &mut self,
        _: &mut Ctx<String>,
        req: &UpgradeRequest<'r>,
    ) -> Upgrade<'r, String> {
        Upgrade::accept(req.path().trim_start_matches("/ws/").to_owned())
    }

    fn on_open(&mut self, ws: &mut WebSocket<'_, String>) {
        let t = ws.data().clone();
        ws.subscribe(&t);
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, String>, msg: Message<'_>) {
        let t = ws.data().clone();
        ws.publish(&t, msg.kind(), msg.data());
    }
}

#[test]
fn topics_and_publishes_are_reported_once_per_node() {
    let seen = Arc::new(Seen::default());
    let server = builder()
        .threads(2)
        .observer(seen.clone())
        .start(|_| App)
        .unwrap();
    let addr = server.local_addr();
    let events = || seen.0.lock().unwrap().clone();
    let mut subs: Vec<_> = (0..4).map(|_| Client::connect(addr, "/ws/news")).collect();
    assert!(eventually(Duration::from_secs(5), || server
        .handle()
        .node_subscribers("news")
        == 4));
    assert_eq!(events(), ["active news"]);
    subs[0].send_text("from a client");
    for s in &mut subs {
        assert_eq!(s.recv(), Got::Text("from a client".into()));
    }
    let p = server.publisher();
    assert!(p.publish("news", DataKind::Binary, b"from a publisher"));
    for s in &mut subs {
        assert_eq!(s.recv(), Got::Binary(b"from a publisher".to_vec()));
    }
    // From another node: delivered, not reported (a bridge must not send it back).
    assert!(p.publish_frame_local("news", &Frame::new(DataKind::Text, b"from elsewhere")));
    for s in &mut subs {
        assert_eq!(s.recv(), Got::Text("from elsewhere".into()));
    }
    assert_eq!(
        events(),
        [
            "active news",
            "published news Text from a client",
            "published news Binary from a publisher",
        ]
    );
    for s in subs.drain(..) {
        drop(s);
    }
    assert!(eventually(Duration::from_secs(5), || events().len() == 4));
    assert_eq!(events()[3], "idle news");
    // Active again with a new subscriber.
    let _again = Client::connect(addr, "/ws/news");
    assert!(eventually(Duration::from_secs(5), || events().len() == 5));
    assert_eq!(events()[4], "active news");
}
