//! AFL++ target `sip_core`: see `switchboard_fuzz::sip_core`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::sip_core(data);
    });
}
