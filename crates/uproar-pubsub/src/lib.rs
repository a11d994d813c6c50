//! # uproar-pubsub: topics and fan-out, without I/O
//!
//! A per-core registry of which subscribers are on which topic, and back. No sockets, no
//! threads, no clock, no frames: subscribers are any small `Copy` key (the engine uses its
//! connection ids) and messages are whatever the caller fans out (the engine: one encoded
//! frame in a shared `Bytes`, queued to each subscriber by reference).
//!
//! - [`Registry::subscribe`] / [`unsubscribe`](Registry::unsubscribe): O(1) each.
//! - [`Registry::remove`]: a closing subscriber leaves all its topics in time proportional to
//!   its own topics, not to the number of topics or subscribers.
//! - [`Registry::publish`]: calls the caller's `deliver` once per subscriber of the topic, in a
//!   stable order, and counts what happened under the [`Policy`].
//! - [`Policy`]: what to do with a subscriber whose backlog is over the limit: close it (the
//!   default: 1008 "slow consumer" in the engine) or drop the message for it. Nothing is dropped
//!   silently: drops and slow-consumer closes are counted in [`Counters`].
//!
//! Order: a publisher's messages to a topic are delivered to each subscriber in publish order,
//! since each publish reaches every subscriber before the next one starts.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "model"))]
pub mod model;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

/// What a subscriber's backlog over the limit leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Close the subscriber (the engine sends 1008 "slow consumer"). The default: a client that
    /// cannot keep up gets a clear answer instead of silently missing messages.
    Close,
    /// Skip this message for that subscriber and count the drop.
    Drop,
}

/// The backpressure policy of a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most bytes a subscriber may have queued before a new message is refused. The check is
    /// on the backlog already there, so one message larger than the limit still reaches a
    /// subscriber that keeps up; the memory bound is the limit plus one message.
    pub max_buffered: usize,
    /// What happens over the limit.
    pub on_full: OnFull,
}

impl Default for Policy {
    /// 1 MiB and [`OnFull::Close`]: a burst of large messages fits; a stalled reader costs at
    /// most that.
    fn default() -> Self {
        Policy {
            max_buffered: 1 << 20,
            on_full: OnFull::Close,
        }
    }
}

/// What `deliver` did with one message for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Queued.
    Delivered,
    /// Refused (the subscriber is gone or closing); not counted as a drop.
    Gone,
}

/// What [`Policy::admit`] decides for a subscriber with `buffered` bytes queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Queue the message.
    Queue,
    /// Skip the message for this subscriber (counted).
    Drop,
    /// Skip the message and close the subscriber as a slow consumer (counted).
    Close,
}

impl Policy {
    /// The decision for a subscriber with `buffered` bytes already queued.
    pub fn admit(&self, buffered: usize) -> Admit {
        if buffered <= self.max_buffered {
            Admit::Queue
        } else {
            match self.on_full {
                OnFull::Close => Admit::Close,
                OnFull::Drop => Admit::Drop,
            }
        }
    }
}

/// Counts since the registry was made; exposed as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages published (to topics with or without subscribers).
    pub published: u64,
    /// Messages queued to a subscriber.
    pub deliveries: u64,
    /// Messages skipped for a subscriber over the limit under [`OnFull::Drop`].
    pub drops: u64,
    /// Subscribers closed as slow consumers under [`OnFull::Close`].
    pub slow_closes: u64,
}

/// The result of one [`Registry::publish`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published<S> {
    /// Subscribers the message was queued to.
    pub delivered: usize,
    /// Subscribers that skipped it (over the limit, [`OnFull::Drop`]).
    pub dropped: usize,
    /// Subscribers to close as slow consumers ([`OnFull::Close`]); the caller closes them.
    pub to_close: Vec<S>,
}

struct Topic<S> {
    name: Box<str>,
    /// Subscribers in a dense array, for fan-out.
    members: Vec<S>,
    /// Where each subscriber is in `members`, for O(1) removal.
    pos: HashMap<S, usize>,
}

/// Which subscribers are on which topic, and back, for one core.
pub struct Registry<S> {
    ids: HashMap<Box<str>, usize>,
    topics: Vec<Option<Topic<S>>>,
    free: Vec<usize>,
    by_sub: HashMap<S, Vec<usize>>,
    policy: Policy,
    counters: Counters,
}

impl<S> std::fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topics", &self.ids.len())
            .field("subscribers", &self.by_sub.len())
            .field("policy", &self.policy)
            .field("counters", &self.counters)
            .finish()
    }
}

impl<S: Copy + Eq + Hash> Registry<S> {
    /// An empty registry under `policy`.
    pub fn new(policy: Policy) -> Registry<S> {
        Registry {
            ids: HashMap::new(),
            topics: Vec::new(),
            free: Vec::new(),
            by_sub: HashMap::new(),
            policy,
            counters: Counters::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.ids.len()
    }

    /// Subscribers on at least one topic.
    pub fn subscriber_count(&self) -> usize {
        self.by_sub.len()
    }

    /// Put `sub` on `topic`. Returns false if it was already there.
    pub fn subscribe(&mut self, sub: S, topic: &str) -> bool {
        let id = match self.ids.get(topic) {
            Some(&id) => id,
            None => {
                let t = Topic {
                    name: topic.into(),
                    members: Vec::new(),
                    pos: HashMap::new(),
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.topics[id] = Some(t);
                        id
                    }
                    None => {
                        self.topics.push(Some(t));
                        self.topics.len() - 1
                    }
                };
                self.ids.insert(topic.into(), id);
                id
            }
        };
        let t = self.topics[id].as_mut().expect("a live topic id");
        match t.pos.entry(sub) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(t.members.len());
                t.members.push(sub);
                self.by_sub.entry(sub).or_default().push(id);
                true
            }
        }
    }

    /// Take `sub` off `topic`. Returns false if it was not there.
    pub fn unsubscribe(&mut self, sub: S, topic: &str) -> bool {
        let Some(&id) = self.ids.get(topic) else {
            return false;
        };
        if !self.leave(sub, id) {
            return false;
        }
        if let Some(list) = self.by_sub.get_mut(&sub) {
            if let Some(i) = list.iter().position(|&t| t == id) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                self.by_sub.remove(&sub);
            }
        }
        true
    }

    /// Take `sub` off every topic (it closed); returns how many it was on. Costs in proportion
    /// to its own topics.
    pub fn remove(&mut self, sub: S) -> usize {
        let Some(list) = self.by_sub.remove(&sub) else {
            return 0;
        };
        for &id in &list {
            self.leave(sub, id);
        }
        list.len()
    }

    /// Remove `sub` from topic `id`'s members (not from `by_sub`); drops an emptied topic.
    fn leave(&mut self, sub: S, id: usize) -> bool {
        let Some(t) = self.topics.get_mut(id).and_then(|t| t.as_mut()) else {
            return false;
        };
        let Some(i) = t.pos.remove(&sub) else {
            return false;
        };
        t.members.swap_remove(i);
        if let Some(&moved) = t.members.get(i) {
            t.pos.insert(moved, i);
        }
        if t.members.is_empty() {
            let name = std::mem::take(&mut t.name);
            self.ids.remove(&name);
            self.topics[id] = None;
            self.free.push(id);
        }
        true
    }

    /// The subscribers of `topic`, in delivery order.
    pub fn subscribers(&self, topic: &str) -> &[S] {
        self.ids
            .get(topic)
            .and_then(|&id| self.topics[id].as_ref())
            .map_or(&[], |t| &t.members)
    }

    /// The topics `sub` is on.
    pub fn topics_of(&self, sub: S) -> impl Iterator<Item = &str> + '_ {
        self.by_sub
            .get(&sub)
            .into_iter()
            .flatten()
            .filter_map(|&id| self.topics[id].as_ref().map(|t| &*t.name))
    }

    /// Fan `msg` out to every subscriber of `topic`. For each, `sink.buffered(sub)` tells its
    /// backlog; under the policy the message is then handed to `sink.deliver(sub, msg)`,
    /// skipped (counted as a drop), or skipped with `sub` listed in `to_close` (counted as a
    /// slow close; the caller closes it, and should then [`remove`](Self::remove) it).
    pub fn publish<M>(&mut self, topic: &str, msg: &M, sink: &mut impl Sink<S, M>) -> Published<S> {
        self.counters.published += 1;
        let mut out = Published {
            delivered: 0,
            dropped: 0,
            to_close: Vec::new(),
        };
        let Some(t) = self.ids.get(topic).and_then(|&id| self.topics[id].as_ref()) else {
            return out;
        };
        for &sub in &t.members {
            match self.policy.admit(sink.buffered(sub)) {
                Admit::Queue => {
                    if sink.deliver(sub, msg) == Outcome::Delivered {
                        out.delivered += 1;
                    }
                }
                Admit::Drop => out.dropped += 1,
                Admit::Close => out.to_close.push(sub),
            }
        }
        self.counters.deliveries += out.delivered as u64;
        self.counters.drops += out.dropped as u64;
        self.counters.slow_closes += out.to_close.len() as u64;
        out
    }
}

/// Where [`Registry::publish`] delivers: the caller's subscribers and their queues.
pub trait Sink<S, M> {
    /// Bytes queued for `sub` and not yet taken by its transport.
    fn buffered(&self, sub: S) -> usize;
    /// Queue `msg` for `sub` (by reference: the caller's message is shared, not copied).
    fn deliver(&mut self, sub: S, msg: &M) -> Outcome;
}
