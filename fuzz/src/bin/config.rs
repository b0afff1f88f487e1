//! The config loader: `Config::from_toml` on arbitrary text (it may read the files the text
//! names; it never writes).
use fedgate::config::Config;

fn main() {
    let base = std::env::temp_dir().join("fedgate-fuzz-config");
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        let _ = Config::from_toml(s, &base);
    });
}
