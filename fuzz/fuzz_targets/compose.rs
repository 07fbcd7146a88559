//! `apiary stack deploy -c FILE`: any text is a project or an error that
//! names a file and a line, never a panic, a hang or a blow-up (aliases of
//! aliases, deep nesting, interpolation of hostile strings).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = compose::Input {
        name: "fuzz.yml".into(),
        dir: "/nonexistent-fuzz-dir".into(),
        text: text.into(),
    };
    let env = std::collections::BTreeMap::from([("TAG".to_string(), "1".to_string())]);
    if let Err(e) = compose::load(&[input], &env) {
        assert!(e.file == "fuzz.yml", "{e}");
    }
});
