//! A Raft log segment as it is read back at start: whatever the bytes on
//! disk (a torn write, damage, garbage), opening stops with a place or a
//! count, never a panic or an allocation its length claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for last in [false, true] {
        if let Ok((_, end)) = control::store::wal::scan_segment(data, last) {
            assert!(end <= data.len());
        }
    }
});
