//! Join tokens as `swarm join --token` and `/v1/swarm/join` take them: a
//! token that parses renders back to itself (normalized).
#![no_main]

use control::tls::Token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Token::parse(s) {
        assert_eq!(Token::parse(&t.render()).as_ref(), Ok(&t));
    }
});
