//! A `set=1` request on the userspace WireGuard's UAPI socket (root only,
//! but parsed whole before anything changes): refused or taken, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = mesh_agent::overlay::wg::uapi::parse_set(text.lines());
});
