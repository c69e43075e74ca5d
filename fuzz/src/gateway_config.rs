//! The gateway's TOML config file (`hushgate gateway --config`), and the
//! values in it that are parsed further: service specs, the pre-filter
//! mode and the port-mapping mode.
//!
//! Input: the file's text. A spec that parses must describe a usable
//! service (a name of 1 to 64 bytes, a non-zero port).

use gateway::{GatewayFile, PortMappingMode, PrefilterMode, ServiceSpec};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // The text as one spec or mode on its own, as on the command line.
    check_spec(&text);
    let _ = text.parse::<PrefilterMode>();
    let _ = text.parse::<PortMappingMode>();
    let Ok(file) = GatewayFile::parse(&text) else {
        return;
    };
    for spec in file.services.iter().chain(&file.direct) {
        check_spec(spec);
    }
    if let Some(mode) = &file.prefilter {
        let _ = mode.parse::<PrefilterMode>();
    }
    if let Some(mode) = &file.port_mapping {
        let _ = mode.parse::<PortMappingMode>();
    }
}

fn check_spec(text: &str) {
    match text.parse::<ServiceSpec>() {
        Ok(spec) => {
            assert!(!spec.name.is_empty() && spec.name.len() <= 64, "{spec:?}");
            assert_ne!(spec.port, 0);
            let again = format!("{}={}:{}", spec.name, spec.port, spec.upstream)
                .parse::<ServiceSpec>()
                .expect("a spec written back parses");
            assert_eq!(
                (again.name, again.port, again.upstream),
                (spec.name, spec.port, spec.upstream)
            );
        }
        Err(message) => assert!(!message.is_empty()),
    }
}
