//! Any bytes on the plugin's stdin: parsing returns a config or a CNI error, never panics,
//! and every accepted config renders (or is refused) against a valid subnet.env.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_cni::{render_delegate, PluginConf};
use twill_config::SubnetEnv;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = PluginConf::parse(data) {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            "subnet.env",
        )
        .unwrap();
        if let Ok(d) = render_delegate(&conf, &env) {
            assert_eq!(d["name"], serde_json_value_str(&conf.name));
        }
    }
});

fn serde_json_value_str(s: &str) -> twill_cni::conf::Value {
    twill_cni::conf::Value::String(s.to_string())
}
