//! Any text as subnet.env: parse never panics, and what parses renders back to text that
//! parses to the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_config::SubnetEnv;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(env) = SubnetEnv::parse(text, "subnet.env") {
        let again = SubnetEnv::parse(&env.render(), "subnet.env").expect("rendered text parses");
        assert_eq!(again, env);
    }
});
