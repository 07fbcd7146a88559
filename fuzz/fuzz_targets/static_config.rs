//! `apiary daemon --static-config FILE` and `--check-config FILE`: any
//! text is refused with a message or taken, never a panic; what is taken
//! yields a data plane description.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = mesh_agent::config::parse(std::path::Path::new("fuzz.yaml"), text) {
        let _ = cfg.desired(1500);
        let _ = cfg.my_tasks();
    }
});
