//! The pub/sub registry against a naive map-of-sets model, over operation streams decoded
//! from the input (subscribe, unsubscribe, remove, publish with some subscribers over the
//! backpressure limit): membership both ways, exactly-once delivery, per-topic order, the
//! policy's drops and slow closes, and the counters must all agree after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uproar_pubsub::model::check(data);
});
