//! Any text as net-conf.json: a validated config or an error naming a field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_config::NetConf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = NetConf::parse(text) {
        assert!(!e.field.is_empty());
    }
});
