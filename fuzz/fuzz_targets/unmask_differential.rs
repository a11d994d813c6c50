//! Every available masking backend, and the dispatched `unmask` over random splits, against
//! the scalar oracle: same bytes, same returned phase.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uproar_wire::mask::{Backend, unmask, unmask_with};

fuzz_target!(|data: &[u8]| {
    let [k0, k1, k2, k3, phase, offset, split, rest @ ..] = data else { return };
    let key = [*k0, *k1, *k2, *k3];
    let phase = usize::from(*phase & 3);
    let offset = usize::from(*offset & 63).min(rest.len());
    let payload = &rest[offset..];
    // The payload starts `offset` bytes into its buffer, so alignments vary.
    let mut want = rest.to_vec();
    let want_phase = unmask_with(Backend::Scalar, &mut want[offset..], key, phase);
    assert_eq!(want_phase, (phase + payload.len()) % 4);
    for b in Backend::ALL.into_iter().filter(|b| b.is_available()) {
        let mut got = rest.to_vec();
        assert_eq!(unmask_with(b, &mut got[offset..], key, phase), want_phase);
        assert!(got == want, "{b:?} differs from the oracle");
    }
    // Dispatched, in pieces of a size picked by the input.
    let step = usize::from(*split).max(1);
    let mut got = rest.to_vec();
    let mut ph = phase;
    for piece in got[offset..].chunks_mut(step) {
        ph = unmask(piece, key, ph);
    }
    assert_eq!(ph, want_phase);
    assert!(got == want, "dispatched unmask in pieces of {step} differs from the oracle");
});
