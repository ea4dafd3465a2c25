//! AFL++ target `srtp`: see `switchboard_fuzz::srtp`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::srtp(data);
    });
}
