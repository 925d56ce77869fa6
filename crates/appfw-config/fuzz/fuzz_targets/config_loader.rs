//! Arbitrary text as a config file, plus arbitrary `APPFW_*` variables and `--set` flags: the
//! loader returns a config or located errors and never panics; an accepted config renders to
//! TOML, and loading that rendering (secrets redacted, so it may be refused) does not panic
//! either.
#![no_main]

use appfw_config::{Layers, load, render_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first lines may be layer inputs: "E NAME=value" (env) or "S key=value" (--set).
    let mut layers = Layers::default();
    let mut body = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("E ") {
            if let Some((k, v)) = rest.split_once('=') {
                layers.env.push((format!("APPFW_{k}"), v.to_string()));
                continue;
            }
        } else if let Some(rest) = line.strip_prefix("S ") {
            layers.sets.push(rest.to_string());
            continue;
        }
        body.push_str(line);
        body.push('\n');
    }
    layers.text = Some(body);
    if let Ok(loaded) = load(&layers) {
        let rendered = render_toml(&loaded.config, true);
        let _ = load(&Layers::text(&rendered));
    }
});
