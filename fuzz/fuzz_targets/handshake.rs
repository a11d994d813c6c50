//! The HTTP/upgrade parser over arbitrary bytes. Invariants: no panic; a complete head's length
//! is within the input and reparsing exactly the head gives the same answer; an accepted upgrade
//! yields a 101 response that parses and carries the right accept value; a refused one yields a
//! response that parses with the error's status. The client-side parser takes the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uproar_wire::handshake::{ClientHandshake, Request, accept_key, validate_upgrade};

fn parse_response(bytes: &[u8]) -> (u16, Vec<(String, Vec<u8>)>) {
    let mut headers = [httparse_header(); 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("our response does not parse: {other:?}"),
    };
    assert!(n <= bytes.len());
    let hs = resp.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
    (resp.code.unwrap(), hs)
}

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

fuzz_target!(|data: &[u8]| {
    let [limit, rest @ ..] = data else { return };
    let max = 64 + usize::from(*limit) * 32;
    let _ = ClientHandshake::new([1; 16]).parse_response(rest, &["chat"]);
    let outcome = match Request::parse(rest, max) {
        Ok(None) => return,
        Ok(Some(req)) => {
            assert!(req.head_len() <= rest.len() && req.head_len() <= max);
            let again = Request::parse(&rest[..req.head_len()], max).expect("same head parses again").unwrap();
            assert_eq!(again.head_len(), req.head_len());
            assert_eq!(again.target(), req.target());
            validate_upgrade(&req).map(|up| (up.key().to_vec(), up.protocols().next().map(str::to_owned)))
        }
        Err(e) => Err(e),
    };
    let mut out = Vec::new();
    match outcome {
        Ok((key, proto)) => {
            use base64::Engine as _;
            assert_eq!(key.len(), 24);
            let raw = base64::engine::general_purpose::STANDARD.decode(&key).expect("accepted key is base64");
            assert_eq!(raw.len(), 16);
            uproar_wire::handshake::write_accept(&mut out, &key, proto.as_deref());
            let (status, hs) = parse_response(&out);
            assert_eq!(status, 101);
            let accept = hs.iter().find(|(n, _)| n == "sec-websocket-accept").unwrap();
            assert_eq!(accept.1, accept_key(&key));
        }
        Err(e) => {
            e.write_response(&mut out);
            let (status, _) = parse_response(&out);
            assert_eq!(status, e.status());
            assert!(matches!(status, 400 | 426 | 431));
        }
    }
});
