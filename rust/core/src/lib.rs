//! aesr1-core: placeholder, filled by the native-core work.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
