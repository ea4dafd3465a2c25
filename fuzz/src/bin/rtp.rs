//! AFL++ target `rtp`: see `switchboard_fuzz::rtp`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        switchboard_fuzz::rtp(data);
    });
}
